//! The operator's side of the HTTP API: metrics, health, readiness, stream status and
//! dead letters. Served on the ingest port, or on its own `admin.listen` address so the
//! ingest port can be exposed without them.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, ErrorBody};
use crate::ingest::Ingest;
use crate::sink::ledger::Page;
use crate::sink::ListedDeadLetter;
use crate::stats::Snapshot;
use crate::telemetry;

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most dead letters in one page.
const MAX_DEAD_LETTER_PAGE: i64 = 1000;
/// Dead letters in a page when `limit` is absent.
const DEFAULT_DEAD_LETTER_PAGE: i64 = 50;
/// A page stops once its payloads and errors reach this many bytes (it holds at least
/// one dead letter); `next_before` then continues after the last one.
const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Longest wait for one read of dead letters (a database that drops packets never
/// answers; the client gets 503 instead of a hanging request).
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Dead letters read from the database per query while a page is built.
const READ_PAGE: i64 = 50;

/// Every admin endpoint's answer to a request without the admin token.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its OpenAPI description is used
pub enum AdminUnauthorized {
    /// An admin token is configured (`[admin] token_env`) and the request does not carry it.
    #[response(
        status = 401,
        headers(("WWW-Authenticate" = String, description = "`Bearer`"))
    )]
    Unauthorized(ErrorBody),
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "Every metric in Prometheus text format 0.0.4 (see the README's \"Operating Sluice\").", body = String, content_type = "text/plain"),
        AdminUnauthorized,
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    for stream in state.ingest.registry.iter() {
        if let Some(q) = state.ingest.queue(&stream.name) {
            let (events, bytes) = q.depth();
            telemetry::queue_depth(&stream.name, events, bytes);
            let retrying = state
                .ingest
                .stats(&stream.name)
                .is_some_and(|s| s.is_retrying());
            telemetry::stream_state(&stream.name, q.is_full(), retrying);
        }
    }
    let pool = state.store.pool_usage();
    telemetry::db_pool(pool.in_use, pool.idle, pool.max);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::render(),
    )
        .into_response()
}

/// The answer of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process serves requests.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /healthz`: the process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Sluice is running.", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Whether Sluice can take events now.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadyState {
    Ready,
    Unready,
}

/// The answer of `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: ReadyState,
    /// `reachable`, or `unreachable: <reason>`.
    pub database: String,
    /// Streams whose queue is at its limit: their requests get 503, the others are
    /// served. Readiness fails only when every stream is saturated.
    pub saturated_streams: Vec<String>,
    /// True while the events the spool kept from before a restart are being written:
    /// new input waits until they are (readiness fails meanwhile).
    pub recovering_spool: bool,
    /// Streams whose writes are failing: `retrying` (a transient failure, retried; the
    /// database is away or locked) or `refusing` (the table refuses every row for a
    /// reason only an operator can fix; its rows are dead-lettered at stage `write`),
    /// each with the database's last message. Empty while every stream writes.
    pub failing_streams: Vec<FailingStream>,
}

/// A stream whose writes are failing, in `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailingStream {
    pub stream: String,
    /// `retrying` or `refusing`.
    pub write_state: crate::stats::WriteState,
    /// The database's last error for this stream.
    pub last_error: Option<String>,
}

/// `GET /readyz`: the database answers within 2 s (on a connection of its own), at
/// least one stream's queue has room, and the spool's recovery (if any) is done.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to take events.", body = Readiness),
        (status = 503, description = "The database does not answer, or every stream's queue is full.", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let db = match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", READY_TIMEOUT.as_secs())),
    };
    let saturated_streams: Vec<String> = state
        .ingest
        .registry
        .iter()
        .filter(|s| state.ingest.queue(&s.name).is_some_and(|q| q.is_full()))
        .map(|s| s.name.clone())
        .collect();
    // A stream whose queue is full (its table is locked, a column was dropped) is
    // reported here and in its status, and its own producers get 503; the instance
    // stays ready while it can serve any stream.
    let failing_streams: Vec<FailingStream> = state
        .ingest
        .registry
        .iter()
        .filter_map(|s| {
            let stats = state.ingest.stats(&s.name)?;
            let write_state = stats.write_state();
            (write_state != crate::stats::WriteState::Ok).then(|| FailingStream {
                stream: s.name.clone(),
                write_state,
                last_error: stats.last_error_message(),
            })
        })
        .collect();
    let streams = state.ingest.registry.iter().count();
    let recovering = state.ingest.is_recovering();
    let ready = db.is_ok() && saturated_streams.len() < streams && !recovering;
    let body = Readiness {
        status: if ready {
            ReadyState::Ready
        } else {
            ReadyState::Unready
        },
        database: match &db {
            Ok(()) => "reachable".to_owned(),
            Err(e) => format!("unreachable: {e}"),
        },
        saturated_streams,
        recovering_spool: recovering,
        failing_streams,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// One stream's status: where it writes, its queue, and its counters since start.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamStatus {
    /// The stream's name (its schema file's stem).
    pub stream: String,
    /// The table its rows go to.
    pub table: String,
    /// The JSON Schema file it validates against.
    pub schema_file: String,
    /// The schema's `$id`, if it has one.
    pub schema_id: Option<String>,
    /// Events accepted and not yet committed (batches in flight included).
    pub queue_events: usize,
    /// Memory those events hold, in bytes.
    pub queue_bytes: usize,
    /// The queue is at its limit: this stream's producers get 503 (HTTP) or wait (TCP).
    pub saturated: bool,
    pub queue_max_events: usize,
    pub queue_max_bytes: usize,
    #[serde(flatten)]
    pub counters: Snapshot,
}

