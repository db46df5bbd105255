//! Configuration: the TOML file (`sluice.toml` or `--config PATH`) with `SLUICE_*`
//! environment overrides, deserialized into typed, documented settings.
//!
//! In: an optional file path and the process environment. Out: a [`Config`] that
//! gathers every component's settings. A component's settings type and its defaults
//! live beside the component ([`crate::http::HttpConfig`] and [`crate::http::AdminConfig`],
//! [`crate::auth::AuthConfig`], [`crate::spool::SpoolConfig`], [`crate::tls::TlsConfig`],
//! [`crate::schema::StreamSettings`] and [`crate::schema::StreamConfig`],
//! [`crate::sink::DatabaseConfig`], [`crate::webhook::WebhookConfig`],
//! [`crate::ingest::tcp::TcpConfig`], [`crate::ingest::jetstream::JetStreamConfig`],
//! [`crate::jobs::JobsConfig`], [`crate::event::DeadLettersConfig`]); here are only the
//! process-wide settings, the checks across sections and the environment overrides, which
//! are derived from every section's fields ([`section`]), so they cannot drift. Unknown
//! keys are errors that name the key, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::auth::is_loopback;
pub use crate::auth::AuthConfig;
pub use crate::event::DeadLettersConfig;
pub use crate::http::{AdminConfig, HttpConfig};
pub use crate::ingest::jetstream::JetStreamConfig;
pub use crate::ingest::tcp::TcpConfig;
pub use crate::jobs::JobsConfig;
pub use crate::privacy::{ExtraPolicy, PrivacyConfig};
pub use crate::schema::{StreamConfig, StreamSettings, StreamsConfig};
pub use crate::sink::ledger::LedgerConfig;
pub use crate::sink::{DatabaseConfig, SqliteSynchronous, DEFAULT_WRITE_TIMEOUT};
pub use crate::spool::{FsyncPolicy, SpoolConfig};
pub use crate::tls::TlsConfig;
use crate::toml_values::duration;
pub use crate::webhook::{
    HmacAlgorithm, SignatureEncoding, VerifyScheme, WebhookConfig, WebhookRoute,
};

/// The field names of a struct with a derived `Deserialize`, as the derive passes them
/// to `deserialize_struct`: the environment overrides are derived from them, so that a
/// new setting or section is addressable without being listed again.
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};
    struct Probe<'a>(&'a std::cell::Cell<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(Self::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let fields = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(Probe(&fields));
    fields.get()
}

/// What a table of the file holds, for the environment overrides: the fields of a
/// struct, or (`[streams.NAME]`, `[webhooks.NAME]`) tables of one struct by name.
enum Section {
    Struct(&'static [&'static str]),
    Named(&'static [&'static str]),
}

/// The table at `path` (`http`, `http.tls`, …), if `path` names one. Every table of
/// [`Config`] must be here; a test checks that none is missing.
fn section(path: &str) -> Option<Section> {
    use Section::{Named, Struct};
    Some(match path {
        "database" => Struct(fields_of::<DatabaseConfig>()),
        "http" => Struct(fields_of::<HttpConfig>()),
        "http.tls" | "tcp.tls" => Struct(fields_of::<TlsConfig>()),
        "admin" => Struct(fields_of::<AdminConfig>()),
        "auth" => Struct(fields_of::<AuthConfig>()),
        "spool" => Struct(fields_of::<SpoolConfig>()),
        "tcp" => Struct(fields_of::<TcpConfig>()),
        "jetstream" => Struct(fields_of::<JetStreamConfig>()),
        "defaults" => Struct(fields_of::<StreamSettings>()),
        "dead_letters" => Struct(fields_of::<DeadLettersConfig>()),
        "jobs" => Struct(fields_of::<JobsConfig>()),
        "privacy" => Struct(fields_of::<PrivacyConfig>()),
        "ledger" => Struct(fields_of::<LedgerConfig>()),
        "streams" => Named(fields_of::<StreamConfig>()),
        "webhooks" => Named(fields_of::<WebhookConfig>()),
        "sources" => Named(fields_of::<crate::pull::SourceConfig>()),
        "transforms" => Named(fields_of::<crate::flows::TransformConfig>()),
        "flows" => Struct(fields_of::<crate::flows::FlowsConfig>()),
        _ => return None,
    })
}

