//! HTTP request bodies: content type and encoding, gzip with a size limit, and splitting
//! into event texts (one object, a JSON array of objects, or NDJSON).

use std::io::Read;

use axum::http::{header, HeaderMap};
use serde_json::value::RawValue;
use serde_json::Value;

/// Deepest nesting of objects and arrays accepted: serde_json's recursion limit, which
/// keeps a hostile body from exhausting the stack.
pub const MAX_DEPTH: usize = 128;

/// How the body holds its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object or a JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// CSV with a header row (`text/csv`), read by `ingest::csv_events`.
    Csv,
}

/// A body that cannot be read as events; the request is refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    /// The body is not what its headers say; it is dead-lettered whole.
    #[error("{0}")]
    Malformed(String),
}

/// One event's text and, when splitting parsed it already, its parse result.
pub struct Piece<'a> {
    pub raw: &'a [u8],
    /// The parsed object, or why this event is not one; `None`: not parsed yet (filing
    /// reads it, by the fast path where the stream has one).
    pub value: Option<Result<Value, String>>,
}

impl Piece<'_> {
    /// The parsed object, or why this event is not one (parsed now if splitting did not).
    pub fn into_value(self) -> Result<Value, String> {
        match self.value {
            Some(value) => value,
            None => parse_object(self.raw),
        }
    }
}

/// The body format from `Content-Type`. A missing type, and curl's `-d` default
/// (`application/x-www-form-urlencoded`), are read as JSON.
pub fn format_of(headers: &HeaderMap) -> Result<Format, BodyError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/json" | "application/x-www-form-urlencoded" | "" => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/jsonlines"
        | "application/x-jsonlines" | "application/json-lines" => Ok(Format::Ndjson),
        e if e.ends_with("+json") => Ok(Format::Json),
        "text/csv" | "application/csv" => Ok(Format::Csv),
        _ => Err(BodyError::UnsupportedMediaType(format!(
            "unsupported Content-Type {text:?}: send application/json (one object or an array of objects), application/x-ndjson (one object per line) or text/csv (a header row, then one event per row)"
        ))),
    }
}

/// Whether the body is gzip-compressed, from `Content-Encoding`.
pub fn is_gzip(headers: &HeaderMap) -> Result<bool, BodyError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    match value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "identity" => Ok(false),
        "gzip" | "x-gzip" => Ok(true),
        other => Err(BodyError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {other:?}: send the body uncompressed or with gzip"
        ))),
    }
}

/// A gzip body decompressed a chunk at a time, so that the caller can account for each
/// chunk before keeping it. Output above `limit` bytes is refused (a small body can
/// expand to gigabytes).
pub struct Gunzip<'a> {
    decoder: flate2::read::MultiGzDecoder<&'a [u8]>,
    limit: usize,
}