fn stream_status(ingest: &Ingest, s: &crate::schema::Stream) -> StreamStatus {
    let (queue_events, queue_bytes) = ingest.queue(&s.name).map(|q| q.depth()).unwrap_or_default();
    StreamStatus {
        stream: s.name.clone(),
        table: s.table.clone(),
        schema_file: s.schema_file.display().to_string(),
        schema_id: s.schema_id.clone(),
        queue_events,
        queue_bytes,
        saturated: ingest.queue(&s.name).is_some_and(|q| q.is_full()),
        queue_max_events: s.settings.queue_max_events,
        queue_max_bytes: s.settings.queue_max_bytes,
        counters: ingest
            .stats(&s.name)
            .map(|st| st.snapshot(chrono::Utc::now()))
            .unwrap_or_default(),
    }
}

/// The answer of `GET /v1/streams`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamList {
    pub streams: Vec<StreamStatus>,
}

/// `GET /v1/streams`: every stream's status.
#[utoipa::path(
    get,
    path = "/v1/streams",
    tag = "operations",
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "Every stream, by name.", body = StreamList),
        AdminUnauthorized,
    )
)]
pub async fn list_streams(State(state): State<AppState>) -> Json<StreamList> {
    let streams = state
        .ingest
        .registry
        .iter()
        .map(|s| stream_status(&state.ingest, s))
        .collect();
    Json(StreamList { streams })
}

/// `GET /v1/streams/{stream}`: one stream's status.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}",
    tag = "operations",
    security((), ("admin_token" = [])),
    params(("stream" = String, Path, description = "A stream name: a file `schemas/<stream>.json`.")),
    responses(
        (status = 200, description = "The stream's status.", body = StreamStatus),
        (status = 404, description = "No such stream.", body = ErrorBody),
        AdminUnauthorized,
    )
)]
pub async fn get_stream(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<StreamStatus>, ApiError> {
    Ok(Json(stream_status(
        &state.ingest,
        known_stream(&state, &name)?,
    )))
}

/// A stream's JSON Schema and the DDL of its table.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamSchema {
    pub stream: String,
    pub table: String,
    /// The JSON Schema document the stream validates against, as loaded at start-up.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
    /// The `CREATE TABLE` statement Sluice runs for this stream on this database.
    pub ddl: String,
    /// Each property treated by `x-sluice-privacy`, and where its treated value is kept.
    pub privacy: Vec<PrivacyTreatment>,
}

/// One property treated by `x-sluice-privacy`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrivacyTreatment {
    /// Where in an event: a JSON pointer, `*` for every item of an array
    /// (`/items/*/card`).
    #[schema(example = "/email")]
    pub pointer: String,
    pub treatment: crate::privacy::Treatment,
    /// The column holding the treated value (for a nested property, the top-level
    /// property's JSON column); absent for a dropped top-level property.
    pub column: Option<String>,
}

