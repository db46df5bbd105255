//! `POST /v1/hooks/{name}`: a vendor's webhook. The body is read within the same time
//! and memory budgets as the events endpoint, verified on its bytes (nothing is parsed
//! or stored before, except the form fields of the schemes that sign fields), then
//! turned into events, routed, queued once and answered like the events endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::events::{
    budget_error, committed, enqueue, read_decoded, respond, AckMode, IngestResponse,
};
use super::AppState;
use crate::config::VerifyScheme;
use crate::event::Stage;
use crate::ingest::body::{self, BodyError};
use crate::ingest::budget::{decode_estimate, Reservation};
use crate::ingest::{EventError, RequestEvents};
use crate::webhook::verify::{Refusal, Request};
use crate::webhook::{form, Webhook};

/// What a webhook body is.
enum Kind {
    /// One JSON object, or an array of them.
    Json,
    /// Form fields (url-encoded or multipart).
    Form(Vec<(String, String)>),
    /// Not what its Content-Type says: dead-lettered whole.
    Malformed(String),
}

/// `POST /v1/hooks/{name}`: a vendor webhook, verified, then stored like events.
#[utoipa::path(
    post,
    path = "/v1/hooks/{name}",
    tag = "webhooks",
    params(
        ("name" = String, Path, description = "The webhook source: a `[webhooks.NAME]` section of the configuration.", example = "github"),
    ),
    request_body(
        description = "What the vendor sends: one JSON object, a JSON array of objects (one event each), or form fields (url-encoded or multipart), stored as one flat object of strings (a repeated name becomes an array). Verified on the raw bytes before anything is stored.",
        content(
            (super::events::EventsBody = "application/json"),
            (std::collections::BTreeMap<String, String> = "application/x-www-form-urlencoded"),
            (std::collections::BTreeMap<String, String> = "multipart/form-data"),
        ),
    ),
    security(
        (),
        ("webhook_token" = []),
        ("webhook_basic" = []),
        ("standard_webhooks" = []),
        ("stripe" = []),
        ("github" = []),
        ("shopify" = []),
        ("slack" = []),
        ("twilio" = []),
    ),
    responses(
        (status = 200, description = "Every event is committed or dead-lettered.", body = IngestResponse),
        super::events::BodyFailures,
        (status = 400, description = "The body is not what its Content-Type says (it was dead-lettered whole).", body = ErrorBody),
        (status = 401, description = "Missing or bad signature, token or credentials, or a timestamp outside the tolerance; nothing was stored.", body = ErrorBody),
        (status = 404, description = "No webhook of that name is configured.", body = ErrorBody),
        (status = 503, description = "A queue stayed full, or Sluice is shutting down; nothing was accepted, retry.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait (sent when a queue is full)."))),
    )
)]
pub async fn receive_webhook(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(hook) = state.webhooks.get(&name).cloned() else {
        return Err(ApiError::NotFound(format!(
            "no webhook named `{name}` is configured; add a [webhooks.{name}] section"
        )));
    };
    if state.ingest.is_recovering() {
        return Err(ApiError::Recovering);
    }
    let gzip = body::is_gzip(&headers)?;
    let media = media_type(&headers);
    let mut held = Reservation::default();
    let bytes = read_decoded(&state, body, gzip, &mut held).await?;
    // Twilio and legacy Mailgun sign form fields, not bytes: read them first.
    let signs_fields = matches!(
        hook.config.verify,
        VerifyScheme::Twilio | VerifyScheme::Mailgun
    );
    let mut fields = None;
    if signs_fields {
        fields = read_form(&state, &mut held, &media, &headers, &bytes).await?;
    }
    let verified = hook
        .verify(&Request {
            headers: &headers,
            body: &bytes,
            query: query.as_deref(),
            fields: fields.as_deref(),
            now: chrono::Utc::now().timestamp(),
        })
        .map_err(|reason| {
            state.webhooks.refused(&name, reason, &peer.to_string());
            unauthorized(reason, hook.config.verify)
        })?;
    let kind = match fields {
        Some(f) => Kind::Form(f),
        None => match read_form(&state, &mut held, &media, &headers, &bytes).await {
            Ok(Some(f)) => Kind::Form(f),
            Ok(None) => Kind::Json,
            Err(ApiError::BadRequest { error, .. }) => Kind::Malformed(error),
            Err(e) => return Err(e),
        },
    };

    state
        .ingest
        .memory()
        .reserve(
            &mut held,
            decode_estimate(&bytes),
            Some(state.http.enqueue_timeout),
        )
        .await
        .map_err(budget_error)?;
    let source: Arc<str> = crate::source::webhook(&name, peer);
    let received_at = chrono::Utc::now();
    let ingest = &state.ingest;
    let mut groups = Groups(Vec::new());
    let mut malformed = None;
    // A form's dead letter keeps the body as received (its row has the fields as JSON);
    // one that looks like JSON was most likely JSON sent with curl -d's form type.
    let mut form_hint = None;
    let is_form = matches!(kind, Kind::Form(_));
    let events: Vec<(Vec<u8>, Result<Value, String>)> = match kind {
        Kind::Malformed(error) => {
            malformed = Some(error);
            Vec::new()
        }
        Kind::Form(fields) => {
            if media == "application/x-www-form-urlencoded"
                && matches!(bytes.trim_ascii_start().first(), Some(b'{' | b'['))
            {
                form_hint = Some("the body was read as form fields (its Content-Type is application/x-www-form-urlencoded, which curl -d sends) but looks like JSON: send it with Content-Type: application/json");
            }
            let value = form::to_object(&fields);
            vec![(value.to_string().into_bytes(), Ok(value))]
        }
        Kind::Json => match body::split(
            body::Format::Json,
            &bytes,
            state.http.max_events_per_request,
        ) {
            Ok(pieces) => pieces
                .into_iter()
                .map(|p| (p.raw.to_vec(), p.value))
                .collect(),
            Err(BodyError::Malformed(error)) => {
                malformed = Some(error);
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        },
    };
    // What does not parse goes to the webhook's stream, if it has only one.
    let fixed = hook.fixed_stream().map(|s| s.name.clone());
    let fixed = fixed.as_deref();
    if let Some(error) = &malformed {
        let err = EventError::whole(0, Stage::Parse, error.clone());
        groups
            .of(fixed, ingest)
            .reject(fixed, &bytes, err, &source, received_at);
    }
    let batch = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    for (index, (raw, value)) in events.into_iter().enumerate() {
        let mut value = match value {
            Ok(v) => v,
            Err(error) => {
                let err = EventError::whole(index, Stage::Parse, error);
                groups
                    .of(fixed, ingest)
                    .reject(fixed, &raw, err, &source, received_at);
                continue;
            }
        };
        match route(&hook, &value, &headers) {
            Ok(stream) => {
                let changed = hook.decorate(
                    &mut value,
                    &headers,
                    &verified,
                    &stream,
                    batch.then_some(index),
                );
                let text = if changed {
                    value.to_string()
                } else {
                    String::from_utf8_lossy(&raw).into_owned()
                };
                let payload: &[u8] = if is_form { &bytes } else { text.as_bytes() };
                groups.of(Some(&stream.name), ingest).add_as(
                    &stream,
                    &text,
                    value,
                    payload,
                    form_hint,
                    index,
                    &source,
                    received_at,
                );
            }
            Err(error) => {
                let err = EventError::whole(index, Stage::Route, error);
                let payload: &[u8] = if is_form { &bytes } else { &raw };
                groups
                    .of(None, ingest)
                    .reject(None, payload, err, &source, received_at);
            }
        }
    }

    let mut total = 0;
    let mut errors = Vec::new();
    for (_, request) in &mut groups.0 {
        total += request.rows.len() + request.letters.len();
        errors.append(&mut request.errors);
    }
    let groups = groups
        .0
        .iter_mut()
        .map(|(s, r)| (s.as_deref(), std::mem::take(r)))
        .collect();
    let pending = enqueue(ingest, groups, AckMode::Commit, state.http.enqueue_timeout).await?;
    drop(bytes);
    drop(held);
    let rejected = committed(pending, AckMode::Commit).await?;
    if let Some(error) = malformed {
        return Err(ApiError::BadRequest {
            error,
            dead_lettered: 1,
        });
    }
    Ok(respond(total, errors, rejected, AckMode::Commit))
}

/// A request's events by stream (`None`: those no route matched), in the order first seen.
struct Groups(Vec<(Option<String>, RequestEvents)>);

impl Groups {
    fn of(&mut self, stream: Option<&str>, ingest: &crate::ingest::Ingest) -> &mut RequestEvents {
        let i = match self.0.iter().position(|(s, _)| s.as_deref() == stream) {
            Some(i) => i,
            None => {
                self.0
                    .push((stream.map(str::to_owned), ingest.request_events()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

/// The stream of `event`, shared so the caller can hold it past the hook.
fn route(
    hook: &Webhook,
    event: &Value,
    headers: &HeaderMap,
) -> Result<Arc<crate::schema::Stream>, String> {
    hook.route(event, headers).cloned()
}

/// The lower-case media type of the request, without parameters.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Reads the fields of a form body (`None` for JSON; any other media type is refused).
/// The fields are counted first and charged ([`charge_form`]) before they are built.
async fn read_form(
    state: &AppState,
    held: &mut Reservation,
    media: &str,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Option<Vec<(String, String)>>, ApiError> {
    match media {
        "application/x-www-form-urlencoded" => {
            charge_form(state, held, bytes.len(), form::count_urlencoded(bytes)).await?;
            Ok(Some(form::urlencoded(bytes)))
        }
        "multipart/form-data" => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let boundary = form::boundary(content_type).ok_or_else(|| ApiError::BadRequest {
                error: "multipart/form-data without a boundary parameter".into(),
                dead_lettered: 0,
            })?;
            charge_form(state, held, bytes.len(), form::count_multipart(bytes, &boundary))
                .await?;
            form::multipart(bytes::Bytes::copy_from_slice(bytes), &boundary)
                .await
                .map(Some)
                .map_err(|error| ApiError::BadRequest {
                    error,
                    dead_lettered: 0,
                })
        }
        "" | "application/json" | "text/json" | "text/plain" => Ok(None),
        m if m.ends_with("+json") => Ok(None),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {other:?} for a webhook: Sluice reads application/json (an object or an array of objects), application/x-www-form-urlencoded and multipart/form-data"
        ))),
    }
}

/// Refuses a form of more than [`form::MAX_FIELDS`] fields (413), and charges what its
/// fields will take to the request's share of `max_inflight_bytes` (503 when the budget
/// stays busy): for Twilio and Mailgun the fields are read before the signature is
/// checked, so they must not cost more than the body's bytes do.
async fn charge_form(
    state: &AppState,
    held: &mut Reservation,
    body_bytes: usize,
    fields: usize,
) -> Result<(), ApiError> {
    if fields > form::MAX_FIELDS {
        return Err(ApiError::TooLarge(format!(
            "the form body has {fields} fields, more than a webhook sends ({} at most); send fewer fields",
            form::MAX_FIELDS
        )));
    }
    state
        .ingest
        .memory()
        .reserve(
            held,
            form::memory_estimate(body_bytes, fields),
            Some(state.http.enqueue_timeout),
        )
        .await
        .map_err(budget_error)
}

/// The 401 for `reason`, with a `WWW-Authenticate` challenge for HTTP authentication.
fn unauthorized(reason: Refusal, scheme: VerifyScheme) -> ApiError {
    let challenge = match scheme {
        VerifyScheme::Token => Some("Bearer"),
        VerifyScheme::Basic => Some("Basic realm=\"sluice\""),
        _ => None,
    };
    ApiError::Unauthorized {
        reason: reason.as_str(),
        challenge,
    }
}
