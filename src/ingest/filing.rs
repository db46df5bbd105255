//! Filing: the one step every input shares. Raw events (the bytes an input read, parsed
//! or not yet), a [`Route`], a source and a time in; per stream, the rows that passed the
//! schema and the dead letters of those that did not (with the reason each input
//! reports) out. The HTTP events endpoint, webhooks, TCP, JetStream, spool recovery and
//! replay all file through [`Filing::file`]; what they keep of their own is reading
//! bytes, verifying signatures and acknowledging messages.
//!
//! The order of one event's steps: parse (unless the input already did), route (which
//! may remove the routing field, or add what a webhook copies in), validate and convert
//! to a row ([`Stream::to_row`]), set aside a value the database is known to refuse.
//! A failure at any step makes a dead letter of the event's text as received; where the
//! event had not yet found its stream, the dead letter names the stream the route fixes
//! before parsing (an HTTP path, a spool log), or none.

use std::cell::Cell;
use std::sync::Arc;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::body::parse_object;
use crate::event::{DeadLetter, Row, Stage, DEFAULT_MAX_PAYLOAD_BYTES};
use crate::schema::tape::{self, Kind, Tape};
use crate::schema::{Registry, Stream};
use crate::sink::Dialect;
use crate::webhook::{verify::Verified, Webhook};

/// Why one event of a request was not accepted, as reported to the client.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventError {
    /// Position of the event in the request (array element or non-blank NDJSON line).
    pub index: usize,
    pub stage: Stage,
    pub error: String,
    /// JSON pointer to the offending value, for schema errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

impl EventError {
    /// An error about the event as a whole (no JSON pointer into it).
    pub fn whole(index: usize, stage: Stage, error: String) -> EventError {
        EventError {
            index,
            stage,
            error,
            pointer: None,
        }
    }
}

/// One event as its input read it.
pub struct Event<'a> {
    /// Its position: in the request (array element, NDJSON line), on the connection
    /// (TCP line), in the batch (JetStream); the dead letter's id for a replay.
    pub index: usize,
    /// Its text as received: the row's `_raw`, the dead letter's payload.
    pub raw: &'a [u8],
    pub read: Read,
}

/// How far an input got with an event's text.
pub enum Read {
    /// Not parsed yet: filing parses it as one JSON object.
    Text,
    /// Not parsed yet, and treated already by its stream's `x-sluice-privacy` (a spool
    /// record): checked with the treated properties relaxed, not treated again.
    Treated,
    /// Parsed (a JSON body is parsed while it is split into events).
    Parsed(Value),
    /// Refused before it could be parsed (a line too long, an empty message, a text
    /// that is not JSON): a dead letter at `stage` with this error.
    Refused(Stage, String),
}

