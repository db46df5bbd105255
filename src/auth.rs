//! Access control: the ingest tokens of `[auth]` (each named, granting some streams) and
//! the admin token of `[admin] token_env`.
//!
//! In: the token lines from a file or an environment variable, and per request the
//! bearer token presented. Out: who it is (the token's name, for logs and metrics) and
//! whether it may write to a stream. Tokens are kept as SHA-256 digests and compared in
//! constant time; the token file is re-read on SIGHUP ([`IngestTokens::reload`]), and
//! a reload that fails keeps the tokens in force.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::http::{header, HeaderMap};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `[auth]`: ingest tokens for `POST /v1/streams/{stream}/events`. Each token is a line
/// `name:token:stream1,stream2` (`*` grants every stream).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A file of token lines (re-read on SIGHUP, so tokens rotate without a restart).
    pub tokens_file: Option<PathBuf>,
    /// An environment variable holding token lines separated by `;`.
    pub tokens_env: Option<String>,
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grant {
    All,
    Streams(BTreeSet<String>),
}

/// One token: its name, the digest of its secret, its streams.
#[derive(Debug, Clone)]
struct Token {
    name: Arc<str>,
    digest: [u8; 32],
    grant: Grant,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401: no bearer token, or not a known one.
    Unauthenticated,
    /// 403: a known token that does not grant this stream; carries its name.
    Forbidden(Arc<str>),
}

/// Where the token lines come from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Env(String),
}

/// The ingest tokens in force.
#[derive(Debug)]
pub struct IngestTokens {
    source: Source,
    tokens: RwLock<Arc<Vec<Token>>>,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Parses token lines `name:token:streams`; `what` names the source in errors (which
/// never quote a token).
fn parse(text: &str, separator: char, what: &str) -> anyhow::Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut names = BTreeSet::new();
    let mut digests = BTreeSet::new();
    for (i, line) in text.split(separator).enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut parts = line.splitn(3, ':');
        let (Some(name), Some(secret), Some(streams)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!(
                "{what}, entry {n}: write it as name:token:stream1,stream2 (or * for every stream)"
            );
        };
        let (name, secret, streams) = (name.trim(), secret.trim(), streams.trim());
        anyhow::ensure!(!name.is_empty(), "{what}, entry {n}: the token has no name");
        anyhow::ensure!(
            secret.len() >= 16,
            "{what}, entry {n} ({name}): the token is shorter than 16 characters; use a long random one (e.g. openssl rand -hex 24)"
        );
        anyhow::ensure!(
            names.insert(name.to_owned()),
            "{what}: the name {name} is used twice"
        );
        let d = digest(secret.as_bytes());
        anyhow::ensure!(
            digests.insert(d),
            "{what}, entry {n} ({name}): the same token is listed twice"
        );
        let grant = if streams == "*" {
            Grant::All
        } else {
            let set: BTreeSet<String> = streams
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            anyhow::ensure!(
                !set.is_empty(),
                "{what}, entry {n} ({name}): no streams; list them, or * for every stream"
            );
            Grant::Streams(set)
        };
        tokens.push(Token {
            name: name.into(),
            digest: d,
            grant,
        });
    }
    anyhow::ensure!(!tokens.is_empty(), "{what} holds no token");
    Ok(tokens)
}

impl IngestTokens {
    /// Loads the tokens of `[auth]`.
    pub fn load(config: &AuthConfig) -> anyhow::Result<IngestTokens> {
        let source = match (&config.tokens_file, &config.tokens_env) {
            (Some(path), _) => Source::File(path.clone()),
            (None, Some(var)) => Source::Env(var.clone()),
            (None, None) => anyhow::bail!("[auth]: set tokens_file or tokens_env"),
        };
        let tokens = read(&source)?;
        Ok(IngestTokens {
            source,
            tokens: RwLock::new(Arc::new(tokens)),
        })
    }

    /// Re-reads the token file (SIGHUP). On an error the tokens in force stay.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let tokens = read(&self.source)?;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
        Ok(n)
    }

    /// The names of the tokens in force.
    pub fn names(&self) -> Vec<String> {
        self.current().iter().map(|t| t.name.to_string()).collect()
    }

    fn current(&self) -> Arc<Vec<Token>> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Who may write to `stream` with these headers: the token's name, or why not.
    /// Every token is compared, in constant time, whichever matches.
    pub fn authorize(&self, headers: &HeaderMap, stream: &str) -> Result<Arc<str>, Denied> {
        let presented = bearer(headers).ok_or(Denied::Unauthenticated)?;
        let d = digest(presented.as_bytes());
        let tokens = self.current();
        let mut found: Option<&Token> = None;
        for t in tokens.iter() {
            if bool::from(t.digest.ct_eq(&d)) {
                found = Some(t);
            }
        }
        let token = found.ok_or(Denied::Unauthenticated)?;
        match &token.grant {
            Grant::All => Ok(token.name.clone()),
            Grant::Streams(s) if s.contains(stream) => Ok(token.name.clone()),
            Grant::Streams(_) => Err(Denied::Forbidden(token.name.clone())),
        }
    }
}

