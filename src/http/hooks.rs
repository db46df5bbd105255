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

use super::error::{ApiError, ErrorBody};
use super::events::{budget_error, queue_and_answer, read_decoded, AckMode, IngestResponse};
use super::AppState;
use crate::event::Stage;
use crate::ingest::body::{self, BodyError};
use crate::ingest::budget::{decode_estimate, Reservation};
use crate::ingest::filing::{ByWebhook, Event, Filing, Route};
use crate::webhook::verify::{Refusal, Request, Verified};
use crate::webhook::VerifyScheme;
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
    let mut held = Reservation::default();
    let bytes = read_decoded(&state, body, gzip, &mut held).await?;
    let delivery = Delivery {
        headers: &headers,
        media: media_type(&headers),
        bytes: &bytes,
        query: query.as_deref(),
    };
    let (verified, kind) = verify(&state, &hook, &delivery, peer, &mut held).await?;
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
    let mut filing = state.ingest.filing();
    let source = crate::source::webhook(&name, peer);
    let max_events = state.http.max_events_per_request;
    let malformed = file_body(
        &mut filing,
        &hook,
        &delivery,
        &verified,
        kind,
        &source,
        max_events,
    )?;
    let answer = queue_and_answer(&state, filing, AckMode::Commit, (bytes, held)).await?;
    match malformed {
        Some(error) => Err(ApiError::BadRequest {
            error,
            dead_lettered: 1,
        }),
        None => Ok(answer),
    }
}

/// What a webhook request brought, as read.
struct Delivery<'a> {
    headers: &'a HeaderMap,
    /// The lower-case media type, without parameters.
    media: String,
    /// The body, decompressed.
    bytes: &'a [u8],
    query: Option<&'a str>,
}

/// Verifies `delivery` under `hook`'s scheme (a refusal is counted, logged in summary
/// and answered 401), and says what its body is. Twilio and legacy Mailgun sign form
/// fields, not bytes: those are read first.
async fn verify(
    state: &AppState,
    hook: &Webhook,
    delivery: &Delivery<'_>,
    peer: SocketAddr,
    held: &mut Reservation,
) -> Result<(Verified, Kind), ApiError> {
    let signs_fields = matches!(
        hook.config.verify,
        VerifyScheme::Twilio | VerifyScheme::Mailgun
    );
    let fields = match signs_fields {
        true => read_form(state, held, delivery).await?,
        false => None,
    };
    let verified = hook
        .verify(&Request {
            headers: delivery.headers,
            body: delivery.bytes,
            query: delivery.query,
            fields: fields.as_deref(),
            now: chrono::Utc::now().timestamp(),
        })
        .map_err(|reason| {
            state
                .webhooks
                .refused(&hook.name, reason, &peer.to_string());
            unauthorized(reason, hook.config.verify)
        })?;
    let kind = match fields {
        Some(f) => Kind::Form(f),
        None => match read_form(state, held, delivery).await {
            Ok(Some(f)) => Kind::Form(f),
            Ok(None) => Kind::Json,
            Err(ApiError::BadRequest { error, .. }) => Kind::Malformed(error),
            Err(e) => return Err(e),
        },
    };
    Ok((verified, kind))
}

/// Files a verified webhook body by the webhook's route: its events (a JSON object, an
/// array of them, or one object of form fields), or the whole body as one dead letter
/// when it is not what its Content-Type says (returned: the 400's error).
fn file_body(
    filing: &mut Filing,
    hook: &Webhook,
    delivery: &Delivery<'_>,
    verified: &Verified,
    kind: Kind,
    source: &Arc<str>,
    max_events: usize,
) -> Result<Option<String>, ApiError> {
    let received_at = chrono::Utc::now();
    let bytes = delivery.bytes;
    let form_text: Vec<u8>;
    let read: Result<(Vec<(&[u8], _)>, _), String> = match kind {
        Kind::Malformed(error) => Err(error),
        Kind::Form(fields) => {
            // A form's dead letter keeps the body as received (its row has the fields
            // as JSON); one that looks like JSON was most likely JSON sent with curl -d's
            // form type.
            let hint = (delivery.media == "application/x-www-form-urlencoded"
                && matches!(bytes.trim_ascii_start().first(), Some(b'{' | b'[')))
            .then_some("the body was read as form fields (its Content-Type is application/x-www-form-urlencoded, which curl -d sends) but looks like JSON: send it with Content-Type: application/json");
            let value = form::to_object(&fields);
            form_text = value.to_string().into_bytes();
            Ok((vec![(&form_text[..], Ok(value))], Some((bytes, hint))))
        }
        Kind::Json => match body::split(body::Format::Json, bytes, max_events) {
            Ok(pieces) => Ok((
                pieces
                    .into_iter()
                    .map(|p| (p.raw, p.into_value()))
                    .collect(),
                None,
            )),
            Err(BodyError::Malformed(error)) => Err(error),
            Err(e) => return Err(e.into()),
        },
    };
    let (events, form) = match read {
        Ok(read) => read,
        Err(error) => {
            // What does not parse goes to the webhook's stream, if it has only one.
            let fixed = hook.fixed_stream();
            let reason = error.clone();
            filing.set_aside(fixed, bytes, Stage::Parse, reason, source, received_at);
            return Ok(Some(error));
        }
    };
    let route = Route::Webhook(ByWebhook {
        hook,
        headers: delivery.headers,
        verified,
        batch: bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'['),
        form,
    });
    let events = events
        .into_iter()
        .enumerate()
        .map(|(index, (raw, value))| Event::parsed(index, raw, value));
    filing.file(&route, source, received_at, events);
    Ok(None)
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
    delivery: &Delivery<'_>,
) -> Result<Option<Vec<(String, String)>>, ApiError> {
    let (headers, bytes) = (delivery.headers, delivery.bytes);
    match delivery.media.as_str() {
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