impl<'a> Event<'a> {
    /// An event still to be parsed.
    pub fn text(index: usize, raw: &'a [u8]) -> Event<'a> {
        Event {
            index,
            raw,
            read: Read::Text,
        }
    }

    /// An event whose text its stream treated already (see [`Read::Treated`]).
    pub fn treated(index: usize, raw: &'a [u8]) -> Event<'a> {
        Event {
            index,
            raw,
            read: Read::Treated,
        }
    }

    /// An event an input parsed already (`Err`: why it does not parse).
    pub fn parsed(index: usize, raw: &'a [u8], value: Result<Value, String>) -> Event<'a> {
        let read = match value {
            Ok(value) => Read::Parsed(value),
            Err(error) => Read::Refused(Stage::Parse, error),
        };
        Event { index, raw, read }
    }
}

/// How events find their stream.
pub enum Route<'a> {
    /// All to one stream: the HTTP path's, a spool log's, a replay's (`--into` or the
    /// dead letter's own). With `strip`, that field is removed first unless the schema
    /// declares it: an event that first came in routed by a field is filed again as
    /// the live path filed it.
    To {
        stream: &'a Arc<Stream>,
        strip: Option<&'a str>,
    },
    /// By a field of each event (TCP lines, JetStream messages without a subject
    /// prefix): see [`ByField`].
    Field(ByField<'a>),
    /// By a message's subject (`jetstream.subject_prefix` + the stream's name); the
    /// routing field is removed as for [`Route::Field`].
    Subject {
        registry: &'a Registry,
        /// The whole subject, for errors.
        subject: &'a str,
        /// The subject after the prefix: the stream's name.
        name: &'a str,
        field: &'a str,
    },
    /// A webhook's `[webhooks.NAME]` destination (one stream, or by a pointer or a
    /// header), each event then decorated with what the webhook copies in.
    Webhook(ByWebhook<'a>),
}

/// Routing by a field: the stream an object names in `field` (else `default`), the
/// field removed unless the schema declares it.
pub struct ByField<'a> {
    registry: &'a Registry,
    field: &'a str,
    default: Option<&'a str>,
    /// The stream the fast path routed to last, and the member it left out: the lines
    /// of one connection mostly go to one stream, found again without hashing its name.
    last: Cell<Option<(&'a Arc<Stream>, Option<&'a str>)>>,
}

/// Routing by a webhook's configuration.
pub struct ByWebhook<'a> {
    pub hook: &'a Webhook,
    pub headers: &'a HeaderMap,
    pub verified: &'a Verified,
    /// Whether the body was an array (its events' delivery ids get `/INDEX`).
    pub batch: bool,
    /// A form's body as received: the payload of its dead letters (its row has the
    /// fields as JSON), and a hint added to a validation error.
    pub form: Option<(&'a [u8], Option<&'a str>)>,
}

/// Where an event goes, and its text when routing changed it.
type Routed<'a> = (&'a Arc<Stream>, Value, Option<String>);

impl<'a> Route<'a> {
    /// One stream, the events as they are.
    pub fn to(stream: &'a Arc<Stream>) -> Route<'a> {
        Route::To {
            stream,
            strip: None,
        }
    }

    /// One stream, for events filed again (spool recovery, replay) that first came in
    /// from `came_from`: its routing field `field` is removed if that input routes by
    /// field.
    pub fn again(stream: &'a Arc<Stream>, field: &'a str, came_from: &str) -> Route<'a> {
        let routed =
            crate::source::Kind::of(came_from).is_some_and(crate::source::Kind::routes_by_field);
        Route::To {
            stream,
            strip: routed.then_some(field),
        }
    }

    /// The stream known before an event is parsed: what a parse error is filed under.
    fn fixed(&self) -> Option<&'a Arc<Stream>> {
        match self {
            Route::To { stream, .. } => Some(stream),
            Route::Webhook(w) => w.hook.fixed_stream(),
            Route::Field(_) | Route::Subject { .. } => None,
        }
    }

    /// The payload of a dead letter of an event whose text is `text`.
    fn letter_payload<'t>(&self, text: &'t [u8]) -> &'t [u8]
    where
        'a: 't,
    {
        match self {
            Route::Webhook(ByWebhook {
                form: Some((body, _)),
                ..
            }) => body,
            _ => text,
        }
    }

    /// Added to a validation error's reason.
    fn hint(&self) -> Option<&'a str> {
        match self {
            Route::Webhook(ByWebhook {
                form: Some((_, hint)),
                ..
            }) => *hint,
            _ => None,
        }
    }

    /// The stream of `value` (event `index`), the value as its stream sees it, and its
    /// new text if routing changed more than the routing field.
    pub fn route(&self, mut value: Value, index: usize) -> Result<Routed<'a>, String> {
        match self {
            Route::To { stream, strip } => {
                if let Some(field) = strip {
                    strip_unless_declared(stream, field, &mut value);
                }
                Ok((stream, value, None))
            }
            Route::Field(by) => by.route(value),
            Route::Subject {
                registry,
                subject,
                name,
                field,
            } => {
                let stream = registry.get(name).ok_or_else(|| {
                    format!("unknown stream `{name}` (from the subject {subject}): there is no schemas/{name}.json")
                })?;
                strip_unless_declared(stream, field, &mut value);
                Ok((stream, value, None))
            }
            Route::Webhook(w) => {
                let stream = w.hook.route(&value, w.headers)?;
                let batch_index = w.batch.then_some(index);
                let changed =
                    w.hook
                        .decorate(&mut value, w.headers, w.verified, stream, batch_index);
                let text = changed.then(|| value.to_string());
                Ok((stream, value, text))
            }
        }
    }
}

impl<'a> ByField<'a> {
    /// Routing to the stream an object names in `field`, else to `default`.
    pub fn new(registry: &'a Registry, field: &'a str, default: Option<&'a str>) -> Self {
        ByField {
            registry,
            field,
            default,
            last: Cell::new(None),
        }
    }

