//! CSV as events (`Content-Type: text/csv`, and CSV files of a pulled source): a header
//! row names the properties; each data row becomes one event, its cells converted to
//! the types the stream's schema declares (integer, number, boolean, JSON; an empty
//! cell is absent). Quoting, embedded newlines and a UTF-8 byte order mark are handled
//! by the `csv` crate's parser; each row keeps the line it starts on, for its dead
//! letter.

use crate::schema::{ColumnType, Stream};

/// One data row: the line it starts on (the header is line 1), its text (the event's
/// JSON, or the row's cells when it cannot be read), and why it cannot be, if so.
#[derive(Debug)]
pub struct CsvRow {
    pub line: u64,
    pub text: String,
    pub error: Option<String>,
}

/// The rows of a CSV text for `stream`. `Err` when it has no header row, or the header
/// cannot be read.
pub fn rows(stream: &Stream, body: &[u8]) -> Result<Vec<CsvRow>, String> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(body);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("the CSV header row cannot be read: {e}"))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if header.iter().all(String::is_empty) {
        return Err("the CSV has no header row: its first line must name the columns".into());
    }
    let types: Vec<Option<ColumnType>> = header
        .iter()
        .map(|h| stream.columns.iter().find(|c| &c.name == h).map(|c| c.ty))
        .collect();
    let mut out = Vec::new();
    for record in reader.records() {
        match record {
            Ok(record) => {
                let line = line_at(body, record.position());
                out.push(if record.len() != header.len() {
                    CsvRow {
                        line,
                        text: record.iter().collect::<Vec<_>>().join(","),
                        error: Some(format!(
                            "line {line}: {} cells where the header names {} columns",
                            record.len(),
                            header.len()
                        )),
                    }
                } else {
                    CsvRow {
                        line,
                        text: event_text(&header, &types, &record),
                        error: None,
                    }
                });
            }
            Err(e) => {
                let line = line_at(body, e.position());
                out.push(CsvRow {
                    line,
                    text: String::new(),
                    error: Some(format!("line {line}: not valid CSV: {e}")),
                });
            }
        }
    }
    Ok(out)
}

/// The line (from 1) a record starting at `position` starts on, counting the newlines
/// inside quoted cells of the rows before it (which the parser's own line count does
/// not).
fn line_at(body: &[u8], position: Option<&csv::Position>) -> u64 {
    // With CRLF line ends the parser places a record at the `\n` ending the one
    // before: count up to and including the record's first byte.
    let at = position.map_or(0, |p| usize::try_from(p.byte()).unwrap_or(usize::MAX));
    let before = &body[..at.saturating_add(1).min(body.len())];
    memchr::memchr_iter(b'\n', before).count() as u64 + 1
}

/// A row's JSON object: each non-empty cell under its header's name.
fn event_text(
    header: &[String],
    types: &[Option<ColumnType>],
    record: &csv::StringRecord,
) -> String {
    let mut out = String::with_capacity(record.as_slice().len() + 16 * header.len());
    out.push('{');
    let mut first = true;
    for ((name, ty), cell) in header.iter().zip(types).zip(record.iter()) {
        if cell.is_empty() || name.is_empty() {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&serde_json::Value::from(name.as_str()).to_string());
        out.push(':');
        out.push_str(&cell_json(*ty, cell));
    }
    out.push('}');
    out
}

/// A cell's JSON for a property of type `ty` (undeclared: a string). A cell that does
/// not read as its type stays a string, for the schema to refuse with a clear message.
fn cell_json(ty: Option<ColumnType>, cell: &str) -> String {
    let string = || serde_json::Value::from(cell).to_string();
    let number = || {
        matches!(
            serde_json::from_str::<serde_json::Value>(cell.trim()),
            Ok(serde_json::Value::Number(_))
        )
    };
    match ty {
        Some(ColumnType::Integer) if cell.trim().parse::<i64>().is_ok() => cell.trim().to_owned(),
        Some(ColumnType::Number | ColumnType::Decimal { .. }) if number() => cell.trim().to_owned(),
        Some(ColumnType::Boolean) => match cell.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => "true".into(),
            "false" | "0" | "no" => "false".into(),
            _ => string(),
        },
        Some(ColumnType::Json) => match serde_json::from_str::<serde_json::Value>(cell) {
            Ok(_) => cell.to_owned(),
            Err(_) => string(),
        },
        _ => string(),
    }
}

/// Files CSV `rows` to `stream`, each with its line in its source text
/// (`http 1.2.3.4:5 line 7`), so that a row's dead letter says where it was.
pub fn file<'r>(
    filing: &mut super::filing::Filing,
    stream: &std::sync::Arc<Stream>,
    source: &str,
    received_at: chrono::DateTime<chrono::Utc>,
    rows: impl IntoIterator<Item = &'r CsvRow>,
) {
    let route = super::filing::Route::to(stream);
    for (index, row) in rows.into_iter().enumerate() {
        let source: std::sync::Arc<str> = format!("{source} line {}", row.line).into();
        let event = match &row.error {
            None => super::filing::Event::text(index, row.text.as_bytes()),
            Some(error) => {
                super::filing::Event::parsed(index, row.text.as_bytes(), Err(error.clone()))
            }
        };
        filing.file(&route, &source, received_at, [event]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_know_their_lines_across_quoted_newlines_and_crlf() {
        for body in [
            &b"sku,note\r\nA1,x\r\nB2,\"two\nlines\"\r\nC3,plain\r\n"[..],
            &b"sku,note\nA1,x\nB2,\"two\nlines\"\nC3,plain\n"[..],
        ] {
            let lines: Vec<u64> = csv::ReaderBuilder::new()
                .from_reader(body)
                .records()
                .map(|r| line_at(body, r.unwrap().position()))
                .collect();
            assert_eq!(lines, [2, 3, 5]);
        }
    }

    #[test]
    fn cells_take_the_declared_types() {
        assert_eq!(cell_json(Some(ColumnType::Integer), " 42 "), "42");
        assert_eq!(cell_json(Some(ColumnType::Integer), "4.5"), "\"4.5\"");
        assert_eq!(cell_json(Some(ColumnType::Number), "1e3"), "1e3");
        assert_eq!(cell_json(Some(ColumnType::Boolean), "Yes"), "true");
        assert_eq!(cell_json(None, "a,\"b\""), "\"a,\\\"b\\\"\"");
        assert_eq!(cell_json(Some(ColumnType::Json), "[1,2]"), "[1,2]");
    }
}
