//! The fast path (the schema compiled over a tape of the event's text) against the
//! general one (`serde_json` and `jsonschema`): for generated events of every shipped
//! stream, and for those events mutated every way proptest finds, an event the fast
//! path accepts is one the general path accepts, with the very same row; the general
//! path answers every other event, so every input gets the answer it always got.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use sluice::event::{Cell, Row};
use sluice::ingest::body::parse_object;
use sluice::schema::{tape, Registry, Stream};
use sluice::Config;

fn registry() -> Registry {
    registry_for(&Config::default().database.url)
}

/// The shipped schemas' registry for a database at `url` (never connected to).
fn registry_for(url: &str) -> Registry {
    let mut config = Config {
        schemas_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/schemas").into(),
        ..Config::default()
    };
    config.database.url = url.into();
    config.privacy.key_file =
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/privacy.key").into());
    Registry::load(config.streams_config()).expect("the shipped schemas load")
}

/// Valid events of each shipped stream that has a fast path.
fn samples(registry: &Registry) -> Vec<(Arc<Stream>, Vec<Value>)> {
    let mut out = Vec::new();
    for stream in registry.iter().filter(|s| s.has_fast_path()) {
        let events: Vec<Value> = if stream.name == "order_placed" {
            sluice::loadgen::generate(50, 9)
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect()
        } else {
            let path = format!(
                "{}/examples/{}.json",
                env!("CARGO_MANIFEST_DIR"),
                stream.name
            );
            match std::fs::read_to_string(&path) {
                Ok(text) => vec![serde_json::from_str(&text).unwrap()],
                Err(_) => continue,
            }
        };
        out.push((stream.clone(), events));
    }
    out
}

/// What each path makes of `text`: the fast path's row (`None`: it left the event to
/// the general path) and the general path's, as comparable text.
fn both(stream: &Stream, text: &str) -> (Option<String>, Result<String, String>) {
    let show = |row: &Row| format!("{:?} {:?} {}", row.cells, row.extra, row.raw);
    let (fast, general) = both_rows(stream, text);
    (
        fast.as_ref().map(show),
        general.as_ref().map(show).map_err(Clone::clone),
    )
}

/// Each path's row of `text`, as [`both`] but the rows themselves.
fn both_rows(stream: &Stream, text: &str) -> (Option<Row>, Result<Row, String>) {
    let source: Arc<str> = "test".into();
    let now = chrono::Utc::now();
    let fast =
        tape::Tape::read(text).and_then(|t| stream.fast_row(&t, text, None, &source, 0, now));
    let general = parse_object(text.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|v| {
            stream
                .to_row(v, text.into(), false, source.clone(), 0, now)
                .map_err(|r| r.error)
        });
    (fast, general)
}

#[test]
fn every_shipped_stream_without_privacy_takes_the_fast_path_with_the_general_path_s_rows() {
    let registry = registry();
    let samples = samples(&registry);
    let names: Vec<&str> = samples.iter().map(|(s, _)| s.name.as_str()).collect();
    for expected in [
        "order_placed",
        "cart_item_added",
        "payment_processed",
        "shipping_quoted",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} has no fast path: {names:?}"
        );
    }
    for (stream, events) in &samples {
        for event in events {
            for text in [
                event.to_string(),
                serde_json::to_string_pretty(event).unwrap(),
            ] {
                let (fast, general) = both(stream, &text);
                assert!(
                    fast.is_some(),
                    "{}: the fast path refused {text}",
                    stream.name
                );
                assert_eq!(
                    fast.as_ref(),
                    general.as_ref().ok(),
                    "{}: {text}",
                    stream.name
                );
            }
        }
    }
}

