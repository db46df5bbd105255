//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' annotations
//! and the response types themselves, so it cannot drift from the code. Served at
//! `GET /v1/openapi.json`; a copy is kept in `docs/openapi.json` (a test fails when the
//! two differ; `sluice openapi > docs/openapi.json` rewrites it).

use axum::Json;
use utoipa::OpenApi;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{admin, events, hooks, jobs, sources, transforms};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Event-to-SQL ingestion sidecar: JSON events in, rows in SQLite, PostgreSQL or MySQL/MariaDB out. Events that cannot be stored go to the `sluice_dead_letters` table with the reason. When `admin.listen` is set, `/metrics`, `/v1/streams` and `/v1/dead-letters` are served only on that address.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        events::ingest_events,
        hooks::receive_webhook,
        admin::healthz,
        admin::readyz,
        admin::metrics,
        admin::list_streams,
        admin::get_stream,
        admin::get_stream_schema,
        admin::get_watermark,
        admin::daily,
        admin::list_loads,
        admin::list_dead_letters,
        jobs::start_replay,
        jobs::start_pull,
        jobs::start_flow,
        sources::list_sources,
        sources::run_source,
        sources::pause_source,
        sources::resume_source,
        sources::reset_source,
        transforms::list_transforms,
        transforms::run_transform,
        transforms::pause_transform,
        transforms::resume_transform,
        jobs::list_jobs,
        jobs::get_job,
        jobs::cancel_job,
        openapi_json,
    ),
    tags(
        (name = "events", description = "Sending events."),
        (name = "webhooks", description = "Vendors' webhooks, verified by the scheme of their `[webhooks.NAME]` section before anything is stored."),
        (name = "jobs", description = "Background jobs: replaying dead letters, pulling sources, running flows of transforms, with progress; behind the admin token."),
        (name = "transforms", description = "SQL transforms: the graph, their schedules, running one as a flow; behind the admin token."),
        (name = "operations", description = "Health, metrics, stream status and dead letters."),
    ),
    modifiers(&WebhookSecurity),
)]
pub struct ApiDoc;

/// The ways a webhook request proves who sent it (`verify = …`); each webhook uses one.
/// Vendors' HMAC signatures travel in their own headers; the generic `hmac` scheme's
/// header is configured (`signature_header`).
struct WebhookSecurity;

/// Security scheme names and the vendor signature header each stands for.
pub const WEBHOOK_SIGNATURE_HEADERS: &[(&str, &str, &str)] = &[
    (
        "standard_webhooks",
        "webhook-signature",
        "Standard Webhooks (with webhook-id and webhook-timestamp; Svix sends svix-*)",
    ),
    (
        "stripe",
        "Stripe-Signature",
        "Stripe: t=…,v1=… over `t.body`",
    ),
    (
        "github",
        "X-Hub-Signature-256",
        "GitHub: sha256=… over the body",
    ),
    (
        "shopify",
        "X-Shopify-Hmac-Sha256",
        "Shopify: base64 HMAC-SHA256 of the body",
    ),
    (
        "slack",
        "X-Slack-Signature",
        "Slack: v0=… over `v0:timestamp:body` (with X-Slack-Request-Timestamp)",
    ),
    (
        "twilio",
        "X-Twilio-Signature",
        "Twilio: HMAC of the public URL and the sorted form fields",
    ),
];

impl utoipa::Modify for WebhookSecurity {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "ingest_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An ingest token of `[auth]`, when configured; it grants some streams",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token of `[admin] token_env`, when configured",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "webhook_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("`verify = \"token\"`: the webhook's secret as a bearer token (or in its `token_header`)")).build()),
        );
        components.add_security_scheme(
            "webhook_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("`verify = \"basic\"`: `user:password` as the secret"))
                    .build(),
            ),
        );
        for (name, header, description) in WEBHOOK_SIGNATURE_HEADERS {
            components.add_security_scheme(
                *name,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    *header,
                    *description,
                ))),
            );
        }
    }
}

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
