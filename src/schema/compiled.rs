//! The fast path from an event's text to its row: the stream's schema compiled into
//! checks that run over a [`tape`](super::tape) of the text, and the row's cells built
//! in the same walk, with no `serde_json::Value` of the whole event.
//!
//! The fast path only ever *accepts*. An event it is not sure of (a keyword it does not
//! compile, a value that fails a check, a duplicate key, a number beyond 64 bits) makes
//! it answer `None`, and the event takes the general path (`serde_json` and the
//! `jsonschema` validator), which gives the rejection, its message and its pointer. So
//! an event gets the same answer either way, and the differential test
//! (`tests/it/compiled.rs`) holds the two paths to it.
//!
//! Structure (objects, properties, required, additionalProperties, arrays, items,
//! minItems/maxItems, if/then/else, type for objects and arrays) is checked here. The
//! keywords about one scalar value (type, enum, const, lengths, pattern, format,
//! minimum and maximum, multipleOf) are compiled by `jsonschema` itself, per property,
//! and run on that one value: their meaning is the general validator's by
//! construction.

use std::str::FromStr;

use serde_json::{Map, Number, Value};

use std::borrow::Cow;

use super::tape::{Kind, Tape};
use super::{convert, decimal_cell, Column, ColumnType};
use crate::event::Cell;

/// Keywords that never change whether an instance is valid.
const ANNOTATIONS: [&str; 12] = [
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$schema",
    "$id",
    "$defs",
    "definitions",
];

/// Keywords about one scalar value, compiled by `jsonschema`.
const SCALAR: [&str; 12] = [
    "type",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
];

/// A compiled (sub)schema.
enum Check {
    /// `true`, `{}` or annotations only.
    Any,
    /// `false`.
    Never,
    Node(Box<NodeCheck>),
}

struct NodeCheck {
    /// Whether `type` allows an object and an array.
    object_ok: bool,
    array_ok: bool,
    /// `enum` or `const`: they apply to containers too, which the fast path leaves to
    /// the general one.
    any_type: bool,
    /// The node's scalar keywords, as `jsonschema` compiles them.
    scalar: Option<jsonschema::Validator>,
    object: Option<ObjectCheck>,
    array: Option<ArrayCheck>,
    /// `if`, `then`, `else`.
    cond: Option<(Check, Check, Check)>,
}

struct ObjectCheck {
    properties: Vec<(String, Check)>,
    /// Each property's [`probe`].
    probes: Vec<u64>,
    required: Vec<String>,
    /// The required properties that are declared, one bit per property index.
    required_mask: u64,
    /// The required properties that are not declared (then they are extras).
    required_other: Vec<String>,
    /// `additionalProperties` (`Any` when absent).
    additional: Check,
}

struct ArrayCheck {
    items: Check,
    min: Option<u64>,
    max: Option<u64>,
}

/// A stream's schema compiled for the fast path, with where each property's value goes.
pub struct Compiled {
    root: NodeCheck,
    /// Per root property (in `root.object`'s order): its column's index.
    column_of: Vec<Option<usize>>,
    has_extra: bool,
}

/// The most properties an object schema may declare for the fast path (their
/// presence is tracked in one word).
const TRACKED: usize = 64;

impl Compiled {
    /// The fast path of `schema` (whose table has `columns`), or `None` when it uses a
    /// keyword the fast path does not compile (such a stream always takes the general
    /// path).
    pub fn of(schema: &Value, columns: &[Column], has_extra: bool) -> Option<Compiled> {
        let dialect = schema.get("$schema").cloned();
        let Check::Node(root) = compile(schema, &dialect)? else {
            return None;
        };
        let root = *root;
        if root.any_type || !root.object_ok {
            return None;
        }
        let object = root.object.as_ref()?;
        let column_of = object
            .properties
            .iter()
            .map(|(name, _)| columns.iter().position(|c| &c.name == name))
            .collect();
        Some(Compiled {
            root,
            column_of,
            has_extra,
        })
    }