/// The fast path guesses each key's property from the key at the same position in the
/// event before: events whose keys come in changing orders, with a key the schema
/// does not declare in between or a required one missing, get the general path's
/// answer every time.
#[test]
fn keys_in_changing_orders_get_the_general_path_s_answer() {
    let registry = registry();
    let stream = registry.get("order_placed").expect("shipped stream");
    let natural = sluice::loadgen::generate(3, 5);
    let mut texts = Vec::new();
    for text in &natural {
        let value: Value = serde_json::from_str(text).unwrap();
        let object = value.as_object().unwrap();
        let mut reversed = String::from("{");
        for (i, (k, v)) in object.iter().rev().enumerate() {
            if i > 0 {
                reversed.push(',');
            }
            reversed.push_str(&format!("{}:{v}", json!(k)));
        }
        reversed.push('}');
        let extra = text.replacen("{", r#"{"note":"gift","#, 1);
        let mut missing = object.clone();
        missing.remove("order_id");
        texts.extend([
            text.clone(),
            value.to_string(),
            reversed,
            extra,
            Value::Object(missing).to_string(),
            text.clone(),
        ]);
    }
    for _ in 0..3 {
        for text in &texts {
            let (fast, general) = both(stream, text);
            assert_eq!(fast.as_ref(), general.as_ref().ok(), "{text}");
        }
    }
}

/// A JSON column's objects are written in their keys' order from where the check found
/// each value: items whose keys come in any order (the fast path must take them), and
/// items with a repeated, an escaped or an undeclared key, get the general path's
/// answer and text.
#[test]
fn nested_objects_in_any_key_order_are_written_as_the_general_path_writes_them() {
    let registry = registry();
    let stream = registry.get("order_placed").expect("shipped stream");
    let natural = sluice::loadgen::generate(20, 8);
    for (n, text) in natural.iter().enumerate() {
        let value: Value = serde_json::from_str(text).unwrap();
        let items = value["items"].as_array().unwrap();
        // Each item's keys rotated by its position and the event's.
        let rotated: Vec<String> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let members: Vec<String> = item
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", json!(k)))
                    .collect();
                let turn = (n + i) % members.len();
                let (a, b) = members.split_at(turn);
                format!("{{{}}}", [b, a].concat().join(","))
            })
            .collect();
        let start = text.find(r#""items":"#).unwrap() + r#""items":"#.len();
        let end = start + text[start..].find("]").unwrap() + 1;
        let in_order = format!("{}[{}]{}", &text[..start], rotated.join(","), &text[end..]);
        let (fast, general) = both(stream, &in_order);
        assert!(fast.is_some(), "the fast path refused {in_order}");
        assert_eq!(fast.as_ref(), general.as_ref().ok(), "{in_order}");
        for odd in [
            in_order.replacen(r#""qty":"#, r#""qty":7,"qty":"#, 1),
            in_order.replacen(r#""isbn":"#, r#""\u0069sbn":"#, 1),
            in_order.replacen(r#""title":"#, r#""note":"gift","title":"#, 1),
            in_order.replacen(r#""unit_price":"#, r#""unit_price":{"a":1},"x":"#, 1),
        ] {
            let (fast, general) = both(stream, &odd);
            if let Some(fast) = fast {
                assert_eq!(Some(&fast), general.as_ref().ok(), "{odd}");
            }
        }
    }
}

/// Any JSON value, leaning to the edges: numbers beyond 64 bits, floats, escapes,
/// non-ASCII text, uuids and date-times in and out of shape.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(100_000),
            Just(100_001),
            Just(10_000),
            Just(i64::MAX)
        ]
        .prop_map(Value::from),
        prop_oneof![
            Just(0.0f64),
            Just(1.0),
            Just(-0.01),
            Just(9_999_999_999.99),
            Just(1.5)
        ]
        .prop_map(Value::from),
        prop_oneof![
            Just("US"),
            Just("DE"),
            Just("CA"),
            Just("USD"),
            Just("usd"),
            Just(""),
            Just("9780131103627"),
            Just("2024-05-01T12:00:00Z"),
            Just("2024-05-01T12:00:00.123456789+02:00"),
            Just("2024-02-30T12:00:00Z"),
            Just("2024-05-01t12:00:00z"),
            Just("2016-12-31T23:59:60Z"),
            Just("1e2"),
            Just("12.345"),
            Just("-0.5"),
            Just("0x10"),
            Just("0b4f9d6a-3c1e-4f8a-9d2b-7e5c1a0f3b6d"),
            Just("0B4F9D6A-3C1E-4F8A-9D2B-7E5C1A0F3B6D"),
            Just("é\"\\\n\t\u{1F600}\u{0}"),
            Just("2024-05-01T12:00:00+24:00"),
            Just("2024-05-01T12:00:00.1234567891Z"),
            Just("0000-01-01T00:00:00Z"),
            Just("2024-02-29T23:59:59-00:30"),
            Just("2023-02-29T00:00:00Z"),
            Just("2024-05-01 12:00:00Z"),
            Just("ABC"),
            Just("ABCD"),
            Just("AB"),
            Just("97801311036X"),
            Just("978013110362X"),
            Just("0B4F9D6A3C1E4F8A9D2B7E5C1A0F3B6D"),
        ]
        .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One change to an event.
#[derive(Debug, Clone)]
enum Change {
    Set(usize, Value),
    SetNamed(String, Value),
    Remove(usize),
    SetInItem(usize, Value),
    Number(usize, &'static str),
    NumberInItem(usize, &'static str),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<usize>(), any_value()).prop_map(|(i, v)| Change::Set(i, v)),
        ("[a-z_]{1,10}", any_value()).prop_map(|(k, v)| Change::SetNamed(k, v)),
        any::<usize>().prop_map(Change::Remove),
        (any::<usize>(), any_value()).prop_map(|(i, v)| Change::SetInItem(i, v)),
        (any::<usize>(), number_literal()).prop_map(|(i, n)| Change::NumberInItem(i, n)),
        (any::<usize>(), number_literal()).prop_map(|(i, n)| Change::Number(i, n)),
    ]
}

/// A number literal as producers write them: plain or not as serde_json writes it,
/// beyond 64 bits, beyond a double.
fn number_literal() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("1.0"),
        Just("1.50"),
        Just("2.5"),
        Just("-0"),
        Just("-0.0"),
        Just("-1"),
        Just("7"),
        Just("0.001"),
        Just("0.0001"),
        Just("1e2"),
        Just("1E-7"),
        Just("3.0e1"),
        Just("1e400"),
        Just("12.345"),
        Just("99999999999.99"),
        Just("0.1000000000000000055511151231257827"),
        Just("123456789012345678"),
        Just("1234567890123456789"),
        Just("9223372036854775808"),
        Just("18446744073709551616"),
        Just("123456789012345678901234"),
    ]
}

/// A placeholder string for number literal `n`, replaced by it in the text at the end
/// (serde_json would write the number its own way).
fn placeholder(numbers: &mut Vec<(String, &'static str)>, n: &'static str) -> Value {
    let mark = format!("@@{}@@", numbers.len());
    numbers.push((mark.clone(), n));
    Value::from(mark)
}

/// Sets the `i`th property of the event's first item (an order's), if it has one, to
/// `value`.
fn set_in_item(event: &mut serde_json::Map<String, Value>, i: usize, value: Value) {
    if let Some(Value::Object(item)) = event.get_mut("items").and_then(|items| items.get_mut(0)) {
        let keys: Vec<String> = item.keys().cloned().collect();
        let key = keys
            .get(i % keys.len().max(1))
            .cloned()
            .unwrap_or("isbn".into());
        item.insert(key, value);
    }
}

/// `event` (an object) with `changes` made, as text.
fn changed(event: &Value, changes: &[Change]) -> String {
    let mut event = event.clone();
    let mut numbers = Vec::new();
    let map = event.as_object_mut().unwrap();
    for c in changes {
        let keys: Vec<String> = map.keys().cloned().collect();
        let key = |i: &usize| keys[i % keys.len().max(1)].clone();
        match c {
            Change::Set(i, v) if !keys.is_empty() => {
                map.insert(key(i), v.clone());
            }
            Change::SetNamed(k, v) => {
                map.insert(k.clone(), v.clone());
            }
            Change::Remove(i) if !keys.is_empty() => {
                map.remove(&key(i));
            }
            Change::SetInItem(i, v) => set_in_item(map, *i, v.clone()),
            Change::Number(i, n) if !keys.is_empty() => {
                map.insert(key(i), placeholder(&mut numbers, n));
            }
            Change::NumberInItem(i, n) => {
                let mark = placeholder(&mut numbers, n);
                set_in_item(map, *i, mark);
            }
            _ => {}
        }
    }
    let mut text = event.to_string();
    for (mark, literal) in numbers {
        text = text.replace(&format!("\"{mark}\""), literal);
    }
    text
}

/// The samples, loaded once for all cases.
fn shared_samples() -> &'static [(Arc<Stream>, Vec<Value>)] {
    static SAMPLES: std::sync::OnceLock<Vec<(Arc<Stream>, Vec<Value>)>> =
        std::sync::OnceLock::new();
    SAMPLES.get_or_init(|| samples(&registry()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_fast_path_accepts_only_what_the_general_path_accepts_with_the_same_row(
        pick in any::<usize>(),
        sample in any::<usize>(),
        changes in prop::collection::vec(change(), 0..4),
        duplicate in any::<bool>(),
        space in any::<bool>(),
    ) {
        let samples = shared_samples();
        let (stream, events) = &samples[pick % samples.len()];
        let mut text = changed(&events[sample % events.len()], &changes);
        if duplicate {
            // serde_json keeps a repeated key's last value.
            let first = text.find(':').unwrap();
            let key_end = text[..first].to_owned();
            text = format!("{key_end}:null,{}", &text[1..]);
        }
        if space {
            text = spaced(&text);
        }
        let (fast, general) = both(stream, &text);
        if let Some(fast) = fast {
            prop_assert_eq!(Some(&fast), general.as_ref().ok(), "{}: {}", stream.name, text);
        }
        // On PostgreSQL a JSON column may be the text as written: whatever its
        // whitespace, escapes and numbers, it must store the general path's value.
        let (stream, _) = &shared_jsonb_samples()[pick % samples.len()];
        let (fast, general) = both_rows(stream, &text);
        if let Some(fast) = fast {
            let general = general.map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            same_in_jsonb(&fast, &general)
                .map_err(|e| TestCaseError::fail(format!("{}: {e}: {text}", stream.name)))?;
        }
    }
}

/// The number literals of JSON text `json` (those outside its strings).
fn number_literals(json: &str) -> Vec<&str> {
    let b = json.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push(&json[start..i]);
            }
            _ => i += 1,
        }
    }
    out
}

/// JSON text `json` with a space or a line break after every `,` and `:` outside its
/// strings (the same value).
fn spaced(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        out.push(c);
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            ',' if !in_string => out.push_str("\n "),
            ':' if !in_string => out.push(' '),
            _ => {}
        }
    }
    out
}

