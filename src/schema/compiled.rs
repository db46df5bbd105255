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
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use serde_json::{Map, Number, Value};

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use super::tape::{Kind, Tape};
use super::{convert, decimal_cell, parse_timestamp, Column, ColumnType};
use crate::event::Cell;
use compact_str::CompactString;

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
    /// The same keywords checked on the tape, where that is certain (see [`Native`]).
    native: Option<Native>,
    object: Option<ObjectCheck>,
    array: Option<ArrayCheck>,
    /// `if`, `then`, `else`.
    cond: Option<(Check, Check, Check)>,
}

struct ObjectCheck {
    properties: Vec<(String, Check)>,
    /// Each property's [`probe`] and its name's length: a key of up to 8 bytes is
    /// told from them alone, without the name's text.
    probes: Vec<(u64, usize)>,
    /// The required properties that are declared, one bit per property index.
    required_mask: u64,
    /// The required properties that are not declared (then they are extras).
    required_other: Vec<String>,
    /// `additionalProperties` (`Any` when absent).
    additional: Check,
    /// The properties' indices in the order of their names' bytes (serde_json's order
    /// of an object's keys), and each name as a JSON key with its colon: an object of
    /// declared properties only is written in that order ([`ObjectCheck::checked_json`]).
    sorted: Vec<u8>,
    keys: Vec<String>,
    /// Per position of a key in an event's object, the property found there last:
    /// producers send their keys in an order of their own, mostly the same from one
    /// event to the next, so each key is mostly found at the first try. (A guess only:
    /// shared by every thread that checks this schema, read and written relaxed.)
    order: [AtomicU8; TRACKED],
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
    /// How the root's `if`, `then` and `else` are checked.
    cond: [Part; 3],
    /// Per column: whether a JSON column's cell is the value's text as written (see
    /// [`Compiled::json_as_written`]).
    as_written: Vec<bool>,
    /// Per root property: the reading of a string that is both its check and its
    /// column's cell, where there is one ([`OneReading`]).
    one_reading: Vec<Option<OneReading>>,
}

/// A root property whose check is only `format: uuid` or `format: date-time` (and
/// `type` allowing a string), whose column is of that type: the one reading of its
/// string that the check makes ([`plain_uuid`], [`plain_date_time`]) gives the cell
/// too, instead of a second reading by [`cell`].
#[derive(Clone, Copy)]
enum OneReading {
    Uuid,
    DateTime,
}

impl OneReading {
    fn of(check: &Check, column: Option<&Column>) -> Option<OneReading> {
        let Check::Node(node) = check else {
            return None;
        };
        let native = node.native.as_ref()?;
        let only_format = node.cond.is_none()
            && !node.any_type
            && native.types.is_none_or(|t| t & STRING != 0)
            && native.strings.is_none()
            && native.min_length.is_none()
            && native.max_length.is_none()
            && native.minimum.is_none()
            && native.maximum.is_none()
            && native.pattern.is_none();
        match (only_format, native.format, column?.ty) {
            (true, Some(Format::Uuid), ColumnType::Uuid) => Some(OneReading::Uuid),
            (true, Some(Format::DateTime), ColumnType::Timestamp) => Some(OneReading::DateTime),
            _ => None,
        }
    }

    /// The cell of string `text`, if it certainly passes the check.
    #[inline]
    fn cell(self, text: &str) -> Option<Cell> {
        match self {
            OneReading::Uuid => crate::event::Uuid::parse(text).map(Cell::Uuid),
            OneReading::DateTime => plain_instant(text).map(Cell::Timestamp),
        }
    }
}

/// How one of the root's `if`, `then` and `else` is checked: on the root object as any
/// check is, or, for an object check of root properties only (`properties` and
/// `required`, nothing else), on the values that the root's own walk found, with no
/// key looked up again.
enum Part {
    Whole,
    Found {
        /// Per property of the part: the root property's index and the part's.
        pairs: Vec<(usize, usize)>,
        /// The part's required properties, as root property bits.
        required: u64,
    },
}

impl Part {
    /// How `check` is checked, `root` being the root's object check.
    fn of(check: &Check, root: &ObjectCheck) -> Part {
        let Check::Node(node) = check else {
            return Part::Whole;
        };
        let Some(object) = node.object.as_ref().filter(|_| {
            node.object_ok && !node.any_type && node.scalar.is_none() && node.cond.is_none()
        }) else {
            return Part::Whole;
        };
        if !matches!(object.additional, Check::Any) || !object.required_other.is_empty() {
            return Part::Whole;
        }
        let mut pairs = Vec::new();
        let mut required = 0u64;
        for (p, (name, _)) in object.properties.iter().enumerate() {
            let Some(r) = root.find(name) else {
                return Part::Whole;
            };
            pairs.push((r, p));
            if object.required_mask & (1 << p) != 0 {
                required |= 1 << r;
            }
        }
        Part::Found { pairs, required }
    }