    /// The stream an event read into `tape` names (the fast path), and the member to
    /// leave out; `None` where the general path must decide (and explain).
    fn fast(&self, tape: &Tape<'_>) -> Option<(&'a Arc<Stream>, Option<&'a str>)> {
        let mut named = None;
        for (k, at) in tape.members(0) {
            if tape.is(k, self.field) {
                match (tape.kind(at), named) {
                    (Kind::Str, None) => named = Some(tape.str(at)),
                    _ => return None,
                }
            }
        }
        let name = named.as_deref().or(self.default)?;
        if let Some(last) = self.last.get().filter(|(s, _)| s.name == name) {
            return Some(last);
        }
        let stream = self.registry.get(name)?;
        if !stream.has_fast_path() {
            return None;
        }
        let routed = (stream, (!stream.declares(self.field)).then_some(self.field));
        self.last.set(Some(routed));
        Some(routed)
    }

    fn route(&self, mut value: Value) -> Result<Routed<'a>, String> {
        let field = self.field;
        let Value::Object(map) = &mut value else {
            return Err("the line is not a JSON object".into());
        };
        let name = match map.get(field) {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return Err(format!("the \"{field}\" field must be a string naming a stream, not {other}")),
            None => match self.default {
                Some(d) => d,
                None => {
                    return Err(format!(
                        "the line has no \"{field}\" field naming its stream, and tcp.default_stream is not set"
                    ))
                }
            },
        };
        let stream = self
            .registry
            .get(name)
            .ok_or_else(|| format!("unknown stream `{name}`: there is no schemas/{name}.json"))?;
        if !stream.declares(field) {
            map.remove(field);
        }
        Ok((stream, value, None))
    }
}

/// Removes `field` from `value` unless `stream`'s schema declares it.
fn strip_unless_declared(stream: &Stream, field: &str, value: &mut Value) {
    if !stream.declares(field) {
        if let Value::Object(map) = value {
            map.remove(field);
        }
    }
}

/// The events of one request (or chunk, or batch) filed so far, by stream.
pub struct Filing {
    /// Each stream's events (`None`: those that found no stream), in the order first
    /// seen.
    groups: Vec<(Option<Arc<Stream>>, RequestEvents)>,
    max_payload: usize,
    dialect: Option<Dialect>,
    token: Option<Arc<str>>,
    /// The fast path's tape buffer, reused from one event to the next.
    nodes: Vec<tape::Node>,
}

impl Filing {
    /// Dead letters keep at most `max_payload` bytes; with `dialect`, values that
    /// database is known to refuse are set aside at once.
    pub fn new(max_payload: usize, dialect: Option<Dialect>) -> Filing {
        Filing {
            groups: Vec::new(),
            max_payload,
            dialect,
            token: None,
            nodes: Vec::new(),
        }
    }

    /// The ingest token the events came with (`[auth]`), for metrics.
    pub fn with_token(mut self, token: Option<Arc<str>>) -> Filing {
        self.token = token;
        self
    }