/// Where a JSON column is stored as `jsonb` (PostgreSQL): whether the fast path's row
/// `fast` stores there what the general path's row `general` does. A JSON cell may be
/// the value's text as written: it must hold the same value, with every number written
/// as serde_json writes it (`jsonb` keeps a number's own digits: `1.50` is not `1.5`).
fn same_in_jsonb(fast: &Row, general: &Row) -> Result<(), String> {
    if fast.extra != general.extra || fast.raw != general.raw {
        return Err(format!("{:?} is not {:?}", fast.extra, general.extra));
    }
    if fast.cells.len() != general.cells.len() {
        return Err("not as many cells".into());
    }
    let read = |t: &str| serde_json::from_str::<Value>(t).map_err(|e| format!("{t}: {e}"));
    for (f, g) in fast.cells.iter().zip(&general.cells) {
        match (f, g) {
            (Cell::Json(f), Cell::Json(g)) => {
                if read(f)? != read(g)? {
                    return Err(format!("{f} is not {g}"));
                }
                for n in number_literals(f) {
                    let written = read(n)?.to_string();
                    if written != n {
                        return Err(format!("{n} in {f} is written {written} in {g}"));
                    }
                }
            }
            _ if format!("{f:?}") == format!("{g:?}") => {}
            _ => return Err(format!("{f:?} is not {g:?}")),
        }
    }
    Ok(())
}

