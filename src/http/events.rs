//! `POST /v1/streams/{stream}/events`: reads the body within its time and memory
//! budgets, decodes it, hands it to [`crate::ingest`] once, and answers with the outcome
//! per event (after the commit with `ack=commit`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::auth::Denied;
use crate::event::Stage;
use crate::ingest::body::{self, BodyError};
use crate::ingest::budget::{decode_estimate, BudgetError, Reservation};
use crate::ingest::filing::{Event, EventError, Filing, Route};
use crate::ingest::{Handing, Ingest, Receipt, Until};
use crate::internal_events::EventsRejected;
use crate::pipeline::queue::QueueError;
use crate::telemetry;

/// Most per-event errors listed in one response; the rest are counted in `errors_omitted`.
const MAX_REPORTED_ERRORS: usize = 1000;

/// `?ack=`: when the response is sent.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the events are committed or dead-lettered (200).
    #[default]
    Commit,
    /// Once the events are queued (202).
    Accepted,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IngestParams {
    /// `commit` (default): answer 200 once the events are committed or dead-lettered;
    /// `accepted`: answer 202 once they are queued.
    #[serde(default)]
    #[param(inline)]
    ack: AckMode,
}

/// The JSON body of an ingest request (for the OpenAPI document; the handler reads the
/// bytes itself to dead-letter what does not parse).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum EventsBody {
    /// One event.
    One(std::collections::HashMap<String, serde_json::Value>),
    /// Several events, each an object.
    Many(Vec<std::collections::HashMap<String, serde_json::Value>>),
}

/// Headers of an ingest request (for the OpenAPI document).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IngestHeaders {
    /// `gzip` when the body is gzip-compressed.
    #[param(rename = "Content-Encoding", required = false, inline)]
    content_encoding: ContentEncoding,
}

/// `Content-Encoding` values Sluice decodes.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ContentEncoding {
    Identity,
    Gzip,
}

/// The answer to an ingest request.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResponse {
    /// Events stored in the stream's table (or queued, with `ack=accepted`).
    pub accepted: usize,
    /// Events stored in `sluice_dead_letters` instead.
    pub dead_lettered: usize,
    /// Why each dead-lettered event was refused, by index.
    pub errors: Vec<EventError>,
    /// Errors left out of `errors` to bound the response size.
    #[serde(skip_serializing_if = "is_zero")]
    pub errors_omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The failures of reading and storing a body, the same for events and webhooks.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its OpenAPI description is used
pub enum BodyFailures {
    /// The body did not arrive within `http.body_read_timeout`; nothing was accepted.
    #[response(status = 408)]
    SlowBody(ErrorBody),
    /// The body, once decompressed, or its number of events is above the limits.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Unsupported `Content-Type` or `Content-Encoding`.
    #[response(status = 415)]
    Unsupported(ErrorBody),
    /// Events could not be stored, not even as dead letters; nothing is acknowledged, see the logs.
    #[response(status = 500)]
    NotStored(ErrorBody),
}