    /// The cells and `_extra` of the event read into `tape`, if it certainly passes the
    /// schema; `skip` is a member left out (a routing field the schema does not
    /// declare).
    pub fn cells(
        &self,
        tape: &Tape<'_>,
        columns: &[Column],
        skip: Option<&str>,
    ) -> Option<(Vec<Cell>, Option<String>)> {
        let object = self.root.object.as_ref()?;
        let mut cells: Vec<Cell> = vec![Cell::Null; columns.len()];
        let mut seen = 0u64;
        let mut skipped = false;
        let mut extras: Vec<(&str, usize)> = Vec::new();
        for (k, at) in tape.members(0) {
            if tape.nodes[k].escaped {
                return None;
            }
            let key = tape.str(k);
            let Cow::Borrowed(key) = key else {
                return None;
            };
            if skip == Some(key) {
                // A repeated routing field: the general path decides.
                if std::mem::replace(&mut skipped, true) {
                    return None;
                }
                continue;
            }
            let Some(p) = object.find(key) else {
                if !valid(&object.additional, tape, at) {
                    return None;
                }
                extras.push((key, at));
                continue;
            };
            if seen & (1 << p) != 0 {
                return None;
            }
            seen |= 1 << p;
            let check = &object.properties[p].1;
            let column = self.column_of[p].map(|c| (c, &columns[c]));
            match tape.kind(at) {
                Kind::Obj | Kind::Arr => {
                    let (c, column) = column?;
                    if column.ty != ColumnType::Json || !valid(check, tape, at) {
                        return None;
                    }
                    cells[c] = Cell::Json(json_text(tape, at)?);
                }
                kind => {
                    let value = scalar_value(tape, at)?;
                    if !valid_scalar(check, &value) {
                        return None;
                    }
                    let Some((c, column)) = column else {
                        continue;
                    };
                    cells[c] = match (column.ty, kind) {
                        (_, Kind::Null) => Cell::Null,
                        (ColumnType::Decimal { .. }, Kind::Num | Kind::Str) => {
                            decimal_cell(column.ty, Some(tape.raw(at))).ok()?
                        }
                        (ColumnType::Decimal { .. }, _) => return None,
                        (ColumnType::Json, _) => Cell::Json(json_text(tape, at)?),
                        (ty, _) => convert(ty, value).ok()?,
                    };
                }
            }
        }
        let extra_present = |name: &String| extras.iter().any(|(k, _)| k == name);
        if seen & object.required_mask != object.required_mask
            || !object.required_other.iter().all(extra_present)
        {
            return None;
        }
        if let Some((if_, then, else_)) = &self.root.cond {
            let branch = if valid(if_, tape, 0) { then } else { else_ };
            if !valid(branch, tape, 0) {
                return None;
            }
        }
        let extra = if self.has_extra && !extras.is_empty() {
            extras.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut out = Vec::with_capacity(64);
            write_members(tape, &extras, &mut out)?;
            Some(String::from_utf8(out).ok()?)
        } else {
            None
        };
        Some((cells, extra))
    }
}

impl NodeCheck {
    fn valid(&self, tape: &Tape<'_>, i: usize) -> bool {
        let ok = match tape.kind(i) {
            Kind::Obj => {
                self.object_ok
                    && !self.any_type
                    && self.object.as_ref().is_none_or(|o| o.valid(tape, i))
            }
            Kind::Arr => {
                self.array_ok
                    && !self.any_type
                    && self.array.as_ref().is_none_or(|a| a.valid(tape, i))
            }
            Kind::Key => false,
            _ => match (&self.scalar, scalar_value(tape, i)) {
                (None, _) => true,
                (Some(v), Some(value)) => v.is_valid(&value),
                (Some(_), None) => false,
            },
        };
        ok && self.cond_holds(tape, i)
    }

    fn cond_holds(&self, tape: &Tape<'_>, i: usize) -> bool {
        match &self.cond {
            None => true,
            Some((if_, then, else_)) => {
                let branch = if valid(if_, tape, i) { then } else { else_ };
                valid(branch, tape, i)
            }
        }
    }
}

/// A key's length and first 8 bytes as one word: most keys are told apart by it,
/// without comparing their text.
fn probe(key: &str) -> u64 {
    let mut word = [0u8; 8];
    let n = key.len().min(8);
    word[..n].copy_from_slice(&key.as_bytes()[..n]);
    u64::from_le_bytes(word) ^ ((key.len() as u64) << 56)
}

impl ObjectCheck {
    /// The index of property `key`.
    fn find(&self, key: &str) -> Option<usize> {
        let probe = probe(key);
        (0..self.properties.len()).find(|&p| self.probes[p] == probe && self.properties[p].0 == key)
    }

