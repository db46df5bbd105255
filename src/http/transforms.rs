//! The transforms' endpoints: the graph (each transform, what it reads, its pointer,
//! schedule and last task), run one now as a flow, pause and resume its schedule.
//! Behind the admin token.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::{ApiError, ErrorBody};
use super::jobs::JobStarted;
use super::AppState;
use crate::transforms::{TransformError, TransformView};

/// `GET /v1/transforms`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransformList {
    /// In the order a flow of all of them runs them.
    pub transforms: Vec<TransformView>,
}

fn transform_error(e: TransformError) -> ApiError {
    match e {
        TransformError::Unknown(_) => ApiError::NotFound(e.to_string()),
        TransformError::Job(job) => super::jobs::job_error(job),
    }
}

fn unavailable(e: crate::sink::SinkError) -> ApiError {
    tracing::warn!(error = %e, "Cannot read the transforms' pointers or jobs.");
    ApiError::DatabaseUnavailable
}

/// `GET /v1/transforms`: the graph of transforms, each with its inputs, pointer,
/// schedule and the last state of its task.
#[utoipa::path(
    get,
    path = "/v1/transforms",
    tag = "transforms",
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "The transforms, in dependency order.", body = TransformList),
        (status = 401, description = "The admin token is configured and missing.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
    )
)]
pub async fn list_transforms(
    State(state): State<AppState>,
) -> Result<Json<TransformList>, ApiError> {
    let transforms = state.transforms.list().await.map_err(unavailable)?;
    Ok(Json(TransformList { transforms }))
}

/// `POST /v1/transforms/{name}/run`: runs the transform now, as a flow of it and what
/// it reads.
#[utoipa::path(
    post,
    path = "/v1/transforms/{name}/run",
    tag = "transforms",
    security((), ("admin_token" = [])),
    params(("name" = String, Path, description = "A `[transforms.NAME]` of the configuration.")),
    responses(
        (status = 202, description = "The flow is started; follow it at `/v1/jobs/{id}`.", body = JobStarted),
        (status = 400, description = "Its SQL file cannot be read or scanned.", body = ErrorBody),
        (status = 404, description = "No such transform.", body = ErrorBody),
        (status = 401, description = "The admin token is configured and missing.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
    )
)]
pub async fn run_transform(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = state.transforms.run(&name).await.map_err(transform_error)?;
    Ok((StatusCode::ACCEPTED, Json(JobStarted { id })).into_response())
}

/// Pauses or resumes `name`'s schedule; answers the transform.
async fn set_paused(
    state: &AppState,
    name: &str,
    paused: bool,
) -> Result<Json<TransformView>, ApiError> {
    state
        .transforms
        .pause(name, paused)
        .map_err(transform_error)?;
    Ok(Json(
        state.transforms.view(name).await.map_err(unavailable)?,
    ))
}

/// `POST /v1/transforms/{name}/pause`: no scheduled run until resumed (a run under way
/// goes on; a flow asked for by hand still runs it).
#[utoipa::path(
    post,
    path = "/v1/transforms/{name}/pause",
    tag = "transforms",
    security((), ("admin_token" = [])),
    params(("name" = String, Path, description = "A `[transforms.NAME]` of the configuration.")),
    responses(
        (status = 200, description = "The transform, paused.", body = TransformView),
        (status = 404, description = "No such transform.", body = ErrorBody),
        (status = 401, description = "The admin token is configured and missing.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
    )
)]
pub async fn pause_transform(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TransformView>, ApiError> {
    set_paused(&state, &name, true).await
}

/// `POST /v1/transforms/{name}/resume`: the schedule runs again (at once if a run is
/// due).
#[utoipa::path(
    post,
    path = "/v1/transforms/{name}/resume",
    tag = "transforms",
    security((), ("admin_token" = [])),
    params(("name" = String, Path, description = "A `[transforms.NAME]` of the configuration.")),
    responses(
        (status = 200, description = "The transform, resumed.", body = TransformView),
        (status = 404, description = "No such transform.", body = ErrorBody),
        (status = 401, description = "The admin token is configured and missing.", body = ErrorBody),
        (status = 503, description = "The database did not answer.", body = ErrorBody),
    )
)]
pub async fn resume_transform(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TransformView>, ApiError> {
    set_paused(&state, &name, false).await
}