/// The samples of a registry for PostgreSQL, loaded once for all cases.
fn shared_jsonb_samples() -> &'static [(Arc<Stream>, Vec<Value>)] {
    static SAMPLES: std::sync::OnceLock<Vec<(Arc<Stream>, Vec<Value>)>> =
        std::sync::OnceLock::new();
    SAMPLES.get_or_init(|| samples(&registry_for("postgres://sluice@127.0.0.1/never_used")))
}

#[test]
fn the_text_as_written_is_stored_where_it_holds_the_same_jsonb_value() {
    let registry = registry_for("postgres://sluice@127.0.0.1/never_used");
    let stream = registry.get("order_placed").expect("shipped stream");
    let column = stream
        .columns
        .iter()
        .position(|c| c.name == "items")
        .expect("a column for items");
    for text in sluice::loadgen::generate(20, 3) {
        let spaced = spaced(&text);
        // A price written with an exponent: the same number, not as serde_json writes it.
        let price = text.find(r#""unit_price":"#).unwrap() + r#""unit_price":"#.len();
        let end = price + text[price..].find('}').unwrap();
        let odd_number = format!("{}e0{}", &text[..end], &text[end..]);
        for (text, as_written) in [(text.clone(), true), (spaced, true), (odd_number, false)] {
            let (fast, general) = both_rows(stream, &text);
            let (Some(fast), Ok(general)) = (fast, general) else {
                panic!("either path refused {text}");
            };
            same_in_jsonb(&fast, &general).unwrap_or_else(|e| panic!("{e}: {text}"));
            let Cell::Json(items) = &fast.cells[column] else {
                panic!("items is a JSON cell");
            };
            let start = text.find(r#""items":"#).unwrap() + r#""items":"#.len();
            let written = text[start..].trim_start().starts_with(items.as_str());
            assert_eq!(written, as_written, "{items}");
        }
    }
}

#[test]
fn keywords_the_fast_path_does_not_compile_leave_the_stream_to_the_general_path() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, schema: Value| {
        std::fs::write(dir.path().join(format!("{name}.json")), schema.to_string()).unwrap();
    };
    write(
        "plain",
        json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
    );
    write(
        "refs",
        json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}, "$defs": {"n": {"type": "integer"}}}),
    );
    write(
        "one_of",
        json!({"type": "object", "properties": {"a": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}}),
    );
    let config = Config {
        schemas_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let registry = Registry::load(config.streams_config()).unwrap();
    assert!(registry.get("plain").unwrap().has_fast_path());
    assert!(!registry.get("refs").unwrap().has_fast_path());
    assert!(!registry.get("one_of").unwrap().has_fast_path());
}

