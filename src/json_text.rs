//! JSON text for JSON columns and `_extra` that keeps every integer exact.
//!
//! `serde_json::Value` holds a number as `i64`, `u64` or `f64`, so an integer beyond 64
//! bits (a Twitter-style id, a 128-bit counter) becomes a float and loses digits when
//! the value is written back out. Events rarely carry one, so the usual path stays
//! `Value::to_string()`; only when the event's text has an integer literal too long for
//! 64 bits is the column's text rebuilt from the original: compact, object keys sorted
//! (as `serde_json` writes them, and as `jsonb`/MySQL `json` normalise anyway), strings
//! re-encoded by `serde_json`, numbers copied digit for digit.

use serde_json::Value;

/// Whether `raw` has an integer literal (outside strings) of more than 18 digits, which
/// may not fit 64 bits. A cheap scan over the bytes.
pub fn has_long_integer(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut run = 0usize;
    let mut number_has_point = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'0'..=b'9' => run += 1,
            b'.' | b'e' | b'E' => {
                number_has_point = true;
                run = 0;
            }
            _ => {
                if run > 18 && !number_has_point {
                    return true;
                }
                run = 0;
                number_has_point = false;
                if b == b'"' {
                    in_string = true;
                }
            }
        }
    }
    run > 18 && !number_has_point
}

/// Whether `v` holds a float beyond the 64-bit integers in magnitude: what an integer
/// literal that did not fit 64 bits parses into (prices and other everyday floats do
/// not come near it, so events rarely take the slow path).
pub fn has_huge_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64() && n.as_f64().is_some_and(|f| f.abs() >= 9.2e18),
        Value::Array(a) => a.iter().any(has_huge_float),
        Value::Object(o) => o.values().any(has_huge_float),
        _ => false,
    }
}

/// The top-level properties of the object `raw`, each with its original text.
pub fn top_level(
    raw: &str,
) -> Option<std::collections::HashMap<String, &serde_json::value::RawValue>> {
    serde_json::from_str(raw).ok()
}

/// The text of member `name` of the JSON object `raw` (its last, when repeated, as
/// serde_json reads it), found by one scan that allocates nothing: what an exact
/// decimal column reads its digits from.
pub fn top_level_member<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let mut p = Parser {
        bytes: raw.as_bytes(),
        text: raw,
        pos: 0,
    };
    p.skip_ws();
    (p.bytes.get(p.pos)? == &b'{').then_some(())?;
    p.pos += 1;
    let mut found = None;
    loop {
        p.skip_ws();
        if p.bytes.get(p.pos) == Some(&b'}') {
            return found;
        }
        let key = p.string_token()?;
        let inner = &key[1..key.len() - 1];
        let same = if inner.contains('\\') {
            serde_json::from_str::<String>(key).ok()? == name
        } else {
            inner == name
        };
        p.skip_ws();
        (p.bytes.get(p.pos)? == &b':').then_some(())?;
        p.pos += 1;
        p.skip_ws();
        let start = p.pos;
        p.skip_value()?;
        if same {
            found = p.text.get(start..p.pos);
        }
        p.skip_ws();
        match *p.bytes.get(p.pos)? {
            b',' => p.pos += 1,
            b'}' => return found,
            _ => return None,
        }
    }
}

/// `raw` (valid JSON) as compact text with object keys sorted, numbers exactly as
/// written. `None` if `raw` is not valid JSON.
pub fn exact_compact(raw: &str) -> Option<String> {
    let mut parser = Parser {
        bytes: raw.as_bytes(),
        text: raw,
        pos: 0,
    };
    let mut out = String::with_capacity(raw.len());
    parser.value(&mut out, 0)?;
    parser.skip_ws();
    (parser.pos == raw.len()).then_some(out)
}