fn read(source: &Source) -> anyhow::Result<Vec<Token>> {
    match source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("[auth] tokens_file = {}: cannot read it", path.display())
            })?;
            parse(
                &text,
                '\n',
                &format!("[auth] tokens_file {}", path.display()),
            )
        }
        Source::Env(var) => {
            let text = std::env::var(var)
                .with_context(|| format!("[auth] tokens_env = {var:?}: the variable is not set"))?;
            parse(&text, ';', &format!("[auth] tokens_env {var}"))
        }
    }
}

/// The admin token of `[admin] token_env`, as a digest.
#[derive(Debug)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    /// Reads the token from `var`; it must be set and long enough.
    pub fn from_env(var: &str) -> anyhow::Result<AdminToken> {
        let token = std::env::var(var)
            .with_context(|| format!("[admin] token_env = {var:?}: the variable is not set"))?;
        let token = token.trim();
        anyhow::ensure!(
            token.len() >= 16,
            "[admin] token_env = {var:?}: the token is shorter than 16 characters; use a long random one"
        );
        Ok(AdminToken {
            digest: digest(token.as_bytes()),
        })
    }

    /// Whether the request carries the admin token.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|t| bool::from(digest(t.as_bytes()).ct_eq(&self.digest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lines_name_their_mistakes_without_quoting_the_token() {
        let good = parse(
            "# comment\napp:0123456789abcdef:orders, shipments\nops:fedcba9876543210fedcba:*\n",
            '\n',
            "f",
        )
        .unwrap();
        assert_eq!(good.len(), 2);
        assert_eq!(good[1].grant, Grant::All);
        let short = parse("app:hunter2:*", '\n', "f").unwrap_err().to_string();
        assert!(
            short.contains("shorter") && !short.contains("hunter2"),
            "{short}"
        );
        let bad = parse("app-without-streams", '\n', "f")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("name:token:"), "{bad}");
    }
}

/// The access rules of a running Sluice: ingest tokens and admin token, each optional.
#[derive(Debug, Default)]
pub struct Access {
    pub ingest: Option<IngestTokens>,
    pub admin: Option<AdminToken>,
    /// Refused requests, logged once per kind and then summarised.
    pub refusals: crate::log_summary::LogSummary<RefusedKind>,
}

/// A kind of refused request: the surface (`ingest`, `admin`), the status, and the
/// token's name for a 403.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefusedKind(pub &'static str, pub u16, pub Option<Arc<str>>);

impl crate::log_summary::Kind for RefusedKind {
    fn first(&self, example: &str) {
        tracing::warn!(
            surface = self.0,
            status = self.1,
            token = self.2.as_deref().unwrap_or("-"),
            peer = example,
            "Request refused by access control; further ones of this kind are summarised per interval."
        );
    }

    fn repeated(&self, count: u64, interval: std::time::Duration, last: &str) {
        tracing::warn!(
            surface = self.0,
            status = self.1,
            token = self.2.as_deref().unwrap_or("-"),
            count,
            interval_s = interval.as_secs_f64(),
            last_peer = last,
            "More requests refused by access control in the last interval (summary)."
        );
    }
}

impl Access {
    /// Loads the ingest tokens of `[auth]` and the admin token named by `[admin]
    /// token_env` (whether the listeners are exposed without them is
    /// `Config::warn_unprotected_listeners`'s concern).
    pub fn load(
        auth: Option<&AuthConfig>,
        admin_token_env: Option<&str>,
    ) -> anyhow::Result<Access> {
        let ingest = auth.map(IngestTokens::load).transpose()?;
        let admin = admin_token_env.map(AdminToken::from_env).transpose()?;
        if let Some(tokens) = &ingest {
            tracing::info!(tokens = ?tokens.names(), "Ingest tokens loaded.");
        }
        crate::telemetry::access_registered();
        Ok(Access {
            ingest,
            admin,
            refusals: Default::default(),
        })
    }

    /// Re-reads what can change without a restart (the token file), logging the result.
    pub fn reload(&self) {
        let Some(tokens) = &self.ingest else { return };
        match tokens.reload() {
            Ok(_) => tracing::info!(tokens = ?tokens.names(), "SIGHUP: ingest tokens reloaded."),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "SIGHUP: the ingest tokens could not be reloaded; the previous ones stay in force.")
            }
        }
    }

    /// Counts and logs (in summary) a refused request.
    pub fn refused(&self, surface: &'static str, status: u16, token: Option<Arc<str>>, peer: &str) {
        crate::telemetry::access_refused(surface, status);
        self.refusals
            .record(RefusedKind(surface, status, token), 1, peer);
    }
}

/// Whether `listen` (`host:port`) binds only loopback.
pub fn is_loopback(listen: &str) -> bool {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => listen.starts_with("localhost:"),
    }
}
