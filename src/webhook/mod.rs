//! Vendor webhooks: `[webhooks.NAME]` sources, each one URL (`POST /v1/hooks/{NAME}`)
//! whose requests are verified ([`verify`]) before anything is parsed or stored, then
//! turned into events: JSON objects, arrays of them, or form fields ([`form`]) as one
//! flat object; routed to a stream; decorated with copied headers and the delivery id.
//!
//! In: the configuration and the schemas at start-up; per request, its headers and
//! body. Out: per event, the stream it goes to and its final JSON value. The HTTP face
//! is `http/hooks.rs`; queuing is [`crate::ingest`]'s.

pub mod form;
mod settings;
pub mod verify;

pub use settings::{HmacAlgorithm, SignatureEncoding, VerifyScheme, WebhookConfig, WebhookRoute};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context;
use axum::http::{HeaderMap, HeaderName};
use serde_json::Value;

use crate::log_summary::{self, LogSummary};
use crate::schema::{Registry, Stream};
use verify::{Refusal, Secrets, Verified};

/// Where a webhook's events go.
#[derive(Debug)]
enum Destination {
    /// Every event to one stream.
    Stream(Arc<Stream>),
    /// Per event, by a value of the event or of a request header.
    Routed {
        by: RouteBy,
        streams: HashMap<String, Arc<Stream>>,
        fallback: Option<Arc<Stream>>,
    },
}

impl Destination {
    /// The stream, or the route, of `config`, with every stream name checked.
    fn new(config: &WebhookConfig, registry: &Registry) -> anyhow::Result<Destination> {
        let stream = |s: &str, key: &str| {
            registry.get(s).cloned().with_context(|| {
                format!(
                    "{key} = {s:?} names no stream; the streams are {:?}",
                    registry.names()
                )
            })
        };
        Ok(match (&config.stream, &config.route) {
            (Some(s), _) => Destination::Stream(stream(s, "stream")?),
            (None, Some(route)) => {
                let by = match (&route.pointer, &route.header) {
                    (Some(p), _) => RouteBy::Pointer(p.clone()),
                    (None, Some(h)) => {
                        RouteBy::Header(HeaderName::try_from(h.as_str()).with_context(|| {
                            format!("route.header = {h:?} is not a header name")
                        })?)
                    }
                    (None, None) => anyhow::bail!("[route] needs pointer or header"),
                };
                let mut streams = HashMap::new();
                let mut fallback = None;
                for (value, s) in &route.streams {
                    let target = stream(s, &format!("route.streams.{value:?}"))?;
                    if value == "*" {
                        fallback = Some(target);
                    } else {
                        streams.insert(value.clone(), target);
                    }
                }
                Destination::Routed {
                    by,
                    streams,
                    fallback,
                }
            }
            (None, None) => anyhow::bail!("set stream or [route]"),
        })
    }
}

#[derive(Debug)]
enum RouteBy {
    Pointer(String),
    Header(HeaderName),
}

/// One configured webhook source, ready to serve.
#[derive(Debug)]
pub struct Webhook {
    pub name: String,
    pub config: WebhookConfig,
    secrets: Secrets,
    destination: Destination,
    /// Request headers copied into each event: header, property.
    headers: Vec<(HeaderName, String)>,
    /// Mailgun: the tokens accepted within the tolerance, with the SHA-256 of the body
    /// they came with and until when they are kept (Unix seconds). A token may come
    /// again with the same body (a redelivery, stored once by `id_field`), never with
    /// another one. Only requests with a valid signature are recorded, so only the
    /// vendor can grow it; it is per instance.
    seen_tokens: std::sync::Mutex<std::collections::HashMap<String, ([u8; 32], i64)>>,
}

/// Every configured webhook, by name, and the summarised log of refused requests.
#[derive(Debug, Default)]
pub struct Webhooks {
    hooks: BTreeMap<String, Arc<Webhook>>,
    pub refusals: LogSummary<RefusalKind>,
}

/// Refused requests are logged once per webhook and reason, then summarised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefusalKind(pub String, pub Refusal);

impl log_summary::Kind for RefusalKind {
    fn first(&self, example: &str) {
        tracing::warn!(
            webhook = %self.0,
            reason = self.1.as_str(),
            peer = example,
            "Webhook request refused; nothing stored. Further refusals of this webhook and reason are summarised per interval."
        );
    }

