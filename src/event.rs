//! The values that travel from ingest to the sinks: a validated event as a [`Row`] of
//! typed [`Cell`]s, and a [`DeadLetter`] for anything that could not become one.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use compact_str::CompactString;

/// One column value of a row, already converted to the column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    /// Text cells hold up to 24 bytes in the cell itself (most codes, names and ids),
    /// longer text on the heap: a row of short strings makes no allocation per cell.
    Text(CompactString),
    /// A UUID, kept as its 16 bytes and written as lower-case hyphenated text.
    Uuid(Uuid),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Serialized JSON (objects, arrays, values of no single type).
    Json(CompactString),
    /// An instant, normalized to UTC with microsecond precision.
    Timestamp(DateTime<Utc>),
}

/// A UUID as its 16 bytes, in the cell itself (its text would be a 36-byte
/// allocation per row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// The UUID written `8-4-4-4-12` in hex digits of either case; `None` for any other
    /// text.
    pub fn parse(text: &str) -> Option<Uuid> {
        let text: &[u8; 36] = text.as_bytes().try_into().ok()?;
        if [8, 13, 18, 23].iter().any(|&at| text[at] != b'-') {
            return None;
        }
        // Where each byte's two digits start.
        const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut bytes = [0u8; 16];
        let mut bad = 0;
        for (byte, at) in bytes.iter_mut().zip(AT) {
            let (high, low) = (
                HEX_VALUE[usize::from(text[at])],
                HEX_VALUE[usize::from(text[at + 1])],
            );
            bad |= high | low;
            *byte = high << 4 | low;
        }
        (bad & 0xf0 == 0).then_some(Uuid(bytes))
    }

    /// The lower-case hyphenated text, written into `buf`.
    pub fn encode<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        // Each half byte a digit, eight at a time: `n + '0'`, and 39 more from `a` on.
        let digits = |four: &[u8]| {
            let mut spread = 0u64;
            for (n, byte) in four.iter().enumerate() {
                let pair = u64::from(byte >> 4) | (u64::from(byte & 15) << 8);
                spread |= pair << (16 * n);
            }
            let letters = ((spread + 0x7676_7676_7676_7676) >> 7) & 0x0101_0101_0101_0101;
            (spread + 0x3030_3030_3030_3030 + letters * 39).to_le_bytes()
        };
        let [a, b, c, d] = [0, 4, 8, 12].map(|at| digits(&self.0[at..at + 4]));
        buf[..8].copy_from_slice(&a);
        buf[9..13].copy_from_slice(&b[..4]);
        buf[14..18].copy_from_slice(&b[4..]);
        buf[19..23].copy_from_slice(&c[..4]);
        buf[24..28].copy_from_slice(&c[4..]);
        buf[28..].copy_from_slice(&d);
        for at in [8, 13, 18, 23] {
            buf[at] = b'-';
        }
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.encode(&mut [0; 36]))
    }
}

/// Each byte's value as a hex digit of either case, 0xff for a byte that is none.
pub(crate) static HEX_VALUE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => 0xff,
        };
        b += 1;
    }
    table
};

/// A validated event, ready for its table.
#[derive(Debug, Clone)]
pub struct Row {
    /// One cell per schema column, in the stream's column order.
    pub cells: Vec<Cell>,
    /// Undeclared properties as a JSON object (`_extra`), when the schema allows them.
    pub extra: Option<String>,
    /// When Sluice accepted the event (`_received_at`).
    pub received_at: DateTime<Utc>,
    /// The event's original text, kept so that a row the database rejects is dead-lettered verbatim
    /// (for a stream with `x-sluice-privacy`: the treated event's text).
    pub raw: Box<str>,
    /// Whether `raw` is treated (`x-sluice-privacy`): filed again (spool recovery), it is
    /// not treated twice.
    pub treated: bool,
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
                Cell::Text(s) | Cell::Json(s) if s.is_heap_allocated() => s.capacity(),
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
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 4] = [Stage::Parse, Stage::Route, Stage::Validate, Stage::Write];

    /// The stage named `name` (as [`Stage::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The stage named `name`, or an error that lists the names (for a parameter).
    pub fn named(name: &str) -> Result<Stage, String> {
        Stage::from_name(name)
            .ok_or_else(|| format!("unknown stage `{name}`: use parse, route, validate or write"))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Route => "route",
            Stage::Validate => "validate",
            Stage::Write => "write",
        }
    }
}

