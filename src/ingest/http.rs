//! The HTTP API (DESIGN.md "Inputs / HTTP"): event ingestion, health, readiness and
//! stream status. Handlers parse and validate, then hand events to the queues; they never
//! write to the database themselves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::body::{self, BodyError};
use super::{Batch, EventError, Ingest, LimitedListener};
use crate::config::HttpConfig;
use crate::event::Stage;
use crate::pipeline::queue::QueueError;
use crate::sink::Sink;
use crate::telemetry;

/// Most per-event errors listed in one response; the rest are counted in `errors_omitted`.
const MAX_REPORTED_ERRORS: usize = 1000;
/// `Retry-After` sent with a 503, in seconds.
const RETRY_AFTER_SECS: u64 = 1;
/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub ingest: Arc<Ingest>,
    pub sink: Arc<dyn Sink>,
    pub http: Arc<HttpConfig>,
}

/// Serves `app` on `listener` until `stop`, then lets in-flight requests finish.
///
/// A connection-limit permit is taken before `accept()` (so the limit is backpressure,
/// not an error), and a client must send its request headers within
/// `header_read_timeout`, so slow or stalled clients cannot hold connections forever.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: Arc<HttpConfig>,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let listener = LimitedListener::new(listener, config.max_connections, "HTTP");
    while let Some((socket, peer, permit)) = listener.accept(&stop).await {
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), req)
            });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(socket), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
}

/// The HTTP API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/streams/{stream}/events", post(ingest_events))
        .route("/v1/streams", get(list_streams))
        .route("/v1/streams/{stream}", get(get_stream))
        .route("/v1/dead-letters", get(list_dead_letters))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::NotFound(
                "no such endpoint; events go to POST /v1/streams/{stream}/events".into(),
            )
        })
        .layer(axum::middleware::from_fn(record_request))
        .with_state(state)
}

/// An error answered to an HTTP client, as JSON `{"error": "..."}` with its status.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the body is not JSON (it was dead-lettered whole), or a bad query parameter.
    BadRequest { error: String, dead_lettered: usize },
    /// 404: unknown stream (the body was dead-lettered, stage `route`) or endpoint.
    UnknownStream { stream: String, known: Vec<String> },
    /// 404: no such endpoint.
    NotFound(String),
    /// 413: body, decompressed body or event count above the configured limits.
    TooLarge(String),
    /// 415: unsupported `Content-Type` or `Content-Encoding`.
    UnsupportedMediaType(String),
    /// 503 + `Retry-After`: the queue stayed full for `enqueue_timeout`; nothing was accepted.
    QueueFull { stream: String },
    /// 503: Sluice is shutting down and accepts nothing more.
    ShuttingDown,
    /// 503: the database did not answer a read (the details are logged, not sent).
    DatabaseUnavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest {
                error,
                dead_lettered,
            } => (
                StatusCode::BAD_REQUEST,
                json!({"error": error, "dead_lettered": dead_lettered}),
            ),
            ApiError::UnknownStream { stream, known } => (
                StatusCode::NOT_FOUND,
                json!({"error": format!("unknown stream `{stream}`: there is no schemas/{stream}.json"), "streams": known, "dead_lettered": 1}),
            ),
            ApiError::NotFound(error) => (StatusCode::NOT_FOUND, json!({ "error": error })),
            ApiError::TooLarge(error) => (StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": error })),
            ApiError::UnsupportedMediaType(error) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({ "error": error }),
            ),
            ApiError::QueueFull { stream } => {
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "error": format!("the queue of stream `{stream}` is full; nothing from this request was accepted: retry after {RETRY_AFTER_SECS} s"),
                        "retry_after_seconds": RETRY_AFTER_SECS,
                    })),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                return r;
            }
            ApiError::DatabaseUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the database did not answer; retry later (see /readyz and the logs)"}),
            ),
            ApiError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "Sluice is shutting down and accepts no more events; retry against another instance or later"}),
            ),
        };
        (status, Json(body)).into_response()
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
            BodyError::TooLarge(m) => ApiError::TooLarge(m),
            BodyError::Malformed(m) => ApiError::BadRequest {
                error: m,
                dead_lettered: 1,
            },
        }
    }
}

/// `?ack=`: when the response is sent.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the events are committed or dead-lettered (200).
    #[default]
    Commit,
    /// Once the events are queued (202).
    Accepted,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestParams {
    #[serde(default)]
    ack: AckMode,
}

/// The answer to an ingest request.
#[derive(Debug, Serialize)]
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