    fn repeated(&self, count: u64, interval: std::time::Duration, last: &str) {
        tracing::warn!(
            webhook = %self.0,
            reason = self.1.as_str(),
            count,
            interval_s = interval.as_secs_f64(),
            last_peer = last,
            "More webhook requests refused in the last interval (summary)."
        );
    }
}

impl Webhooks {
    /// Loads every `[webhooks.NAME]`: their secrets, streams and routes. Fails, naming
    /// the key, on a stream that does not exist or a secret that cannot be read.
    pub fn load(
        config: &BTreeMap<String, WebhookConfig>,
        registry: &Registry,
    ) -> anyhow::Result<Webhooks> {
        let mut hooks = BTreeMap::new();
        for (name, hook) in config {
            let loaded = Webhook::load(name, hook, registry)
                .with_context(|| format!("[webhooks.{name}]"))?;
            if hook.verify == VerifyScheme::None {
                tracing::warn!(
                    webhook = %name,
                    "verify = \"none\": anyone who can reach POST /v1/hooks/{name} can write into its streams; use it only on a trusted network."
                );
            }
            let reasons = verify::Refusal::ALL.map(verify::Refusal::as_str);
            crate::telemetry::webhook_registered(name, &reasons);
            hooks.insert(name.clone(), Arc::new(loaded));
        }
        Ok(Webhooks {
            hooks,
            refusals: LogSummary::default(),
        })
    }

    /// What `sluice check` can say without the secrets: every webhook's streams and
    /// route exist; one line per webhook.
    pub fn describe(
        config: &BTreeMap<String, WebhookConfig>,
        registry: &Registry,
    ) -> anyhow::Result<Vec<String>> {
        config
            .iter()
            .map(|(name, hook)| {
                let destination = Destination::new(hook, registry)
                    .with_context(|| format!("[webhooks.{name}]"))?;
                let to = match destination {
                    Destination::Stream(s) => format!("stream {}", s.name),
                    Destination::Routed {
                        by,
                        streams,
                        fallback,
                    } => {
                        let mut names: Vec<&str> =
                            streams.values().map(|s| s.name.as_str()).collect();
                        names.extend(fallback.as_ref().map(|s| s.name.as_str()));
                        names.sort_unstable();
                        names.dedup();
                        let by = match by {
                            RouteBy::Pointer(p) => format!("the event's {p}"),
                            RouteBy::Header(h) => format!("header {h}"),
                        };
                        format!("streams {} chosen by {by}", names.join(", "))
                    }
                };
                Ok(format!(
                    "POST /v1/hooks/{name}: verify = {:?}, to {to}",
                    hook.verify.as_str()
                ))
            })
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Webhook>> {
        self.hooks.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Counts and logs (in summary) a refused request.
    pub fn refused(&self, hook: &str, reason: Refusal, peer: &str) {
        crate::telemetry::webhook_rejected(hook, reason.as_str());
        self.refusals
            .record(RefusalKind(hook.to_owned(), reason), 1, peer);
    }
}

impl Webhook {
    fn load(name: &str, config: &WebhookConfig, registry: &Registry) -> anyhow::Result<Webhook> {
        let destination = Destination::new(config, registry)?;
        let headers = config
            .headers
            .iter()
            .map(|(h, property)| {
                HeaderName::try_from(h.as_str())
                    .map(|h| (h, property.clone()))
                    .with_context(|| format!("headers: {h:?} is not a header name"))
            })
            .collect::<anyhow::Result<_>>()?;
        let secrets =
            Secrets::new(config.verify, read_secrets(config)?).map_err(anyhow::Error::msg)?;
        if config.verify.needs_secret() && secrets.is_empty() {
            anyhow::bail!(
                "the secret is empty: put at least one secret in secret_env or secret_file"
            );
        }
        Ok(Webhook {
            name: name.to_owned(),
            config: config.clone(),
            secrets,
            destination,
            headers,
            seen_tokens: Default::default(),
        })
    }

    /// Checks who sent the request; see [`verify::verify`]. For Mailgun, whose
    /// signature covers a token and not the body, also refuses a token seen within the
    /// tolerance with another body.
    pub fn verify(&self, req: &verify::Request) -> Result<Verified, Refusal> {
        let verified = verify::verify(&self.config, &self.secrets, req)?;
        if self.config.verify == VerifyScheme::Mailgun {
            if let Some(token) = &verified.delivery_id {
                use sha2::Digest;
                let body: [u8; 32] = sha2::Sha256::digest(req.body).into();
                let keep = i64::try_from(self.config.tolerance.as_secs())
                    .unwrap_or(i64::MAX / 4)
                    .saturating_mul(2);
                let mut seen = self.seen_tokens.lock().unwrap_or_else(|p| p.into_inner());
                seen.retain(|_, (_, until)| *until >= req.now);
                match seen.get(token) {
                    Some((first, _)) if *first != body => return Err(Refusal::ReplayedSignature),
                    Some(_) => {}
                    None => {
                        seen.insert(token.clone(), (body, req.now.saturating_add(keep)));
                    }
                }
            }
        }
        Ok(verified)
    }

    /// The one stream of a webhook that is not routed per event.
    pub fn fixed_stream(&self) -> Option<&Arc<Stream>> {
        match &self.destination {
            Destination::Stream(s) => Some(s),
            Destination::Routed { .. } => None,
        }
    }

    /// The stream `event` goes to, or why none.
    pub fn route(&self, event: &Value, headers: &HeaderMap) -> Result<&Arc<Stream>, String> {
        let (by, streams, fallback) = match &self.destination {
            Destination::Stream(s) => return Ok(s),
            Destination::Routed {
                by,
                streams,
                fallback,
            } => (by, streams, fallback),
        };
        let (value, what) = match by {
            RouteBy::Pointer(p) => (
                event.pointer(p).and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
                    _ => None,
                }),
                format!("the event's {p}"),
            ),
            RouteBy::Header(h) => (
                headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                format!("header {h}"),
            ),
        };
        if let Some(s) = value.as_deref().and_then(|v| streams.get(v)) {
            return Ok(s);
        }
        fallback.as_ref().ok_or_else(|| {
            let mut known: Vec<&str> = streams.keys().map(String::as_str).collect();
            known.sort_unstable();
            match value {
                Some(v) => format!(
                    "webhook {}: {what} is {v:?}, which [webhooks.{}.route] maps to no stream (it maps {known:?}) and there is no \"*\" fallback",
                    self.name, self.name
                ),
                None => format!(
                    "webhook {}: {what} is missing (or not a string, number or boolean), and [webhooks.{}.route] has no \"*\" fallback",
                    self.name, self.name
                ),
            }
        })
    }