/// A string the node lists none of (`enum`, `const`, both) is refused on the tape, and
/// an `if` that misses its `const` applies no `then`: every answer is the general
/// path's, and the valid events keep the fast path.
#[test]
fn listed_strings_and_conditions_on_them_get_the_general_path_s_answer() {
    let dir = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "both": {"enum": ["x", "y"], "const": "y"},
            "country": {"type": "string"},
            "region": {"type": "string"}
        },
        "if": {"properties": {"country": {"const": "US"}}},
        "then": {"properties": {"region": {"enum": ["CA", "NY"]}}}
    });
    std::fs::write(dir.path().join("listed.json"), schema.to_string()).unwrap();
    let config = Config {
        schemas_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let registry = Registry::load(config.streams_config()).unwrap();
    let stream = registry.get("listed").unwrap();
    assert!(stream.has_fast_path());
    for (event, valid) in [
        (json!({"both": "y", "country": "US", "region": "CA"}), true),
        (json!({"both": "y", "country": "DE", "region": "BE"}), true),
        (json!({"both": "y", "country": 7, "region": "BE"}), false),
        (json!({"both": "y", "country": "US", "region": "BE"}), false),
        (json!({"both": "x", "country": "DE", "region": "BE"}), false),
        (json!({"both": "z", "country": "DE", "region": "BE"}), false),
        (
            json!({"both": null, "country": "DE", "region": "BE"}),
            false,
        ),
        (
            json!({"both": "\\u0079", "country": "D\\u0045", "region": "BE"}),
            true,
        ),
    ] {
        let text = event.to_string().replace("\\\\u", "\\u");
        let (fast, general) = both(stream, &text);
        assert_eq!(general.is_ok(), valid, "{text}: {general:?}");
        match fast {
            Some(row) => assert_eq!(Ok(row), general, "{text}"),
            None => assert!(!valid, "{text}: a valid event left the fast path"),
        }
    }
}