/// `POST /v1/streams/{stream}/events`: one JSON object, a JSON array of objects, or
/// NDJSON, optionally gzip-compressed.
#[utoipa::path(
    post,
    path = "/v1/streams/{stream}/events",
    tag = "events",
    security((), ("ingest_token" = [])),
    params(
        ("stream" = String, Path, description = "The stream: a file `schemas/<stream>.json`."),
        IngestParams,
        IngestHeaders,
    ),
    request_body(
        description = "One event object, a JSON array of event objects, or NDJSON (one object per line). Each event is validated against the stream's schema; invalid ones are dead-lettered and reported by index.",
        content(
            (EventsBody = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
        ),
    ),
    responses(
        (status = 200, description = "`ack=commit`: every event is committed or dead-lettered.", body = IngestResponse),
        BodyFailures,
        (status = 202, description = "`ack=accepted`: every event is queued (invalid ones dead-lettered).", body = IngestResponse),
        (status = 400, description = "The body is not JSON (it was dead-lettered whole), or the query is invalid.", body = ErrorBody),
        (status = 401, description = "Ingest tokens are configured (`[auth]`) and the request carries none, or an unknown one; nothing was accepted.", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "The token does not grant this stream; nothing was accepted.", body = ErrorBody),
        (status = 404, description = "Unknown stream (the body was dead-lettered, stage `route`).", body = ErrorBody),
        (status = 503, description = "The stream's queue stayed full, or Sluice is shutting down; nothing was accepted, retry.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait (sent when the queue is full)."))),
    )
)]
pub async fn ingest_events(
    State(state): State<AppState>,
    Path(stream_name): Path<String>,
    params: Result<Query<IngestParams>, axum::extract::rejection::QueryRejection>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ack = match params {
        Ok(Query(p)) => p.ack,
        Err(e) => {
            return Err(ApiError::BadRequest {
                error: format!(
                    "invalid query: {}; use ?ack=commit (default) or ?ack=accepted",
                    e.body_text()
                ),
                dead_lettered: 0,
            })
        }
    };
    let token = authorize(&state, &headers, &stream_name, peer)?;
    if state.ingest.is_recovering() {
        return Err(ApiError::Recovering);
    }
    let format = body::format_of(&headers)?;
    let gzip = body::is_gzip(&headers)?;
    let ingest = &state.ingest;
    // Memory this request holds while it is read, decompressed and parsed; given back
    // once its rows are queued (the queue's budget counts them from there).
    let mut held = Reservation::default();
    let bytes = read_decoded(&state, body, gzip, &mut held).await?;
    // Where each event came from, as its dead letter records it: peer and token.
    let source: Arc<str> = crate::source::http(peer, token.as_deref());
    let mut filing = ingest.filing().with_token(token);
    let read_as = decode(
        &state,
        &stream_name,
        format,
        &bytes,
        source,
        &mut filing,
        &mut held,
    )
    .await?;

    let answer = queue_and_answer(&state, filing, ack, (bytes, held)).await?;
    match read_as {
        ReadAs::UnknownStream => Err(ApiError::UnknownStream {
            stream: stream_name,
            known: ingest.registry.names(),
        }),
        ReadAs::Malformed(error) => Err(ApiError::BadRequest {
            error,
            dead_lettered: 1,
        }),
        ReadAs::Events => Ok(answer),
    }
}

/// Queues a request's filed events once, whatever they turned out to be, all or nothing;
/// lets go of its body and memory (`held`) once they are queued (the queues count them
/// from there); answers once they are committed (`ack=commit`) or queued.
pub(super) async fn queue_and_answer(
    state: &AppState,
    mut filing: Filing,
    ack: AckMode,
    held: (Vec<u8>, Reservation),
) -> Result<Response, ApiError> {
    let total = filing.len();
    let errors = filing.take_errors();
    let pending = enqueue(&state.ingest, filing, ack, state.http.enqueue_timeout).await?;
    drop(held);
    let rejected = acknowledged(pending, ack).await?;
    Ok(respond(total, errors, rejected, ack))
}

/// The answer once a request's events are queued (`ack=accepted`) or committed: counts,
/// and the errors of the dead-lettered events by index (write-stage ones included).
pub(super) fn respond(
    total: usize,
    mut errors: Vec<EventError>,
    rejected: Vec<crate::pipeline::queue::Rejected>,
    ack: AckMode,
) -> Response {
    for r in rejected {
        errors.push(EventError::whole(r.index, Stage::Write, r.error));
    }
    errors.sort_by_key(|e| e.index);
    // An event is counted once, whatever number of errors it has.
    let mut indices: Vec<usize> = errors.iter().map(|e| e.index).collect();
    indices.dedup();
    let dead_lettered = indices.len();
    let errors_omitted = errors.len().saturating_sub(MAX_REPORTED_ERRORS);
    errors.truncate(MAX_REPORTED_ERRORS);
    let response = IngestResponse {
        accepted: total.saturating_sub(dead_lettered),
        dead_lettered,
        errors,
        errors_omitted,
    };
    let status = match ack {
        AckMode::Commit => StatusCode::OK,
        AckMode::Accepted => StatusCode::ACCEPTED,
    };
    (status, Json(response)).into_response()
}

/// With `[auth]`: the name of the request's token, if it grants `stream`; else the 401
/// or 403 (counted and logged in summary). Without `[auth]`: `None`, ingest is open.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    stream: &str,
    peer: SocketAddr,
) -> Result<Option<Arc<str>>, ApiError> {
    let Some(tokens) = &state.access.ingest else {
        return Ok(None);
    };
    match tokens.authorize(headers, stream) {
        Ok(name) => Ok(Some(name)),
        Err(Denied::Unauthenticated) => {
            state.access.refused("ingest", 401, None, &peer.to_string());
            Err(ApiError::Unauthenticated(
                "send an ingest token: Authorization: Bearer <token> (a missing or unknown token); nothing was accepted".into(),
            ))
        }
        Err(Denied::Forbidden(name)) => {
            state
                .access
                .refused("ingest", 403, Some(name.clone()), &peer.to_string());
            Err(ApiError::Forbidden(format!(
                "token {name} does not grant stream `{stream}`; nothing was accepted"
            )))
        }
    }
}