    /// Adds to `event` (an object) the copied headers and, if `stream` dedupes on an
    /// `id_field` the event lacks, the delivery id: as is for a single event, or
    /// `ID/INDEX` for the elements of a batch. Returns whether it changed the event.
    pub fn decorate(
        &self,
        event: &mut Value,
        headers: &HeaderMap,
        verified: &Verified,
        stream: &Stream,
        batch_index: Option<usize>,
    ) -> bool {
        let Value::Object(object) = event else {
            return false;
        };
        let mut changed = false;
        for (header, property) in &self.headers {
            if let Some(v) = headers.get(header) {
                let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                object.insert(property.clone(), Value::String(text));
                changed = true;
            }
        }
        if let Some(id_field) = &stream.id_field {
            if !object.contains_key(id_field) {
                let delivery = match (&verified.delivery_id, verified.delivery_property) {
                    (Some(id), _) => Some(Value::String(match batch_index {
                        Some(i) => format!("{id}/{i}"),
                        None => id.clone(),
                    })),
                    (None, Some(property)) => object.get(property).cloned(),
                    (None, None) => None,
                };
                if let Some(id) = delivery {
                    object.insert(id_field.clone(), id);
                    changed = true;
                }
            }
        }
        changed
    }
}

/// The secrets of `config`: comma-separated in `secret_env`, one per line in
/// `secret_file`; blanks are ignored. The error names the source, never the content.
fn read_secrets(config: &WebhookConfig) -> anyhow::Result<Vec<String>> {
    let split = |text: &str, sep: char| -> Vec<String> {
        text.split(sep)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    if let Some(var) = &config.secret_env {
        let text = std::env::var(var).with_context(|| {
            format!("secret_env = {var:?}: the environment variable is not set")
        })?;
        return Ok(split(&text, ','));
    }
    if let Some(path) = &config.secret_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("secret_file = {}: cannot read it", path.display()))?;
        return Ok(split(&text, '\n'));
    }
    Ok(Vec::new())
}