    /// Files `events`, which came from `source` at `received_at`, by `route`.
    pub fn file<'e>(
        &mut self,
        route: &Route<'_>,
        source: &Arc<str>,
        received_at: DateTime<Utc>,
        events: impl IntoIterator<Item = Event<'e>>,
    ) {
        let events = events.into_iter();
        if let Route::To { stream, .. } = route {
            // Room for the rows at once, rather than growing (and copying) the list.
            self.group(Some(stream)).rows.reserve(events.size_hint().0);
        }
        for Event { index, raw, read } in events {
            let refuse = |this: &mut Filing, stream: Option<&Arc<Stream>>, stage, error| {
                let err = EventError::whole(index, stage, error);
                let payload = route.letter_payload(raw);
                this.group(stream)
                    .reject(stream, payload, err, source, received_at);
            };
            if matches!(read, Read::Text) && self.file_fast(route, raw, index, source, received_at)
            {
                continue;
            }
            let treated = matches!(read, Read::Treated);
            let value = match read {
                Read::Parsed(value) => value,
                Read::Text | Read::Treated => match parse_object(raw) {
                    Ok(value) => value,
                    Err(error) => {
                        refuse(self, route.fixed(), Stage::Parse, error);
                        continue;
                    }
                },
                Read::Refused(stage, error) => {
                    refuse(self, route.fixed(), stage, error);
                    continue;
                }
            };
            let (stream, value, text) = match route.route(value, index) {
                Ok(routed) => routed,
                Err(error) => {
                    refuse(self, None, Stage::Route, error);
                    continue;
                }
            };
            // The text of a parsed event is valid UTF-8.
            let text = match &text {
                Some(changed) => changed.as_str(),
                None => std::str::from_utf8(raw).unwrap_or_default(),
            };
            let payload = route.letter_payload(text.as_bytes());
            let hint = route.hint();
            self.group(Some(stream)).add(
                stream,
                (text, treated),
                value,
                (payload, hint),
                index,
                source,
                received_at,
            );
        }
    }

    /// Files event `index` (text `raw`) by the fast path, if its stream has one and the
    /// event certainly passes its schema: whether it did. Otherwise the event takes the
    /// general path, which gives the same row, or the reason there is none.
    fn file_fast(
        &mut self,
        route: &Route<'_>,
        raw: &[u8],
        index: usize,
        source: &Arc<str>,
        received_at: DateTime<Utc>,
    ) -> bool {
        if let Route::To { stream, .. } = route {
            if !stream.has_fast_path() {
                return false;
            }
        }
        let Some(text) = crate::scan::utf8(raw) else {
            return false;
        };
        let Some(tape) = Tape::read_into(text, std::mem::take(&mut self.nodes)) else {
            return false;
        };
        let filed = self.file_tape(route, &tape, text, index, source, received_at);
        self.nodes = tape.into_nodes();
        filed
    }

    /// [`Filing::file_fast`] of an event read into `tape`.
    fn file_tape(
        &mut self,
        route: &Route<'_>,
        tape: &Tape<'_>,
        text: &str,
        index: usize,
        source: &Arc<str>,
        received_at: DateTime<Utc>,
    ) -> bool {
        // A routing field is left out unless the schema declares it, as
        // `strip_unless_declared` removes it on the general path.
        let (stream, skip) = match route {
            Route::To { stream, strip } => (*stream, strip.filter(|f| !stream.declares(f))),
            Route::Field(by) => match by.fast(tape) {
                Some(routed) => routed,
                None => return false,
            },
            Route::Subject {
                registry,
                name,
                field,
                ..
            } => match registry.get(name).filter(|s| s.has_fast_path()) {
                Some(stream) => (stream, Some(*field).filter(|f| !stream.declares(f))),
                None => return false,
            },
            Route::Webhook(_) => return false,
        };
        let Some(row) = stream.fast_row(tape, text, skip, source, index, received_at) else {
            return false;
        };
        let events = self.group(Some(stream));
        // A `\u0000` is an escape: in a text the reader found no escape in, there is no
        // NUL to search for.
        let json = if tape.escapes() { text } else { "" };
        if events
            .dialect
            .is_some_and(|d| d.refused_value(stream, &row, Some(json)).is_some())
        {
            return false;
        }
        events.row_bytes += row.memory_size();
        events.rows.push(row);
        true
    }

    /// Sets a whole body aside as one dead letter (index 0): an unknown stream, a body
    /// that is not what its headers say.
    pub fn set_aside(
        &mut self,
        stream: Option<&Arc<Stream>>,
        raw: &[u8],
        stage: Stage,
        error: String,
        source: &Arc<str>,
        received_at: DateTime<Utc>,
    ) {
        let err = EventError::whole(0, stage, error);
        self.group(stream)
            .reject(stream, raw, err, source, received_at);
    }

    /// Keeps a dead letter made before (read back from the spool).
    pub fn keep(&mut self, letter: DeadLetter) {
        let events = self.group(None);
        events.letter_bytes += letter.memory_size();
        events.letters.push(letter);
    }

    /// Events filed (rows and dead letters).
    pub fn len(&self) -> usize {
        self.groups
            .iter()
            .map(|(_, e)| e.rows.len() + e.letters.len())
            .sum()
    }

    /// Bytes the events filed count against the queues.
    pub fn bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|(_, e)| e.row_bytes + e.letter_bytes)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why each dead-lettered event was refused, taken out of the groups.
    pub fn take_errors(&mut self) -> Vec<EventError> {
        let mut errors = Vec::new();
        for (_, events) in &mut self.groups {
            errors.append(&mut events.errors);
        }
        errors
    }

    /// Each stream's events so far.
    pub fn groups(&self) -> impl Iterator<Item = (Option<&Arc<Stream>>, &RequestEvents)> {
        self.groups.iter().map(|(s, e)| (s.as_ref(), e))
    }

    /// Each stream's events (`None`: those that found no stream), in the order first
    /// seen.
    pub fn into_groups(self) -> Vec<(Option<Arc<Stream>>, RequestEvents)> {
        self.groups
    }

    /// Every group's events as one (for events of a single stream).
    pub fn into_one(self) -> RequestEvents {
        let mut groups = self.groups.into_iter().map(|(_, events)| events);
        let mut one = groups.next().unwrap_or_default();
        for mut events in groups {
            one.rows.append(&mut events.rows);
            one.letters.append(&mut events.letters);
            one.errors.append(&mut events.errors);
            one.row_bytes += events.row_bytes;
            one.letter_bytes += events.letter_bytes;
        }
        one
    }

    fn group(&mut self, stream: Option<&Arc<Stream>>) -> &mut RequestEvents {
        let same = |(s, _): &(Option<Arc<Stream>>, RequestEvents)| match (s, stream) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.name == b.name,
            (None, None) => true,
            _ => false,
        };
        let i = match self.groups.iter().position(same) {
            Some(i) => i,
            None => {
                let events = RequestEvents {
                    max_payload: self.max_payload,
                    dialect: self.dialect,
                    token: self.token.clone(),
                    ..RequestEvents::default()
                };
                self.groups.push((stream.cloned(), events));
                self.groups.len() - 1
            }
        };
        &mut self.groups[i].1
    }
}