/// How a request body was read: as events, or set aside whole.
enum ReadAs {
    /// Its events, each a row or a dead letter.
    Events,
    /// The stream is unknown: the body is one `route` dead letter (404).
    UnknownStream,
    /// The body is not what its headers say: one `parse` dead letter (400).
    Malformed(String),
}

/// Files a request body: its events, each a row or a dead letter, or the whole body as
/// one dead letter when the stream is unknown or the body does not parse. Reserves the
/// memory the parsed values take before parsing.
async fn decode(
    state: &AppState,
    stream_name: &str,
    format: body::Format,
    body: &[u8],
    source: Arc<str>,
    filing: &mut Filing,
    held: &mut Reservation,
) -> Result<ReadAs, ApiError> {
    let received_at = chrono::Utc::now();
    let Some(stream) = state.ingest.registry.get(stream_name) else {
        let error = format!("unknown stream `{stream_name}`");
        filing.set_aside(None, body, Stage::Route, error, &source, received_at);
        return Ok(ReadAs::UnknownStream);
    };
    state
        .ingest
        .memory()
        .reserve(
            held,
            decode_estimate(body),
            Some(state.http.enqueue_timeout),
        )
        .await
        .map_err(budget_error)?;
    if format == body::Format::Csv {
        let rows = match crate::ingest::csv_events::rows(stream, body) {
            Ok(rows) => rows,
            Err(error) => {
                filing.set_aside(
                    Some(stream),
                    body,
                    Stage::Parse,
                    error.clone(),
                    &source,
                    received_at,
                );
                return Ok(ReadAs::Malformed(error));
            }
        };
        let max = state.http.max_events_per_request;
        if rows.len() > max {
            return Err(BodyError::TooLarge(format!(
                "the request holds {} events, more than http.max_events_per_request ({max}); split it into smaller requests",
                rows.len()
            ))
            .into());
        }
        crate::ingest::csv_events::file(filing, stream, &source, received_at, &rows);
        return Ok(ReadAs::Events);
    }
    let pieces = match body::split(format, body, state.http.max_events_per_request) {
        Ok(pieces) => pieces,
        Err(BodyError::Malformed(error)) => {
            let reason = error.clone();
            filing.set_aside(
                Some(stream),
                body,
                Stage::Parse,
                reason,
                &source,
                received_at,
            );
            return Ok(ReadAs::Malformed(error));
        }
        Err(e) => return Err(e.into()),
    };
    let events = pieces
        .into_iter()
        .enumerate()
        .map(|(index, piece)| match piece.value {
            Some(value) => Event::parsed(index, piece.raw, value),
            None => Event::text(index, piece.raw),
        });
    filing.file(&Route::to(stream), &source, received_at, events);
    Ok(ReadAs::Events)
}

/// The body as the client meant it: read within `http.body_read_timeout`, then
/// gunzipped if `gzip`, the memory of each step reserved in `held`.
pub(super) async fn read_decoded(
    state: &AppState,
    body: Body,
    gzip: bool,
    held: &mut Reservation,
) -> Result<Vec<u8>, ApiError> {
    let read = state.http.body_read_timeout;
    let bytes = tokio::time::timeout(read, read_body(state, body, held))
        .await
        .map_err(|_| ApiError::BodyTimeout(read))??;
    if gzip {
        return gunzip(state, &bytes, held).await;
    }
    Ok(bytes)
}

/// Reads the body, reserving memory for each chunk before keeping it; refuses more than
/// `http.max_body_bytes`.
async fn read_body(
    state: &AppState,
    body: Body,
    held: &mut Reservation,
) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let limit = state.http.max_body_bytes;
    // Sized from Content-Length when the client sent one, so the body is copied once.
    let expected = axum::body::HttpBody::size_hint(&body).exact().unwrap_or(0);
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(0).min(limit));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest {
            error: format!("could not read the request body: {e}"),
            dead_lettered: 0,
        })?;
        if out.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(format!(
                "the body is larger than http.max_body_bytes ({limit} bytes); send smaller requests"
            )));
        }
        // A growing vector may hold twice what it uses.
        state
            .ingest
            .memory()
            .reserve(held, 2 * chunk.len(), Some(state.http.enqueue_timeout))
            .await
            .map_err(budget_error)?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Decompresses a gzip body chunk by chunk, reserving memory for each before keeping it,
