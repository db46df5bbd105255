//! Opening the database for a command: connecting (with every secret of the URL kept
//! out of messages) and bringing the tables in line with the schemas. The one start-up
//! path `serve` and `replay` share.

use anyhow::Context;

use super::DatabaseConfig;
use super::{connect, evolution, Storage};
use crate::schema::Registry;

/// The start-up every command that writes shares (`serve`, `replay`): connect to the
/// database, extend the tables whose schema gained optional properties, and create the
/// missing ones, so that no command runs against tables the schemas no longer match.
pub async fn open(
    database: &DatabaseConfig,
    registry: Registry,
) -> anyhow::Result<(Registry, Storage)> {
    let storage = connect_redacted(database).await?;
    prepare_tables(&storage.store, &registry).await?;
    Ok((registry, storage))
}

/// Extends the tables whose schema gained optional properties and creates the missing
/// ones, under the schema lock (another instance may be doing the same): at start-up
/// and before each replay job (a schema may have been fixed, or a stream added, since).
/// An existing table is not named in any DDL: even `CREATE TABLE IF NOT EXISTS` waits
/// for a table another session has locked.
pub async fn prepare_tables(store: &super::Store, registry: &Registry) -> anyhow::Result<()> {
    let streams: Vec<_> = registry.iter().cloned().collect();
    store
        .under_schema_lock(async {
            let missing = evolution::evolve_tables(store, &streams).await?;
            store.prepare(&missing).await.context(
                "cannot create the tables (is the database user allowed to CREATE TABLE?)",
            )?;
            store
                .prepare_ledger(&streams)
                .await
                .context("cannot create the load ledger's tables and indexes")
        })
        .await
        .context("cannot take the schema lock")?
}

/// A database URL without its secrets, for messages: the password of the user part
/// (`user:secret@`) and the value of every query parameter that names a password
/// (`?password=`, `sslpassword=`, …) become `***`.
pub fn redact(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (before_query.find("://"), before_query.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &before_query[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!(
                    "{}{user}:***{}",
                    &before_query[..scheme_end + 3],
                    &before_query[at..]
                ),
                None => before_query.to_owned(),
            }
        }
        _ => before_query.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// Whether a URL query parameter holds a password.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key == "pass" || key == "pwd"
}

/// `text` (an error message, say) with every secret of `url` replaced by `***`, so
/// that a driver error quoting the URL or the password does not leak it.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    for secret in url_secrets(url) {
        out = out.replace(&secret, "***");
    }
    out
}

/// The secrets a database URL carries, longest first (so that a secret containing
/// another is replaced whole).
fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let (before_query, query) = url.split_once('?').unwrap_or((url, ""));
    if let (Some(scheme_end), Some(at)) = (before_query.find("://"), before_query.rfind('@')) {
        if at > scheme_end {
            if let Some((_, password)) = before_query[scheme_end + 3..at].split_once(':') {
                secrets.push(password.to_owned());
            }
        }
    }
    for pair in query.split('&') {
        if let Some((key, value)) = pair.split_once('=') {
            if is_secret_key(key) {
                secrets.push(value.to_owned());
            }
        }
    }
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

/// Connects to the configured database; the error never shows the URL's secrets.
pub async fn connect_redacted(config: &DatabaseConfig) -> anyhow::Result<Storage> {
    connect(config).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the database {}: {}",
            redact(&config.url),
            redact_in(&e.to_string(), &config.url)
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            super::redact("postgres://app:s3cret@h/db"),
            "postgres://app:***@h/db"
        );
        assert_eq!(super::redact("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(
            super::redact("postgres://app@h/db?sslmode=require&password=s3cret"),
            "postgres://app@h/db?sslmode=require&password=***"
        );
        assert_eq!(
            super::redact_in(
                "error: password s3cret rejected",
                "mysql://u@h/d?Password=s3cret"
            ),
            "error: password *** rejected"
        );
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
