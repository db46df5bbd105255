//! File sources (`[sources.NAME] path = "/data/prices/*.csv"`): each CSV or NDJSON file
//! the pattern matches is loaded once. Its pointer, one row of `sluice_pointers` per
//! file (`NAME/file.csv`), records its size, modification time and SHA-256 and the last
//! line loaded, moved in the transaction of each load of the file's rows: a run killed
//! in the middle of a file goes on after that line, a file loaded whole is skipped, and
//! a file that changed after it was loaded is left alone (and said so) until the source
//! is reset.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use super::{PullReport, Run};
use crate::ingest::csv_events::{self, CsvRow};
use crate::ingest::filing::Filing;
use crate::schema::Stream;
use crate::sink::ledger::Pointer;

/// What is wrong with a `path` pattern, if anything.
pub fn check_path(path: &str) -> Result<(), String> {
    let (dir, pattern) = split(path);
    if dir.as_os_str().is_empty() || !dir.is_absolute() {
        return Err(format!(
            "{path:?} must be an absolute path, e.g. \"/data/prices/*.csv\""
        ));
    }
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(format!("{path:?}: * and ? match in the file name only"));
    }
    if format_of(pattern).is_none() {
        return Err(format!("{path:?} must name .csv, .ndjson or .jsonl files"));
    }
    Ok(())
}

/// The directory and the file-name pattern of `path`.
fn split(path: &str) -> (PathBuf, &str) {
    match path.rsplit_once('/') {
        Some((dir, pattern)) => (
            PathBuf::from(if dir.is_empty() { "/" } else { dir }),
            pattern,
        ),
        None => (PathBuf::new(), path),
    }
}

/// How a file holds its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Csv,
    Ndjson,
}

fn format_of(name: &str) -> Option<FileFormat> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".csv") {
        Some(FileFormat::Csv)
    } else if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
        Some(FileFormat::Ndjson)
    } else {
        None
    }
}

/// Whether `name` matches `pattern` (`*`: any run of characters, `?`: one).
fn matches(pattern: &[char], name: &[char]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some(('*', rest)), _) => {
            matches(rest, name) || (!name.is_empty() && matches(pattern, &name[1..]))
        }
        (Some(('?', rest)), Some((_, tail))) => matches(rest, tail),
        (Some((p, rest)), Some((n, tail))) if p == n => matches(rest, tail),
        _ => false,
    }
}

/// The files `path` matches, by name.
fn files(path: &str) -> anyhow::Result<Vec<PathBuf>> {
    let (dir, pattern) = split(path);
    let pattern: Vec<char> = pattern.chars().collect();
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
    {
        let entry = entry?;
        let name: Vec<char> = entry.file_name().to_string_lossy().chars().collect();
        if entry.file_type()?.is_file() && matches(&pattern, &name) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// One file as read: its identity and its rows.
struct File {
    key: String,
    name: String,
    size: u64,
    modified: String,
    sha256: String,
    rows: Vec<CsvRow>,
}

/// Reads `path` whole, with its identity, and its rows for `stream`.
fn read(source: &str, path: &Path, stream: &Stream) -> anyhow::Result<File> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let meta = std::fs::metadata(path)?;
    let modified = meta
        .modified()
        .ok()
        .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339())
        .unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rows = match format_of(&name) {
        Some(FileFormat::Ndjson) => ndjson_rows(&bytes),
        _ => csv_events::rows(stream, &bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
    };
    Ok(File {
        key: format!("{source}/{name}"),
        size: meta.len(),
        modified,
        sha256: crate::event::sha256_hex(&bytes),
        name,
        rows,
    })
}

/// An NDJSON file's non-blank lines, with their line numbers.
fn ndjson_rows(bytes: &[u8]) -> Vec<CsvRow> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                return None;
            }
            let (text, error) = match std::str::from_utf8(line) {
                Ok(text) => (text.to_owned(), None),
                Err(e) => (
                    String::from_utf8_lossy(line).into_owned(),
                    Some(format!("line {}: not UTF-8 ({e})", i + 1)),
                ),
            };
            Some(CsvRow {
                line: i as u64 + 1,
                text,
                error,
            })
        })
        .collect()
}

