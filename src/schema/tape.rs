//! A strict, borrowing JSON reader for the fast path: one event's text read into a flat
//! tape of small nodes that point into the text, with no `serde_json::Value`, no map
//! and no string copied.
//!
//! The reader accepts a subset of what `serde_json` accepts and nothing more: anything
//! unusual (a lone surrogate, deep nesting, a control character, text after the object)
//! is `None`, and the event then takes the general path, which gives the same answer
//! it always did. So this reader never needs an error message of its own.

use std::borrow::Cow;

/// Deepest nesting the fast path reads; deeper events take the general path, which
/// applies serde_json's own limit.
const MAX_DEPTH: usize = 64;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    True,
    False,
    /// A number; its text is the literal as written.
    Num,
    /// A string; its text is the token, quotes included.
    Str,
    Arr,
    Obj,
    /// An object member's name (its value is the next node); its text is the token.
    Key,
}

/// One node of the tape. A container is followed by its children (an object's as a
/// [`Kind::Key`] then the member's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Whether a string or key holds escapes (its text must be unescaped).
    pub escaped: bool,
    /// A container's children (0 for a scalar or key).
    pub len: u32,
    /// A container: the index just past its last descendant. A scalar or key: the byte
    /// just past its text.
    pub end: u32,
    /// A container: the length of its text.
    pub span: u32,
    /// The first byte of the node's text.
    pub at: u32,
}

/// One JSON object's text read into nodes.
#[derive(Debug)]
pub struct Tape<'a> {
    text: &'a str,
    /// Only the reader makes them: every byte bound they hold (a scalar's or key's
    /// `at` and `end`, a container's `at` and `at + span`) lies within `text`, next to
    /// an ASCII byte (a quote, a bracket, a digit, a literal's letter) or at the text's
    /// end, so on a character boundary ([`Tape::between`]).
    nodes: Vec<Node>,
    escapes: bool,
}

impl<'a> Tape<'a> {
    /// The tape of one JSON object's text, or `None` when the text is anything but a
    /// plain, well-formed JSON object (see the module's note).
    pub fn read(text: &'a str) -> Option<Tape<'a>> {
        Tape::read_into(text, Vec::with_capacity(64))
    }

    /// [`Tape::read`] into `nodes`' room (cleared first): a caller reading many events
    /// reuses one buffer ([`Tape::into_nodes`]).
    pub fn read_into(text: &'a str, mut nodes: Vec<Node>) -> Option<Tape<'a>> {
        // Every offset fits a node's `u32`.
        u32::try_from(text.len()).ok()?;
        nodes.clear();
        let mut r = Reader {
            text,
            nodes,
            escapes: false,
        };
        let b = text.as_bytes();
        let start = ws(b, 0);
        if b.get(start) != Some(&b'{') {
            return None;
        }
        let end = ws(b, r.container::<true>(b, start, 0)?);
        (end == b.len()).then_some(Tape {
            text,
            nodes: r.nodes,
            escapes: r.escapes,
        })
    }

    /// Whether any string or key of the text holds an escape: where none does, no value
    /// holds a character that only an escape writes (NUL, say).
    pub fn escapes(&self) -> bool {
        self.escapes
    }

    /// The buffer of nodes, to read the next event into.
    pub fn into_nodes(self) -> Vec<Node> {
        self.nodes
    }

    /// Node `i`.
    #[inline]
    pub fn node(&self, i: usize) -> Node {
        self.nodes[i]
    }

    /// The text from byte `at` to byte `end`, two bounds of a node: with the bounds
    /// checked, as any slice, but not whether each lies on a character boundary (each
    /// does: see [`Tape::nodes`]).
    #[inline]
    fn between(&self, at: u32, end: u32) -> &'a str {
        match self.text.as_bytes().get(at as usize..end as usize) {
            // SAFETY: `text` is UTF-8 and both bounds are on its character boundaries
            // (the field's invariant), so the bytes between them are UTF-8 too.
            Some(bytes) => unsafe { std::str::from_utf8_unchecked(bytes) },
            None => "",
        }
    }

    /// The kind of node `i`.
    #[inline]
    pub fn kind(&self, i: usize) -> Kind {
        self.nodes[i].kind
    }

    /// The index just past the subtree at `i`.
    #[inline]
    pub fn next(&self, i: usize) -> usize {
        let n = self.nodes[i];
        match n.kind {
            Kind::Arr | Kind::Obj => n.end as usize,
            _ => i + 1,
        }
    }

    /// The text of scalar or key `i` as written (a string's with its quotes); of a
    /// container, as [`Tape::text_of`].
    #[inline]
    pub fn raw(&self, i: usize) -> &'a str {
        let n = self.nodes[i];
        match n.kind {
            // A container's `end` is a node's index, not a byte's.
            Kind::Arr | Kind::Obj => self.between(n.at, n.at + n.span),
            _ => self.between(n.at, n.end),
        }
    }