/// `GET /v1/streams/{stream}/schema`: the stream's schema and its table's DDL.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}/schema",
    tag = "operations",
    security((), ("admin_token" = [])),
    params(("stream" = String, Path, description = "A stream name: a file `schemas/<stream>.json`.")),
    responses(
        (status = 200, description = "The schema and the DDL.", body = StreamSchema),
        (status = 404, description = "No such stream.", body = ErrorBody),
        AdminUnauthorized,
    )
)]
pub async fn get_stream_schema(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<StreamSchema>, ApiError> {
    let s = known_stream(&state, &name)?;
    Ok(Json(StreamSchema {
        stream: s.name.clone(),
        table: s.table.clone(),
        schema: s.schema.clone(),
        ddl: state.store.dialect().create_table(s),
        privacy: s
            .privacy
            .iter()
            .flat_map(|plan| plan.rules())
            .map(|rule| PrivacyTreatment {
                pointer: rule.pointer(),
                treatment: rule.treatment,
                column: rule.column().map(str::to_owned),
            })
            .collect(),
    }))
}

/// A stream's watermark: every load with an id up to it is committed, and none will
/// commit later.
#[derive(Debug, Serialize, ToSchema)]
pub struct Watermark {
    pub stream: String,
    /// Read rows with `_load_id > (the last watermark you read) AND _load_id <= watermark`:
    /// each row exactly once.
    #[schema(example = 41)]
    pub watermark: i64,
}

/// `GET /v1/streams/{stream}/watermark`: the load id up to which a reader may read the
/// stream's table without missing a row later.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}/watermark",
    tag = "operations",
    security((), ("admin_token" = [])),
    params(("stream" = String, Path, description = "A stream name: a file `schemas/<stream>.json`.")),
    responses(
        (status = 200, description = "The stream's watermark.", body = Watermark),
        (status = 404, description = "No such stream.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
        AdminUnauthorized,
    )
)]
pub async fn get_watermark(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Watermark>, ApiError> {
    let s = known_stream(&state, &name)?;
    let watermark = state.store.watermark(&s.name).await.map_err(|e| {
        tracing::warn!(stream = %s.name, error = %e, "Cannot read the watermark.");
        ApiError::DatabaseUnavailable
    })?;
    Ok(Json(Watermark {
        stream: s.name.clone(),
        watermark,
    }))
}

/// Which loads `GET /v1/streams/{stream}/loads` lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LoadsQuery {
    /// Loads after this load id (the last of the previous page), oldest first; default 0.
    pub after: Option<i64>,
    /// Instead of `after`: loads before this load id, newest first (the most recent
    /// ones with `before=9223372036854775807`).
    pub before: Option<i64>,
    /// At most this many, 1 to 1000; default 100.
    pub limit: Option<i64>,
}

/// A page of a stream's loads: oldest first, or newest first when asked `before`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoadsPage {
    pub loads: Vec<crate::sink::ledger::ListedLoad>,
}

/// `limit` of a paged query, 1 to 1000, `default` when absent.
fn page_limit(limit: Option<i64>, default: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest {
            error: format!("limit = {limit}: give 1 to 1000"),
            dead_lettered: 0,
        });
    }
    Ok(limit)
}

/// `GET /v1/streams/{stream}/loads`: the stream's loads (committed writes of rows) after
/// a load id, oldest first, or the most recent ones.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}/loads",
    tag = "operations",
    security((), ("admin_token" = [])),
    params(("stream" = String, Path, description = "A stream name: a file `schemas/<stream>.json`."), LoadsQuery),
    responses(
        (status = 200, description = "Loads after `after`, oldest first; or before `before`, newest first.", body = LoadsPage),
        (status = 400, description = "`limit` outside 1 to 1000, both `after` and `before`, or a query that does not parse.", body = ErrorBody),
        (status = 404, description = "No such stream.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
        AdminUnauthorized,
    )
)]
pub async fn list_loads(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<LoadsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LoadsPage>, ApiError> {
    let s = known_stream(&state, &name)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest {
        error: format!(
            "{}: after and before are load ids, limit 1 to 1000",
            e.body_text()
        ),
        dead_lettered: 0,
    })?;
    let limit = page_limit(query.limit, 100)?;
    let page = match (query.after, query.before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest {
                error: "give either after (oldest first) or before (newest first), not both".into(),
                dead_lettered: 0,
            })
        }
        (_, Some(before)) => Page::Before(before),
        (after, None) => Page::After(after.unwrap_or(0)),
    };
    let loads = state
        .store
        .list_loads(&s.name, page, limit)
        .await
        .map_err(|e| {
            tracing::warn!(stream = %s.name, error = %e, "Cannot read the loads.");
            ApiError::DatabaseUnavailable
        })?;
    Ok(Json(LoadsPage { loads }))
}

/// Query of `GET /v1/streams/{stream}/daily`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DailyQuery {
    /// The last this many days that have any load or dead letter, 1 to 1000; default 14.
    pub days: Option<i64>,
}

/// A stream's days, newest first, as the view `sluice_daily` counts them.
#[derive(Debug, Serialize, ToSchema)]
pub struct DailyPage {
    pub days: Vec<crate::sink::ledger::Day>,
}

/// `GET /v1/streams/{stream}/daily`: rows, loads and dead letters per UTC day.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}/daily",
    tag = "operations",
    security((), ("admin_token" = [])),
    params(("stream" = String, Path, description = "A stream name: a file `schemas/<stream>.json`."), DailyQuery),
    responses(
        (status = 200, description = "The stream's days, newest first.", body = DailyPage),
        (status = 400, description = "`days` outside 1 to 1000, or a query that does not parse.", body = ErrorBody),
        (status = 404, description = "No such stream.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
        AdminUnauthorized,
    )
)]
pub async fn daily(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<DailyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DailyPage>, ApiError> {
    let s = known_stream(&state, &name)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest {
        error: format!("{}: days is 1 to 1000", e.body_text()),
        dead_lettered: 0,
    })?;
    let days = page_limit(query.days, 14)?;
    let days = state.store.daily(&s.name, days).await.map_err(|e| {
        tracing::warn!(stream = %s.name, error = %e, "Cannot read the daily counts.");
        ApiError::DatabaseUnavailable
    })?;
    Ok(Json(DailyPage { days }))
}

