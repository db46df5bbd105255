//! Publishing a transform's rows to Redis (`[transforms.NAME.publish]`): the storefront
//! reads a cache that the SQL source of truth feeds. The rows of the transform's last
//! statement (a query) become one key each, from a template over their columns
//! (`price:{sku}`), whose value is the row as a JSON object; SETs go in pipelines of
//! 1,000. With `full = true`, the keys under the template's prefix that the query no
//! longer returns are deleted.
//!
//! A publish happens inside the run, before its transaction commits: if Redis fails,
//! the run's writes and its pointer roll back, and the next run does it all again (a
//! SET of the same value is harmless), so nothing is ever skipped.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

/// The longest a publish may take before the run fails (and rolls back).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Commands per pipeline.
const PIPELINE: usize = 1000;

/// `[transforms.NAME.publish]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// The environment variable holding the Redis URL (`redis://host:6379/0`,
    /// `rediss://` for TLS); the URL itself never sits in the config file.
    pub redis_url_env: String,
    /// Each row's key, its `{column}`s replaced by the row's values (`price:{sku}`).
    pub key: String,
    /// Delete the keys under the key's prefix (its text before the first `{`) that the
    /// query no longer returns: the query must then return the whole set each run.
    #[serde(default)]
    pub full: bool,
}

/// A key template: text and column names in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Column(String),
}

impl KeyTemplate {
    /// Reads `price:{sku}`; a template must name at least one column.
    pub fn parse(template: &str) -> Result<KeyTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .map(|n| open + n)
                .ok_or_else(|| format!("key {template:?}: a {{ is never closed"))?;
            let column = &rest[open + 1..close];
            if column.is_empty() {
                return Err(format!("key {template:?}: {{}} names no column"));
            }
            parts.push(Part::Column(column.to_owned()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
            return Err(format!(
                "key {template:?} names no column: every row would have the same key; write e.g. \"price:{{sku}}\""
            ));
        }
        Ok(KeyTemplate { parts })
    }

    /// The text before the first column (`price:`).
    pub fn prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(t)) => t,
            _ => "",
        }
    }

    /// The key of `row`; a column the row lacks, or holds null, is an error naming it.
    pub fn render(&self, row: &Map<String, Value>) -> Result<String, String> {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => key.push_str(t),
                Part::Column(c) => match row.get(c) {
                    Some(Value::String(s)) => key.push_str(s),
                    Some(Value::Null) | None => {
                        return Err(format!(
                        "a row has no value for {{{c}}} of the key; the query's columns are {:?}",
                        row.keys().collect::<Vec<_>>()
                    ))
                    }
                    Some(other) => key.push_str(&other.to_string()),
                },
            }
        }
        Ok(key)
    }
}

impl PublishConfig {
    /// What is wrong with transform `name`'s publish settings, if anything (the URL's
    /// variable must be set).
    pub fn check(&self, name: &str) -> Result<(), String> {
        let at = |what: String| format!("[transforms.{name}.publish] {what}");
        let key = KeyTemplate::parse(&self.key).map_err(at)?;
        if self.full && key.prefix().is_empty() {
            return Err(at(format!(
                "full = true deletes the keys under the key's prefix, and key {:?} has none: start it with fixed text, e.g. \"price:{{sku}}\"",
                self.key
            )));
        }
        self.url().map_err(at)?;
        Ok(())
    }

    fn url(&self) -> Result<String, String> {
        std::env::var(&self.redis_url_env).map_err(|_| {
            format!(
                "redis_url_env = {:?}, but that variable is not set; set it to the Redis URL (redis://HOST:6379/0)",
                self.redis_url_env
            )
        })
    }
}

/// What a publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    pub set: u64,
    pub deleted: u64,
}

/// Publishes `rows` (JSON objects, one per row) to Redis as `config` says.
pub async fn publish(config: &PublishConfig, rows: &[String]) -> Result<Published, String> {
    let key = KeyTemplate::parse(&config.key)?;
    let mut entries = Vec::with_capacity(rows.len());
    for text in rows {
        let row: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| format!("a row did not read as a JSON object ({e}): {text}"))?;
        entries.push((key.render(&row)?, Value::Object(row).to_string()));
    }
    let url = config.url()?;
    let shown = crate::sink::redact(&url);
    let work = async {
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        for chunk in entries.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for (k, v) in chunk {
                pipe.set(k, v).ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut deleted = 0u64;
        if config.full {
            let keep: HashSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            let pattern = format!("{}*", glob_escape(key.prefix()));
            let mut stale: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(PIPELINE)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                stale.extend(keys.into_iter().filter(|k| !keep.contains(k.as_str())));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            stale.sort();
            stale.dedup();
            for chunk in stale.chunks(PIPELINE) {
                deleted += redis::cmd("DEL")
                    .arg(chunk)
                    .query_async::<u64>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok::<_, String>(Published {
            set: entries.len() as u64,
            deleted,
        })
    };
    match tokio::time::timeout(PUBLISH_TIMEOUT, work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(format!("publishing to Redis at {shown} failed: {e}")),
        Err(_) => Err(format!(
            "publishing to Redis at {shown} took longer than {}s",
            PUBLISH_TIMEOUT.as_secs()
        )),
    }
}

/// `text` with Redis's glob characters escaped, for `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_made_from_the_row() {
        let key = KeyTemplate::parse("price:{market}:{sku}").unwrap();
        assert_eq!(key.prefix(), "price:");
        let row = json!({"sku": "A-1", "market": "DE", "price": 1.5});
        assert_eq!(
            key.render(row.as_object().unwrap()).unwrap(),
            "price:DE:A-1"
        );
        let row = json!({"sku": 7, "market": "DE"});
        assert_eq!(key.render(row.as_object().unwrap()).unwrap(), "price:DE:7");
        let row = json!({"sku": null, "market": "DE"});
        assert!(key
            .render(row.as_object().unwrap())
            .unwrap_err()
            .contains("{sku}"));
        assert!(KeyTemplate::parse("price")
            .unwrap_err()
            .contains("names no column"));
        assert!(KeyTemplate::parse("price:{sku").is_err());
        assert_eq!(KeyTemplate::parse("{sku}").unwrap().prefix(), "");
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