/// Where `SLUICE_<NAME>` (`name` lowercased, without the prefix) goes in the file, as
/// a path of keys: a top-level key (`schemas_dir`), a section's key (`http_listen` →
/// `http.listen`, `http_tls_cert` → `http.tls.cert`), or a named table's key
/// (`streams_order_placed_id_field` → `streams.order_placed.id_field`). The longest
/// match wins, so keys with underscores resolve.
fn env_path(name: &str) -> Option<Vec<String>> {
    fn within(prefix: &str, fields: &[&str], key: &str) -> Option<Vec<String>> {
        if fields.contains(&key) {
            return Some(vec![key.to_owned()]);
        }
        let mut nested: Vec<&&str> = fields
            .iter()
            .filter(|f| key.starts_with(&format!("{f}_")))
            .collect();
        nested.sort_by_key(|f| std::cmp::Reverse(f.len()));
        nested.into_iter().find_map(|f| {
            let path = if prefix.is_empty() {
                (*f).to_owned()
            } else {
                format!("{prefix}.{f}")
            };
            let rest = &key[f.len() + 1..];
            let tail = match section(&path)? {
                Section::Struct(inner) => within(&path, inner, rest)?,
                Section::Named(inner) => {
                    let (table, field) = inner
                        .iter()
                        .filter_map(|field| {
                            let table = rest.strip_suffix(field)?.strip_suffix('_')?;
                            (!table.is_empty()).then_some((table, field))
                        })
                        .max_by_key(|(_, field)| field.len())?;
                    vec![table.to_owned(), (*field).to_owned()]
                }
            };
            Some(std::iter::once((*f).to_owned()).chain(tail).collect())
        })
    }
    within("", fields_of::<Config>(), name)
}
/// `SLUICE_*` variables that are not settings (test switches, the config path itself).
const ENV_NOT_SETTINGS: &[&str] = &["SLUICE_CONFIG", "SLUICE_LOG", "SLUICE_LOG_FORMAT"];

/// Everything Sluice needs to run; see the README, "Configuration".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding one JSON Schema per stream (`<stream>.json`).
    #[serde(default = "default_schemas_dir")]
    pub schemas_dir: PathBuf,
    /// How long SIGTERM waits for queues to flush before giving up (e.g. `"30s"`).
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Events dead-lettered at ingest are logged once per stream and stage, then as one
    /// summary line (with a count) per this interval, so a flood cannot flood the logs.
    #[serde(
        default = "default_log_summary_interval",
        deserialize_with = "duration"
    )]
    pub log_summary_interval: Duration,
    /// Memory that input being decoded may hold at once, in bytes: HTTP bodies as they
    /// are read and decompressed and the values they parse into, and TCP lines being
    /// parsed, before their rows reach a queue. Full: HTTP waits `enqueue_timeout` then
    /// answers 503; a body that alone needs more is refused with 413; TCP waits.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: usize,
    /// The database every stream and the dead letters are written to.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The HTTP listener.
    #[serde(default)]
    pub http: HttpConfig,
    /// The optional separate listener for the admin surface, and its token.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Ingest tokens; without this section ingest is open.
    pub auth: Option<AuthConfig>,
    /// The durable spool; off unless `dir` is set.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// The TCP line-protocol listener.
    #[serde(default)]
    pub tcp: TcpConfig,
    /// The NATS JetStream input; off without this section.
    pub jetstream: Option<JetStreamConfig>,
    /// Per-stream settings that apply unless a `[streams.NAME]` section overrides them.
    #[serde(default)]
    pub defaults: StreamSettings,
    /// The dead-letter table: payload bound, retention.
    #[serde(default)]
    pub dead_letters: DeadLettersConfig,
    /// Background jobs: when a job whose instance is gone is marked failed.
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Treatment of personal fields (`x-sluice-privacy`): the HMAC key, `_extra`.
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// The load ledger and the watermark.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// Per-stream overrides, keyed by stream name.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamConfig>,
    /// Vendor webhook sources served at `POST /v1/hooks/{NAME}`, keyed by name.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// Pulled sources: tables of other databases read incrementally into a stream.
    #[serde(default)]
    pub sources: BTreeMap<String, crate::pull::SourceConfig>,
    /// SQL transforms run inside the target database, keyed by name.
    #[serde(default)]
    pub transforms: BTreeMap<String, crate::flows::TransformConfig>,
    /// How flows run their tasks.
    #[serde(default)]
    pub flows: crate::flows::FlowsConfig,
}

