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

use super::tape::{self, Node};
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
    required: Vec<String>,
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
        tape: &[Node<'_>],
        columns: &[Column],
        skip: Option<&str>,
    ) -> Option<(Vec<Cell>, Option<String>)> {
        let object = self.root.object.as_ref()?;
        let Node::Obj { end, .. } = tape.first()? else {
            return None;
        };
        let end = *end as usize;
        let mut cells: Vec<Cell> = vec![Cell::Null; columns.len()];
        let mut seen = vec![false; object.properties.len()];
        let mut skipped = false;
        let mut extras: Vec<(&str, usize)> = Vec::new();
        let mut i = 1;
        while i < end {
            let Node::Key(key) = &tape[i] else {
                return None;
            };
            let at = i + 1;
            i = tape::next(tape, at);
            if skip == Some(key.as_ref()) {
                // A repeated routing field: the general path decides.
                if skipped {
                    return None;
                }
                skipped = true;
                continue;
            }
            let Some(p) = object.properties.iter().position(|(n, _)| n == key) else {
                if !valid(&object.additional, tape, at) {
                    return None;
                }
                extras.push((key.as_ref(), at));
                continue;
            };
            if std::mem::replace(&mut seen[p], true) {
                return None;
            }
            let check = &object.properties[p].1;
            let column = self.column_of[p].map(|c| (c, &columns[c]));
            match &tape[at] {
                Node::Obj { .. } | Node::Arr { .. } => {
                    let (c, column) = column?;
                    if column.ty != ColumnType::Json || !valid(check, tape, at) {
                        return None;
                    }
                    cells[c] = Cell::Json(json_text(tape, at)?);
                }
                node => {
                    let value = scalar_value(node)?;
                    if !valid_scalar(check, &value) {
                        return None;
                    }
                    let Some((c, column)) = column else {
                        continue;
                    };
                    cells[c] = match (column.ty, node) {
                        (_, Node::Null) => Cell::Null,
                        (ColumnType::Decimal { .. }, Node::Num(literal))
                        | (ColumnType::Decimal { .. }, Node::Str { raw: literal, .. }) => {
                            decimal_cell(column.ty, Some(literal)).ok()?
                        }
                        (ColumnType::Decimal { .. }, _) => return None,
                        (ColumnType::Json, _) => Cell::Json(json_text(tape, at)?),
                        (ty, _) => convert(ty, value).ok()?,
                    };
                }
            }
        }
        let present = |name: &String| {
            let declared = object.properties.iter().zip(&seen);
            declared.clone().any(|((n, _), s)| *s && n == name)
                || extras.iter().any(|(k, _)| k == name)
        };
        if !object.required.iter().all(present) {
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
            Some(object_text(tape, &extras)?)
        } else {
            None
        };
        Some((cells, extra))
    }
}