    /// The eight bytes from the first byte inside the quotes of key or string `i`, as
    /// a little-endian word (a short key's word runs past its closing quote), or `None`
    /// where the text ends sooner.
    #[inline]
    pub fn word_at(&self, i: usize) -> Option<u64> {
        let at = self.nodes[i].at as usize + 1;
        let word = self.text.as_bytes().get(at..)?.first_chunk::<8>()?;
        Some(u64::from_le_bytes(*word))
    }

    /// The text of string or key `i`, unescaped.
    #[inline]
    pub fn str(&self, i: usize) -> Cow<'a, str> {
        let n = self.nodes[i];
        // Inside the quotes: a byte past the first, a byte before the last, each next
        // to a quote, so on a character boundary. Not a container (whose `end` is a
        // node's index): its text as written is no string.
        let inner = match n.kind {
            Kind::Arr | Kind::Obj => "",
            _ => self.between(n.at + 1, n.end.saturating_sub(1)),
        };
        if n.escaped {
            // Read once already: its escapes are well formed.
            unescape(inner).map_or(Cow::Borrowed(inner), Cow::Owned)
        } else {
            Cow::Borrowed(inner)
        }
    }

    /// Whether key or string `i` is `text`: without escapes, its length first, then its
    /// bytes where they lie.
    #[inline]
    pub fn is(&self, i: usize, text: &str) -> bool {
        let n = self.nodes[i];
        if n.escaped {
            return self.str(i) == text;
        }
        !matches!(n.kind, Kind::Arr | Kind::Obj)
            && (n.end - n.at) as usize == text.len() + 2
            && self.between(n.at + 1, n.end - 1) == text
    }

    /// The text of node `i` as written: a container's from its opening bracket to its
    /// closing one, whitespace inside included.
    #[inline]
    pub fn text_of(&self, i: usize) -> &'a str {
        self.raw(i)
    }

    /// The members of object `i`: each key's node index, then its value's.
    pub fn members(&self, i: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let end = self.nodes[i].end as usize;
        let mut j = i + 1;
        std::iter::from_fn(move || {
            (j < end).then(|| {
                let member = (j, j + 1);
                j = self.next(j + 1);
                member
            })
        })
    }

    /// The elements of array `i`, by node index.
    pub fn elements(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let end = self.nodes[i].end as usize;
        let mut j = i + 1;
        std::iter::from_fn(move || {
            (j < end).then(|| {
                let element = j;
                j = self.next(j);
                element
            })
        })
    }
}

/// The reader's state: its functions take the text's bytes and a position, and give
/// the position after what they read (in registers, where a field of the reader would
/// be reloaded after every node stored).
struct Reader<'a> {
    text: &'a str,
    nodes: Vec<Node>,
    /// Whether any string or key held an escape.
    escapes: bool,
}

/// The first position at or after `p` that is not JSON's whitespace.
#[inline(always)]
fn ws(b: &[u8], mut p: usize) -> usize {
    // Most JSON is written compact: one compare for the usual case (JSON's
    // whitespace is all below `!`).
    if b.get(p).is_some_and(|c| *c > b' ') {
        return p;
    }
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(p) {
        p += 1;
    }
    p
}

