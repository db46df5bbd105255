//! The jobs API: start a replay in the background, follow it, cancel it, list past
//! jobs. Behind the admin token like the other operator endpoints.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::jobs::{FlowRequest, JobError, JobView, PullRequest, ReplayRequest};

/// `202` answer to starting a job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobStarted {
    pub id: String,
}

/// `GET /v1/jobs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// The failures every jobs endpoint can answer with, besides its own.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its OpenAPI description is used
enum JobFailures {
    /// The admin token is configured and missing.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The database did not answer.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// [`JobFailures`], and no such job, for the endpoints of one job.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its OpenAPI description is used
enum OneJobFailures {
    /// The admin token is configured and missing.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// No such job.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The database did not answer.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

pub fn job_error(e: JobError) -> ApiError {
    match e {
        JobError::Invalid(m) => ApiError::BadRequest {
            error: m,
            dead_lettered: 0,
        },
        JobError::Conflict(_) | JobError::NotRunning(_) => ApiError::Conflict(e.to_string()),
        JobError::NotFound(_) => ApiError::NotFound(e.to_string()),
        JobError::Database(err) => {
            tracing::warn!(error = %err, "The jobs table could not be read or written.");
            ApiError::DatabaseUnavailable
        }
    }
}

/// `POST /v1/jobs/replay`: replays dead letters in the background.
#[utoipa::path(
    post,
    path = "/v1/jobs/replay",
    tag = "jobs",
    security((), ("admin_token" = [])),
    request_body(content = ReplayRequest, description = "What to replay; `{}` replays every stream's dead letters."),
    responses(
        (status = 202, description = "The job is started; follow it at `/v1/jobs/{id}`.", body = JobStarted),
        (status = 400, description = "Unknown stream, bad `since`, or an unknown field.", body = ErrorBody),
        (status = 409, description = "A replay over the same dead letters is running.", body = ErrorBody),
        JobFailures,
    )
)]
pub async fn start_replay(
    State(state): State<AppState>,
    body: Result<Json<ReplayRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest {
        error: format!(
            "invalid request: {}; send {{\"stream\", \"since\", \"stage\", \"into\", \"dry_run\"}}, each optional",
            e.body_text()
        ),
        dead_lettered: 0,
    })?;
    let id = state.jobs.start_replay(request).await.map_err(job_error)?;
    Ok((StatusCode::ACCEPTED, Json(JobStarted { id })).into_response())
}

/// `POST /v1/jobs/pull`: pulls a source's rows after its pointer, in the background.
#[utoipa::path(
    post,
    path = "/v1/jobs/pull",
    tag = "jobs",
    security((), ("admin_token" = [])),
    request_body(content = PullRequest, description = "The source to pull: `{\"source\": \"crm_deals\"}`."),
    responses(
        (status = 202, description = "The job is started; follow it at `/v1/jobs/{id}`.", body = JobStarted),
        (status = 400, description = "Unknown source, a stream without a schema, or an unknown field.", body = ErrorBody),
        (status = 409, description = "A pull of the same source is running.", body = ErrorBody),
        JobFailures,
    )
)]
pub async fn start_pull(
    State(state): State<AppState>,
    body: Result<Json<PullRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest {
        error: format!(
            "invalid request: {}; send {{\"source\": \"NAME\"}}",
            e.body_text()
        ),
        dead_lettered: 0,
    })?;
    let id = state.jobs.start_pull(request).await.map_err(job_error)?;
    Ok((StatusCode::ACCEPTED, Json(JobStarted { id })).into_response())
}

/// `POST /v1/jobs/flow`: runs transforms, and everything they depend on, as one job
/// with a task per node (in `result.tasks`).
#[utoipa::path(
    post,
    path = "/v1/jobs/flow",
    tag = "jobs",
    security((), ("admin_token" = [])),
    request_body(content = FlowRequest, description = "The transforms to run: `{\"targets\": [\"daily_revenue\"]}`."),
    responses(
        (status = 202, description = "The job is started; follow it and its tasks at `/v1/jobs/{id}`.", body = JobStarted),
        (status = 400, description = "An unknown target, a cycle, an unreadable SQL file, or an unknown field.", body = ErrorBody),
        JobFailures,
    )
)]
pub async fn start_flow(
    State(state): State<AppState>,
    body: Result<Json<FlowRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest {
        error: format!(
            "invalid request: {}; send {{\"targets\": [\"TRANSFORM\", …]}}",
            e.body_text()
        ),
        dead_lettered: 0,
    })?;
    let id = state.jobs.start_flow(request).await.map_err(job_error)?;
    Ok((StatusCode::ACCEPTED, Json(JobStarted { id })).into_response())
}

/// `GET /v1/jobs`: the newest 100 jobs first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "Jobs, newest first.", body = JobList),
        JobFailures,
    )
)]
pub async fn list_jobs(State(state): State<AppState>) -> Result<Json<JobList>, ApiError> {
    let jobs = state
        .jobs
        .list(100)
        .await
        .map_err(|e| job_error(e.into()))?;
    Ok(Json(JobList { jobs }))
}

/// `GET /v1/jobs/{id}`: one job, with its progress, logs and errors.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    security((), ("admin_token" = [])),
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        OneJobFailures,
    )
)]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    match state.jobs.get(&id).await.map_err(|e| job_error(e.into()))? {
        Some(job) => Ok(Json(job)),
        None => Err(job_error(JobError::NotFound(id))),
    }
}

/// `POST /v1/jobs/{id}/cancel`: stops a running job between pages of rows; what it
/// committed stays.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    security((), ("admin_token" = [])),
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 202, description = "The job will stop at its next page.", body = JobView),
        (status = 409, description = "The job is not running.", body = ErrorBody),
        OneJobFailures,
    )
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = state.jobs.cancel(&id).await.map_err(job_error)?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}