    fn valid(&self, tape: &Tape<'_>, i: usize) -> bool {
        let mut seen = 0u64;
        let mut others = 0;
        for (k, at) in tape.members(i) {
            let key = tape.str(k);
            let check = match self.find(&key) {
                Some(p) => {
                    seen |= 1 << p;
                    &self.properties[p].1
                }
                None => {
                    // A repeated key could count twice: the serializer refuses
                    // duplicates, so such an event never leaves the fast path.
                    others += usize::from(self.required_other.iter().any(|r| *r == key));
                    &self.additional
                }
            };
            if !valid(check, tape, at) {
                return false;
            }
        }
        seen & self.required_mask == self.required_mask && others >= self.required_other.len()
    }
}

impl ArrayCheck {
    fn valid(&self, tape: &Tape<'_>, i: usize) -> bool {
        let len = u64::from(tape.nodes[i].len);
        if self.min.is_some_and(|m| len < m) || self.max.is_some_and(|m| len > m) {
            return false;
        }
        tape.elements(i).all(|j| valid(&self.items, tape, j))
    }
}

fn valid(check: &Check, tape: &Tape<'_>, i: usize) -> bool {
    match check {
        Check::Any => true,
        Check::Never => false,
        Check::Node(node) => node.valid(tape, i),
    }
}

/// Whether the scalar `value` passes `check`.
fn valid_scalar(check: &Check, value: &Value) -> bool {
    match check {
        Check::Any => true,
        Check::Never => false,
        Check::Node(node) => {
            node.cond.is_none() && node.scalar.as_ref().is_none_or(|v| v.is_valid(value))
        }
    }
}

/// Scalar node `i` as the `Value` serde_json reads from the same text (`None`: a
/// number beyond 64 bits, whose digits only the general path keeps).
fn scalar_value(tape: &Tape<'_>, i: usize) -> Option<Value> {
    Some(match tape.kind(i) {
        Kind::Null => Value::Null,
        Kind::True => Value::Bool(true),
        Kind::False => Value::Bool(false),
        Kind::Str => Value::String(tape.str(i).into_owned()),
        Kind::Num => Value::Number(number(tape.raw(i))?),
        Kind::Obj | Kind::Arr | Kind::Key => return None,
    })
}

/// The number serde_json reads from `literal`, unless it is a float as large as the
/// 64-bit integers (what an integer literal beyond 64 bits becomes).
fn number(literal: &str) -> Option<Number> {
    let n = Number::from_str(literal).ok()?;
    match n.as_f64() {
        Some(f) if n.is_f64() && f.abs() >= 9.2e18 => None,
        _ => Some(n),
    }
}

/// The compact JSON text of the subtree at `i`, as serde_json writes the same value
/// (object keys sorted, strings escaped its way, numbers as it prints them).
fn json_text(tape: &Tape<'_>, i: usize) -> Option<String> {
    let mut out = Vec::with_capacity(64);
    write_json(tape, i, &mut out)?;
    String::from_utf8(out).ok()
}

/// Writes an object from its members (key, value index), sorted by key.
fn write_members(tape: &Tape<'_>, members: &[(&str, usize)], out: &mut Vec<u8>) -> Option<()> {
    out.push(b'{');
    for (n, (key, at)) in members.iter().enumerate() {
        if n > 0 {
            if members[n - 1].0 == *key {
                // A repeated key: serde_json keeps the last; the general path does that.
                return None;
            }
            out.push(b',');
        }
        // Keys here hold no escapes: written as they came.
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        write_json(tape, *at, out)?;
    }
    out.push(b'}');
    Some(())
}

/// Whether serde_json writes the integer `literal` digit for digit: no sign on zero,
/// and few enough digits for 64 bits.
fn plain_integer(literal: &str) -> bool {
    let digits = literal.strip_prefix('-').unwrap_or(literal);
    (1..=18).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && literal != "-0"
}

fn write_json(tape: &Tape<'_>, i: usize, out: &mut Vec<u8>) -> Option<()> {
    match tape.kind(i) {
        Kind::Null => out.extend_from_slice(b"null"),
        Kind::True => out.extend_from_slice(b"true"),
        Kind::False => out.extend_from_slice(b"false"),
        Kind::Num => {
            let literal = tape.raw(i);
            if plain_integer(literal) {
                out.extend_from_slice(literal.as_bytes());
            } else {
                serde_json::to_writer(&mut *out, &number(literal)?).ok()?;
            }
        }
        // Without escapes, the token is what serde_json writes (a control character
        // would have needed one).
        Kind::Str if !tape.nodes[i].escaped => out.extend_from_slice(tape.raw(i).as_bytes()),
        Kind::Str => serde_json::to_writer(&mut *out, tape.str(i).as_ref()).ok()?,
        Kind::Arr => {
            out.push(b'[');
            for (n, j) in tape.elements(i).enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_json(tape, j, out)?;
            }
            out.push(b']');
        }
        Kind::Obj => {
            let mut members: Vec<(&str, usize)> = Vec::with_capacity(tape.nodes[i].len as usize);
            for (k, at) in tape.members(i) {
                if tape.nodes[k].escaped {
                    return None;
                }
                let raw = tape.raw(k);
                members.push((&raw[1..raw.len() - 1], at));
            }
            if !members.is_sorted_by(|a, b| a.0 < b.0) {
                members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            }
            write_members(tape, &members, out)?;
        }
        Kind::Key => return None,
    }
    Some(())
}

