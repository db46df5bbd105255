//! Upserts (`upsert_key`): a batch may hold several rows with one key (a source row
//! updated twice between two pulls, a webhook resent). Applied one after the other, the
//! last one not older than the row it meets wins; PostgreSQL's `ON CONFLICT DO UPDATE`
//! refuses to touch one row twice in a statement, so its writer gives it the batch's
//! outcome instead: the rows that remain after applying them in order.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use crate::event::{Cell, Row};
use crate::schema::{OnConflict, Stream};

/// `rows` with, for each key of `stream`'s `upsert_key`, only the row that applying
/// them in order would leave (borrowed as is when no key repeats, or the stream does
/// not upsert).
pub fn last_per_key<'a>(stream: &Stream, rows: &'a [Row]) -> Cow<'a, [Row]> {
    let Some(key) = &stream.key else {
        return Cow::Borrowed(rows);
    };
    let OnConflict::Replace { version } = &key.on_conflict else {
        return Cow::Borrowed(rows);
    };
    let position = |name: &str| stream.columns.iter().position(|c| c.name == name);
    let key_at: Vec<usize> = key.columns.iter().filter_map(|k| position(k)).collect();
    let version_at = version.as_deref().and_then(position);
    let mut kept: Vec<&Row> = Vec::with_capacity(rows.len());
    let mut index: HashMap<Vec<KeyPart<'_>>, usize> = HashMap::with_capacity(rows.len());
    for row in rows {
        let key: Vec<KeyPart<'_>> = key_at.iter().map(|&i| KeyPart::of(&row.cells[i])).collect();
        match index.get(&key) {
            None => {
                index.insert(key, kept.len());
                kept.push(row);
            }
            Some(&at) => {
                let replaces = match version_at {
                    None => true,
                    Some(v) => not_older(&row.cells[v], &kept[at].cells[v]),
                };
                if replaces {
                    kept[at] = row;
                }
            }
        }
    }
    if kept.len() == rows.len() {
        return Cow::Borrowed(rows);
    }
    Cow::Owned(kept.into_iter().cloned().collect())
}

/// A key cell, comparable and hashable (a float by its bits: keys are not floats in
/// practice, and equal bits are what a unique key compares).
#[derive(PartialEq, Eq, Hash)]
enum KeyPart<'a> {
    Null,
    Text(&'a str),
    Uuid([u8; 16]),
    Int(i64),
    Bits(u64),
    Bool(bool),
    Micros(i64),
}

impl<'a> KeyPart<'a> {
    fn of(cell: &'a Cell) -> KeyPart<'a> {
        match cell {
            Cell::Null => KeyPart::Null,
            Cell::Text(s) | Cell::Json(s) => KeyPart::Text(s),
            Cell::Uuid(u) => KeyPart::Uuid(u.0),
            Cell::Int(i) => KeyPart::Int(*i),
            Cell::Float(f) => KeyPart::Bits(f.to_bits()),
            Cell::Bool(b) => KeyPart::Bool(*b),
            Cell::Timestamp(t) => KeyPart::Micros(t.timestamp_micros()),
        }
    }
}

/// Whether a row with version `new` replaces one with version `stored`, as the
/// databases' guard decides: when the stored version is NULL, or `new >= stored`.
fn not_older(new: &Cell, stored: &Cell) -> bool {
    let order = match (new, stored) {
        (_, Cell::Null) => return true,
        (Cell::Null, _) => return false,
        (Cell::Int(a), Cell::Int(b)) => a.partial_cmp(b),
        (Cell::Float(a), Cell::Float(b)) => a.partial_cmp(b),
        (Cell::Int(a), Cell::Float(b)) => (*a as f64).partial_cmp(b),
        (Cell::Float(a), Cell::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Cell::Timestamp(a), Cell::Timestamp(b)) => a.partial_cmp(b),
        (Cell::Text(a), Cell::Text(b)) => a.partial_cmp(b),
        _ => None,
    };
    matches!(order, Some(Ordering::Greater | Ordering::Equal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_the_database_guard_does() {
        assert!(not_older(&Cell::Int(2), &Cell::Int(2)));
        assert!(not_older(&Cell::Int(3), &Cell::Int(2)));
        assert!(!not_older(&Cell::Int(1), &Cell::Int(2)));
        assert!(not_older(&Cell::Int(1), &Cell::Null));
        assert!(!not_older(&Cell::Null, &Cell::Int(1)));
        assert!(not_older(&Cell::Text("b".into()), &Cell::Text("a".into())));
    }
}
