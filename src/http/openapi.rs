//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' annotations
//! and the response types themselves, so it cannot drift from the code. Served at
//! `GET /v1/openapi.json`; a copy is kept in `docs/openapi.json` (a test fails when the
//! two differ; `sluice openapi > docs/openapi.json` rewrites it).

use axum::Json;
use utoipa::OpenApi;

use super::{admin, events};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Event-to-SQL ingestion sidecar: JSON events in, rows in SQLite, PostgreSQL or MySQL/MariaDB out. Events that cannot be stored go to the `sluice_dead_letters` table with the reason. When `admin.listen` is set, `/metrics`, `/v1/streams` and `/v1/dead-letters` are served only on that address.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        events::ingest_events,
        admin::healthz,
        admin::readyz,
        admin::metrics,
        admin::list_streams,
        admin::get_stream,
        admin::list_dead_letters,
        openapi_json,
    ),
    tags(
        (name = "events", description = "Sending events."),
        (name = "operations", description = "Health, metrics, stream status and dead letters."),
    )
)]
pub struct ApiDoc;

/// The document as pretty-printed JSON with a final newline, as kept in `docs/openapi.json`.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}"));
    text.push('\n');
    text
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