/// `[dead_letters]`: how much of a payload a dead letter keeps, and for how long.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersConfig {
    /// Most bytes of payload text a dead letter keeps; a longer payload keeps this
    /// prefix, and its error names the received length and SHA-256.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Dead letters received longer ago than this are deleted in the background, in
    /// small batches (e.g. `"30d"`); unset keeps them until replayed or purged.
    #[serde(default, deserialize_with = "crate::toml_values::opt_duration")]
    pub retention: Option<std::time::Duration>,
}

fn default_max_payload_bytes() -> usize {
    DEFAULT_MAX_PAYLOAD_BYTES
}

/// A row of `sluice_dead_letters`. Build it with [`DeadLetter::new`], which makes every
/// text field storable in every database and bounds the payload.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub stream: Option<String>,
    pub stage: Stage,
    /// Human-readable reason, with the JSON pointer for schema errors.
    pub error: String,
    /// The original bytes as text (see [`payload_text`]), at most the configured
    /// `dead_letters.max_payload_bytes`.
    pub payload: String,
    pub source: Arc<str>,
    pub received_at: DateTime<Utc>,
    pub attempts: i32,
    /// Position of the event in its request.
    pub index: usize,
    /// Whether `payload` is treated (`x-sluice-privacy`): a replay then does not treat
    /// it again.
    pub treated: bool,
}

/// Payload bytes a dead letter keeps by default (`dead_letters.max_payload_bytes`).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

impl DeadLetter {
    /// A dead letter for the bytes `raw`. NUL in `stream`, `error` and `source` is written
    /// as `\x00` (PostgreSQL's text types refuse it); the payload is [`payload_text`],
    /// cut to `max_payload` bytes when longer, and then the error says so, with the
    /// length and SHA-256 of everything that was received.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream: Option<&str>,
        stage: Stage,
        error: &str,
        raw: &[u8],
        source: &Arc<str>,
        received_at: DateTime<Utc>,
        index: usize,
        max_payload: usize,
    ) -> DeadLetter {
        let (payload, cut) = bounded_payload_text(raw, max_payload);
        let mut error = storable(error).into_owned();
        if cut {
            error.push_str(&format!(
                " [payload truncated: {} bytes of text kept of the {} bytes received; SHA-256 of the bytes received: {}]",
                payload.len(),
                raw.len(),
                sha256_hex(raw)
            ));
        }
        let source: Arc<str> = if source.contains('\0') {
            storable(source).into()
        } else {
            source.clone()
        };
        DeadLetter {
            stream: stream.map(|s| storable(s).into_owned()),
            stage,
            error,
            payload,
            source,
            received_at,
            attempts: 1,
            index,
            treated: false,
        }
    }

    /// The same dead letter, its payload treated (`x-sluice-privacy`).
    pub fn treated(self) -> DeadLetter {
        DeadLetter {
            treated: true,
            ..self
        }
    }

    /// A dead letter of a stream that treats personal fields (`x-sluice-privacy`) for
    /// bytes that could not be read as an event to treat: no payload, only its length
    /// and SHA-256, and the error says so.
    #[allow(clippy::too_many_arguments)]
    pub fn withheld(
        stream: &str,
        stage: Stage,
        error: &str,
        raw: &[u8],
        source: &Arc<str>,
        received_at: DateTime<Utc>,
        index: usize,
    ) -> DeadLetter {
        let error = format!(
            "{error} [payload withheld: stream {stream} treats personal fields (x-sluice-privacy) and this text could not be read as an event to treat; {} bytes received, SHA-256: {}]",
            raw.len(),
            sha256_hex(raw)
        );
        DeadLetter::new(
            Some(stream),
            stage,
            &error,
            b"",
            source,
            received_at,
            index,
            usize::MAX,
        )
        .treated()
    }

    /// Bytes of memory the dead letter's texts hold, counted against its queue.
    pub fn memory_size(&self) -> usize {
        self.payload.len() + self.error.len()
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `text` with NUL written as `\x00`, the one character a database's text type refuses
/// (PostgreSQL) in a Rust string.
pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\\x00").into()
    } else {
        text.into()
    }
}

/// The original bytes as text: valid UTF-8 is kept as is, except NUL; every byte of an
/// invalid sequence and every NUL is written as `\xNN`, so nothing is lost and every
/// database's text type accepts it.
pub fn payload_text(bytes: &[u8]) -> String {
    bounded_payload_text(bytes, usize::MAX).0
}