/// so a small body that inflates to megabytes waits for room or is refused first.
async fn gunzip(
    state: &AppState,
    compressed: &[u8],
    held: &mut Reservation,
) -> Result<Vec<u8>, ApiError> {
    let mut gz = body::Gunzip::new(compressed, state.http.max_body_bytes);
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = gz.read(&mut chunk, out.len())?;
        if n == 0 {
            return Ok(out);
        }
        state
            .ingest
            .memory()
            .reserve(held, 2 * n, Some(state.http.enqueue_timeout))
            .await
            .map_err(budget_error)?;
        out.extend_from_slice(&chunk[..n]);
    }
}

/// The answer when the memory budget for requests in flight has no room.
pub(super) fn budget_error(e: BudgetError) -> ApiError {
    match e {
        BudgetError::TooLarge { needed, budget } => ApiError::TooLarge(format!(
            "decoding this body would take about {} MiB of memory, more than max_inflight_bytes ({} MiB); send it in smaller requests",
            needed.div_ceil(1024 * 1024),
            budget / (1024 * 1024)
        )),
        BudgetError::Busy => ApiError::Busy,
    }
}

/// Queues a request's events (by stream: one group, or several for a routed webhook)
/// within the enqueue timeout, all or nothing; with `ack=commit`, returns what resolves
/// once they are committed.
pub(super) async fn enqueue(
    ingest: &Ingest,
    filing: Filing,
    ack: AckMode,
    timeout: Duration,
) -> Result<Receipt, ApiError> {
    // `ack=accepted` promises the events survive a crash: with a spool, on disk first.
    let until = match ack {
        AckMode::Commit => Until::Committed,
        AckMode::Accepted => Until::Durable,
    };
    // Counted by known streams only, never by what a client typed.
    let sizes: Vec<(Option<Arc<crate::schema::Stream>>, usize)> = filing
        .groups()
        .map(|(s, r)| (s.cloned(), r.rows.len() + r.letters.len()))
        .collect();
    let pending = match tokio::time::timeout(timeout, ingest.submit(filing, until, Handing::Whole)).await {
        Err(_) => {
            for (stream, count) in &sizes {
                let stream = stream.as_ref().map_or(telemetry::NO_STREAM, |s| s.name.as_str());
                let rejected = EventsRejected { stream, count: *count };
                rejected.emit(ingest.stats(stream).map(|s| &**s));
            }
            let streams = sizes
                .iter()
                .filter_map(|(s, _)| s.as_ref().map(|s| s.name.clone()))
                .collect();
            return Err(ApiError::QueueFull { streams });
        }
        Ok(Err(QueueError::TooLarge { events, bytes, max_events, max_bytes })) => {
            return Err(ApiError::TooLarge(format!(
                "the request holds {events} events ({bytes} bytes) for a queue that holds at most {max_events} events and {max_bytes} bytes; send smaller requests"
            )))
        }
        Ok(Err(QueueError::Closed)) => return Err(ApiError::ShuttingDown),
        Ok(Err(QueueError::Spool(e))) => return Err(ApiError::SpoolRefused(e.to_string())),
        Ok(Ok(p)) => p,
    };
    Ok(pending)
}

/// Waits for what `ack` promises of what [`enqueue`] queued: the commit (`ack=commit`),
/// or with `ack=accepted` the spool's fsync only; returns the write-stage rejections.
pub(super) async fn acknowledged(
    pending: Receipt,
    ack: AckMode,
) -> Result<Vec<crate::pipeline::queue::Rejected>, ApiError> {
    if ack == AckMode::Accepted {
        // Queued; with a spool, also on disk before the 202.
        pending.durable().await;
        return Ok(Vec::new());
    }
    let outcome = pending
        .committed()
        .await
        .map_err(|_| ApiError::StoppedBeforeCommit)?;
    if let Some(first) = outcome.lost.first() {
        return Err(ApiError::NotStored {
            events: outcome.lost.len(),
            reason: first.error.clone(),
        });
    }
    Ok(outcome.rejected)
}