impl<'a> Gunzip<'a> {
    pub fn new(compressed: &'a [u8], limit: usize) -> Gunzip<'a> {
        Gunzip {
            decoder: flate2::read::MultiGzDecoder::new(compressed),
            limit,
        }
    }

    /// Fills `buf` with the next decompressed bytes; 0 at the end. `so_far` is what the
    /// caller already holds, to enforce the limit.
    pub fn read(&mut self, buf: &mut [u8], so_far: usize) -> Result<usize, BodyError> {
        let n = self.decoder.read(buf).map_err(|e| {
            BodyError::Malformed(format!(
                "the body is not valid gzip ({e}); send it uncompressed or fix the compression"
            ))
        })?;
        if so_far + n > self.limit {
            return Err(BodyError::TooLarge(format!(
                "the decompressed body is larger than http.max_body_bytes ({} bytes); send smaller requests",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// Splits a body into event texts, parsing each. `Err` when the body as a whole is not
/// JSON of the announced format (`Malformed`), or holds more than `max_events` events.
pub fn split(format: Format, body: &[u8], max_events: usize) -> Result<Vec<Piece<'_>>, BodyError> {
    let too_many = |n: usize| {
        BodyError::TooLarge(format!(
            "the request holds {n} events, more than http.max_events_per_request ({max_events}); split it into smaller requests"
        ))
    };
    match format {
        Format::Csv => Err(BodyError::Malformed(
            "a CSV body is read row by row, not split as JSON".into(),
        )),
        Format::Ndjson => {
            let lines: Vec<&[u8]> = ndjson_lines(body).collect();
            if lines.len() > max_events {
                return Err(too_many(lines.len()));
            }
            if lines.is_empty() {
                return Err(BodyError::Malformed(
                    "the body is empty: send one JSON object per line".into(),
                ));
            }
            Ok(lines
                .into_iter()
                .map(|raw| Piece { raw, value: None })
                .collect())
        }
        Format::Json => {
            let text = std::str::from_utf8(body).map_err(|e| {
                BodyError::Malformed(format!(
                    "the body is not valid UTF-8 ({e}); JSON must be UTF-8"
                ))
            })?;
            let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
            if trimmed.is_empty() {
                return Err(BodyError::Malformed(
                    "the body is empty: send a JSON object or an array of objects".into(),
                ));
            }
            let not_json = |e: serde_json::Error| {
                BodyError::Malformed(format!(
                    "the body is not valid JSON: {}. Send one object or an array of objects; for one object per line use Content-Type: application/x-ndjson",
                    explain(&e)
                ))
            };
            if trimmed.starts_with('[') {
                let elements: Vec<&RawValue> = serde_json::from_str(trimmed).map_err(not_json)?;
                if elements.len() > max_events {
                    return Err(too_many(elements.len()));
                }
                Ok(elements
                    .into_iter()
                    .map(|raw| Piece {
                        raw: raw.get().as_bytes(),
                        value: None,
                    })
                    .collect())
            } else {
                let value: Value = serde_json::from_str(trimmed).map_err(not_json)?;
                if !value.is_object() {
                    return Err(BodyError::Malformed(format!(
                        "the body is a JSON {}, not an object: send one object or an array of objects",
                        kind(&value)
                    )));
                }
                Ok(vec![Piece {
                    raw: trimmed.as_bytes(),
                    value: Some(Ok(value)),
                }])
            }
        }
    }
}

/// The non-blank lines of an NDJSON text (`\n` or `\r\n` line ends).
pub fn ndjson_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    // `memchr` finds the line ends a word at a time; `split` would test every byte.
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let text = rest?;
        let (line, next) = match memchr::memchr(b'\n', text) {
            Some(end) => (&text[..end], Some(&text[end + 1..])),
            None => (text, None),
        };
        rest = next;
        Some(line)
    })
    .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

/// Parses one event text, which must be a JSON object.
pub fn parse_object(raw: &[u8]) -> Result<Value, String> {
    let text =
        std::str::from_utf8(raw).map_err(|e| format!("the event is not valid UTF-8 ({e})"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(v) => Err(format!("the event is a JSON {}, not an object", kind(&v))),
        Err(e) => Err(format!("the event is not valid JSON: {}", explain(&e))),
    }
}

/// A parse error, with the nesting limit spelled out when that is what was hit.
fn explain(e: &serde_json::Error) -> String {
    if e.to_string().starts_with("recursion limit exceeded") {
        format!("{e} (objects and arrays may nest at most {MAX_DEPTH} levels deep)")
    } else {
        e.to_string()
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_keep_their_original_text() {
        let pieces = split(Format::Json, br#"[ {"a": 1}, 2, {"b" :"x"} ]"#, 10).unwrap();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].raw, br#"{"a": 1}"#);
        assert_eq!(pieces[2].raw, br#"{"b" :"x"}"#);
        let values: Vec<_> = pieces.into_iter().map(Piece::into_value).collect();
        assert!(values[1].as_ref().unwrap_err().contains("number"));
    }

    #[test]
    fn ndjson_skips_blank_lines_and_strips_crlf() {
        let pieces = split(Format::Ndjson, b"{\"a\":1}\r\n\n  \n{oops\n{\"c\":3}", 10).unwrap();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].raw, b"{\"a\":1}");
        let values: Vec<_> = pieces.into_iter().map(Piece::into_value).collect();
        assert!(values[1].as_ref().unwrap_err().contains("not valid JSON"));
        assert!(values[2].is_ok());
    }

    #[test]
    fn whole_body_problems_are_malformed_or_too_large() {
        assert!(matches!(
            split(Format::Json, b"{nope", 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            split(Format::Json, b"  ", 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            split(Format::Json, b"\"text\"", 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            split(Format::Json, b"[{},{},{}]", 2),
            Err(BodyError::TooLarge(_))
        ));
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused_with_the_limit_named() {
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        match split(Format::Json, deep.as_bytes(), 10) {
            Err(BodyError::Malformed(m)) => assert!(m.contains("128 levels"), "{m}"),
            _ => panic!("deep nesting must be refused"),
        }
        let ok = format!("{{\"a\": {}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(split(Format::Json, ok.as_bytes(), 10).is_ok());
    }

    #[test]
    fn gzip_bombs_are_cut_at_the_limit() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b' '; 1_000_000]).unwrap();
        let gz = enc.finish().unwrap();
        let inflate = |data: &[u8], limit: usize| {
            let mut gz = Gunzip::new(data, limit);
            let (mut total, mut chunk) = (0, vec![0u8; 4096]);
            loop {
                match gz.read(&mut chunk, total)? {
                    0 => return Ok::<usize, BodyError>(total),
                    n => total += n,
                }
            }
        };
        assert!(matches!(inflate(&gz, 1000), Err(BodyError::TooLarge(_))));
        assert_eq!(inflate(&gz, 2_000_000).unwrap(), 1_000_000);
        assert!(matches!(
            inflate(b"not gzip", 1000),
            Err(BodyError::Malformed(_))
        ));
    }
}
