//! `[http]` and `[admin]`: the HTTP listener's settings and the optional separate admin
//! listener, with their defaults.

use std::time::Duration;

use serde::Deserialize;

use crate::tls::TlsConfig;
use crate::toml_values::duration;

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the HTTP API binds to (`host:port`; port 0 picks a free one).
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// Largest accepted request body in bytes, after gzip decompression too (413 above it).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest number of events in one request (413 above it).
    #[serde(default = "default_max_events_per_request")]
    pub max_events_per_request: usize,
    /// How long a request waits for room in a full queue before `503` + `Retry-After`.
    #[serde(default = "default_enqueue_timeout", deserialize_with = "duration")]
    pub enqueue_timeout: Duration,
    /// Most connections served at once; further clients wait in the accept backlog.
    #[serde(default = "default_max_connections_http")]
    pub max_connections: usize,
    /// A client must send a request's headers within this time (slow clients are cut off).
    #[serde(default = "default_header_read_timeout", deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A client must send a request's whole body within this time (408 after it), so a
    /// client sending a byte a minute cannot hold a connection.
    #[serde(default = "default_body_read_timeout", deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// HTTPS: serve HTTP/1.1 over TLS on `listen` (and `admin.listen`) with this
    /// certificate; reloaded on SIGHUP.
    pub tls: Option<TlsConfig>,
    /// Host names (the `Host` header, without its port) the events and admin endpoints
    /// answer to; `["*"]`: any. Empty (the default): on a loopback listener, only
    /// `localhost` and loopback addresses (a page of another site that resolves to
    /// 127.0.0.1 is refused: DNS rebinding); beyond loopback, any.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://panel.example.com`) whose browser pages may call the events
    /// and admin endpoints, besides the page's own; others get 403.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address for `/metrics`, `/v1/streams` and `/v1/dead-letters` (`host:port`). When
    /// set, those are served only there, so the ingest port can be exposed without them;
    /// empty (the default) serves them on the HTTP port.
    #[serde(default)]
    pub listen: String,
    /// Environment variable holding the admin token. When set, every admin endpoint
    /// (`/metrics`, `/v1/streams*`, `/v1/dead-letters`) needs `Authorization: Bearer
    /// <token>`; `/healthz`, `/readyz` and the OpenAPI document stay open.
    pub token_env: Option<String>,
}

fn default_http_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_max_events_per_request() -> usize {
    10_000
}
fn default_enqueue_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_max_connections_http() -> usize {
    1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("every field of [http] has a default")
    }
}