    /// Whether the root object passes `check` (this part's), `seen` and `value_at` being
    /// what the root's walk found.
    fn holds(&self, check: &Check, tape: &Tape<'_>, seen: u64, value_at: &[u32]) -> bool {
        match (self, check) {
            (Part::Found { pairs, required }, Check::Node(node)) => {
                let Some(object) = &node.object else {
                    return false;
                };
                seen & required == *required
                    && pairs.iter().all(|&(r, p)| {
                        seen & (1 << r) == 0
                            || valid(&object.properties[p].1, tape, value_at[r] as usize)
                    })
            }
            _ => valid(check, tape, 0),
        }
    }
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
        let column_of: Vec<Option<usize>> = object
            .properties
            .iter()
            .map(|(name, _)| columns.iter().position(|c| &c.name == name))
            .collect();
        let one_reading = object
            .properties
            .iter()
            .zip(&column_of)
            .map(|((_, check), c)| OneReading::of(check, c.map(|c| &columns[c])))
            .collect();
        let cond = match &root.cond {
            Some((if_, then, else_)) => [
                Part::of(if_, object),
                Part::of(then, object),
                Part::of(else_, object),
            ],
            None => [Part::Whole, Part::Whole, Part::Whole],
        };
        Some(Compiled {
            root,
            column_of,
            has_extra,
            cond,
            as_written: Vec::new(),
            one_reading,
        })
    }

    /// The same, with the cell of each JSON column for which `as_written` holds made
    /// from the value's text as written, when that holds the value serde_json's text
    /// would (see [`AsWritten`]), instead of a text written anew. For a database that
    /// stores a JSON value rather than its text (PostgreSQL's `jsonb`: key order,
    /// whitespace and escapes are not kept), the stored value is the same, and a
    /// nested object or array costs one copy instead of a walk that writes it.
    pub fn json_as_written(
        mut self,
        columns: &[Column],
        as_written: impl Fn(&Column) -> bool,
    ) -> Self {
        self.as_written = columns
            .iter()
            .map(|c| c.ty == ColumnType::Json && as_written(c))
            .collect();
        self
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
        // Written as a loop of `Null`s (`vec!` clones one, a call per cell).
        let mut cells: Vec<Cell> = std::iter::repeat_with(|| Cell::Null)
            .take(columns.len())
            .collect();
        let mut seen = 0u64;
        // Where each property's value is, for the root's `if`.
        let mut value_at = [0u32; TRACKED];
        let mut skipped = false;
        let mut extras: Vec<(&str, usize)> = Vec::new();
        for (position, (k, at)) in tape.members(0).enumerate() {
            if tape.node(k).escaped {
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
            let Some(p) = object.find_at(key, key_probe(tape, k, key), position) else {
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
            value_at[p] = at as u32;
            let check = &object.properties[p].1;
            let column = self.column_of[p].map(|c| (c, &columns[c]));
            match tape.kind(at) {
                Kind::Obj | Kind::Arr => {
                    let (c, column) = column?;
                    if column.ty != ColumnType::Json {
                        return None;
                    }
                    cells[c] = if self.as_written.get(c) == Some(&true)
                        && checked_json(check, tape, at, &mut AsWritten).is_some()
                    {
                        Cell::Json(tape.text_of(at).into())
                    } else {
                        // The compact text is rarely longer than the text as written.
                        let mut out = String::with_capacity(tape.node(at).span as usize);
                        checked_json(check, tape, at, &mut out)?;
                        Cell::Json(out.into())
                    };
                }
                Kind::Str if self.one_reading[p].is_some() => {
                    let (Some(reading), Some((c, column))) = (self.one_reading[p], column) else {
                        return None;
                    };
                    let text = tape.str(at);
                    cells[c] = match reading.cell(&text) {
                        Some(cell) => cell,
                        // Not of the plain shape: checked and read apart, as any value.
                        None => checked_cell(check, column.ty, tape, at)?,
                    };
                }
                _ => {
                    if !valid(check, tape, at) {
                        return None;
                    }
                    if let Some((c, column)) = column {
                        cells[c] = cell(column.ty, tape, at)?;
                    }
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
            let [if_part, then_part, else_part] = &self.cond;
            let branch = if if_part.holds(if_, tape, seen, &value_at) {
                (then_part, then)
            } else {
                (else_part, else_)
            };
            if !branch.0.holds(branch.1, tape, seen, &value_at) {
                return None;
            }
        }
        let extra = if self.has_extra && !extras.is_empty() {
            extras.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut out = String::with_capacity(64);
            write_members(tape, &extras, &mut out)?;
            Some(out)
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
            _ => self.scalar_holds(tape, i),
        };
        ok && self.cond_holds(tape, i)
    }

    /// Whether scalar `i` passes the node's scalar keywords: on the tape where that is
    /// certain, else by `jsonschema` on its value.
    fn scalar_holds(&self, tape: &Tape<'_>, i: usize) -> bool {
        let Some(general) = &self.scalar else {
            return true;
        };
        if let Some(native) = &self.native {
            if native.certain(tape, i) {
                return true;
            }
            // Chiefly an `if` on a `const` that most events miss: no `Value` for them.
            if native.certainly_not_listed(tape, i) {
                return false;
            }
        }
        scalar_value(tape, i).is_some_and(|value| general.is_valid(&value))
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
    let bytes = key.as_bytes();
    let word = match bytes.first_chunk::<8>() {
        Some(first) => u64::from_le_bytes(*first),
        // A byte at a time: a short copy would be a call to memcpy.
        None => bytes
            .iter()
            .rev()
            .fold(0u64, |word, b| (word << 8) | u64::from(*b)),
    };
    word ^ ((key.len() as u64) << 56)
}

/// The [`probe`] of key node `k`, whose text is `key`: for a short key without escapes,
/// one load of the word where it starts, the bytes past its end masked off, instead of
/// a byte at a time.
#[inline]
fn key_probe(tape: &Tape<'_>, k: usize, key: &str) -> u64 {
    match tape.word_at(k) {
        Some(word) if key.len() < 8 && !tape.node(k).escaped => {
            (word & ((1u64 << (8 * key.len())) - 1)) ^ ((key.len() as u64) << 56)
        }
        _ => probe(key),
    }
}

impl ObjectCheck {
    /// The index of property `key`.
    fn find(&self, key: &str) -> Option<usize> {
        let probe = probe(key);
        (0..self.properties.len()).find(|&p| self.is(p, key, probe))
    }

    /// Whether property `p` is `key`, whose [`probe`] is `probe`.
    #[inline]
    fn is(&self, p: usize, key: &str, probe: u64) -> bool {
        let key = key.as_bytes();
        // Equal probes and lengths: the first 8 bytes are equal already; up to 16, the
        // last 8 are one word (no call to memcmp).
        self.probes.get(p) == Some(&(probe, key.len()))
            && (key.len() <= 8 || {
                let name = self.properties[p].0.as_bytes();
                match (name.len(), name.last_chunk::<8>(), key.last_chunk::<8>()) {
                    (9..=16, Some(a), Some(b)) => a == b,
                    _ => name[8..] == key[8..],
                }
            })
    }

    /// The index of property `key` (whose [`probe`] is `probe`), the `position`th key
    /// of its object: the property found at that position last is tried first
    /// ([`ObjectCheck::order`]), in line; the others out of line.
    #[inline(always)]
    fn find_at(&self, key: &str, probe: u64, position: usize) -> Option<usize> {
        if let Some(guess) = self.order.get(position) {
            let p = usize::from(guess.load(Relaxed));
            if self.is(p, key, probe) {
                return Some(p);
            }
        }
        self.search(key, probe, position)
    }

    /// [`ObjectCheck::find_at`] past its guess.
    #[inline(never)]
    fn search(&self, key: &str, probe: u64, position: usize) -> Option<usize> {
        let found = (0..self.properties.len()).find(|&p| self.is(p, key, probe));
        if let (Some(slot), Some(p)) = (self.order.get(position), found) {
            // TRACKED properties at most: an index fits a byte.
            slot.store(p as u8, Relaxed);
        }
        found
    }

    fn valid(&self, tape: &Tape<'_>, i: usize) -> bool {
        let mut seen = 0u64;
        let mut others = 0;
        for (position, (k, at)) in tape.members(i).enumerate() {
            let key = tape.str(k);
            let check = match self.find_at(&key, key_probe(tape, k, &key), position) {
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
        let len = u64::from(tape.node(i).len);
        if self.min.is_some_and(|m| len < m) || self.max.is_some_and(|m| len > m) {
            return false;
        }
        tape.elements(i).all(|j| valid(&self.items, tape, j))
    }
}

/// Where [`checked_json`] and [`write_json`] put the JSON text they make: a `String`,
/// or nowhere ([`AsWritten`]).
trait JsonOut {
    /// Whether the text is kept.
    const WRITES: bool;
    fn push(&mut self, c: char);
    fn push_str(&mut self, s: &str);
}

impl JsonOut for String {
    const WRITES: bool = true;
    #[inline]
    fn push(&mut self, c: char) {
        String::push(self, c);
    }
    #[inline]
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
}

/// The walk of [`checked_json`] without its text, for a database that stores the text
/// as written: it also proves that the text as written holds the value serde_json's
/// text would ([`Compiled::json_as_written`]), and is `None` where it may not (a number
/// serde_json writes otherwise, such as `1.50` or `1e3`). Whitespace, key order and
/// escapes are the text's own and mean the same.
struct AsWritten;

impl JsonOut for AsWritten {
    const WRITES: bool = false;
    #[inline]
    fn push(&mut self, _: char) {}
    #[inline]
    fn push_str(&mut self, _: &str) {}
}

/// Checks node `i` against `check` and writes its JSON text into `out` as
/// [`json_text`] writes it, in one walk: `Some` when it certainly passes and was
/// written. An object of declared properties is written in the order of their names
/// from where the check found each (no keys compared to sort them); anything else is
/// checked, then written, as apart.
fn checked_json<O: JsonOut>(check: &Check, tape: &Tape<'_>, i: usize, out: &mut O) -> Option<()> {
    let node = match check {
        Check::Any => return write_json(tape, i, out),
        Check::Never => return None,
        Check::Node(node) => node,
    };
    let plain = !node.any_type && node.cond.is_none();
    match tape.kind(i) {
        Kind::Obj if plain && node.object_ok => match &node.object {
            Some(object) => object.checked_json(tape, i, out),
            None => write_json(tape, i, out),
        },
        Kind::Arr if plain && node.array_ok => match &node.array {
            Some(array) => array.checked_json(tape, i, out),
            None => write_json(tape, i, out),
        },
        kind => valid_then_json(node, kind, tape, i, out),
    }
}

/// [`checked_json`] of node `i` (of kind `kind`) where it is not walked as an object or
/// array of `node`'s: checked whole, then written.
#[inline(always)]
fn valid_then_json<O: JsonOut>(
    node: &NodeCheck,
    kind: Kind,
    tape: &Tape<'_>,
    i: usize,
    out: &mut O,
) -> Option<()> {
    node.valid(tape, i).then_some(())?;
    if !O::WRITES && matches!(kind, Kind::Str | Kind::Null | Kind::True | Kind::False) {
        // Their text as written holds the same value.
        return Some(());
    }
    write_json(tape, i, out)
}

/// [`checked_json`] of a member or an element `i`: a scalar's check is called from
/// here, in line, as most members are scalars; anything else recurses.
#[inline(always)]
fn member_json<O: JsonOut>(check: &Check, tape: &Tape<'_>, i: usize, out: &mut O) -> Option<()> {
    if let Check::Node(node) = check {
        let kind = tape.kind(i);
        if !matches!(kind, Kind::Obj | Kind::Arr | Kind::Key) {
            return valid_then_json(node, kind, tape, i, out);
        }
    }
    checked_json(check, tape, i, out)
}

impl ArrayCheck {
    /// [`checked_json`] of array `i`.
    fn checked_json<O: JsonOut>(&self, tape: &Tape<'_>, i: usize, out: &mut O) -> Option<()> {
        let len = u64::from(tape.node(i).len);
        if self.min.is_some_and(|m| len < m) || self.max.is_some_and(|m| len > m) {
            return None;
        }
        out.push('[');
        for (n, j) in tape.elements(i).enumerate() {
            if n > 0 {
                out.push(',');
            }
            member_json(&self.items, tape, j, out)?;
        }
        out.push(']');
        Some(())
    }
}

/// The most members of an object written by [`ObjectCheck::checked_json`] (where each
/// property's value is kept on the stack).
const WRITTEN: usize = 16;

impl ObjectCheck {
    /// [`checked_json`] of object `i`.
    fn checked_json<O: JsonOut>(&self, tape: &Tape<'_>, i: usize, out: &mut O) -> Option<()> {
        if self.properties.len() > WRITTEN {
            self.valid(tape, i).then_some(())?;
            return write_json(tape, i, out);
        }
        let mut value_at = [0u32; WRITTEN];
        let mut seen = 0u64;
        for (position, (k, at)) in tape.members(i).enumerate() {
            // A key with escapes, or one not declared: checked, then written, apart.
            let key = if tape.node(k).escaped {
                None
            } else {
                let key = tape.str(k);
                self.find_at(&key, key_probe(tape, k, &key), position)
            };
            let Some(p) = key else {
                self.valid(tape, i).then_some(())?;
                return write_json(tape, i, out);
            };
            if seen & (1 << p) != 0 {
                // A repeated key: serde_json keeps the last; the general path does that.
                return None;
            }
            seen |= 1 << p;
            if O::WRITES {
                value_at[p] = at as u32;
            } else {
                // Nothing to write in order: each value is checked where it is.
                member_json(&self.properties[p].1, tape, at, out)?;
            }
        }
        if !O::WRITES {
            let required = seen & self.required_mask == self.required_mask;
            return (required && self.required_other.is_empty()).then_some(());
        }
        if seen & self.required_mask != self.required_mask || !self.required_other.is_empty() {
            return None;
        }
        out.push('{');
        let mut first = true;
        for &p in &self.sorted {
            let p = usize::from(p);
            if seen & (1 << p) == 0 {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&self.keys[p]);
            member_json(&self.properties[p].1, tape, value_at[p] as usize, out)?;
        }
        out.push('}');
        Some(())
    }
}

fn valid(check: &Check, tape: &Tape<'_>, i: usize) -> bool {
    match check {
        Check::Any => true,
        Check::Never => false,
        Check::Node(node) => node.valid(tape, i),
    }
}

/// The cell of scalar `i` for a column of type `ty`, if it passes `check`: for the few
/// values the one reading of a [`OneReading`] property does not take (a string not of
/// the plain shape), marked cold and kept out of line, off the common path.
#[cold]
#[inline(never)]
fn checked_cell(check: &Check, ty: ColumnType, tape: &Tape<'_>, i: usize) -> Option<Cell> {
    valid(check, tape, i).then_some(())?;
    cell(ty, tape, i)
}

/// The cell of a column of type `ty` from scalar `i`: what [`convert`] (or, for a
/// decimal, [`decimal_cell`]) makes of the same value, built from the text where
/// that is the same, without the `Value`.
fn cell(ty: ColumnType, tape: &Tape<'_>, i: usize) -> Option<Cell> {
    let kind = tape.kind(i);
    Some(match (ty, kind) {
        (_, Kind::Null) => Cell::Null,
        (ColumnType::Decimal { .. }, Kind::Num | Kind::Str) => {
            decimal_cell(ty, Some(tape.raw(i))).ok()?
        }
        (ColumnType::Decimal { .. }, _) => return None,
        (ColumnType::Json, _) => Cell::Json(json_text(tape, i)?.into()),
        (ColumnType::Text { .. } | ColumnType::Hash, Kind::Str) => {
            Cell::Text(CompactString::from(tape.str(i)))
        }
        (ColumnType::Uuid, Kind::Str) => super::uuid_cell(&tape.str(i)),
        (ColumnType::Timestamp, Kind::Str) => Cell::Timestamp(parse_timestamp(&tape.str(i)).ok()?),
        (ColumnType::Integer, Kind::Num) if plain_integer(tape.raw(i)) => {
            Cell::Int(tape.raw(i).parse().ok()?)
        }
        (ColumnType::Boolean, Kind::True) => Cell::Bool(true),
        (ColumnType::Boolean, Kind::False) => Cell::Bool(false),
        (ty, _) => convert(ty, scalar_value(tape, i)?).ok()?,
    })
}

/// Type bits of [`Native`].
const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const INTEGER: u8 = 4;
const NUMBER: u8 = 8;
const STRING: u8 = 16;
const CONTAINER: u8 = 32;

/// A node's scalar keywords checked on the tape, without a `Value`, for the keywords
/// and values whose meaning is plain: `type`, `enum`/`const` of strings, lengths,
/// `minimum`/`maximum` (see [`number_range`]), and the common shapes of `pattern`,
/// `uuid` and `date-time`. It answers only "certainly valid"; anything else is asked of
/// `jsonschema`.
struct Native {
    types: Option<u8>,
    strings: Option<Vec<String>>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    minimum: Option<Bound>,
    maximum: Option<Bound>,
    pattern: Option<Pattern>,
    format: Option<Format>,
}

/// A plain `pattern` (see [`plain_pattern`]) as a dense DFA, searched with no cache:
/// every thread checking the schema shares it as it is. (A `regex::Regex` lends each
/// search a cache from a pool, and threads other than the first one to use it take it
/// through a mutex: about 2 % of the CPU under load, with the search itself.) A pattern
/// whose DFA would be large keeps the `Regex`.
enum Pattern {
    /// The DFA, and its start state for a search from a text's first byte: the same
    /// for every text (nothing lies before it), so it is found once.
    Dfa(
        Box<regex_automata::dfa::dense::DFA<Vec<u32>>>,
        regex_automata::util::primitives::StateID,
    ),
    Regex(regex::Regex),
}

impl Pattern {
    /// Whether the pattern matches somewhere in `text`: the search `try_search_fwd`
    /// makes with `earliest`, without its set-up per call (a fifth of the work for an
    /// ISBN). A match state anywhere is a match (the DFA enters it a byte after the
    /// match ends, or at the end of the text); a dead state rules one out. A quit
    /// state, where the search would give up, is "not known here", as for any value
    /// the native check is unsure of.
    fn is_match(&self, text: &str) -> bool {
        use regex_automata::dfa::Automaton;
        match self {
            Pattern::Dfa(dfa, start) => {
                let mut state = *start;
                for &byte in text.as_bytes() {
                    state = dfa.next_state(state, byte);
                    if dfa.is_special_state(state) {
                        if dfa.is_match_state(state) {
                            return true;
                        }
                        if dfa.is_dead_state(state) || dfa.is_quit_state(state) {
                            return false;
                        }
                    }
                }
                dfa.is_match_state(dfa.next_eoi_state(state))
            }
            Pattern::Regex(regex) => regex.is_match(text),
        }
    }
}

#[derive(Clone, Copy)]
enum Format {
    Uuid,
    DateTime,
}

/// A `minimum` or `maximum` as the whole numbers at and below it and at and above it
/// (the same number for an integer). `jsonschema` compares a value with the number
/// serde_json read from the schema: an integer as it is, anything else as a double,
/// whose floor and ceiling are exact.
#[derive(Clone, Copy, Debug)]
struct Bound {
    floor: i128,
    ceil: i128,
}

impl Bound {
    fn of(value: &Value) -> Option<Bound> {
        let n = value.as_number()?;
        let exact = |i: i128| Bound { floor: i, ceil: i };
        if let Some(i) = n.as_i64() {
            return Some(exact(i.into()));
        }
        if let Some(u) = n.as_u64() {
            return Some(exact(u.into()));
        }
        // Within 2^63 the floor and the ceiling are exact integers.
        let f = n.as_f64().filter(|f| f.abs() < 9.2e18)?;
        Some(Bound {
            floor: f.floor() as i128,
            ceil: f.ceil() as i128,
        })
    }
}

/// Doubles are this far apart or closer below 2^53.
const EXACT: u64 = 1 << 53;

/// The whole numbers between which lies the number serde_json reads from the JSON
/// number `literal`, if that is known here: an integer serde_json keeps as one (up to
/// `u64::MAX`, down to `i64::MIN`) exactly; a decimal with a point, at most 18 digits
/// and below 2^53, as its whole part widened by two on either side, never across zero
/// (serde_json's default reading of a decimal may be a unit or two off in the last
/// place, which is at most 1 there). Other numbers (an exponent, more digits) are left
/// to `jsonschema`, which reads them as serde_json does. With it, in the same pass,
/// whether the literal is a [`plain_integer`].
fn number_range(literal: &str) -> (bool, Option<(i128, i128)>) {
    // The tape has read `literal` as a JSON number: digits, then an optional point
    // and digits, then an optional exponent.
    let b = literal.as_bytes();
    let negative = b.first() == Some(&b'-');
    let from = usize::from(negative);
    let mut at = from;
    let mut value = 0u64;
    let mut fits = true;
    while let Some(d) = b.get(at).map(|c| c.wrapping_sub(b'0')).filter(|d| *d <= 9) {
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d)))
        {
            Some(v) => value = v,
            None => fits = false,
        }
        at += 1;
    }
    let signed = |n: u64| {
        if negative {
            -i128::from(n)
        } else {
            i128::from(n)
        }
    };
    let whole = at == b.len();
    // `plain_integer`: all digits, 18 at most, and not `-0`.
    let integer = whole && at - from <= 18 && at > from && !(negative && value == 0);
    let range = match b.get(at) {
        _ if !fits => None,
        None if !negative || value <= 1 << 63 => Some((signed(value), signed(value))),
        Some(b'.')
            if b.len() - 1 - from <= 18
                && value < EXACT
                && !b[at..].iter().any(|c| c | 0x20 == b'e') =>
        {
            // The decimal is between `value` and `value + 1` (in size); two more on
            // either side for the reading, none past zero.
            let near = signed(value.saturating_sub(2));
            let far = signed(value + 3);
            Some(if negative { (far, near) } else { (near, far) })
        }
        _ => None,
    };
    (integer, range)
}

impl Native {
    /// The native check of a node's scalar keywords, if every one has one.
    fn of(keywords: &Map<String, Value>) -> Option<Native> {
        let mut native = Native {
            types: None,
            strings: None,
            min_length: None,
            max_length: None,
            minimum: None,
            maximum: None,
            pattern: None,
            format: None,
        };
        for (key, value) in keywords {
            match key.as_str() {
                "type" => {
                    let names: Vec<&str> = match value {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(a) => a.iter().map(Value::as_str).collect::<Option<_>>()?,
                        _ => return None,
                    };
                    let mut bits = 0;
                    for name in names {
                        bits |= match name {
                            "null" => NULL,
                            "boolean" => BOOLEAN,
                            "integer" => INTEGER,
                            "number" => NUMBER | INTEGER,
                            "string" => STRING,
                            "object" | "array" => CONTAINER,
                            _ => return None,
                        };
                    }
                    native.types = Some(bits);
                }
                "enum" | "const" => {
                    let listed: Vec<String> = if key == "const" {
                        vec![value.as_str()?.to_owned()]
                    } else {
                        let all = value.as_array()?.iter();
                        all.map(|v| v.as_str().map(str::to_owned))
                            .collect::<Option<_>>()?
                    };
                    // Both keywords: a value must be in both lists.
                    native.strings = Some(match native.strings.take() {
                        None => listed,
                        Some(earlier) => {
                            earlier.into_iter().filter(|s| listed.contains(s)).collect()
                        }
                    });
                }
                "minLength" => native.min_length = Some(value.as_u64()?),
                "maxLength" => native.max_length = Some(value.as_u64()?),
                "minimum" => native.minimum = Some(Bound::of(value)?),
                "maximum" => native.maximum = Some(Bound::of(value)?),
                "pattern" => native.pattern = Some(plain_pattern(value.as_str()?)?),
                "format" => {
                    native.format = Some(match value.as_str()? {
                        "uuid" => Format::Uuid,
                        "date-time" => Format::DateTime,
                        _ => return None,
                    })
                }
                _ => return None,
            }
        }
        Some(native)
    }

    /// Whether scalar `i` certainly fails: the node lists its strings (`enum`, `const`)
    /// and `i` is none of them (or not a string at all).
    fn certainly_not_listed(&self, tape: &Tape<'_>, i: usize) -> bool {
        let Some(strings) = &self.strings else {
            return false;
        };
        match tape.kind(i) {
            Kind::Str => {
                let text = tape.str(i);
                !strings.iter().any(|s| *s == text)
            }
            Kind::Null | Kind::True | Kind::False | Kind::Num => true,
            Kind::Obj | Kind::Arr | Kind::Key => false,
        }
    }

    /// Whether scalar `i` certainly passes (false: not known here).
    fn certain(&self, tape: &Tape<'_>, i: usize) -> bool {
        let kind = tape.kind(i);
        // A number is read once, for its type and its bounds.
        let mut range = None;
        let bits = match kind {
            Kind::Null => NULL,
            Kind::True | Kind::False => BOOLEAN,
            Kind::Num => {
                let integer;
                (integer, range) = number_range(tape.raw(i));
                // A number with a point or an exponent may still be an integer
                // (`1.0`): `jsonschema` decides.
                if integer {
                    INTEGER
                } else {
                    NUMBER
                }
            }
            Kind::Str => STRING,
            Kind::Obj | Kind::Arr | Kind::Key => return false,
        };
        if self.types.is_some_and(|t| t & bits == 0) {
            return false;
        }
        match kind {
            Kind::Str => {
                let text = tape.str(i);
                if let Some(strings) = &self.strings {
                    if !strings.iter().any(|s| *s == text) {
                        return false;
                    }
                }
                // A string has at most one character per byte and at least one per
                // four: the characters are counted only when the bytes do not settle
                // the bounds.
                let bytes = text.len() as u64;
                let settled = self.min_length.is_none_or(|m| bytes.div_ceil(4) >= m)
                    && self.max_length.is_none_or(|m| bytes <= m);
                if !settled {
                    let chars = text.chars().count() as u64;
                    if self.min_length.is_some_and(|m| chars < m)
                        || self.max_length.is_some_and(|m| chars > m)
                    {
                        return false;
                    }
                }
                self.pattern.as_ref().is_none_or(|p| p.is_match(&text))
                    && match self.format {
                        None => true,
                        Some(Format::Uuid) => plain_uuid(&text),
                        Some(Format::DateTime) => plain_date_time(&text),
                    }
            }
            Kind::Num => {
                if self.strings.is_some() {
                    return false;
                }
                if self.minimum.is_none() && self.maximum.is_none() {
                    return true;
                }
                let Some((low, high)) = range else {
                    return false;
                };
                self.minimum.is_none_or(|m| low >= m.ceil)
                    && self.maximum.is_none_or(|m| high <= m.floor)
            }
            _ => self.strings.is_none(),
        }
    }
}

/// `pattern` as a regular expression that matches exactly what the ECMA-262 pattern
/// matches, for patterns of literal characters, classes of them, groups, alternation,
/// anchors and quantifiers (no escapes, no `.`, whose meanings differ between the two).
/// The DFA is built with the `regex` crate's defaults (Unicode, unanchored search);
/// its size is bounded.
fn plain_pattern(pattern: &str) -> Option<Pattern> {
    use regex_automata::dfa::{dense, Automaton};
    let plain = !pattern.contains("(?")
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "^$[]()|?*+{},-_:/#@!%&=~<> '\"".contains(c));
    if !plain {
        return None;
    }
    const LIMIT: usize = 1 << 20;
    let config = dense::Config::new()
        .dfa_size_limit(Some(LIMIT))
        .determinize_size_limit(Some(LIMIT));
    let dfa = dense::Builder::new().configure(config).build(pattern).ok();
    // An unanchored search from the start of a text (no byte behind it).
    let first = regex_automata::util::start::Config::new();
    match dfa.and_then(|dfa| Some((dfa.start_state(&first).ok()?, dfa))) {
        Some((start, dfa)) => Some(Pattern::Dfa(Box::new(dfa), start)),
        None => regex::Regex::new(pattern).ok().map(Pattern::Regex),
    }
}

/// Whether `text` is a hyphenated UUID (8-4-4-4-12 hex digits): what `format: uuid`
/// accepts for certain.
fn plain_uuid(text: &str) -> bool {
    let Some(b) = text
        .as_bytes()
        .first_chunk::<36>()
        .filter(|_| text.len() == 36)
    else {
        return false;
    };
    // The table `Uuid::parse` reads digits through: 0xff for a byte that is none.
    let hex = |part: &[u8]| {
        part.iter()
            .fold(0, |bad, c| bad | crate::event::HEX_VALUE[usize::from(*c)])
            & 0xf0
            == 0
    };
    b[8] == b'-'
        && b[13] == b'-'
        && b[18] == b'-'
        && b[23] == b'-'
        && hex(&b[..8])
        && hex(&b[9..13])
        && hex(&b[14..18])
        && hex(&b[19..23])
        && hex(&b[24..])
}

/// The number written by the `n` ASCII digits of `b` at `from`, if they are digits.
fn digits(b: &[u8], from: usize, n: usize) -> Option<u32> {
    b.get(from..from + n)
        .filter(|d| d.iter().all(u8::is_ascii_digit))
        .map(|d| d.iter().fold(0u32, |acc, c| acc * 10 + u32::from(c - b'0')))
}

/// Whether `b` starts with `YYYY-MM-DD?HH:MM:SS`, `separator` between the date and the
/// time, naming a real day and a time with seconds below 60.
pub fn plain_date_and_time(b: &[u8], separator: u8) -> bool {
    date_and_time_fields(b, separator).is_some()
}

/// The year, month, day, hour, minute and second of [`plain_date_and_time`]'s shape.
fn date_and_time_fields(b: &[u8], separator: u8) -> Option<[u32; 6]> {
    let head: &[u8; 19] = b.first_chunk()?;
    let separators = [
        (4, b'-'),
        (7, b'-'),
        (10, separator),
        (13, b':'),
        (16, b':'),
    ];
    if separators.iter().any(|&(at, c)| head[at] != c) {
        return None;
    }
    // Every other byte a digit, eight bytes at a time: `YYYY-MM-`, `DDTHH:MM`, then
    // `HH:MM:SS`.
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    // A digit's byte, less `0`, is at most 9: no high bits, and adding 6 carries into
    // none (nor past its byte).
    let digits_at = |w: u64, mask: u64| {
        let v = (w ^ 0x3030_3030_3030_3030) & mask;
        (v | (v + 0x0606_0606_0606_0606)) & 0xf0f0_f0f0_f0f0_f0f0 == 0
    };
    const TIME: u64 = 0xffff_00ff_ff00_ffff;
    if !(digits_at(word(0), 0x00ff_ff00_ffff_ffff)
        && digits_at(word(8), TIME)
        && digits_at(word(11), TIME))
    {
        return None;
    }
    let two = |at: usize| u32::from(head[at] - b'0') * 10 + u32::from(head[at + 1] - b'0');
    let year = two(0) * 100 + two(2);
    let (month, day, hour, minute, second) = (two(5), two(8), two(11), two(14), two(17));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (day != 0 && day <= days && hour <= 23 && minute <= 59 && second <= 59)
        .then_some([year, month, day, hour, minute, second])
}

/// Where an optional fraction of a second (`.` and one to nine digits) at `at` in `b`
/// ends: `at` itself when there is none, `None` when it has no digit or more than nine.
pub fn fraction_end(b: &[u8], at: usize) -> Option<usize> {
    if b.get(at) != Some(&b'.') {
        return Some(at);
    }
    let from = at + 1;
    let end = b[from..]
        .iter()
        .position(|d| !d.is_ascii_digit())
        .map_or(b.len(), |n| from + n);
    (1..=9).contains(&(end - from)).then_some(end)
}

/// Whether `text` is an RFC 3339 date-time in its everyday shape
/// (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, a real day, seconds below 60): what
/// `format: date-time` accepts for certain.
fn plain_date_time(text: &str) -> bool {
    date_time_parts(text).is_some()
}

/// A date-time of [`plain_date_time`]'s shape: its date and time fields, where its
/// fraction ends, and its offset east of UTC in seconds.
fn date_time_parts(text: &str) -> Option<([u32; 6], usize, i32)> {
    let b = text.as_bytes();
    let fields = date_and_time_fields(b, b'T')?;
    let end = fraction_end(b, 19)?;
    let offset = match b.get(end)? {
        b'Z' if end + 1 == b.len() => 0,
        sign @ (b'+' | b'-') => {
            let (h, m) = (digits(b, end + 1, 2)?, digits(b, end + 4, 2)?);
            if b.get(end + 3) != Some(&b':') || h > 23 || m > 59 || end + 6 != b.len() {
                return None;
            }
            let seconds = (h * 60 + m) as i32 * 60;
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    Some((fields, end, offset))
}

/// The instant a date-time of [`plain_date_time`]'s shape names, to the microsecond
/// (a finer fraction cut off, as [`parse_timestamp`] does), built from its fields
/// rather than by chrono's parser (about half the instructions). `None` for a text of
/// any other shape, which chrono reads.
pub fn plain_instant(text: &str) -> Option<DateTime<Utc>> {
    let ([year, month, day, hour, minute, second], end, offset) = date_time_parts(text)?;
    // The fraction's first six digits (`fraction_end` found digits there), padded
    // with zeros.
    let written = text.as_bytes().get(20..end.min(26)).unwrap_or_default();
    let micros = written
        .iter()
        .fold(0, |acc, c| acc * 10 + u32::from(c - b'0'))
        * [1_000_000, 100_000, 10_000, 1_000, 100, 10, 1][written.len()];
    let local = chrono::NaiveDate::from_ymd_opt(year as i32, month, day)?
        .and_hms_micro_opt(hour, minute, second, micros)?;
    let utc = match offset {
        0 => local,
        offset => local.checked_sub_offset(chrono::FixedOffset::east_opt(offset)?)?,
    };
    Some(utc.and_utc())
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
    // The compact text is rarely longer than the text as written.
    let mut out = String::with_capacity((tape.node(i).span as usize).max(8));
    write_json(tape, i, &mut out)?;
    Some(out)
}

/// Writes an object from its members (key, value index), sorted by key.
fn write_members<O: JsonOut>(
    tape: &Tape<'_>,
    members: &[(&str, usize)],
    out: &mut O,
) -> Option<()> {
    out.push('{');
    for (n, (key, at)) in members.iter().enumerate() {
        if n > 0 {
            if members[n - 1].0 == *key {
                // A repeated key: serde_json keeps the last; the general path does that.
                return None;
            }
            out.push(',');
        }
        // Keys here hold no escapes: written as they came.
        out.push('"');
        out.push_str(key);
        out.push_str("\":");
        write_json(tape, *at, out)?;
    }
    out.push('}');
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

/// Whether serde_json writes the float `literal` (already read as a JSON number) as it
/// is: `-?(0|[1-9]d*).d*[1-9]`, 15 digits at most, at least 0.001 and below 10^15. Such
/// a decimal reads as a double that no shorter decimal reads as (15 digits always make
/// the trip to a double and back), so the shortest text that serde_json writes for the
/// double is the literal itself, in plain notation in that range.
#[inline]
fn plain_decimal(literal: &str) -> bool {
    let unsigned = literal.strip_prefix('-').unwrap_or(literal);
    let Some((whole, fraction)) = super::split_at_point(unsigned) else {
        return false;
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let small = whole == "0" && fraction.starts_with("000");
    !whole.is_empty()
        && whole.len() <= 15
        && (whole == "0" || !whole.starts_with('0'))
        && !fraction.is_empty()
        && !fraction.ends_with('0')
        && whole.len() + fraction.len() <= 15
        && !small
        && digits(whole)
        && digits(fraction)
}

fn write_json<O: JsonOut>(tape: &Tape<'_>, i: usize, out: &mut O) -> Option<()> {
    match tape.kind(i) {
        Kind::Null => out.push_str("null"),
        Kind::True => out.push_str("true"),
        Kind::False => out.push_str("false"),
        Kind::Num => {
            let literal = tape.raw(i);
            if plain_integer(literal) || plain_decimal(literal) {
                out.push_str(literal);
            } else if O::WRITES {
                out.push_str(&serde_json::to_string(&number(literal)?).ok()?);
            } else {
                // Stored as written, the database would keep the literal's own digits.
                return None;
            }
        }
        // Without escapes, the token is what serde_json writes (a control character
        // would have needed one).
        Kind::Str if !tape.node(i).escaped => out.push_str(tape.raw(i)),
        // Escapes mean the same to the database as the text serde_json writes.
        Kind::Str if !O::WRITES => {}
        Kind::Str => out.push_str(&serde_json::to_string(tape.str(i).as_ref()).ok()?),
        Kind::Arr => {
            out.push('[');
            for (n, j) in tape.elements(i).enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_json(tape, j, out)?;
            }
            out.push(']');
        }
        Kind::Obj => {
            // Small objects sort their members on the stack.
            const SMALL: usize = 16;
            let mut small = [("", 0usize); SMALL];
            let mut large = Vec::new();
            let len = tape.node(i).len as usize;
            let members: &mut [(&str, usize)] = if len <= SMALL {
                &mut small[..len]
            } else {
                large.resize(len, ("", 0));
                &mut large
            };
            for (slot, (k, at)) in members.iter_mut().zip(tape.members(i)) {
                if tape.node(k).escaped {
                    return None;
                }
                let raw = tape.raw(k);
                *slot = (&raw[1..raw.len() - 1], at);
            }
            if !members.is_sorted_by(|a, b| a.0 < b.0) {
                members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            }
            write_members(tape, members, out)?;
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
        native: None,
        object: None,
        array: None,
        cond: None,
    };
    let mut object = ObjectCheck {
        order: std::array::from_fn(|_| AtomicU8::new(0)),
        properties: Vec::new(),
        probes: Vec::new(),
        required_mask: 0,
        required_other: Vec::new(),
        additional: Check::Any,
        sorted: Vec::new(),
        keys: Vec::new(),
    };
    let mut required: Vec<String> = Vec::new();
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
                    object.probes.push((probe(name), name.len()));
                    object
                        .properties
                        .push((name.clone(), compile(sub, dialect)?));
                }
            }
            "required" => {
                has_object = true;
                required = value
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
        node.native = Native::of(&scalar);
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
    let mut sorted: Vec<u8> = (0..object.properties.len() as u8).collect();
    sorted.sort_by(|a, b| {
        let name = |p: &u8| object.properties[usize::from(*p)].0.as_bytes();
        name(a).cmp(name(b))
    });
    object.sorted = sorted;
    object.keys = object
        .properties
        .iter()
        .map(|(name, _)| Some(format!("{}:", serde_json::to_string(name).ok()?)))
        .collect::<Option<_>>()?;
    // Where each required property is declared: a bit; where not: a name.
    for name in required {
        match object.find(&name) {
            Some(p) => object.required_mask |= 1 << p,
            None => object.required_other.push(name),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json writes for the JSON number `literal`.
    fn serde_text(literal: &str) -> String {
        serde_json::to_string(&Number::from_str(literal).unwrap()).unwrap()
    }

    #[test]
    fn plain_decimals_are_written_by_serde_json_as_they_are() {
        for literal in [
            "12.5",
            "-0.5",
            "0.001",
            "0.999",
            "1.05",
            "99999999999999.9",
            "123456789.123456",
            "-7.25",
        ] {
            assert!(plain_decimal(literal), "{literal}");
            assert_eq!(serde_text(literal), literal);
        }
        for literal in [
            "12.50",
            "0.0001",
            "1e5",
            "1.5e3",
            "012.5",
            "12.",
            ".5",
            "-0.0",
            "12",
            "1234567890123456.5",
            "1.234567890123456",
        ] {
            assert!(!plain_decimal(literal), "{literal}");
        }
        // Every shape the check accepts, at every length and scale it accepts.
        let mut rng = fastrand::Rng::with_seed(7);
        let mut accepted = 0;
        for _ in 0..200_000 {
            let whole_len = rng.usize(1..=15);
            let mut whole: String = (0..whole_len)
                .map(|_| char::from(b'0' + rng.u8(0..10)))
                .collect();
            if rng.bool() {
                whole = "0".into();
            }
            let fraction_len = rng.usize(1..=15);
            let fraction: String = (0..fraction_len)
                .map(|_| char::from(b'0' + rng.u8(0..10)))
                .collect();
            let sign = if rng.bool() { "-" } else { "" };
            let literal = format!("{sign}{whole}.{fraction}");
            if plain_decimal(&literal) {
                accepted += 1;
                assert_eq!(serde_text(&literal), literal);
            }
        }
        assert!(accepted > 20_000, "{accepted}");
    }

    /// `minimum` and `maximum` checked on the tape call a number valid only where
    /// `jsonschema` does, for integers of every size, decimals, numbers at and next to
    /// the bounds, and bounds that are integers, fractions and doubles far from 2^53.
    #[test]
    fn bounds_on_the_tape_accept_only_what_jsonschema_accepts() {
        let bounds = [
            "0",
            "1",
            "-1",
            "0.5",
            "-2.0001",
            "9999999999.99",
            "100000",
            "4503599627370495.5",
            "9007199254740993",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "1e300",
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        let digits = |rng: &mut fastrand::Rng, n: usize| -> String {
            let first = char::from(b'1' + rng.u8(0..9));
            std::iter::once(first)
                .chain((1..n).map(|_| char::from(b'0' + rng.u8(0..10))))
                .collect()
        };
        let mut literals: Vec<String> = Vec::new();
        for bound in bounds {
            for suffix in ["", "0", "1", "00000001", "9", "99999999"] {
                let near = if bound.contains('.') || bound.contains('e') {
                    format!("{bound}{suffix}")
                } else {
                    format!("{bound}.{suffix}")
                };
                literals.push(near.trim_end_matches('.').to_owned());
            }
        }
        for _ in 0..4000 {
            let sign = if rng.bool() { "-" } else { "" };
            let whole = if rng.u8(0..4) == 0 {
                "0".to_owned()
            } else {
                let n = rng.usize(1..=20);
                digits(&mut rng, n)
            };
            let literal = match rng.u8(0..3) {
                0 => format!("{sign}{whole}"),
                1 => {
                    let n = rng.usize(1..=8);
                    let fraction: String =
                        (0..n).map(|_| char::from(b'0' + rng.u8(0..10))).collect();
                    format!("{sign}{whole}.{fraction}")
                }
                _ => format!("{sign}{whole}e{}", rng.i8(-3..4)),
            };
            literals.push(literal);
        }
        let (mut certain, mut valid) = (0, 0);
        for bound in bounds {
            for keyword in ["minimum", "maximum"] {
                let limit: Value = serde_json::from_str(bound).unwrap();
                let schema = serde_json::json!({"type": "number", keyword: limit});
                let validator = jsonschema::validator_for(&schema).unwrap();
                let Some(native) = Native::of(schema.as_object().unwrap()) else {
                    assert_eq!(bound, "1e300", "a bound the tape can check");
                    continue;
                };
                for literal in &literals {
                    let Ok(value) = serde_json::from_str::<Value>(literal) else {
                        continue;
                    };
                    let text = format!("{{\"v\":{literal}}}");
                    let tape = Tape::read(&text).unwrap();
                    let is_valid = validator.is_valid(&value);
                    valid += usize::from(is_valid);
                    if native.certain(&tape, 2) {
                        certain += 1;
                        assert!(is_valid, "{literal} against {keyword} {bound}");
                    }
                }
            }
        }
        // Most valid numbers are known valid on the tape (all but exponents, decimals
        // beyond 2^53 or 18 digits, and those within two of a bound).
        assert!(certain * 2 > valid, "{certain} of {valid}");
    }

    #[test]
    fn the_dfa_walk_matches_where_the_regex_matches() {
        let patterns = [
            "^[A-Z]{3}$",
            "^(97[89])?[0-9]{9}[0-9X]$",
            "[0-9]+",
            "ab|cd",
            "^$",
            "x*",
            "^a",
            "b$",
            "^(foo|bar)+-[a-z]{2,4}$",
            "[^a-z]",
        ];
        let texts = [
            "",
            "USD",
            "usd",
            "USDX",
            "US",
            "9780131103627",
            "978013110362X",
            "0131103627",
            "97801311036X",
            "x",
            "ab",
            "xcdx",
            "a",
            "ba",
            "foobar-abc",
            "foo-",
            "é",
            "abc1",
            "ÉUR",
            "aaaa",
            "\u{0}",
            "日本語",
            "bar-xyzw",
            "foo-ABCD",
        ];
        for pattern in patterns {
            let Some(Pattern::Dfa(..)) = plain_pattern(pattern) else {
                panic!("{pattern} is plain");
            };
            let dfa = plain_pattern(pattern).unwrap();
            let regex = regex::Regex::new(pattern).unwrap();
            for text in texts {
                assert_eq!(
                    dfa.is_match(text),
                    regex.is_match(text),
                    "{pattern} on {text:?}"
                );
            }
        }
    }

    #[test]
    fn a_number_read_for_its_bounds_is_a_plain_integer_where_plain_integer_says() {
        for literal in [
            "0",
            "-0",
            "7",
            "-7",
            "10",
            "123456789012345678",
            "-123456789012345678",
            "1234567890123456789",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "1.5",
            "-0.0",
            "1e5",
            "-1E+2",
            "0.001",
        ] {
            assert_eq!(number_range(literal).0, plain_integer(literal), "{literal}");
        }
    }

    #[test]
    fn a_key_probed_where_it_lies_is_probed_as_its_text() {
        let text = r#"{"":0,"a":1,"qty":2,"abcdefg":3,"abcdefgh":4,"abcdefghijk":5,"x\u0041":6,"é":7,"z":8}"#;
        let tape = Tape::read(text).unwrap();
        let keys: Vec<_> = tape.members(0).map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 9);
        for k in keys {
            let key = tape.str(k);
            assert_eq!(key_probe(&tape, k, &key), probe(&key), "{key}");
        }
    }

    #[test]
    fn uuids_are_checked_byte_by_byte() {
        let reference = |text: &str| {
            text.len() == 36
                && text.bytes().enumerate().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => c == b'-',
                    _ => c.is_ascii_hexdigit(),
                })
        };
        let good = "123e4567-e89b-12d3-a456-426614174000";
        assert!(plain_uuid(good));
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            let mut bytes = good.as_bytes().to_vec();
            let at = rng.usize(..36);
            bytes[at] = rng.u8(..);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            assert_eq!(plain_uuid(&text), reference(&text), "{text:?}");
        }
        assert!(!plain_uuid(&good[1..]));
        assert!(!plain_uuid(&format!("{good}0")));
    }

    #[test]
    fn plain_instants_are_the_instants_chrono_reads() {
        // chrono's reading, as `parse_timestamp` made it before the plain one.
        let chrono = |text: &str| {
            let t = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
            DateTime::<Utc>::from_timestamp_micros(t.timestamp_micros())
        };
        let shape = regex::Regex::new(
            r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$",
        )
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(11);
        let mut plain = 0;
        for n in 0..200_000 {
            let year = match n % 4 {
                0 => rng.u32(1969..=1971),
                1 => rng.u32(0..=3),
                2 => rng.u32(9997..=9999),
                _ => rng.u32(0..=9999),
            };
            let fraction = match rng.usize(..4) {
                0 => String::new(),
                _ => {
                    let digits = rng.usize(0..=10);
                    let text: String = (0..digits).map(|_| rng.digit(10)).collect();
                    format!(".{text}")
                }
            };
            let offset = match rng.usize(..5) {
                0 => "Z".to_owned(),
                1 => "z".to_owned(),
                _ => format!(
                    "{}{:02}:{:02}",
                    if rng.bool() { '+' } else { '-' },
                    rng.u32(0..=24),
                    rng.u32(0..=60)
                ),
            };
            let mut text = format!(
                "{year:04}-{:02}-{:02}{}{:02}:{:02}:{:02}{fraction}{offset}",
                rng.u32(0..=13),
                rng.u32(0..=32),
                if rng.u8(..20) == 0 { 't' } else { 'T' },
                rng.u32(0..=24),
                rng.u32(0..=60),
                rng.u32(0..=60),
            );
            if rng.u8(..4) == 0 {
                // One byte anything printable.
                let at = rng.usize(..text.len());
                text.replace_range(at..at + 1, &char::from(rng.u8(b' '..=b'~')).to_string());
            }
            // The plain shape: anything chrono reads in it but a leap second.
            let expected =
                shape.is_match(&text) && &text[17..19] != "60" && chrono(&text).is_some();
            match plain_instant(&text) {
                Some(t) => {
                    plain += 1;
                    assert_eq!(Some(t), chrono(&text), "{text}");
                }
                None => assert!(!expected, "{text} is left to chrono"),
            }
        }
        assert!(
            plain > 50_000,
            "{plain} of the texts were of the plain shape"
        );
        for bad in [
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00Zx",
            "2024-05-01T12:00:00+01:0",
        ] {
            assert_eq!(plain_instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_a_bare_format_is_read_once_for_its_check_and_cell() {
        let column = |ty| Column {
            name: "v".into(),
            ty,
            nullable: true,
            treatment: None,
        };
        let reading = |schema: Value, ty| {
            let check = compile(&schema, &None).expect("compiled");
            OneReading::of(&check, Some(&column(ty))).map(|r| matches!(r, OneReading::Uuid))
        };
        let date_time = serde_json::json!({"type": "string", "format": "date-time"});
        assert_eq!(
            reading(date_time.clone(), ColumnType::Timestamp),
            Some(false)
        );
        assert_eq!(
            reading(serde_json::json!({"format": "uuid"}), ColumnType::Uuid),
            Some(true)
        );
        assert_eq!(
            reading(date_time, ColumnType::Text { max_length: None }),
            None
        );
        for other in [
            serde_json::json!({"type": "string", "format": "date-time", "minLength": 30}),
            serde_json::json!({"type": "string", "format": "date-time", "maxLength": 20}),
            serde_json::json!({"type": "string", "format": "date-time", "pattern": "^2024"}),
            serde_json::json!({"format": "date-time", "enum": ["2024-05-01T12:00:00Z"]}),
            serde_json::json!({"type": "integer", "format": "date-time"}),
            serde_json::json!({"format": "date-time", "if": {"minLength": 1}, "then": false}),
        ] {
            assert_eq!(
                reading(other.clone(), ColumnType::Timestamp),
                None,
                "{other}"
            );
        }
    }
}