/// The stream called `name`, or the 404 that lists the streams there are.
fn known_stream<'a>(
    state: &'a AppState,
    name: &str,
) -> Result<&'a crate::schema::Stream, ApiError> {
    state
        .ingest
        .registry
        .get(name)
        .map(|s| &**s)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "unknown stream `{name}`; the streams are {:?}",
                state.ingest.registry.names()
            ))
        })
}

/// Query of `GET /v1/dead-letters`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Only this stream's dead letters.
    stream: Option<String>,
    /// Only this stage: `parse`, `route`, `validate` or `write`.
    #[param(value_type = Option<crate::event::Stage>)]
    stage: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only ids below this: the previous page's `next_before`.
    before: Option<i64>,
    /// Only those received at or after this time (RFC 3339).
    since: Option<String>,
    /// Only those received before this time (RFC 3339).
    until: Option<String>,
}

/// A page of dead letters, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<ListedDeadLetter>,
    /// Pass as `before` to get the next page; `null` on the last page. A page ends early
    /// (before `limit`) once its payloads and errors reach 8 MiB.
    pub next_before: Option<i64>,
}

/// `GET /v1/dead-letters?stream=&stage=&since=&until=&limit=&before=`: newest first;
/// pass the answer's `next_before` as `before` for the next page.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "operations",
    security((), ("admin_token" = [])),
    params(DeadLetterParams),
    responses(
        (status = 200, description = "A page of dead letters, newest first, payload included.", body = DeadLetterList),
        (status = 400, description = "A query parameter is invalid; the message says which.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
        AdminUnauthorized,
    )
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    params: Result<Query<DeadLetterParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let bad = |error: String| ApiError::BadRequest {
        error,
        dead_lettered: 0,
    };
    let Query(p) = params.map_err(|e| {
        bad(format!("invalid query: {}; use stream, stage, since and until (RFC 3339), limit (1-{MAX_DEAD_LETTER_PAGE}) and before (an id)", e.body_text()))
    })?;
    let time = |key: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(crate::schema::parse_timestamp)
            .transpose()
            .map_err(|e| bad(format!("{key}: {e}; write it like 2026-11-24T09:00:00Z")))
    };
    let (since, until) = (time("since", &p.since)?, time("until", &p.until)?);
    if let Some(stage) = &p.stage {
        crate::event::Stage::named(stage).map_err(bad)?;
    }
    let limit = p.limit.unwrap_or(DEFAULT_DEAD_LETTER_PAGE);
    if !(1..=MAX_DEAD_LETTER_PAGE).contains(&limit) {
        return Err(bad(format!(
            "limit must be between 1 and {MAX_DEAD_LETTER_PAGE}"
        )));
    }
    // Read in small pages and stop at MAX_PAGE_BYTES, so a page of large payloads is
    // bounded in memory and in response size, not only in count.
    let mut dead_letters: Vec<ListedDeadLetter> = Vec::new();
    let mut bytes = 0;
    let mut before = p.before;
    let mut more = false;
    while (dead_letters.len() as i64) < limit {
        let want = (limit - dead_letters.len() as i64).min(READ_PAGE);
        let query = crate::sink::DeadLetterQuery {
            before,
            stream: p.stream.clone(),
            stage: p.stage.clone(),
            since,
            until,
            limit: want,
        };
        let page = tokio::time::timeout(LIST_TIMEOUT, state.store.list_dead_letters(&query))
            .await
            .map_err(|_| {
                tracing::warn!(
                    timeout_s = LIST_TIMEOUT.as_secs(),
                    "Listing dead letters got no answer from the database."
                );
                ApiError::DatabaseUnavailable
            })?
            .map_err(|e| {
                tracing::warn!(error = %e, "Cannot list dead letters.");
                ApiError::DatabaseUnavailable
            })?;
        let full = page.len() as i64 == want;
        for letter in page {
            if bytes >= MAX_PAGE_BYTES {
                break;
            }
            bytes += letter.payload.len() + letter.error.len();
            before = Some(letter.id);
            dead_letters.push(letter);
        }
        more = full || bytes >= MAX_PAGE_BYTES;
        if !full || bytes >= MAX_PAGE_BYTES {
            break;
        }
    }
    let next_before = more.then(|| dead_letters.last().map(|l| l.id)).flatten();
    Ok(Json(DeadLetterList {
        dead_letters,
        next_before,
    }))
}
