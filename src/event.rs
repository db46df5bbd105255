//! The values that travel from ingest to the sinks: a validated event as a [`Row`] of
//! typed [`Cell`]s, and a [`DeadLetter`] for anything that could not become one.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// One column value of a row, already converted to the column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    /// A lower-case hyphenated UUID.
    Uuid(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Serialized JSON (objects, arrays, values of no single type).
    Json(String),
    /// An instant, normalized to UTC with microsecond precision.
    Timestamp(DateTime<Utc>),
}

/// A validated event, ready for its table.
#[derive(Debug, Clone)]
pub struct Row {
    /// One cell per schema column, in the stream's column order.
    pub cells: Vec<Cell>,
    /// Undeclared properties as a JSON object (`_extra`), when the schema allows them.
    pub extra: Option<String>,
    /// When Sluice accepted the event (`_received_at`).
    pub received_at: DateTime<Utc>,
    /// The event's original text, kept so that a row the database rejects is dead-lettered verbatim.
    pub raw: Box<str>,
    /// Where the event came from (`http 1.2.3.4:5678`), for write-stage dead letters.
    pub source: Arc<str>,
    /// Position of the event in its request, to report write failures per index.
    pub index: usize,
}

impl Row {
    /// Approximate bytes of memory the row holds: its original text, its decoded
    /// values and their bookkeeping. This is what counts against `queue_max_bytes`, so
    /// the budget bounds memory, not just the size of the JSON received.
    pub fn memory_size(&self) -> usize {
        let cells: usize = self
            .cells
            .iter()
            .map(|c| match c {
                Cell::Text(s) | Cell::Uuid(s) | Cell::Json(s) => s.capacity(),
                _ => 0,
            })
            .sum();
        std::mem::size_of::<Row>()
            + self.raw.len()
            + self.extra.as_ref().map_or(0, String::capacity)
            + self.cells.capacity() * std::mem::size_of::<Cell>()
            + cells
    }
}

/// The pipeline stage at which an event was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Parse,
    Route,
    Validate,
    Write,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Route => "route",
            Stage::Validate => "validate",
            Stage::Write => "write",
        }
    }
}

/// A row of `sluice_dead_letters`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub stream: Option<String>,
    pub stage: Stage,
    /// Human-readable reason, with the JSON pointer for schema errors.
    pub error: String,
    /// The original bytes as text (see [`payload_text`]).
    pub payload: String,
    pub source: Arc<str>,
    pub received_at: DateTime<Utc>,
    pub attempts: i32,
    /// Position of the event in its request.
    pub index: usize,
}

/// The original bytes as text: valid UTF-8 is kept as is, except NUL; every byte of an
/// invalid sequence and every NUL is written as `\xNN`, so nothing is lost and every
/// database's text type accepts it.
pub fn payload_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for (i, part) in chunk.valid().split('\0').enumerate() {
            if i > 0 {
                out.push_str("\\x00");
            }
            out.push_str(part);
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// Truncates `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_text_keeps_utf8_and_escapes_invalid_bytes_and_nul() {
        assert_eq!(payload_text("héllo ✓".as_bytes()), "héllo ✓");
        assert_eq!(payload_text(b"a\xffb\x00c"), "a\\xFFb\\x00c");
        assert_eq!(payload_text(b"\xe2\x9c"), "\\xE2\\x9C");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("abc", 5), "abc");
    }
}
