//! The HTTP API: the router and its listeners, the one error type, the events endpoint
//! and the operator's endpoints. Handlers read and decode requests, hand them to
//! [`crate::ingest`] (which turns bytes into rows and dead letters and queues them) and
//! answer; they never write to the database themselves.
//!
//! Where things go: a new endpoint is a handler in a module here, added to
//! [`routers`] and to the OpenAPI document in [`openapi`]; a new error answer is a
//! variant of [`error::ApiError`].

pub mod admin;
pub mod error;
pub mod events;
pub mod hooks;
pub mod jobs;
pub mod openapi;
mod settings;
pub mod site;
pub mod sources;
pub mod transforms;
pub mod ui;

use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ErrorBody};
pub use settings::{AdminConfig, HttpConfig};

use crate::ingest::{Ingest, LimitedListener};
use crate::sink::Store;
use crate::telemetry;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub ingest: Arc<Ingest>,
    pub store: Arc<Store>,
    pub http: Arc<HttpConfig>,
    pub webhooks: Arc<crate::webhook::Webhooks>,
    pub access: Arc<crate::auth::Access>,
    pub jobs: Arc<crate::jobs::Jobs>,
    pub sources: Arc<crate::sources::Sources>,
    pub transforms: Arc<crate::transforms::Transforms>,
    /// Which hosts and browser origins may call the events and admin endpoints.
    pub site: Arc<site::SiteGuard>,
}

/// Serves `app` on `listener` until `stop`, then lets in-flight requests finish; over
/// TLS when `tls` is given.
///
/// A connection-limit permit is taken before `accept()` (so the limit is backpressure,
/// not an error), and a client must finish the TLS handshake and send its request
/// headers within `header_read_timeout`, so slow or stalled clients cannot hold
/// connections forever.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: Arc<HttpConfig>,
    tls: Option<Arc<crate::tls::Tls>>,
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
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let handshake_timeout = config.header_read_timeout;
        tokio::spawn(async move {
            let result =
                match acceptor {
                    None => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(socket), service))
                            .await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(socket))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed.");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out.");
                                    return;
                                }
                            };
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
}

/// The HTTP routes: the ingest router, and the admin router when the admin surface
/// (`/metrics`, `/v1/streams`, `/v1/dead-letters`) has its own listener. Health,
/// readiness and the OpenAPI document are served on both.
pub fn routers(state: AppState, separate_admin: bool) -> (Router, Option<Router>) {
    let common = Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/v1/openapi.json", get(openapi::openapi_json));
    // The operator's endpoints: behind the admin token when one is configured.
    let admin_only = Router::new()
        .route("/metrics", get(admin::metrics))
        .route("/v1/streams", get(admin::list_streams))
        .route("/v1/streams/{stream}", get(admin::get_stream))
        .route("/v1/streams/{stream}/schema", get(admin::get_stream_schema))
        .route("/v1/streams/{stream}/watermark", get(admin::get_watermark))
        .route("/v1/streams/{stream}/daily", get(admin::daily))
        .route("/v1/streams/{stream}/loads", get(admin::list_loads))
        .route("/v1/dead-letters", get(admin::list_dead_letters))
        .route("/v1/jobs", get(jobs::list_jobs))
        .route("/v1/jobs/replay", post(jobs::start_replay))
        .route("/v1/jobs/pull", post(jobs::start_pull))
        .route("/v1/jobs/flow", post(jobs::start_flow))
        .route("/v1/sources", get(sources::list_sources))
        .route("/v1/sources/{name}/run", post(sources::run_source))
        .route("/v1/sources/{name}/pause", post(sources::pause_source))
        .route("/v1/sources/{name}/resume", post(sources::resume_source))
        .route("/v1/sources/{name}/reset", post(sources::reset_source))
        .route("/v1/transforms", get(transforms::list_transforms))
        .route("/v1/transforms/{name}/run", post(transforms::run_transform))
        .route(
            "/v1/transforms/{name}/pause",
            post(transforms::pause_transform),
        )
        .route(
            "/v1/transforms/{name}/resume",
            post(transforms::resume_transform),
        )
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            site::guard,
        ));
    // The control panel's page and assets hold no data (it comes from the routes above).
    let panel = Router::new()
        .route("/ui", get(ui::redirect))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/app.css", get(ui::app_css))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            site::guard,
        ));
    let admin = common.clone().merge(admin_only).merge(panel);
    let finish = |router: Router<AppState>, hint: &'static str| {
        router
            .fallback(move || async move { ApiError::NotFound(hint.to_owned()) })
            .layer(axum::middleware::from_fn(record_request))
            .with_state(state.clone())
    };
    let events = "/v1/streams/{stream}/events";
    let ingest_events = post(events::ingest_events).route_layer(
        axum::middleware::from_fn_with_state(state.clone(), site::guard),
    );
    let hooks = "/v1/hooks/{name}";
    if separate_admin {
        let ingest = common
            .route(events, ingest_events)
            .route(hooks, post(hooks::receive_webhook));
        (
            finish(ingest, "no such endpoint on the ingest port; events go to POST /v1/streams/{stream}/events, and /metrics, /v1/streams and /v1/dead-letters are on admin.listen"),
            Some(finish(admin, "no such endpoint on the admin port; see GET /v1/openapi.json (events go to the ingest port)")),
        )
    } else {
        let all = admin
            .route(events, ingest_events)
            .route(hooks, post(hooks::receive_webhook));
        (
            finish(all, "no such endpoint; events go to POST /v1/streams/{stream}/events (see GET /v1/openapi.json)"),
            None,
        )
    }
}

/// Lets a request through to an admin endpoint only with the admin token, when one is
/// configured (`[admin] token_env`).
async fn require_admin(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::response::IntoResponse;
    if let Some(admin) = &state.access.admin {
        if !admin.admits(req.headers()) {
            let peer = req
                .extensions()
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.to_string())
                .unwrap_or_default();
            state.access.refused("admin", 401, None, &peer);
            return ApiError::Unauthenticated(
                "this admin endpoint needs Authorization: Bearer <the admin token> ([admin] token_env)".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Counts every request by status, with its duration.
async fn record_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    telemetry::http_request(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}