/// The values of every `*_env` key in `table`, at any depth: names of environment
/// variables that hold secrets.
fn referenced_env_vars(table: &toml::Table, out: &mut Vec<String>) {
    for (key, value) in table {
        match value {
            toml::Value::String(var) if key.ends_with("_env") => out.push(var.clone()),
            toml::Value::Table(t) => referenced_env_vars(t, out),
            _ => {}
        }
    }
}

fn default_schemas_dir() -> PathBuf {
    PathBuf::from("schemas")
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_log_summary_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_max_inflight_bytes() -> usize {
    128 * 1024 * 1024
}
macro_rules! default_from_empty_table {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                Self::deserialize(toml::Value::Table(toml::Table::new()))
                    .expect("every field of this section has a default")
            }
        }
    )*};
}
default_from_empty_table!(
    SpoolConfig,
    Config,
    DatabaseConfig,
    TcpConfig,
    DeadLettersConfig
);

/// A configuration problem, reported with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Loads `path` (or `./sluice.toml` if it exists, or nothing) and applies `SLUICE_*`
    /// environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let default_path = Path::new("sluice.toml");
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None if default_path.exists() => Some(default_path.to_path_buf()),
            None => None,
        };
        let (text, origin) = match &path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "(defaults, no file)".to_owned()),
        };
        Self::from_toml_and_env(&text, &origin, std::env::vars())
    }

    /// Parses `text` as TOML, overlays the `SLUICE_*` entries of `env`, and validates.
    pub fn from_toml_and_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        // Variables named by `*_env` keys (admin.token_env, auth.tokens_env, a webhook's
        // secret_env) hold secrets, not settings, whatever their name.
        let mut secret_vars = Vec::new();
        referenced_env_vars(&table, &mut secret_vars);
        secret_vars.extend(
            env.iter()
                .filter(|(k, _)| k.starts_with("SLUICE_") && k.ends_with("_ENV"))
                .map(|(_, v)| v.clone()),
        );
        let mut overridden = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("SLUICE_") else {
                continue;
            };
            if rest.starts_with("TEST_")
                || ENV_NOT_SETTINGS.contains(&name.as_str())
                || secret_vars.contains(&name)
            {
                continue;
            }
            let rest = rest.to_ascii_lowercase();
            let Some(path) = env_path(&rest) else {
                return Err(invalid(format!(
                    "unknown environment setting {name}: expected SLUICE_<KEY> for a top-level key or SLUICE_<SECTION>_<KEY> (e.g. SLUICE_HTTP_LISTEN, SLUICE_HTTP_TLS_CERT, SLUICE_STREAMS_<STREAM>_ID_FIELD) naming a key of the configuration, with sections among {:?}",
                    fields_of::<Config>().iter().filter(|f| section(f).is_some()).collect::<Vec<_>>()
                )));
            };
            let (key, tables) = path.split_last().expect("a path has a key");
            let mut at = &mut table;
            for (depth, part) in tables.iter().enumerate() {
                let entry = at
                    .entry(part.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                at = match entry {
                    toml::Value::Table(t) => t,
                    _ => {
                        return Err(invalid(format!(
                            "`{}` must be a table (set by {name})",
                            tables[..=depth].join(".")
                        )))
                    }
                };
            }
            at.insert(key.clone(), env_value(&value));
            overridden.push(name);
        }
        let origin_full = if overridden.is_empty() {
            origin.to_owned()
        } else {
            format!(
                "{origin} with environment overrides {}",
                overridden.join(", ")
            )
        };
        let config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Invalid {
                origin: origin_full.clone(),
                message: e.to_string(),
            })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            origin: origin_full,
            message,
        })?;
        Ok(config)
    }

    /// Cross-field checks that serde cannot express.
    fn validate(&self) -> Result<(), String> {
        let mut checks: Vec<(String, StreamSettings)> =
            vec![("defaults".into(), self.defaults.clone())];
        for name in self.streams.keys() {
            checks.push((format!("streams.{name}"), self.stream_settings(name)));
        }
        for (section, s) in checks {
            if s.batch_max_events == 0 || s.queue_max_events == 0 || s.queue_max_bytes == 0 {
                return Err(format!(
                    "[{section}]: batch_max_events, queue_max_events and queue_max_bytes must be greater than 0"
                ));
            }
            if s.queue_max_bytes < self.tcp.max_line_bytes {
                return Err(format!(
                    "[{section}]: queue_max_bytes ({}) must be at least tcp.max_line_bytes ({}) so that one line always fits",
                    s.queue_max_bytes, self.tcp.max_line_bytes
                ));
            }
        }
        if self.jobs.stale_after < Duration::from_secs(2) || self.jobs.sweep_every.is_zero() {
            return Err(
                "[jobs] stale_after must be at least 2s (jobs record themselves every 500 ms) and sweep_every above 0".into(),
            );
        }
        // A zero limit would refuse every client or hang every request: name the key.
        let counts = [
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("http.max_body_bytes", self.http.max_body_bytes),
            (
                "http.max_events_per_request",
                self.http.max_events_per_request,
            ),
            ("http.max_connections", self.http.max_connections),
            ("tcp.max_connections", self.tcp.max_connections),
            ("tcp.max_line_bytes", self.tcp.max_line_bytes),
            (
                "database.max_connections",
                self.database.max_connections as usize,
            ),
        ];
        for (key, value) in counts {
            if value == 0 {
                return Err(format!(
                    "{key} = 0 would refuse everything; it must be greater than 0"
                ));
            }
        }
        let durations = [
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.body_read_timeout", self.http.body_read_timeout),
            ("tcp.idle_timeout", self.tcp.idle_timeout),
            ("database.acquire_timeout", self.database.acquire_timeout),
            ("database.write_timeout", self.database.write_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            (
                "dead_letters.retention",
                self.dead_letters.retention.unwrap_or(Duration::MAX),
            ),
            (
                "ledger.retention",
                self.ledger.retention.unwrap_or(Duration::MAX),
            ),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                return Err(format!(
                    "{key} = 0 would cut off every request or connection at once; give a duration such as \"10s\""
                ));
            }
        }
        if self.dead_letters.max_payload_bytes < 1024 {
            return Err("[dead_letters]: max_payload_bytes must be at least 1024".into());
        }
        if self.log_summary_interval.is_zero() {
            return Err("log_summary_interval must be greater than 0 (e.g. \"10s\")".into());
        }
        if self.spool.dir.is_some() && self.spool.max_bytes < 1024 * 1024 {
            return Err("spool.max_bytes must be at least 1 MiB".into());
        }
        if let Some(js) = &self.jetstream {
            if js.url.is_empty() || js.stream.is_empty() || js.consumer.is_empty() {
                return Err("[jetstream]: url, stream and consumer must not be empty".into());
            }
            if js.max_ack_pending == 0 {
                return Err("[jetstream]: max_ack_pending must be at least 1".into());
            }
            if js.ack_wait < Duration::from_secs(1) {
                return Err("[jetstream]: ack_wait must be at least 1s (e.g. \"60s\")".into());
            }
        }
        if let Some(auth) = &self.auth {
            match (&auth.tokens_file, &auth.tokens_env) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => return Err("[auth]: set exactly one of tokens_file or tokens_env".into()),
            }
            // Ingest demands tokens, but the dead letters (event payloads), jobs and
            // metrics would be open on the same port: that is a mistake, not a choice.
            let admin_listen = self.admin_listen();
            if self.admin.token_env.is_none() && !is_loopback(admin_listen) {
                return Err(format!("[auth] requires tokens for ingest, but the admin endpoints (/v1/dead-letters with event payloads, /v1/jobs, /v1/streams, /metrics, /ui) on {admin_listen} have no token: set [admin] token_env (SLUICE_ADMIN_TOKEN_ENV), or move them to a loopback address with [admin] listen = \"127.0.0.1:9090\""));
            }
        }
        self.privacy.validate()?;
        if self.ledger.in_flight_timeout < Duration::from_secs(1) {
            return Err("[ledger] in_flight_timeout must be at least 1s (e.g. \"60s\")".into());
        }
        for (name, source) in &self.sources {
            source.check(name)?;
        }
        if !(1..=64).contains(&self.flows.max_parallel) {
            return Err(format!(
                "[flows] max_parallel = {}: give 1 to 64",
                self.flows.max_parallel
            ));
        }
        for (name, hook) in &self.webhooks {
            hook.validate()
                .map_err(|e| format!("[webhooks.{name}]: {e}"))?;
        }
        Ok(())
    }

    /// Where the admin endpoints listen: `[admin] listen`, or the HTTP port.
    fn admin_listen(&self) -> &str {
        if self.admin.listen.is_empty() {
            &self.http.listen
        } else {
            &self.admin.listen
        }
    }

    /// Warns about each listener reachable beyond loopback without the protection it
    /// should have (tokens for ingest and admin, a client certificate for TCP).
    pub fn warn_unprotected_listeners(&self) {
        let admin_listen = self.admin_listen();
        let admin_token = self.admin.token_env.is_some();
        if self.auth.is_none() && !is_loopback(&self.http.listen) {
            tracing::warn!(
                listen = %self.http.listen,
                "http.listen is not a loopback address and there is no [auth] section: anyone who can reach it can write into every stream. Add [auth] tokens_file (lines name:token:streams)."
            );
        }
        if self.auth.is_some() && !admin_token {
            tracing::warn!(
                listen = %admin_listen,
                "[auth] requires tokens for ingest but the admin endpoints have no token; they are reachable from this host only (loopback). Set [admin] token_env to protect them too."
            );
        } else if !admin_token && !is_loopback(admin_listen) {
            tracing::warn!(
                listen = %admin_listen,
                "The admin endpoints (/metrics, /v1/streams, /v1/dead-letters, which show event payloads) listen on a non-loopback address without an admin token. Set [admin] token_env."
            );
        }
        let tcp_certified = self.tcp.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !self.tcp.listen.is_empty() && !is_loopback(&self.tcp.listen) && !tcp_certified {
            tracing::warn!(
                listen = %self.tcp.listen,
                "tcp.listen is not a loopback address and no client certificate is required: anyone who can reach it can write lines. Keep it on a private network, or set [tcp.tls] with client_ca."
            );
        }
    }

    /// What the configuration says of streams: the schemas' directory, `[defaults]` and
    /// `[streams.NAME]` (what [`crate::schema::Registry::load`] reads).
    pub fn streams_config(&self) -> StreamsConfig<'_> {
        StreamsConfig {
            schemas_dir: &self.schemas_dir,
            defaults: &self.defaults,
            streams: &self.streams,
            privacy: &self.privacy,
            database_url: &self.database.url,
            json_as_value: matches!(
                crate::sink::Dialect::from_url(&self.database.url),
                Ok(crate::sink::Dialect::Postgres)
            ),
        }
    }

    /// What a replay takes from the configuration.
    pub fn replay_settings(&self) -> crate::replay::ReplaySettings {
        crate::replay::ReplaySettings {
            stream_field: self.tcp.stream_field.clone(),
            write_timeout: self.database.write_timeout,
        }
    }

    /// What the server's jobs take from the configuration.
    pub fn jobs_settings(&self) -> crate::jobs::JobsSettings {
        crate::jobs::JobsSettings {
            jobs: self.jobs.clone(),
            streams: self.streams_config().to_source(),
            replay: self.replay_settings(),
            sources: self.sources.clone(),
            transforms: self.transforms.clone(),
            flows: self.flows.clone(),
            max_payload_bytes: self.dead_letters.max_payload_bytes,
        }
    }

    /// The transforms' graph over `streams`, checked (inputs, cycles, SQL files).
    pub fn flow_graph(&self, streams: &[String]) -> Result<crate::flows::Graph, String> {
        let graph = crate::flows::Graph::new(&self.transforms, &self.sources, streams)?;
        let dialect = crate::sink::Dialect::from_url(&self.database.url)
            .map_err(|m| format!("[database].url: {m}"))?;
        graph.check_files(dialect)?;
        Ok(graph)
    }

    /// The effective settings of `stream`: `[defaults]` overlaid by `[streams.NAME]`.
    pub fn stream_settings(&self, stream: &str) -> StreamSettings {
        self.streams_config().settings(stream)
    }
}

