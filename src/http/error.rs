//! The one error type of the HTTP API: each variant names its status, and its answer is
//! JSON `{"error": "..."}` that says what to change. Database details are logged, never
//! sent to clients.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ingest::body::BodyError;

/// `Retry-After` sent with a 503, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The JSON body of every error answer.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what to change.
    pub error: String,
    /// Events of the request stored in `sluice_dead_letters` (400, 404 on ingest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<usize>,
    /// The known streams (404 for an unknown stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<Vec<String>>,
    /// Seconds to wait before retrying (503 on a full queue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

impl ErrorBody {
    fn new(error: impl Into<String>) -> Self {
        ErrorBody {
            error: error.into(),
            ..ErrorBody::default()
        }
    }
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
    /// 409: the request conflicts with what is running (a job).
    Conflict(String),
    /// 401 + `WWW-Authenticate: Bearer`: no bearer token, or not a valid one.
    Unauthenticated(String),
    /// 403: a valid token that does not grant this.
    Forbidden(String),
    /// 401: a webhook request failed verification (nothing of it was stored). The
    /// reason is short and never names a secret; `challenge` is the `WWW-Authenticate`
    /// value for the schemes that use HTTP authentication.
    Unauthorized {
        reason: &'static str,
        challenge: Option<&'static str>,
    },
    /// 408: the body did not arrive within `http.body_read_timeout`.
    BodyTimeout(Duration),
    /// 413: body, decompressed body or event count above the configured limits.
    TooLarge(String),
    /// 415: unsupported `Content-Type` or `Content-Encoding`.
    UnsupportedMediaType(String),
    /// 503 + `Retry-After`: a queue stayed full for `enqueue_timeout`; nothing was
    /// accepted. The streams whose queues the request needed (none: the dead-letter queue).
    QueueFull { streams: Vec<String> },
    /// 503 + `Retry-After`: requests in flight hold the whole memory budget
    /// (`max_inflight_bytes`) and none freed room within `enqueue_timeout`.
    Busy,
    /// 503: Sluice is shutting down and accepts nothing more.
    ShuttingDown,
    /// 503 + `Retry-After`: the spool could not take the events (its disk budget or the
    /// disk is full); nothing was accepted.
    SpoolRefused(String),
    /// 503 + `Retry-After`: the spool's events from before a restart are being written.
    Recovering,
    /// 503: the events were queued, but Sluice stopped before their commit was known.
    StoppedBeforeCommit,
    /// 503: the database did not answer a read (the details are logged, not sent).
    DatabaseUnavailable,
    /// 500: the database refused events and their dead letters too; the request is not
    /// acknowledged (some of its events may be stored).
    NotStored { events: usize, reason: String },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest {
                error,
                dead_lettered,
            } => (
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    dead_lettered: Some(dead_lettered),
                    ..ErrorBody::new(error)
                },
            ),
            ApiError::UnknownStream { stream, known } => (
                StatusCode::NOT_FOUND,
                ErrorBody {
                    dead_lettered: Some(1),
                    streams: Some(known),
                    ..ErrorBody::new(format!(
                        "unknown stream `{stream}`: there is no schemas/{stream}.json"
                    ))
                },
            ),
            ApiError::NotFound(error) => (StatusCode::NOT_FOUND, ErrorBody::new(error)),
            ApiError::Conflict(error) => (StatusCode::CONFLICT, ErrorBody::new(error)),
            ApiError::Unauthenticated(error) => {
                let mut r = (StatusCode::UNAUTHORIZED, Json(ErrorBody::new(error))).into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
            ApiError::Forbidden(error) => (StatusCode::FORBIDDEN, ErrorBody::new(error)),
            ApiError::Unauthorized { reason, challenge } => {
                let body = ErrorBody::new(format!("{reason}; nothing was stored"));
                let mut r = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
                if let Some(c) = challenge {
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
                }
                return r;
            }
            ApiError::BodyTimeout(limit) => {
                let body = ErrorBody::new(format!(
                    "the request body did not arrive within http.body_read_timeout ({} s); nothing was accepted: send it faster or in smaller requests",
                    limit.as_secs_f64()
                ));
                let mut r = (StatusCode::REQUEST_TIMEOUT, Json(body)).into_response();
                // The rest of the body may still come; do not read it as a next request.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            ApiError::TooLarge(error) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorBody::new(error)),
            ApiError::UnsupportedMediaType(error) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorBody::new(error))
            }
            ApiError::QueueFull { streams } => {
                return retry_later(if streams.is_empty() {
                    "the dead-letter queue is full".to_owned()
                } else {
                    format!("the queue of stream `{}` is full", streams.join("` or `"))
                })
            }
            ApiError::SpoolRefused(why) => return retry_later(why),
            ApiError::Recovering => {
                return retry_later(
                    "Sluice is writing the events its spool kept from before a restart".to_owned(),
                )
            }
            ApiError::Busy => {
                return retry_later(
                    "Sluice is decoding as much input as its memory budget allows (max_inflight_bytes)"
                        .to_owned(),
                )
            }
            ApiError::DatabaseUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new(
                    "the database did not answer; retry later (see /readyz and the logs)",
                ),
            ),
            ApiError::NotStored { events, reason } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorBody::new(format!(
                    "{events} event(s) of this request could not be stored, not even as dead letters (the database said: {reason}); the request is not acknowledged: retry it, and see Sluice's logs"
                )),
            ),
            ApiError::StoppedBeforeCommit => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new("Sluice stopped before this request's events were known to be committed; they may or may not be stored: send it again (with the stream's id_field set, a resent event is stored once)"),
            ),
            ApiError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new("Sluice is shutting down and accepts no more events; retry against another instance or later"),
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

/// 503 with `Retry-After`: `why`, and that nothing from the request was accepted.
fn retry_later(why: String) -> Response {
    let body = ErrorBody {
        retry_after_seconds: Some(RETRY_AFTER_SECS),
        ..ErrorBody::new(format!(
            "{why}; nothing from this request was accepted: retry after {RETRY_AFTER_SECS} s"
        ))
    };
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r
}
