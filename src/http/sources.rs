//! The pulled sources' endpoints: list them with their pointers and schedules, run one
//! now, pause and resume its schedule, reset its pointer. Behind the admin token.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::jobs::JobStarted;
use super::AppState;
use crate::sources::{SourceError, SourceView};

/// `GET /v1/sources`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SourceList {
    pub sources: Vec<SourceView>,
}

/// `POST /v1/sources/{name}/reset`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The cursor columns' values to start after (`{"updated_at": "…", "id": "42"}`), or
    /// `null` to load again from the first row.
    #[schema(value_type = Object)]
    pub pointer: serde_json::Value,
}

fn source_error(e: SourceError) -> ApiError {
    match e {
        SourceError::Unknown(_) => ApiError::NotFound(e.to_string()),
        SourceError::Invalid(m) => ApiError::Conflict(m),
        SourceError::Job(job) => super::jobs::job_error(job),
    }
}

fn unavailable(e: crate::sink::SinkError) -> ApiError {
    tracing::warn!(error = %e, "Cannot read the sources' pointers.");
    ApiError::DatabaseUnavailable
}

/// `GET /v1/sources`: every pulled source with its pointer, state, last and next run.
#[utoipa::path(
    get,
    path = "/v1/sources",
    tag = "sources",
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "The sources, by name.", body = SourceList),
        (status = 401, description = "The admin token is configured and missing.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
    )
)]
pub async fn list_sources(State(state): State<AppState>) -> Result<Json<SourceList>, ApiError> {
    let sources = state.sources.list().await.map_err(unavailable)?;
    Ok(Json(SourceList { sources }))
}

/// `POST /v1/sources/{name}/run`: pulls the source now, as a job.
#[utoipa::path(
    post,
    path = "/v1/sources/{name}/run",
    tag = "sources",
    security((), ("admin_token" = [])),
    params(("name" = String, Path, description = "A `[sources.NAME]` of the configuration.")),
    responses(
        (status = 202, description = "The run is started; follow it at `/v1/jobs/{id}`.", body = JobStarted),
        (status = 404, description = "No such source.", body = ErrorBody),
        (status = 409, description = "A run of the source is under way.", body = ErrorBody),
        (status = 401, description = "The admin token is configured and missing.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
    )
)]
pub async fn run_source(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = state.sources.run(&name).await.map_err(source_error)?;
    Ok((StatusCode::ACCEPTED, Json(JobStarted { id })).into_response())
}

/// Pauses or resumes `name`'s schedule; answers the source.
async fn set_paused(
    state: &AppState,
    name: &str,
    paused: bool,
) -> Result<Json<SourceView>, ApiError> {
    state.sources.pause(name, paused).map_err(source_error)?;
    Ok(Json(state.sources.view(name).await.map_err(unavailable)?))
}

/// `POST /v1/sources/{name}/pause`: no scheduled run until resumed (a run under way
/// goes on; a run asked for by hand still runs).
#[utoipa::path(
    post,
    path = "/v1/sources/{name}/pause",
    tag = "sources",
    security((), ("admin_token" = [])),
    params(("name" = String, Path, description = "A `[sources.NAME]` of the configuration.")),
    responses(
        (status = 200, description = "The source, paused.", body = SourceView),
        (status = 404, description = "No such source.", body = ErrorBody),
        (status = 401, description = "The admin token is configured and missing.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
    )
)]
pub async fn pause_source(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SourceView>, ApiError> {
    set_paused(&state, &name, true).await
}

/// `POST /v1/sources/{name}/resume`: the schedule runs again (at once if a run is due).
#[utoipa::path(
    post,
    path = "/v1/sources/{name}/resume",
    tag = "sources",
    security((), ("admin_token" = [])),
    params(("name" = String, Path, description = "A `[sources.NAME]` of the configuration.")),
    responses(
        (status = 200, description = "The source, resumed.", body = SourceView),
        (status = 404, description = "No such source.", body = ErrorBody),
        (status = 401, description = "The admin token is configured and missing.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
    )
)]
pub async fn resume_source(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SourceView>, ApiError> {
    set_paused(&state, &name, false).await
}

/// `POST /v1/sources/{name}/reset`: sets the pointer the next run starts after.
#[utoipa::path(
    post,
    path = "/v1/sources/{name}/reset",
    tag = "sources",
    security((), ("admin_token" = [])),
    params(("name" = String, Path, description = "A `[sources.NAME]` of the configuration.")),
    request_body(content = ResetRequest, description = "`{\"pointer\": null}` loads again from the first row."),
    responses(
        (status = 200, description = "The source, with its new pointer.", body = SourceView),
        (status = 400, description = "A body that is not `{\"pointer\": …}`.", body = ErrorBody),
        (status = 404, description = "No such source.", body = ErrorBody),
        (status = 409, description = "A run is under way, or the pointer lacks a cursor column.", body = ErrorBody),
        (status = 401, description = "The admin token is configured and missing.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
    )
)]
pub async fn reset_source(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<ResetRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SourceView>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest {
        error: format!(
            "invalid request: {}; send {{\"pointer\": {{…}}}} or {{\"pointer\": null}}",
            e.body_text()
        ),
        dead_lettered: 0,
    })?;
    state
        .sources
        .reset(&name, &request.pointer)
        .await
        .map_err(source_error)?;
    Ok(Json(state.sources.view(&name).await.map_err(unavailable)?))
}