/// An environment value as TOML would read it (`1000` is an integer, `true` a boolean),
/// falling back to a plain string (`sqlite://x.db`, `127.0.0.1:8080`, `20ms`).
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !matches!(v, toml::Value::Table(_)))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_the_configuration_is_addressable_from_the_environment() {
        // A table of Config must be in `section`: a field whose default is not a
        // scalar (or an Option of a struct) is one.
        let scalars = [
            "schemas_dir",
            "shutdown_timeout",
            "log_summary_interval",
            "max_inflight_bytes",
        ];
        for field in fields_of::<Config>() {
            assert!(
                scalars.contains(field) || section(field).is_some(),
                "[{field}] is a table of the configuration but `section` does not know it: add it there"
            );
        }
        for (name, path) in [
            ("schemas_dir", "schemas_dir"),
            ("database_url", "database.url"),
            ("http_listen", "http.listen"),
            ("http_tls_cert", "http.tls.cert"),
            ("http_tls_client_ca", "http.tls.client_ca"),
            ("tcp_tls_key", "tcp.tls.key"),
            ("admin_token_env", "admin.token_env"),
            ("auth_tokens_file", "auth.tokens_file"),
            ("spool_max_bytes", "spool.max_bytes"),
            ("tcp_max_line_bytes", "tcp.max_line_bytes"),
            ("jetstream_url", "jetstream.url"),
            ("jetstream_max_ack_pending", "jetstream.max_ack_pending"),
            ("defaults_batch_max_wait", "defaults.batch_max_wait"),
            ("dead_letters_retention", "dead_letters.retention"),
            ("jobs_stale_after", "jobs.stale_after"),
            (
                "streams_order_placed_id_field",
                "streams.order_placed.id_field",
            ),
            ("streams_reading_table", "streams.reading.table"),
            ("webhooks_stripe_secret_env", "webhooks.stripe.secret_env"),
        ] {
            assert_eq!(
                env_path(name).map(|p| p.join(".")).as_deref(),
                Some(path),
                "{name}"
            );
        }
        assert_eq!(env_path("http_listn"), None);
        assert_eq!(env_path("streams_id_field"), None, "a stream needs a name");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_file_gives_the_documented_defaults() {
        let c = Config::from_toml_and_env("", "test", env(&[])).unwrap();
        assert_eq!(c.database.url, "sqlite://sluice.db");
        assert_eq!(c.schemas_dir, PathBuf::from("schemas"));
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert_eq!(c.defaults.batch_max_wait, Duration::from_millis(20));
        assert_eq!(c.defaults.queue_max_events, 50_000);
    }

    #[test]
    fn environment_overrides_file_values() {
        let c = Config::from_toml_and_env(
            "[http]\nlisten = \"0.0.0.0:1\"\n[defaults]\nbatch_max_events = 5\n",
            "test",
            env(&[
                ("SLUICE_HTTP_LISTEN", "127.0.0.1:9"),
                ("SLUICE_DATABASE_URL", "postgres://x@h/db"),
                ("SLUICE_DEFAULTS_BATCH_MAX_WAIT", "5ms"),
                ("SLUICE_HTTP_MAX_BODY_BYTES", "1024"),
                ("SLUICE_TEST_POSTGRES_URL", "ignored"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:9");
        assert_eq!(c.database.url, "postgres://x@h/db");
        assert_eq!(c.defaults.batch_max_events, 5);
        assert_eq!(c.defaults.batch_max_wait, Duration::from_millis(5));
        assert_eq!(c.http.max_body_bytes, 1024);
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let e = Config::from_toml_and_env("[http]\nlistn = \"x\"\n", "sluice.toml", env(&[]))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("listn") && msg.contains("sluice.toml"),
            "{msg}"
        );
        let e = Config::from_toml_and_env("", "t", env(&[("SLUICE_HTTP_LISTN", "x")])).unwrap_err();
        assert!(e.to_string().contains("SLUICE_HTTP_LISTN"), "{e}");
    }

    #[test]
    fn variables_named_by_env_keys_hold_secrets_not_settings() {
        let c = Config::from_toml_and_env(
            "[admin]\ntoken_env = \"SLUICE_ADMIN_TOKEN\"\n[auth]\ntokens_env = \"SLUICE_TOKENS\"\n",
            "t",
            env(&[
                ("SLUICE_ADMIN_TOKEN", "0123456789abcdef0123"),
                ("SLUICE_TOKENS", "a:0123456789abcdef0123:*"),
                ("SLUICE_HTTP_LISTEN", "0.0.0.0:8080"),
            ]),
        )
        .unwrap();
        assert_eq!(c.admin.token_env.as_deref(), Some("SLUICE_ADMIN_TOKEN"));
        assert_eq!(c.http.listen, "0.0.0.0:8080");
        let c = Config::from_toml_and_env(
            "",
            "t",
            env(&[
                ("SLUICE_ADMIN_TOKEN_ENV", "SLUICE_ADMIN_TOKEN"),
                ("SLUICE_ADMIN_TOKEN", "0123456789abcdef0123"),
            ]),
        )
        .unwrap();
        assert_eq!(c.admin.token_env.as_deref(), Some("SLUICE_ADMIN_TOKEN"));
    }

    #[test]
    fn stream_overrides_apply_over_defaults() {
        let c = Config::from_toml_and_env(
            "[defaults]\nbatch_max_events = 10\n[streams.orders]\ntable = \"o\"\nbatch_max_wait = \"1s\"\n",
            "t",
            env(&[]),
        )
        .unwrap();
        let s = c.stream_settings("orders");
        assert_eq!(s.batch_max_events, 10);
        assert_eq!(s.batch_max_wait, Duration::from_secs(1));
        assert_eq!(c.streams["orders"].table.as_deref(), Some("o"));
    }

    #[test]
    fn zero_limits_are_refused_naming_the_key() {
        for (toml, key) in [
            ("[http]\nmax_connections = 0\n", "http.max_connections"),
            ("[tcp]\nmax_connections = 0\n", "tcp.max_connections"),
            (
                "[database]\nmax_connections = 0\n",
                "database.max_connections",
            ),
            (
                "[http]\nbody_read_timeout = \"0s\"\n",
                "http.body_read_timeout",
            ),
            ("shutdown_timeout = \"0s\"\n", "shutdown_timeout"),
        ] {
            let e = Config::from_toml_and_env(toml, "t", env(&[])).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn bad_durations_say_how_to_write_them() {
        let e = Config::from_toml_and_env("[defaults]\nbatch_max_wait = \"soon\"\n", "t", env(&[]))
            .unwrap_err();
        assert!(e.to_string().contains("20ms"), "{e}");
    }

    #[test]
    fn ingest_tokens_with_open_admin_endpoints_beyond_loopback_are_refused() {
        let open = "[http]\nlisten = \"0.0.0.0:8080\"\n[auth]\ntokens_env = \"T\"\n";
        let e = Config::from_toml_and_env(open, "t", env(&[])).unwrap_err();
        assert!(e.to_string().contains("[admin] token_env"), "{e}");
        for fixed in [
            format!("{open}[admin]\ntoken_env = \"A\"\n"),
            format!("{open}[admin]\nlisten = \"127.0.0.1:9090\"\n"),
        ] {
            Config::from_toml_and_env(&fixed, "t", env(&[])).unwrap();
        }
    }
}