impl NodeCheck {
    fn valid(&self, tape: &[Node<'_>], i: usize) -> bool {
        let ok = match &tape[i] {
            Node::Obj { .. } => {
                self.object_ok
                    && !self.any_type
                    && self.object.as_ref().is_none_or(|o| o.valid(tape, i))
            }
            Node::Arr { .. } => {
                self.array_ok
                    && !self.any_type
                    && self.array.as_ref().is_none_or(|a| a.valid(tape, i))
            }
            Node::Key(_) => false,
            node => match (&self.scalar, scalar_value(node)) {
                (None, _) => true,
                (Some(v), Some(value)) => v.is_valid(&value),
                (Some(_), None) => false,
            },
        };
        ok && self.cond_holds(tape, i)
    }

    fn cond_holds(&self, tape: &[Node<'_>], i: usize) -> bool {
        match &self.cond {
            None => true,
            Some((if_, then, else_)) => {
                let branch = if valid(if_, tape, i) { then } else { else_ };
                valid(branch, tape, i)
            }
        }
    }
}

impl ObjectCheck {
    fn valid(&self, tape: &[Node<'_>], i: usize) -> bool {
        let Node::Obj { end, .. } = tape[i] else {
            return false;
        };
        let mut j = i + 1;
        let mut present = 0;
        while j < end as usize {
            let Node::Key(key) = &tape[j] else {
                return false;
            };
            let at = j + 1;
            j = tape::next(tape, at);
            let check = match self.properties.iter().find(|(n, _)| n == key) {
                Some((_, check)) => check,
                None => &self.additional,
            };
            if !valid(check, tape, at) {
                return false;
            }
            if self.required.iter().any(|r| r == key) {
                present += 1;
            }
        }
        // A repeated key could count twice: the serializer refuses duplicates, so
        // such an event never leaves the fast path.
        present >= self.required.len()
    }
}

impl ArrayCheck {
    fn valid(&self, tape: &[Node<'_>], i: usize) -> bool {
        let Node::Arr { len, end } = tape[i] else {
            return false;
        };
        if self.min.is_some_and(|m| u64::from(len) < m)
            || self.max.is_some_and(|m| u64::from(len) > m)
        {
            return false;
        }
        let mut j = i + 1;
        while j < end as usize {
            if !valid(&self.items, tape, j) {
                return false;
            }
            j = tape::next(tape, j);
        }
        true
    }
}

fn valid(check: &Check, tape: &[Node<'_>], i: usize) -> bool {
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

/// A scalar node as the `Value` serde_json reads from the same text (`None`: a number
/// beyond 64 bits, whose digits only the general path keeps).
fn scalar_value(node: &Node<'_>) -> Option<Value> {
    Some(match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(*b),
        Node::Str { text, .. } => Value::String(text.as_ref().to_owned()),
        Node::Num(literal) => Value::Number(number(literal)?),
        Node::Obj { .. } | Node::Arr { .. } | Node::Key(_) => return None,
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
fn json_text(tape: &[Node<'_>], i: usize) -> Option<String> {
    let mut out = Vec::with_capacity(64);
    write_json(tape, i, &mut out)?;
    String::from_utf8(out).ok()
}

/// An object's compact text from its members (key, value index), sorted by key.
fn object_text(tape: &[Node<'_>], members: &[(&str, usize)]) -> Option<String> {
    let mut out = Vec::with_capacity(64);
    write_members(tape, members, &mut out)?;
    String::from_utf8(out).ok()
}

fn write_members(tape: &[Node<'_>], members: &[(&str, usize)], out: &mut Vec<u8>) -> Option<()> {
    out.push(b'{');
    for (n, (key, at)) in members.iter().enumerate() {
        if n > 0 {
            if members[n - 1].0 == *key {
                // A repeated key: serde_json keeps the last; the general path does that.
                return None;
            }
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key).ok()?;
        out.push(b':');
        write_json(tape, *at, out)?;
    }
    out.push(b'}');
    Some(())
}

fn write_json(tape: &[Node<'_>], i: usize, out: &mut Vec<u8>) -> Option<()> {
    match &tape[i] {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Bool(true) => out.extend_from_slice(b"true"),
        Node::Bool(false) => out.extend_from_slice(b"false"),
        Node::Num(literal) => serde_json::to_writer(&mut *out, &number(literal)?).ok()?,
        Node::Str { text, .. } => serde_json::to_writer(&mut *out, text.as_ref()).ok()?,
        Node::Arr { end, .. } => {
            out.push(b'[');
            let mut j = i + 1;
            while j < *end as usize {
                if j > i + 1 {
                    out.push(b',');
                }
                write_json(tape, j, out)?;
                j = tape::next(tape, j);
            }
            out.push(b']');
        }
        Node::Obj { len, end } => {
            let mut members: Vec<(&str, usize)> = Vec::with_capacity(*len as usize);
            let mut j = i + 1;
            while j < *end as usize {
                let Node::Key(key) = &tape[j] else {
                    return None;
                };
                members.push((key.as_ref(), j + 1));
                j = tape::next(tape, j + 1);
            }
            if !members.is_sorted_by(|a, b| a.0 < b.0) {
                members.sort_by(|a, b| a.0.cmp(b.0));
            }
            write_members(tape, &members, out)?;
        }
        Node::Key(_) => return None,
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
        required: Vec::new(),
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