/// [`payload_text`] cut to at most `max` bytes (on a character and escape boundary), and
/// whether it was cut. Stops converting at the limit, so a small body of bytes that each
/// become four characters never costs more than `max`.
pub fn bounded_payload_text(bytes: &[u8], max: usize) -> (String, bool) {
    let mut out = String::with_capacity(bytes.len().min(max));
    let fits = |out: &String, more: usize| out.len() + more <= max;
    for chunk in bytes.utf8_chunks() {
        for (i, part) in chunk.valid().split('\0').enumerate() {
            if i > 0 {
                if !fits(&out, 4) {
                    return (out, true);
                }
                out.push_str("\\x00");
            }
            if !fits(&out, part.len()) {
                let room = max.saturating_sub(out.len());
                out.push_str(truncate_utf8(part, room));
                return (out, true);
            }
            out.push_str(part);
        }
        for b in chunk.invalid() {
            if !fits(&out, 4) {
                return (out, true);
            }
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    (out, false)
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
    fn payloads_are_cut_at_the_limit_on_escape_boundaries() {
        assert_eq!(bounded_payload_text(b"abc", 3), ("abc".into(), false));
        assert_eq!(bounded_payload_text(b"abcd", 3), ("abc".into(), true));
        assert_eq!(
            bounded_payload_text(b"a\xff\xff", 6),
            ("a\\xFF".into(), true)
        );
        assert_eq!(bounded_payload_text("aé".as_bytes(), 2), ("a".into(), true));
        let (text, cut) = bounded_payload_text(&vec![0xFF; 10_000_000], 1000);
        assert!(cut && text.len() <= 1000 && text.len() >= 996);
    }

    #[test]
    fn dead_letter_text_fields_escape_nul_and_name_a_cut_payload() {
        let source: Arc<str> = "http \0".into();
        let d = DeadLetter::new(
            Some("a\0b"),
            Stage::Route,
            "bad \0 key",
            b"0123456789",
            &source,
            Utc::now(),
            0,
            4,
        );
        assert_eq!(d.stream.as_deref(), Some("a\\x00b"));
        assert_eq!(&*d.source, "http \\x00");
        assert_eq!(d.payload, "0123");
        assert!(d.error.starts_with("bad \\x00 key [payload truncated: 4 bytes of text kept of the 10 bytes received; SHA-256 of the bytes received: 84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882]"), "{}", d.error);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("abc", 5), "abc");
    }

    #[test]
    fn uuids_read_and_write_as_their_bytes_formatted_one_by_one() {
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..20_000 {
            let bytes: [u8; 16] = std::array::from_fn(|_| rng.u8(..));
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let expected = [&hex[..4], &hex[4..6], &hex[6..8], &hex[8..10], &hex[10..]]
                .map(|part| part.concat())
                .join("-");
            assert_eq!(Uuid(bytes).to_string(), expected);
            assert_eq!(Uuid::parse(&expected), Some(Uuid(bytes)));
            assert_eq!(
                Uuid::parse(&expected.to_ascii_uppercase()),
                Some(Uuid(bytes))
            );
        }
    }

    #[test]
    fn a_uuid_reads_either_case_and_writes_lower_case_hyphenated() {
        let text = "6F1C2D3E-4b5a-4C6D-8e7f-8091A2B3C4D5";
        let uuid = Uuid::parse(text).expect("a hyphenated UUID");
        assert_eq!(uuid.to_string(), text.to_ascii_lowercase());
        assert_eq!(uuid.0[0], 0x6f);
        assert_eq!(uuid.0[15], 0xd5);
        let nil = Uuid::parse("00000000-0000-0000-0000-000000000000").expect("nil");
        assert_eq!(nil, Uuid([0; 16]));
        assert_eq!(
            Uuid([0xff; 16]).to_string(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
        for other in [
            "",
            "6f1c2d3e4b5a4c6d8e7f8091a2b3c4d5",
            "{6f1c2d3e-4b5a-4c6d-8e7f-8091a2b3c4d5}",
            "6f1c2d3e-4b5a-4c6d-8e7f-8091a2b3c4d",
            "6f1c2d3e-4b5a-4c6d-8e7f-8091a2b3c4dg",
            "6f1c2d3e4-b5a-4c6d-8e7f-8091a2b3c4d5",
            "6f1c2d3e-4b5a-4c6d-8e7f--091a2b3c4d5",
            "6f1c2d3e-4b5a-4c6d-8e7f-8091a2b3c4dé",
        ] {
            assert_eq!(Uuid::parse(other), None, "{other}");
        }
    }
}