/// The events of one request for one stream, sorted into rows and dead letters.
#[derive(Debug)]
pub struct RequestEvents {
    pub rows: Vec<Row>,
    pub letters: Vec<DeadLetter>,
    pub errors: Vec<EventError>,
    /// Bytes the rows count against the stream's queue ([`Row::memory_size`]).
    pub row_bytes: usize,
    /// Bytes the dead letters count against the dead-letter queue.
    pub letter_bytes: usize,
    /// Most payload bytes a dead letter keeps (`dead_letters.max_payload_bytes`).
    pub max_payload: usize,
    /// The database the rows go to, to set aside values it is known to refuse.
    pub dialect: Option<Dialect>,
    /// The name of the ingest token the request came with (`[auth]`), for metrics.
    pub token: Option<Arc<str>>,
}

impl Default for RequestEvents {
    fn default() -> Self {
        RequestEvents {
            rows: Vec::new(),
            letters: Vec::new(),
            errors: Vec::new(),
            row_bytes: 0,
            letter_bytes: 0,
            max_payload: DEFAULT_MAX_PAYLOAD_BYTES,
            dialect: None,
            token: None,
        }
    }
}

impl RequestEvents {
    /// Rows alone (a piece of a larger filing).
    pub fn of_rows(rows: Vec<Row>) -> RequestEvents {
        RequestEvents {
            row_bytes: rows.iter().map(Row::memory_size).sum(),
            rows,
            ..RequestEvents::default()
        }
    }

    /// Dead letters alone (a piece of a larger filing).
    pub fn of_letters(letters: Vec<DeadLetter>) -> RequestEvents {
        RequestEvents {
            letter_bytes: letters.iter().map(DeadLetter::memory_size).sum(),
            letters,
            ..RequestEvents::default()
        }
    }

    /// Sets an event aside as a dead letter of `stream` with `err`'s stage and reason.
    /// `raw` is the text as received: a stream that treats personal fields keeps only
    /// its length and digest.
    fn reject(
        &mut self,
        stream: Option<&Arc<Stream>>,
        raw: &[u8],
        err: EventError,
        source: &Arc<str>,
        received_at: DateTime<Utc>,
    ) {
        if let Some(treating) = stream.filter(|s| s.privacy.is_some()) {
            let letter = DeadLetter::withheld(
                &treating.name,
                err.stage,
                &err.error,
                raw,
                source,
                received_at,
                err.index,
            );
            return self.push_letter(letter, err);
        }
        self.reject_as(stream, raw, err, source, received_at);
    }