/// Where a file stands: loaded up to `line`, whole when `done`.
struct Stored {
    text: String,
    sha256: String,
    line: u64,
    done: bool,
}

fn stored(text: Option<String>) -> Option<Stored> {
    let text = text?;
    let value: Value = serde_json::from_str(&text).ok()?;
    Some(Stored {
        sha256: value["sha256"].as_str().unwrap_or_default().to_owned(),
        line: value["line"].as_u64().unwrap_or(0),
        done: value["done"].as_bool().unwrap_or(false),
        text,
    })
}

/// Loads every file `path` matches that was not loaded whole yet, `load_size` rows per
/// load.
pub async fn pull(run: Run<'_>, path: &str) -> anyhow::Result<PullReport> {
    let Run {
        name,
        source,
        stream,
        storage,
        max_payload,
        progress,
    } = run;
    // What to load: each file not loaded whole, from after its last line loaded.
    let mut pending = Vec::new();
    for file in files(path)? {
        let file = read(name, &file, stream)?;
        let before = stored(storage.store.pointer(&file.key).await?);
        match &before {
            Some(s) if s.sha256 != file.sha256 => {
                tracing::warn!(source = %name, file = %file.name, "The file changed after it was loaded; it is not loaded again until the source is reset.");
                continue;
            }
            Some(s) if s.done => continue,
            _ => {}
        }
        pending.push((file, before));
    }
    let total: usize = pending
        .iter()
        .map(|(f, before)| {
            let from = before.as_ref().map_or(0, |s| s.line);
            f.rows.iter().filter(|r| r.line > from).count()
        })
        .sum();
    progress.total(total as u64);
    let mut report = PullReport::default();
    for (file, before) in pending {
        let from = before.as_ref().map_or(0, |s| s.line);
        let mut previous = before.map(|s| s.text);
        let rows: Vec<&CsvRow> = file.rows.iter().filter(|r| r.line > from).collect();
        let chunks: Vec<&[&CsvRow]> = if rows.is_empty() {
            vec![&[]]
        } else {
            rows.chunks(source.load_size).collect()
        };
        for (i, chunk) in chunks.iter().enumerate() {
            if progress.cancelled() {
                return Ok(report);
            }
            let last = chunk.last().map_or(from, |r| r.line);
            let pointer = Pointer {
                source: file.key.clone(),
                value: json!({
                    "file": file.name,
                    "size": file.size,
                    "modified": file.modified,
                    "sha256": file.sha256,
                    "line": last,
                    "done": i + 1 == chunks.len(),
                })
                .to_string(),
                previous: previous.clone(),
            };
            let mut filing = Filing::new(max_payload, Some(storage.store.dialect()));
            let from_file = format!("pull {name} {}", file.name);
            csv_events::file(
                &mut filing,
                stream,
                &from_file,
                chrono::Utc::now(),
                chunk.iter().copied(),
            );
            let load = super::PulledLoad {
                stream,
                pointer: &pointer,
                read: chunk.len(),
            };
            load.write(storage, filing, &mut report)
                .await
                .with_context(|| {
                    format!("cannot write a load of {} (source `{name}`)", file.name)
                })?;
            progress.advance(&report);
            previous = Some(pointer.value);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_match_their_pattern() {
        let m = |p: &str, n: &str| {
            matches(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("*.csv", "prices-2026.csv"));
        assert!(m("prices-????.csv", "prices-2026.csv"));
        assert!(!m("*.csv", "prices.csv.tmp"));
        assert!(!m("a*.csv", "b.csv"));
        assert!(check_path("/data/prices/*.csv").is_ok());
        assert!(check_path("data/*.csv").is_err());
        assert!(check_path("/data/*/x.csv").is_err());
        assert!(check_path("/data/*.xlsx").is_err());
    }
}