/// A root `if`/`then`/`else` about root properties is checked on the values the root's
/// walk found; one that names anything else is checked on the whole event. Every mix of
/// present, absent, listed and unlisted values gets the general path's answer, and every
/// valid event takes the fast path.
#[test]
fn a_root_condition_gets_the_general_path_s_answer_for_every_mix_of_values() {
    let dir = tempfile::tempdir().unwrap();
    let any = json!({"type": ["string", "integer"]});
    let properties = json!({"country": any, "region": any, "zip": any});
    let found = json!({
        "type": "object",
        "properties": properties,
        "if": {"properties": {"country": {"const": "US"}}, "required": ["country"]},
        "then": {"properties": {"region": {"enum": ["CA", "NY"]}}, "required": ["region", "zip"]},
        "else": {"properties": {"zip": {"type": "integer"}}}
    });
    let mut whole = found.clone();
    whole["else"] = json!({"properties": {"zip": {"type": "integer"}, "note": {"const": "x"}}});
    std::fs::write(dir.path().join("found.json"), found.to_string()).unwrap();
    std::fs::write(dir.path().join("whole.json"), whole.to_string()).unwrap();
    let config = Config {
        schemas_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let registry = Registry::load(config.streams_config()).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for name in ["found", "whole"] {
        let stream = registry.get(name).unwrap();
        assert!(stream.has_fast_path());
        for country in [None, Some(json!("US")), Some(json!("DE")), Some(json!(7))] {
            for region in [None, Some(json!("CA")), Some(json!("BE")), Some(json!(3))] {
                for zip in [None, Some(json!("12345")), Some(json!(5))] {
                    for note in [None, Some(json!("x")), Some(json!("y"))] {
                        let mut event = serde_json::Map::new();
                        for (key, value) in [
                            ("note", &note),
                            ("zip", &zip),
                            ("country", &country),
                            ("region", &region),
                        ] {
                            if let Some(value) = value {
                                event.insert(key.to_owned(), value.clone());
                            }
                        }
                        let text = Value::Object(event).to_string();
                        let (fast, general) = both(stream, &text);
                        match (fast, general) {
                            (Some(fast), general) => {
                                assert_eq!(Ok(fast), general, "{name}: {text}");
                                valid += 1;
                            }
                            (None, Ok(_)) => {
                                panic!("{name}: a valid event left the fast path: {text}")
                            }
                            (None, Err(_)) => invalid += 1,
                        }
                    }
                }
            }
        }
    }
    assert!(
        valid > 50 && invalid > 50,
        "{valid} valid, {invalid} invalid"
    );
}

/// The official JSON-Schema-Test-Suite's draft 2020-12 cases for the keywords the fast
/// path compiles (`tests/fixtures/json-schema-test-suite`), each case's schema as the
/// one property `v` of an event schema and its data as `v`'s value: whatever the fast
/// path accepts, the suite calls valid and the general path accepts with the same row.
#[test]
fn the_fast_path_accepts_no_case_of_the_official_test_suite_that_is_invalid() {
    let suite = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/json-schema-test-suite"
    );
    let (mut compiled, mut accepted, mut valid) = (0, 0, 0);
    for entry in std::fs::read_dir(suite).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let groups: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for group in groups {
            let mut schema = group["schema"].clone();
            if let Some(map) = schema.as_object_mut() {
                map.remove("$schema");
            }
            let event_schema = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"v": schema},
            });
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("case.json"), event_schema.to_string()).unwrap();
            let config = Config {
                schemas_dir: dir.path().to_path_buf(),
                ..Config::default()
            };
            let Ok(registry) = Registry::load(config.streams_config()) else {
                continue;
            };
            let stream = registry.get("case").unwrap();
            if !stream.has_fast_path() {
                continue;
            }
            compiled += 1;
            for case in group["tests"].as_array().unwrap() {
                let text = json!({"v": case["data"]}).to_string();
                let (fast, general) = both(stream, &text);
                let expected = case["valid"].as_bool().unwrap();
                valid += usize::from(expected);
                let described = format!(
                    "{} / {} / {}: {text}",
                    path.display(),
                    group["description"],
                    case["description"]
                );
                if let Some(fast) = fast {
                    accepted += 1;
                    assert!(
                        expected,
                        "the fast path accepted an invalid case: {described}"
                    );
                    assert_eq!(Some(&fast), general.as_ref().ok(), "{described}");
                }
            }
        }
    }
    eprintln!(
        "{compiled} schemas compiled; the fast path accepted {accepted} of {valid} valid cases"
    );
    assert!(
        compiled >= 100 && accepted >= 150,
        "{compiled} schemas compiled, {accepted} cases accepted"
    );
}