    /// Sets an event aside as a dead letter with `payload` (for a treating stream, the
    /// treated event's text).
    fn reject_as(
        &mut self,
        stream: Option<&Arc<Stream>>,
        payload: &[u8],
        err: EventError,
        source: &Arc<str>,
        received_at: DateTime<Utc>,
    ) {
        let letter = self.letter(stream, payload, &err, source, received_at);
        self.push_letter(letter, err);
    }

    /// The dead letter of `err` with `payload`.
    fn letter(
        &self,
        stream: Option<&Arc<Stream>>,
        payload: &[u8],
        err: &EventError,
        source: &Arc<str>,
        received_at: DateTime<Utc>,
    ) -> DeadLetter {
        DeadLetter::new(
            stream.map(|s| s.name.as_str()),
            err.stage,
            &err.error,
            payload,
            source,
            received_at,
            err.index,
            self.max_payload,
        )
    }

    fn push_letter(&mut self, letter: DeadLetter, err: EventError) {
        self.letter_bytes += letter.memory_size();
        self.letters.push(letter);
        self.errors.push(err);
    }

    /// Validates one parsed event (its text `raw`, `treated` already or not) against
    /// `stream` and files it as a row or, with `letter`'s payload and hint, a dead
    /// letter (a treating stream's holds the treated event instead).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        stream: &Arc<Stream>,
        (raw, treated): (&str, bool),
        value: Value,
        (letter_payload, hint): (&[u8], Option<&str>),
        index: usize,
        source: &Arc<str>,
        received_at: DateTime<Utc>,
    ) {
        let row = stream
            .to_row(
                value,
                raw.into(),
                treated,
                source.clone(),
                index,
                received_at,
            )
            .and_then(|row| {
                match self
                    .dialect
                    .and_then(|d| d.refused_value(stream, &row, None))
                {
                    None => Ok(row),
                    Some((pointer, error)) => Err(crate::schema::Rejection {
                        stage: Stage::Write,
                        error: format!("at {pointer}: {error}"),
                        pointer: Some(pointer),
                        payload: row.treated.then_some(row.raw),
                    }),
                }
            });
        match row {
            Ok(row) => {
                self.row_bytes += row.memory_size();
                self.rows.push(row);
            }
            Err(rejection) => {
                let err = EventError {
                    index,
                    stage: rejection.stage,
                    error: match hint {
                        Some(hint) => format!("{}; {hint}", rejection.error),
                        None => rejection.error,
                    },
                    pointer: rejection.pointer,
                };
                match &rejection.payload {
                    Some(treated) => {
                        let letter = self.letter(
                            Some(stream),
                            treated.as_bytes(),
                            &err,
                            source,
                            received_at,
                        );
                        self.push_letter(letter.treated(), err);
                    }
                    None => self.reject_as(Some(stream), letter_payload, err, source, received_at),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Streams `order` (declares `kind`) and `click` (does not), a webhook `shop` routed
    /// by `/topic`, and `route`'s answer to `value`.
    struct Fixture {
        _dir: tempfile::TempDir,
        registry: Registry,
        hooks: crate::webhook::Webhooks,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let schema = |props: Value| json!({"type": "object", "properties": props}).to_string();
        std::fs::write(
            dir.path().join("order.json"),
            schema(json!({"id": {"type": "integer"}, "kind": {"type": "string"}})),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("click.json"),
            schema(json!({"id": {"type": "integer"}})),
        )
        .unwrap();
        let toml = format!(
            "schemas_dir = {:?}\n[webhooks.shop]\nverify = \"none\"\n[webhooks.shop.route]\npointer = \"/topic\"\nstreams = {{ \"orders/create\" = \"order\" }}\n",
            dir.path().display().to_string()
        );
        let config = crate::config::Config::from_toml_and_env(&toml, "test", []).unwrap();
        let registry = Registry::load(config.streams_config()).unwrap();
        let hooks = crate::webhook::Webhooks::load(&config.webhooks, &registry).unwrap();
        Fixture {
            _dir: dir,
            registry,
            hooks,
        }
    }

    /// The stream `route` picks for `value`, and the value it files.
    fn routed(route: &Route, value: Value) -> Result<(String, Value), String> {
        route
            .route(value, 0)
            .map(|(stream, value, _)| (stream.name.clone(), value))
    }

    #[test]
    fn a_field_names_the_stream_and_is_removed_unless_declared() {
        let f = fixture();
        let by = |default| Route::Field(ByField::new(&f.registry, "kind", default));
        assert_eq!(
            routed(&by(None), json!({"kind": "click", "id": 1})),
            Ok(("click".into(), json!({"id": 1})))
        );
        assert_eq!(
            routed(&by(None), json!({"kind": "order", "id": 1})),
            Ok(("order".into(), json!({"kind": "order", "id": 1})))
        );
        assert_eq!(
            routed(&by(Some("click")), json!({"id": 2})),
            Ok(("click".into(), json!({"id": 2})))
        );
        let err = routed(&by(None), json!({"id": 2})).unwrap_err();
        assert!(
            err.contains("no \"kind\" field") && err.contains("default_stream"),
            "{err}"
        );
        let err = routed(&by(None), json!({"kind": 7})).unwrap_err();
        assert!(err.contains("must be a string naming a stream"), "{err}");
        let err = routed(&by(None), json!({"kind": "nope"})).unwrap_err();
        assert!(err.contains("unknown stream `nope`"), "{err}");
        let err = routed(&by(None), json!([1])).unwrap_err();
        assert!(err.contains("not a JSON object"), "{err}");
    }

    #[test]
    fn a_subject_names_the_stream_and_the_routing_field_goes_as_for_tcp() {
        let f = fixture();
        let subject = |name| Route::Subject {
            registry: &f.registry,
            subject: "events.x",
            name,
            field: "kind",
        };
        assert_eq!(
            routed(&subject("click"), json!({"kind": "order", "id": 1})),
            Ok(("click".into(), json!({"id": 1})))
        );
        let err = routed(&subject("nope"), json!({})).unwrap_err();
        assert!(err.contains("`nope` (from the subject events.x)"), "{err}");
    }

    #[test]
    fn filing_again_removes_the_routing_field_only_of_events_routed_by_field() {
        let f = fixture();
        let click = f.registry.get("click").unwrap();
        let event = json!({"kind": "click", "id": 1});
        for (came_from, kept) in [
            ("tcp 1.2.3.4:5", false),
            ("jetstream events.click", false),
            ("http 1.2.3.4:5", true),
            ("webhook shop 1.2.3.4:5", true),
        ] {
            let (_, value) =
                routed(&Route::again(click, "kind", came_from), event.clone()).unwrap();
            assert_eq!(value.get("kind").is_some(), kept, "{came_from}");
        }
        let (_, value) = routed(&Route::to(click), event.clone()).unwrap();
        assert_eq!(value, event);
    }

    #[test]
    fn the_fast_path_leaves_out_the_routing_field_as_the_general_path_does() {
        let f = fixture();
        let click = f.registry.get("click").unwrap();
        let order = f.registry.get("order").unwrap();
        assert!(click.has_fast_path() && order.has_fast_path());
        let source: Arc<str> = "tcp 1.2.3.4:5".into();
        let now = Utc::now();
        let text = br#"{"kind":"click","id":7,"x":1}"#;
        // What the general path makes of the event once the field is removed or kept.
        let general = |stream: &Arc<Stream>, strip: bool| {
            let mut value = parse_object(text).unwrap();
            if strip {
                value.as_object_mut().unwrap().remove("kind");
            }
            let raw = std::str::from_utf8(text).unwrap();
            let row = stream
                .to_row(value, raw.into(), false, source.clone(), 0, now)
                .unwrap();
            (row.cells, row.extra)
        };
        let filed = |route: &Route| {
            let mut filing = Filing::new(1000, None);
            filing.file(route, &source, now, [Event::text(0, text)]);
            let mut rows = filing.into_one().rows;
            assert_eq!(rows.len(), 1);
            let row = rows.remove(0);
            (row.cells, row.extra)
        };
        let subject = |name| Route::Subject {
            registry: &f.registry,
            subject: "events.x",
            name,
            field: "kind",
        };
        assert_eq!(filed(&subject("click")), general(click, true));
        assert_eq!(filed(&subject("order")), general(order, false));
        assert_eq!(
            filed(&Route::again(click, "kind", "tcp 1.2.3.4:5")),
            general(click, true)
        );
        assert_eq!(
            filed(&Route::again(click, "kind", "http 1.2.3.4:5")),
            general(click, false)
        );
        assert!(filed(&subject("click"))
            .1
            .is_some_and(|extra| !extra.contains("kind")));
        // And the fast path itself takes the event, with the field left out.
        let raw = std::str::from_utf8(text).unwrap();
        let tape = Tape::read(raw).unwrap();
        let fast = click
            .fast_row(&tape, raw, Some("kind"), &source, 0, now)
            .unwrap();
        assert_eq!((fast.cells, fast.extra), general(click, true));
    }

    #[test]
    fn a_webhook_routes_by_its_map_and_says_what_it_maps() {
        let f = fixture();
        let headers = HeaderMap::new();
        let verified = Verified::default();
        let route = Route::Webhook(ByWebhook {
            hook: f.hooks.get("shop").unwrap(),
            headers: &headers,
            verified: &verified,
            batch: false,
            form: None,
        });
        assert_eq!(
            routed(&route, json!({"topic": "orders/create"})).map(|(s, _)| s),
            Ok("order".into())
        );
        let err = routed(&route, json!({"topic": "x"})).unwrap_err();
        assert!(err.contains("maps to no stream"), "{err}");
    }

    /// `lines` filed as one TCP chunk, routed by their field `kind`, else to `default`.
    fn file_lines(f: &Fixture, lines: &[&[u8]], default: Option<&str>) -> Filing {
        let mut filing = Filing::new(1000, None);
        let source: Arc<str> = "tcp 1.2.3.4:5".into();
        let route = Route::Field(ByField::new(&f.registry, "kind", default));
        let events = lines.iter().enumerate().map(|(i, raw)| Event::text(i, raw));
        filing.file(&route, &source, Utc::now(), events);
        filing
    }

    #[test]
    fn each_stream_gets_its_rows_and_what_fails_is_a_dead_letter_with_its_stage() {
        let f = fixture();
        let lines: [&[u8]; 5] = [
            br#"{"kind":"click","id":1}"#,
            br#"{"kind":"order","id":2}"#,
            br#"{"kind":"click","id":"x"}"#,
            b"not json",
            br#"{"id":3}"#,
        ];
        let mut filing = file_lines(&f, &lines, None);
        assert_eq!(filing.len(), 5);
        let stages: Vec<(usize, Stage)> = filing
            .take_errors()
            .iter()
            .map(|e| (e.index, e.stage))
            .collect();
        assert_eq!(
            stages,
            [(2, Stage::Validate), (3, Stage::Parse), (4, Stage::Route)]
        );
        let groups = filing.into_groups();
        let summary: Vec<(Option<String>, usize, usize)> = groups
            .iter()
            .map(|(s, e)| {
                (
                    s.as_ref().map(|s| s.name.clone()),
                    e.rows.len(),
                    e.letters.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Some("click".into()), 1, 1),
                (Some("order".into()), 1, 0),
                (None, 0, 2)
            ]
        );
    }

    /// The fast path remembers the stream it routed to last: lines that take turns
    /// between streams (one naming its stream with an escaped key, one with none, so
    /// the default) each reach their own, with the field kept or left out as their
    /// stream says.
    #[test]
    fn lines_that_take_turns_between_streams_each_reach_their_own() {
        let f = fixture();
        let lines: [&[u8]; 5] = [
            br#"{"kind":"click","id":1}"#,
            br#"{"kind":"order","id":2}"#,
            br#"{"ki\u006ed":"click","id":3}"#,
            br#"{"id":4}"#,
            br#"{"kind":"click","id":5}"#,
        ];
        let mut filing = file_lines(&f, &lines, Some("order"));
        assert!(filing.take_errors().is_empty());
        let filed: Vec<(String, Vec<String>)> = filing
            .into_groups()
            .iter()
            .map(|(s, e)| {
                let rows = e.rows.iter().map(|r| format!("{:?}", r.cells)).collect();
                (s.as_ref().map_or(String::new(), |s| s.name.clone()), rows)
            })
            .collect();
        assert_eq!(
            filed,
            [
                (
                    "click".to_owned(),
                    vec!["[Int(1)]".into(), "[Int(3)]".into(), "[Int(5)]".into()]
                ),
                (
                    "order".to_owned(),
                    vec!["[Int(2), Text(\"order\")]".into(), "[Int(4), Null]".into()]
                )
            ]
        );
    }
}