/// An object's members, compact: each entry is (decoded key, `"key":value` text).
type Members = Vec<(String, String)>;

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn value(&mut self, out: &mut String, depth: usize) -> Option<()> {
        // The event was parsed already, within serde_json's nesting limit.
        if depth > 256 {
            return None;
        }
        self.skip_ws();
        match *self.bytes.get(self.pos)? {
            b'{' => {
                self.pos += 1;
                let mut members: Members = Vec::new();
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos) == Some(&b'}') && members.is_empty() {
                        self.pos += 1;
                        break;
                    }
                    let key_raw = self.string_token()?;
                    let key: String = serde_json::from_str(key_raw).ok()?;
                    self.skip_ws();
                    (self.bytes.get(self.pos)? == &b':').then_some(())?;
                    self.pos += 1;
                    let mut member = serde_json::to_string(&key).ok()?;
                    member.push(':');
                    self.value(&mut member, depth + 1)?;
                    // A repeated key keeps its last value, as serde_json does.
                    members.retain(|(k, _)| *k != key);
                    members.push((key, member));
                    self.skip_ws();
                    match *self.bytes.get(self.pos)? {
                        b',' => self.pos += 1,
                        b'}' => {
                            self.pos += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
                members.sort_by(|a, b| a.0.cmp(&b.0));
                out.push('{');
                for (i, (_, member)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(member);
                }
                out.push('}');
            }
            b'[' => {
                self.pos += 1;
                out.push('[');
                let mut first = true;
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos) == Some(&b']') && first {
                        self.pos += 1;
                        break;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    self.value(out, depth + 1)?;
                    self.skip_ws();
                    match *self.bytes.get(self.pos)? {
                        b',' => self.pos += 1,
                        b']' => {
                            self.pos += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
                out.push(']');
            }
            b'"' => {
                let token = self.string_token()?;
                let s: String = serde_json::from_str(token).ok()?;
                out.push_str(&serde_json::to_string(&s).ok()?);
            }
            _ => {
                // A number, true, false or null: copied as written.
                let token = self.scalar_token()?;
                out.push_str(token);
            }
        }
        Some(())
    }

    /// Moves past the value starting at `pos` (strings, nesting and scalars).
    fn skip_value(&mut self) -> Option<()> {
        match *self.bytes.get(self.pos)? {
            b'"' => {
                self.string_token()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.bytes.get(self.pos)? {
                        b'"' => {
                            self.string_token()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            _ => {
                self.scalar_token()?;
            }
        }
        Some(())
    }

    /// The text of the number, `true`, `false` or `null` starting at `pos` (not empty).
    fn scalar_token(&mut self) -> Option<&str> {
        let start = self.pos;
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| !matches!(b, b',' | b']' | b'}') && !b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
        self.text.get(start..self.pos).filter(|t| !t.is_empty())
    }

    /// The text of the string starting at `pos`, quotes included.
    fn string_token(&mut self) -> Option<&str> {
        (self.bytes.get(self.pos)? == &b'"').then_some(())?;
        let start = self.pos;
        self.pos += 1;
        loop {
            match *self.bytes.get(self.pos)? {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return self.text.get(start..self.pos);
                }
                _ => self.pos += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_s_text_is_found_past_nested_values_and_strings() {
        let raw = r#" {"items": [{"total_amount": 1}, "}"], "t\u006ftal": 2, "total_amount" : 12345678901234567890.12 , "x": {"a": "]"}}"#;
        assert_eq!(
            top_level_member(raw, "total_amount"),
            Some("12345678901234567890.12")
        );
        assert_eq!(top_level_member(raw, "total"), Some("2"));
        assert_eq!(top_level_member(raw, "x"), Some(r#"{"a": "]"}"#));
        assert_eq!(top_level_member(raw, "missing"), None);
        assert_eq!(
            top_level_member(r#"{"a": 1, "a": "2"}"#, "a"),
            Some("\"2\"")
        );
    }

    #[test]
    fn long_integers_are_found_outside_strings_only() {
        assert!(has_long_integer(r#"{"a": 123456789012345678901}"#));
        assert!(has_long_integer("[-99999999999999999999]"));
        assert!(!has_long_integer(r#"{"a": 922337203685477580}"#));
        assert!(!has_long_integer(r#"{"a": "123456789012345678901"}"#));
        assert!(!has_long_integer(r#"{"a": 1.2345678901234567890123}"#));
        assert!(!has_long_integer(r#"{"a\"": "\\", "b": 1}"#));
    }

    #[test]
    fn the_compact_text_keeps_digits_and_matches_serde_json_otherwise() {
        let raw = r#" { "z": [1, 2 , {"b": true, "a": null}], "a": 123456789012345678901234567890, "é\u00e9": "x\"y" } "#;
        assert_eq!(
            exact_compact(raw).unwrap(),
            r#"{"a":123456789012345678901234567890,"z":[1,2,{"a":null,"b":true}],"éé":"x\"y"}"#
        );
        let plain = r#"{"k": {"y": [1, "two", false], "x": -3}, "e": {}, "l": []}"#;
        let v: Value = serde_json::from_str(plain).unwrap();
        assert_eq!(exact_compact(plain).unwrap(), v.to_string());
        assert_eq!(exact_compact("{\"a\": 1, \"a\": 2}").unwrap(), "{\"a\":2}");
        assert!(exact_compact("{\"a\": }").is_none());
    }
}