async fn ingest_events(
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
    let limit = state.http.max_body_bytes;
    let format = body::format_of(&headers)?;
    let gzip = body::is_gzip(&headers)?;
    let bytes = to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            ApiError::TooLarge(format!("the body is larger than http.max_body_bytes ({limit} bytes); send smaller requests"))
        } else {
            ApiError::BadRequest {
                error: format!("could not read the request body: {e}"),
                dead_lettered: 0,
            }
        }
    })?;
    let decompressed;
    let body: &[u8] = if gzip {
        decompressed = body::gunzip(&bytes, limit)?;
        &decompressed
    } else {
        &bytes
    };
    let source: Arc<str> = format!("http {peer}").into();
    let received_at = chrono::Utc::now();
    let ingest = &state.ingest;
    let timeout = state.http.enqueue_timeout;

    let Some(stream) = ingest.registry.get(&stream_name).cloned() else {
        let mut batch = Batch::default();
        let error = format!("unknown stream `{stream_name}`");
        batch.reject(
            None,
            body,
            EventError {
                index: 0,
                stage: Stage::Route,
                error,
                pointer: None,
            },
            &source,
            received_at,
        );
        submit(ingest, None, batch, ack, timeout, &stream_name).await?;
        return Err(ApiError::UnknownStream {
            stream: stream_name,
            known: ingest.registry.names(),
        });
    };

    let pieces = match body::split(format, body, state.http.max_events_per_request) {
        Ok(p) => p,
        Err(BodyError::Malformed(error)) => {
            let mut batch = Batch::default();
            let ev = EventError {
                index: 0,
                stage: Stage::Parse,
                error: error.clone(),
                pointer: None,
            };
            batch.reject(Some(&stream.name), body, ev, &source, received_at);
            submit(
                ingest,
                Some(&stream.name),
                batch,
                ack,
                timeout,
                &stream_name,
            )
            .await?;
            return Err(ApiError::BadRequest {
                error,
                dead_lettered: 1,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut batch = Batch::default();
    for (index, piece) in pieces.into_iter().enumerate() {
        match piece.value {
            // The raw text of a parsed piece is valid UTF-8.
            Ok(value) => batch.add(
                &stream,
                std::str::from_utf8(piece.raw).unwrap_or_default(),
                value,
                index,
                &source,
                received_at,
            ),
            Err(error) => batch.reject(
                Some(&stream.name),
                piece.raw,
                EventError {
                    index,
                    stage: Stage::Parse,
                    error,
                    pointer: None,
                },
                &source,
                received_at,
            ),
        }
    }
    let total = batch.rows.len() + batch.letters.len();
    let mut errors = std::mem::take(&mut batch.errors);
    let outcome = submit(
        ingest,
        Some(&stream.name),
        batch,
        ack,
        timeout,
        &stream_name,
    )
    .await?;
    for r in outcome {
        errors.push(EventError {
            index: r.index,
            stage: Stage::Write,
            error: r.error,
            pointer: None,
        });
    }
    errors.sort_by_key(|e| e.index);
    let dead_lettered = errors.len();
    let errors_omitted = errors.len().saturating_sub(MAX_REPORTED_ERRORS);
    errors.truncate(MAX_REPORTED_ERRORS);
    let response = IngestResponse {
        accepted: total - dead_lettered,
        dead_lettered,
        errors,
        errors_omitted,
    };
    let status = match ack {
        AckMode::Commit => StatusCode::OK,
        AckMode::Accepted => StatusCode::ACCEPTED,
    };
    Ok((status, Json(response)).into_response())
}

/// Queues `batch` within the enqueue timeout and, with `ack=commit`, waits for the
/// commit; returns the write-stage rejections.
async fn submit(
    ingest: &Ingest,
    stream: Option<&str>,
    batch: Batch,
    ack: AckMode,
    timeout: Duration,
    stream_name: &str,
) -> Result<Vec<crate::pipeline::queue::Rejected>, ApiError> {
    let wait_for_commit = ack == AckMode::Commit;
    let events = batch.rows.len() + batch.letters.len();
    let pending = match tokio::time::timeout(timeout, ingest.submit(stream, batch, wait_for_commit)).await {
        Err(_) => {
            telemetry::events_rejected(stream_name, events);
            if let Some(stats) = ingest.stats(stream_name) {
                stats.rejected(events);
            }
            return Err(ApiError::QueueFull { stream: stream_name.to_owned() });
        }
        Ok(Err(QueueError::TooLarge { events, bytes, max_events, max_bytes })) => {
            return Err(ApiError::TooLarge(format!(
                "the request holds {events} events ({bytes} bytes) but the queue of stream `{stream_name}` holds at most {max_events} events and {max_bytes} bytes; send smaller requests"
            )))
        }
        Ok(Err(QueueError::Closed)) => return Err(ApiError::ShuttingDown),
        Ok(Ok(p)) => p,
    };
    if !wait_for_commit {
        return Ok(Vec::new());
    }
    pending
        .committed()
        .await
        .map(|o| o.rejected)
        .map_err(|_| ApiError::ShuttingDown)
}

/// Counts every request by status, with its duration.
async fn record_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    telemetry::http_request(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    for stream in state.ingest.registry.iter() {
        if let Some(q) = state.ingest.queue(&stream.name) {
            let (events, bytes) = q.depth();
            telemetry::queue_depth(&stream.name, events, bytes);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::render(),
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let db = match tokio::time::timeout(READY_TIMEOUT, state.sink.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", READY_TIMEOUT.as_secs())),
    };
    let full: Vec<String> = state
        .ingest
        .registry
        .iter()
        .filter(|s| state.ingest.queue(&s.name).is_some_and(|q| q.is_full()))
        .map(|s| s.name.clone())
        .collect();
    let ready = db.is_ok() && full.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "unready" },
        "database": match &db { Ok(()) => "reachable".to_owned(), Err(e) => format!("unreachable: {e}") },
        "saturated_streams": full,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// One stream's status: where it writes, its queue, and its counters since start.
fn stream_status(ingest: &Ingest, s: &crate::schema::Stream) -> serde_json::Value {
    let (events, bytes) = ingest.queue(&s.name).map(|q| q.depth()).unwrap_or_default();
    let stats = ingest
        .stats(&s.name)
        .map(|st| st.snapshot(chrono::Utc::now()))
        .unwrap_or_default();
    json!({
        "stream": s.name,
        "table": s.table,
        "schema_file": s.schema_file.display().to_string(),
        "schema_id": s.schema_id,
        "queue_events": events,
        "queue_bytes": bytes,
        "queue_max_events": s.settings.queue_max_events,
        "queue_max_bytes": s.settings.queue_max_bytes,
        "received": stats["received"],
        "written": stats["written"],
        "dead_lettered": stats["dead_lettered"],
        "rejected": stats["rejected"],
        "last_write_at": stats["last_write_at"],
        "last_error": stats["last_error"],
        "written_per_second_1m": stats["written_per_second_1m"],
    })
}

/// Query of `GET /v1/dead-letters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterParams {
    stream: Option<String>,
    stage: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

/// Most dead letters in one page.
const MAX_DEAD_LETTER_PAGE: i64 = 1000;

/// `GET /v1/dead-letters?stream=&stage=&limit=&before=`: newest first; pass the answer's
/// `next_before` as `before` for the next page.
async fn list_dead_letters(
    State(state): State<AppState>,
    params: Result<Query<DeadLetterParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bad = |error: String| ApiError::BadRequest {
        error,
        dead_lettered: 0,
    };
    let Query(p) = params.map_err(|e| {
        bad(format!("invalid query: {}; use stream, stage, limit (1-{MAX_DEAD_LETTER_PAGE}) and before (an id)", e.body_text()))
    })?;
    if let Some(stage) = &p.stage {
        if !["parse", "route", "validate", "write"].contains(&stage.as_str()) {
            return Err(bad(format!(
                "unknown stage `{stage}`: use parse, route, validate or write"
            )));
        }
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=MAX_DEAD_LETTER_PAGE).contains(&limit) {
        return Err(bad(format!(
            "limit must be between 1 and {MAX_DEAD_LETTER_PAGE}"
        )));
    }
    let query = crate::sink::DeadLetterQuery {
        before: p.before,
        stream: p.stream,
        stage: p.stage,
        limit,
    };
    let letters = state.sink.list_dead_letters(&query).await.map_err(|e| {
        tracing::warn!(error = %e, "Cannot list dead letters.");
        ApiError::DatabaseUnavailable
    })?;
    let next_before = (letters.len() as i64 == limit)
        .then(|| letters.last().map(|l| l.id))
        .flatten();
    Ok(Json(
        json!({ "dead_letters": letters, "next_before": next_before }),
    ))
}

/// `GET /v1/streams`: every stream's status.
async fn list_streams(State(state): State<AppState>) -> Json<serde_json::Value> {
    let streams: Vec<serde_json::Value> = state
        .ingest
        .registry
        .iter()
        .map(|s| stream_status(&state.ingest, s))
        .collect();
    Json(json!({ "streams": streams }))
}

/// `GET /v1/streams/{stream}`: one stream's status.
async fn get_stream(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state.ingest.registry.get(&name) {
        Some(s) => Ok(Json(stream_status(&state.ingest, s))),
        None => Err(ApiError::NotFound(format!(
            "unknown stream `{name}`; the streams are {:?}",
            state.ingest.registry.names()
        ))),
    }
}
