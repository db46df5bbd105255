//! A strict, borrowing JSON reader for the fast path: one event's text read into a flat
//! tape of nodes that point into the text, with no `serde_json::Value` and no map.
//!
//! The reader accepts a subset of what `serde_json` accepts and nothing more: anything
//! unusual (a lone surrogate, deep nesting, a control character, text after the object)
//! is `None`, and the event then takes the general path, which gives the same answer
//! it always did. So this reader never needs an error message of its own.

use std::borrow::Cow;

/// Deepest nesting the fast path reads; deeper events take the general path, which
/// applies serde_json's own limit.
const MAX_DEPTH: usize = 64;

/// One node of the tape. A container is followed by its children (an object's as a
/// [`Node::Key`] then the member's value); `end` is the index just past its last
/// descendant, so a reader can skip it whole.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    /// A number, as written.
    Num(&'a str),
    /// A string, unescaped; `raw` is its token as written, quotes included.
    Str {
        text: Cow<'a, str>,
        raw: &'a str,
    },
    Arr {
        len: u32,
        end: u32,
    },
    Obj {
        len: u32,
        end: u32,
    },
    Key(Cow<'a, str>),
}

/// The tape of one JSON object's text, or `None` when the text is anything but a
/// plain, well-formed JSON object (see the module's note).
pub fn read(text: &str) -> Option<Vec<Node<'_>>> {
    let mut r = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        tape: Vec::with_capacity(32),
    };
    r.ws();
    if r.bytes.get(r.pos) != Some(&b'{') {
        return None;
    }
    r.value(0)?;
    r.ws();
    (r.pos == r.bytes.len()).then_some(r.tape)
}

/// The index just past the subtree at `i`.
pub fn next(tape: &[Node<'_>], i: usize) -> usize {
    match tape[i] {
        Node::Arr { end, .. } | Node::Obj { end, .. } => end as usize,
        _ => i + 1,
    }
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    tape: Vec<Node<'a>>,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match *self.bytes.get(self.pos)? {
            b'{' => {
                self.pos += 1;
                let at = self.tape.len();
                self.tape.push(Node::Obj { len: 0, end: 0 });
                let mut len = 0u32;
                self.ws();
                if self.bytes.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                } else {
                    loop {
                        self.ws();
                        let (key, _) = self.string()?;
                        self.tape.push(Node::Key(key));
                        self.ws();
                        (self.bytes.get(self.pos)? == &b':').then_some(())?;
                        self.pos += 1;
                        self.ws();
                        self.value(depth + 1)?;
                        len += 1;
                        self.ws();
                        match *self.bytes.get(self.pos)? {
                            b',' => self.pos += 1,
                            b'}' => {
                                self.pos += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                let end = u32::try_from(self.tape.len()).ok()?;
                self.tape[at] = Node::Obj { len, end };
            }
            b'[' => {
                self.pos += 1;
                let at = self.tape.len();
                self.tape.push(Node::Arr { len: 0, end: 0 });
                let mut len = 0u32;
                self.ws();
                if self.bytes.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                } else {
                    loop {
                        self.ws();
                        self.value(depth + 1)?;
                        len += 1;
                        self.ws();
                        match *self.bytes.get(self.pos)? {
                            b',' => self.pos += 1,
                            b']' => {
                                self.pos += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                let end = u32::try_from(self.tape.len()).ok()?;
                self.tape[at] = Node::Arr { len, end };
            }
            b'"' => {
                let (text, raw) = self.string()?;
                self.tape.push(Node::Str { text, raw });
            }
            b't' => self.literal("true", Node::Bool(true))?,
            b'f' => self.literal("false", Node::Bool(false))?,
            b'n' => self.literal("null", Node::Null)?,
            _ => {
                let num = self.number()?;
                self.tape.push(Node::Num(num));
            }
        }
        Some(())
    }

    fn literal(&mut self, word: &str, node: Node<'a>) -> Option<()> {
        self.bytes[self.pos..]
            .starts_with(word.as_bytes())
            .then_some(())?;
        self.pos += word.len();
        self.tape.push(node);
        Some(())
    }

    /// A number in JSON's grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let digits = |r: &mut Self| {
            let from = r.pos;
            while r.bytes.get(r.pos).is_some_and(u8::is_ascii_digit) {
                r.pos += 1;
            }
            r.pos > from
        };
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.bytes.get(self.pos)? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            digits(self).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            digits(self).then_some(())?;
        }
        self.text.get(start..self.pos)
    }

    /// The string at `pos`: its unescaped text and its token as written.
    fn string(&mut self) -> Option<(Cow<'a, str>, &'a str)> {
        (self.bytes.get(self.pos)? == &b'"').then_some(())?;
        let start = self.pos;
        self.pos += 1;
        let body = self.pos;
        loop {
            match *self.bytes.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    let raw = self.text.get(start..self.pos)?;
                    return Some((Cow::Borrowed(&raw[1..raw.len() - 1]), raw));
                }
                b'\\' => break,
                0..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
        // Escapes: unescape into an owned string from the first one on.
        let mut out = String::from(self.text.get(body..self.pos)?);
        loop {
            match *self.bytes.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    let raw = self.text.get(start..self.pos)?;
                    return Some((Cow::Owned(out), raw));
                }
                b'\\' => {
                    self.pos += 1;
                    let c = match *self.bytes.get(self.pos)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let high = self.hex4()?;
                            let code = match high {
                                0xD800..=0xDBFF => {
                                    // A surrogate pair, or the general path.
                                    (self.bytes.get(self.pos + 1..self.pos + 3)? == b"\\u")
                                        .then_some(())?;
                                    self.pos += 2;
                                    let low = self.hex4()?;
                                    (0xDC00..=0xDFFF).contains(&low).then_some(())?;
                                    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return None,
                                _ => high,
                            };
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    out.push(c);
                    self.pos += 1;
                }
                0..=0x1f => return None,
                _ => {
                    // Copy up to the next quote or backslash (the text is UTF-8).
                    let from = self.pos;
                    while let Some(&b) = self.bytes.get(self.pos) {
                        if b == b'"' || b == b'\\' || b < 0x20 {
                            break;
                        }
                        self.pos += 1;
                    }
                    out.push_str(self.text.get(from..self.pos)?);
                }
            }
        }
    }

    /// The four hex digits after `\u` (with `pos` on the `u`), leaving `pos` on the last.
    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.pos + 1..self.pos + 5)?;
        let code = u32::from_str_radix(digits, 16).ok()?;
        digits
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then_some(())?;
        self.pos += 4;
        Some(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_objects_and_refuses_what_it_does_not_take() {
        let tape = read(r#" {"a": [1, -2.5e3, "x\u00e9\n"], "b": {}, "c": null} "#).unwrap();
        assert_eq!(tape[0], Node::Obj { len: 3, end: 10 });
        assert_eq!(tape[2], Node::Arr { len: 3, end: 6 });
        assert_eq!(tape[4], Node::Num("-2.5e3"));
        assert!(matches!(&tape[5], Node::Str { text, .. } if text == "xé\n"));
        assert_eq!(next(&tape, 2), 6);
        let pair = read(r#"{"s":"\ud83d\ude00"}"#).unwrap();
        assert!(matches!(&pair[2], Node::Str { text, .. } if text == "😀"));
        for bad in [
            "[1]",
            "{\"a\":1} x",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\t\"}",
            "{\"a\":tru}",
            "{\"a\":1,}",
            "{\"a\":\"\\x\"}",
            "{\"a\":-}",
        ] {
            assert!(read(bad).is_none(), "{bad}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(read(&deep).is_none());
    }
}