impl Reader<'_> {
    /// A node of `kind` whose text runs from `start` to `end`.
    #[inline(always)]
    fn push(&mut self, kind: Kind, escaped: bool, start: usize, end: usize) {
        // Offsets fit: `read_into` takes no text of 4 GiB or more.
        self.nodes.push(Node {
            kind,
            escaped,
            span: 0,
            at: start as u32,
            len: 0,
            end: end as u32,
        });
    }

    /// The value at `p`, `depth` containers deep: a container out of line (it
    /// recurses), a scalar in line, as most values are.
    #[inline(always)]
    fn value(&mut self, b: &[u8], p: usize, depth: usize) -> Option<usize> {
        match *b.get(p)? {
            b'{' => self.container::<true>(b, p, depth),
            b'[' => self.container::<false>(b, p, depth),
            b'"' => self.string_at(b, p, Kind::Str),
            b't' => self.literal(b, p, b"true", Kind::True),
            b'f' => self.literal(b, p, b"false", Kind::False),
            b'n' => self.literal(b, p, b"null", Kind::Null),
            _ => {
                let end = number(b, p)?;
                self.push(Kind::Num, false, p, end);
                Some(end)
            }
        }
    }

    /// The object (`OBJECT`) or array at `start`, its members or elements after it;
    /// `depth` containers hold it.
    #[inline(never)]
    fn container<const OBJECT: bool>(
        &mut self,
        b: &[u8],
        start: usize,
        depth: usize,
    ) -> Option<usize> {
        if depth > MAX_DEPTH {
            return None;
        }
        let (kind, close) = if OBJECT {
            (Kind::Obj, b'}')
        } else {
            (Kind::Arr, b']')
        };
        let at = self.nodes.len();
        self.push(kind, false, start, start);
        let mut len = 0u32;
        let mut p = ws(b, start + 1);
        if b.get(p) == Some(&close) {
            p += 1;
        } else {
            loop {
                p = ws(b, p);
                if OBJECT {
                    (b.get(p)? == &b'"').then_some(())?;
                    p = ws(b, self.string_at(b, p, Kind::Key)?);
                    (b.get(p)? == &b':').then_some(())?;
                    p = ws(b, p + 1);
                }
                p = ws(b, self.value(b, p, depth + 1)?);
                len += 1;
                match *b.get(p)? {
                    b',' => p += 1,
                    c if c == close => {
                        p += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        // Fewer nodes than bytes, and the text is under 4 GiB (`read_into`).
        let end = self.nodes.len() as u32;
        let span = (p - start) as u32;
        let node = &mut self.nodes[at];
        (node.len, node.end, node.span) = (len, end, span);
        Some(p)
    }

    fn literal(&mut self, b: &[u8], p: usize, word: &[u8], kind: Kind) -> Option<usize> {
        b.get(p..)?.starts_with(word).then_some(())?;
        let end = p + word.len();
        self.push(kind, false, p, end);
        Some(end)
    }

    /// The string token whose opening quote is at `start`, as a node of `kind`.
    #[inline(always)]
    fn string_at(&mut self, b: &[u8], start: usize, kind: Kind) -> Option<usize> {
        let body = start + 1;
        let mut escaped = false;
        let mut at = body;
        loop {
            // The next quote, backslash or control character (JSON refuses those
            // unescaped).
            at = crate::scan::first_of(b, at, [b'"', b'\\'], 0x20);
            match *b.get(at)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    at += 2;
                }
                _ => return None,
            }
        }
        if escaped {
            unescape(self.text.get(body..at)?)?;
            self.escapes = true;
        }
        self.push(kind, escaped, start, at + 1);
        Some(at + 1)
    }
}

/// The end of the number at `p`, in JSON's grammar:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
#[inline]
fn number(b: &[u8], mut p: usize) -> Option<usize> {
    // The end of the digits from `p` (an iterator's walk: no bounds check per digit).
    let digits = |p: usize| {
        p + b.get(p..).map_or(0, |rest| {
            rest.iter().take_while(|c| c.is_ascii_digit()).count()
        })
    };
    if b.get(p) == Some(&b'-') {
        p += 1;
    }
    match b.get(p)? {
        b'0' => p += 1,
        b'1'..=b'9' => p = digits(p + 1),
        _ => return None,
    }
    if b.get(p) == Some(&b'.') {
        let end = digits(p + 1);
        (end > p + 1).then_some(())?;
        p = end;
    }
    if let Some(b'e' | b'E') = b.get(p) {
        p += 1;
        if let Some(b'+' | b'-') = b.get(p) {
            p += 1;
        }
        let end = digits(p);
        (end > p).then_some(())?;
        p = end;
    }
    Some(p)
}

/// The text of a string's inside with its escapes resolved, as serde_json resolves
/// them; `None` for an escape it refuses or one the fast path leaves to it (a lone
/// surrogate).
fn unescape(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let escape = &rest[at + 1..];
        let (c, used) = match *escape.as_bytes().first()? {
            b'"' => ('"', 1),
            b'\\' => ('\\', 1),
            b'/' => ('/', 1),
            b'b' => ('\u{8}', 1),
            b'f' => ('\u{c}', 1),
            b'n' => ('\n', 1),
            b'r' => ('\r', 1),
            b't' => ('\t', 1),
            b'u' => {
                let high = hex4(escape.get(1..5)?)?;
                match high {
                    0xD800..=0xDBFF => {
                        let low = escape
                            .get(5..7)
                            .filter(|s| *s == "\\u")
                            .and(escape.get(7..11));
                        let low = hex4(low?)?;
                        (0xDC00..=0xDFFF).contains(&low).then_some(())?;
                        let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                        (char::from_u32(code)?, 11)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => (char::from_u32(high)?, 5),
                }
            }
            _ => return None,
        };
        out.push(c);
        rest = &escape[used..];
    }
    out.push_str(rest);
    Some(out)
}

fn hex4(digits: &str) -> Option<u32> {
    digits
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| u32::from_str_radix(digits, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Node `i` as serde_json's value (an object's repeated key: the last one, as
    /// serde_json keeps), each container's text checked to read as the same value.
    fn value_of(tape: &Tape<'_>, i: usize) -> Value {
        let value = match tape.kind(i) {
            Kind::Obj => Value::Object(
                tape.members(i)
                    .map(|(k, v)| (tape.str(k).into_owned(), value_of(tape, v)))
                    .collect(),
            ),
            Kind::Arr => Value::Array(tape.elements(i).map(|j| value_of(tape, j)).collect()),
            Kind::Str => Value::String(tape.str(i).into_owned()),
            Kind::Key => panic!("a key where a value was expected"),
            _ => serde_json::from_str(tape.raw(i)).expect("a scalar's own text"),
        };
        let as_written: Value = serde_json::from_str(tape.text_of(i)).expect("the node's text");
        assert_eq!(as_written, value, "node {i}'s text");
        value
    }

    /// JSON text: compact or with whitespace, strings with escapes and characters of
    /// every width, nested objects and arrays.
    fn json(depth: u32) -> BoxedStrategy<String> {
        let ws = prop::sample::select(vec!["", "", "", " ", "\n  ", "\t", "\r\n"]);
        let string = prop::collection::vec(
            prop::sample::select(vec![
                "a",
                "key",
                "é",
                "日本",
                "😀",
                "\\\"",
                "\\\\",
                "\\n",
                "\\u00e9",
                "\\ud83d\\ude00",
                "\\/",
                " ",
                ",",
                ":",
                "{",
                "]",
                "0123456789abcdefghijklmnop",
            ]),
            0..6,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat()));
        let scalar = prop_oneof![
            string.clone(),
            prop::sample::select(vec![
                "0",
                "-1",
                "12.5",
                "-0.0e+1",
                "3E7",
                "1.25e-3",
                "true",
                "false",
                "null",
                "12345678901234567890",
            ])
            .prop_map(str::to_owned),
        ];
        let leaf = scalar.boxed();
        if depth == 0 {
            return leaf;
        }
        let inner = json(depth - 1);
        let array = (
            prop::collection::vec((inner.clone(), ws.clone()), 0..5),
            ws.clone(),
        )
            .prop_map(|(items, w)| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(v, w)| format!("{w}{v}{w}"))
                    .collect();
                format!("[{w}{}]", items.join(","))
            });
        prop_oneof![leaf, array, object(inner, string, ws)].boxed()
    }

    fn object(
        inner: BoxedStrategy<String>,
        key: impl Strategy<Value = String> + Clone,
        ws: impl Strategy<Value = &'static str> + Clone,
    ) -> impl Strategy<Value = String> {
        (prop::collection::vec((key, inner, ws.clone()), 0..6), ws).prop_map(|(members, w)| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, v, w)| format!("{w}{k}{w}:{w}{v}{w}"))
                .collect();
            format!("{w}{{{}}}{w}", members.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The tape of a JSON object's text, whole or with a character put in, taken
        /// out or replaced: where it reads, serde_json reads the same value; where
        /// serde_json reads an object, it reads (but for a lone surrogate, which it
        /// leaves to the general path).
        #[test]
        fn the_tape_reads_what_serde_json_reads_and_nothing_else(
            text in object(json(3), json(0), prop::sample::select(vec!["", " ", "\n"])),
            at in any::<prop::sample::Index>(),
            edit in 0..4u8,
            with in prop::sample::select(vec![
                '"', '\\', ',', ':', '{', '}', '[', ']', ' ', '\n', '\t', '\u{1}', 'a', '0', '-',
                '.', 'e', 't', 'é', '\u{1f}',
            ]),
        ) {
            let mut chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len() + 1);
            match edit {
                0 => {}
                1 => chars.insert(i, with),
                2 if i < chars.len() => { chars.remove(i); }
                _ if i < chars.len() => chars[i] = with,
                _ => {}
            }
            let text: String = chars.into_iter().collect();
            let serde = serde_json::from_str::<Value>(&text);
            match (Tape::read(&text), serde) {
                (Some(tape), Ok(value)) => prop_assert_eq!(value_of(&tape, 0), value),
                // A number beyond a double's range: a JSON number all the same, whose
                // refusal is the general path's (the fast path leaves such numbers to it).
                (Some(_), Err(e)) if e.to_string().starts_with("number out of range") => {}
                (Some(_), Err(e)) => prop_assert!(false, "read {:?}, which serde_json refuses: {}", text, e),
                (None, Ok(Value::Object(_))) => prop_assert!(false, "refused {:?}", text),
                (None, _) => {}
            }
        }
    }

    #[test]
    fn the_tape_knows_whether_any_string_or_key_held_an_escape() {
        let plain = r#"{"a":"x","b":[1,{"c":"y"}]}"#;
        assert!(!Tape::read(plain).unwrap().escapes());
        for escaped in [
            r#"{"a":"x\u0000"}"#,
            r#"{"a":[1,{"c":"\n"}]}"#,
            r#"{"k\"ey":1}"#,
        ] {
            assert!(Tape::read(escaped).unwrap().escapes(), "{escaped}");
        }
        // A buffer reused after an event with escapes starts again without.
        let nodes = Tape::read(r#"{"a":"\t"}"#).unwrap().into_nodes();
        assert!(!Tape::read_into(plain, nodes).unwrap().escapes());
    }

    #[test]
    fn reads_plain_objects_and_refuses_what_it_does_not_take() {
        let tape = Tape::read(r#" {"a": [1, -2.5e3, "x\u00e9\n"], "b": {}, "c": null} "#).unwrap();
        assert_eq!(
            (tape.kind(0), tape.nodes[0].len, tape.next(0)),
            (Kind::Obj, 3, 10)
        );
        assert_eq!((tape.kind(2), tape.next(2)), (Kind::Arr, 6));
        assert_eq!((tape.kind(4), tape.raw(4)), (Kind::Num, "-2.5e3"));
        assert_eq!(tape.str(5), "xé\n");
        assert_eq!(tape.str(1), "a");
        let keys: Vec<_> = tape.members(0).map(|(k, _)| tape.str(k)).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(tape.elements(2).collect::<Vec<_>>(), [3, 4, 5]);
        let pair = Tape::read(r#"{"s":"\ud83d\ude00\/"}"#).unwrap();
        assert_eq!(pair.str(2), "😀/");
        for bad in [
            "[1]",
            "{\"a\":1} x",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\t\"}",
            "{\"a\":tru}",
            "{\"a\":1,}",
            "{\"a\":\"\\x\"}",
            "{\"a\":-}",
            "{\"a\":\"\\",
        ] {
            assert!(Tape::read(bad).is_none(), "{bad}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(Tape::read(&deep).is_none());
    }
}