/// The check of `schema` (`dialect`: the root's `$schema`, given to every scalar part
/// so that `jsonschema` reads it in the same draft), or `None` when it uses a keyword
/// the fast path does not compile.
fn compile(schema: &Value, dialect: &Option<Value>) -> Option<Check> {
    let map = match schema {
        Value::Bool(true) => return Some(Check::Any),
        Value::Bool(false) => return Some(Check::Never),
        Value::Object(map) => map,
        _ => return None,
    };
    let mut scalar = Map::new();
    let mut node = NodeCheck {
        object_ok: true,
        array_ok: true,
        any_type: false,
        scalar: None,
        object: None,
        array: None,
        cond: None,
    };
    let mut object = ObjectCheck {
        properties: Vec::new(),
        probes: Vec::new(),
        required: Vec::new(),
        required_mask: 0,
        required_other: Vec::new(),
        additional: Check::Any,
    };
    let (mut has_object, mut array) = (false, None::<ArrayCheck>);
    let (mut if_, mut then, mut else_) = (None, Check::Any, Check::Any);
    let mut only_annotations = true;
    for (key, value) in map {
        if ANNOTATIONS.contains(&key.as_str()) || key.starts_with("x-") {
            continue;
        }
        only_annotations = false;
        match key.as_str() {
            "type" => {
                let types: Vec<&str> = match value {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(a) => a.iter().map(Value::as_str).collect::<Option<_>>()?,
                    _ => return None,
                };
                node.object_ok = types.contains(&"object");
                node.array_ok = types.contains(&"array");
                scalar.insert(key.clone(), value.clone());
            }
            k if SCALAR.contains(&k) => {
                node.any_type |= matches!(k, "enum" | "const");
                scalar.insert(key.clone(), value.clone());
            }
            "properties" => {
                has_object = true;
                for (name, sub) in value.as_object()? {
                    object.probes.push(probe(name));
                    object
                        .properties
                        .push((name.clone(), compile(sub, dialect)?));
                }
            }
            "required" => {
                has_object = true;
                object.required = value
                    .as_array()?
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<_>>()?;
            }
            "additionalProperties" => {
                has_object = true;
                object.additional = compile(value, dialect)?;
            }
            "items" if value.is_object() || value.is_boolean() => {
                array.get_or_insert_with(ArrayCheck::any).items = compile(value, dialect)?;
            }
            "minItems" => array.get_or_insert_with(ArrayCheck::any).min = Some(value.as_u64()?),
            "maxItems" => array.get_or_insert_with(ArrayCheck::any).max = Some(value.as_u64()?),
            "if" => if_ = Some(compile(value, dialect)?),
            "then" => then = compile(value, dialect)?,
            "else" => else_ = compile(value, dialect)?,
            _ => return None,
        }
    }
    if only_annotations {
        return Some(Check::Any);
    }
    if !scalar.is_empty() {
        if let Some(d) = dialect {
            scalar.insert("$schema".into(), d.clone());
        }
        node.scalar = Some(
            jsonschema::options()
                .should_validate_formats(true)
                .build(&Value::Object(scalar))
                .ok()?,
        );
    }
    if object.properties.len() > TRACKED {
        return None;
    }
    for name in &object.required {
        match object.find(name) {
            Some(p) => object.required_mask |= 1 << p,
            None => object.required_other.push(name.clone()),
        }
    }
    node.object = has_object.then_some(object);
    node.array = array;
    node.cond = if_.map(|if_| (if_, then, else_));
    Some(Check::Node(Box::new(node)))
}

impl ArrayCheck {
    fn any() -> ArrayCheck {
        ArrayCheck {
            items: Check::Any,
            min: None,
            max: None,
        }
    }
}
