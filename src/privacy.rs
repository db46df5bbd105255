//! Privacy: the `x-sluice-privacy` treatment of personal fields (`hash`, `mask`, `drop`)
//! and the `[privacy]` settings (the HMAC key, what becomes of undeclared properties).
//!
//! In: a stream's JSON Schema, read once at start-up into a [`Plan`] (which properties,
//! at which depth, get which treatment), and per event its parsed value. Out: the value
//! treated in place, and what was replaced, so an error message that quoted a raw value
//! can be scrubbed. Filing applies the plan to every event of a treated stream after
//! validation and before the row, its text or its dead letter exist, so nothing
//! downstream (tables, dead letters, the spool's files) ever sees a raw value.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

/// The schema keyword that asks for a treatment.
pub const ANNOTATION: &str = "x-sluice-privacy";
/// Shortest HMAC key accepted, in bytes.
const MIN_KEY_BYTES: usize = 16;
/// Deepest nesting of properties and items a plan follows.
const MAX_DEPTH: usize = 16;

/// What becomes of one property's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Treatment {
    /// Lowercase hex HMAC-SHA256 of the value's text (a string's UTF-8, anything else
    /// its compact JSON): the same value always gives the same hash, so joins and
    /// counts still work.
    Hash,
    /// Validated, then removed: no column, not in `_extra`.
    Drop,
    /// All but the last 4 characters replaced by `*` (4 or fewer: all of them).
    Mask,
}

impl Treatment {
    pub fn as_str(self) -> &'static str {
        match self {
            Treatment::Hash => "hash",
            Treatment::Drop => "drop",
            Treatment::Mask => "mask",
        }
    }

    fn from_name(name: &str) -> Option<Treatment> {
        match name {
            "hash" => Some(Treatment::Hash),
            "drop" => Some(Treatment::Drop),
            "mask" => Some(Treatment::Mask),
            _ => None,
        }
    }
}

/// `[privacy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Environment variable holding the HMAC key for `hash` (at least 16 bytes).
    pub key_env: Option<String>,
    /// A file holding the HMAC key (surrounding whitespace ignored).
    pub key_file: Option<PathBuf>,
    /// For streams whose schema treats any property: whether undeclared properties are
    /// kept in `_extra` (`"keep"`, the default) or removed before anything is stored
    /// (`"drop"`).
    #[serde(default)]
    pub extra: ExtraPolicy,
    /// Whether the file beside the database may be created (`check` does not).
    #[serde(skip)]
    pub creation: KeyCreation,
}

/// `[privacy] extra`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraPolicy {
    #[default]
    Keep,
    Drop,
}

/// Whether loading the key may create the key file beside an SQLite database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyCreation {
    /// `serve`, `replay`: create it when a schema first asks for `hash`.
    #[default]
    Create,
    /// `check`, which changes nothing: hash with a throwaway key, saying so.
    Pretend,
}

impl PrivacyConfig {
    /// Cross-field checks: one source of the key at most.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_env.is_some() && self.key_file.is_some() {
            return Err("[privacy]: set key_env or key_file, not both".into());
        }
        Ok(())
    }

    /// Where the key comes from, for messages.
    fn source(&self, beside_database: Option<&std::path::Path>) -> String {
        match (&self.key_env, &self.key_file, beside_database) {
            (Some(var), _, _) => format!("[privacy] key_env = {var:?}"),
            (None, Some(path), _) => format!("[privacy] key_file = {:?}", path.display()),
            (None, None, Some(path)) => {
                format!("the key file beside the database, {}", path.display())
            }
            (None, None, None) => "no key".into(),
        }
    }

    /// The key, if one is configured (or kept in `beside_database`); an error
    /// names what to fix. The file beside the database is made (or, for `check`,
    /// pretended) only when `needed`.
    pub fn key(
        &self,
        beside_database: Option<&std::path::Path>,
        needed: bool,
    ) -> anyhow::Result<Option<Arc<Key>>> {
        let what = self.source(beside_database);
        let bytes = match (&self.key_env, &self.key_file, beside_database) {
            (Some(var), _, _) => std::env::var(var)
                .with_context(|| format!("{what}: the variable is not set"))?
                .into_bytes(),
            (None, Some(path), _) => {
                std::fs::read(path).with_context(|| format!("{what}: cannot read it"))?
            }
            (None, None, Some(path)) => match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !needed => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.creation {
                    KeyCreation::Create => create_key_file(path)?,
                    KeyCreation::Pretend => {
                        println!(
                            "-- {} does not exist yet: start-up creates it with a random key",
                            path.display()
                        );
                        random_key()?
                    }
                },
                Err(e) => return Err(e).with_context(|| format!("{what}: cannot read it")),
            },
            (None, None, None) => return Ok(None),
        };
        let key = bytes.trim_ascii();
        anyhow::ensure!(
            key.len() >= MIN_KEY_BYTES,
            "{what}: the key is shorter than {MIN_KEY_BYTES} bytes; use a long random one (e.g. openssl rand -hex 32)"
        );
        Ok(Some(Arc::new(Key::new(key))))
    }
}

/// The key, read once and only when a schema first needs it.
pub struct Keys<'a> {
    config: &'a PrivacyConfig,
    beside_database: Option<PathBuf>,
    loaded: Option<Option<Arc<Key>>>,
}

impl<'a> Keys<'a> {
    /// The key of `config`, or with neither key setting and the embedded SQLite
    /// database at `database_url`, the key file kept beside the database file
    /// (`sluice.db` → `sluice.db.privacy-key`), created the first time a schema asks
    /// for `hash`. A shared database (PostgreSQL, MySQL) gets none: every instance
    /// writing to it must hash with the same key, so one is never made up.
    pub fn new(config: &'a PrivacyConfig, database_url: &str) -> Keys<'a> {
        Keys {
            config,
            beside_database: key_beside(database_url),
            loaded: None,
        }
    }

    /// The key (`needed`: a schema asks for `hash`, so the file beside an SQLite
    /// database is created if missing).
    pub fn get(&mut self, needed: bool) -> anyhow::Result<Option<Arc<Key>>> {
        match &self.loaded {
            Some(key) if key.is_some() || !needed => Ok(key.clone()),
            _ => {
                let key = self.config.key(self.beside_database.as_deref(), needed)?;
                self.loaded = Some(key.clone());
                Ok(key)
            }
        }
    }
}

/// The key file beside an SQLite database file; none for an in-memory or shared
/// database.
fn key_beside(url: &str) -> Option<PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") || url.contains("mode=memory") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    let name = file.file_name()?.to_str()?;
    if name.is_empty() || name.starts_with(':') {
        return None;
    }
    Some(file.with_file_name(format!("{name}.privacy-key")))
}

/// 32 random bytes, hex: a new key's text.
fn random_key() -> anyhow::Result<Vec<u8>> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("cannot draw a random key: {e}"))?;
    Ok(hex::encode(bytes).into_bytes())
}

/// Creates `path` with a new random key, readable by its owner only; if another
/// process created it first, reads theirs.
fn create_key_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let key = random_key()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(&key)
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .with_context(|| {
                    format!("cannot write the new privacy key to {}", path.display())
                })?;
            tracing::warn!(
                file = %path.display(),
                "A schema asks for \"hash\" and no [privacy] key is set: Sluice created a random key beside the SQLite database. Keep it with the database (and back it up): another key gives other hashes."
            );
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path)
            .with_context(|| format!("cannot read the privacy key {}", path.display())),
        Err(e) => {
            Err(e).with_context(|| format!("cannot create the privacy key file {}", path.display()))
        }
    }
}

/// The HMAC key of `hash`, ready to use.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        // HMAC takes a key of any length.
        Key(Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length"))
    }

    /// Lowercase hex HMAC-SHA256 of `text`.
    pub fn hash(&self, text: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(text);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// `text` with all but its last 4 characters replaced by `*` (4 or fewer: all).
pub fn mask(text: &str) -> String {
    let n = text.chars().count();
    let keep = if n > 4 { 4 } else { 0 };
    let mut out = "*".repeat(n - keep);
    out.extend(text.chars().skip(n - keep));
    out
}

/// One step of a rule's path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A property of an object.
    Property(String),
    /// Every item of an array.
    Items,
}

/// One treated property: where it is in an event, and its treatment.
#[derive(Debug, Clone)]
pub struct Rule {
    path: Vec<Step>,
    pub treatment: Treatment,
}

impl Rule {
    /// Where the rule applies, as a JSON pointer with `*` for every array item
    /// (`/customer/email`, `/items/*/card`).
    pub fn pointer(&self) -> String {
        let mut out = String::new();
        for step in &self.path {
            out.push('/');
            match step {
                Step::Property(p) => out.push_str(&p.replace('~', "~0").replace('/', "~1")),
                Step::Items => out.push('*'),
            }
        }
        out
    }

    /// The top-level property the rule lies under.
    pub fn top(&self) -> Option<&str> {
        match self.path.first() {
            Some(Step::Property(p)) => Some(p),
            _ => None,
        }
    }

    /// The column that holds the treated value: the property's own for a top-level
    /// `hash` or `mask`, the JSON column of the top-level property for a nested one;
    /// none for a top-level `drop`.
    pub fn column(&self) -> Option<&str> {
        match (self.is_top_level(), self.treatment) {
            (true, Treatment::Drop) => None,
            _ => self.top(),
        }
    }

    /// One line for people: `/email: hash (column email)`.
    pub fn describe(&self) -> String {
        let place = match (self.column(), self.is_top_level()) {
            (None, _) => "no column, not in _extra".to_owned(),
            (Some(c), true) => format!("column {c}"),
            (Some(c), false) if self.treatment == Treatment::Drop => {
                format!("removed from JSON column {c}")
            }
            (Some(c), false) => format!("inside JSON column {c}"),
        };
        format!("{}: {} ({place})", self.pointer(), self.treatment.as_str())
    }

    /// Whether the rule treats the top-level property itself (a column's treatment).
    pub fn is_top_level(&self) -> bool {
        self.path.len() == 1
    }
}

/// Values a treatment replaced, so a message that quotes them can be scrubbed (kept
/// only when asked for: a valid event's treatment records nothing).
#[derive(Debug, Default)]
pub struct Replaced {
    pairs: Vec<(String, String)>,
    recording: bool,
}

impl Replaced {
    fn push(&mut self, raw: impl FnOnce() -> String, treated: &str) {
        if self.recording {
            self.pairs.push((raw(), treated.to_owned()));
        }
    }

    /// `message` with every replaced value (as written in the event or quoted in JSON)
    /// written as its treated form.
    pub fn scrub(&self, message: &str) -> String {
        let mut out = message.to_owned();
        // Longest first, so a value that contains another is replaced whole.
        let mut pairs: Vec<&(String, String)> = self.pairs.iter().collect();
        pairs.sort_by_key(|(raw, _)| std::cmp::Reverse(raw.len()));
        for (raw, treated) in pairs {
            if raw.is_empty() {
                continue;
            }
            let quoted = Value::from(raw.as_str()).to_string();
            let inner = &quoted[1..quoted.len() - 1];
            if inner != raw {
                out = out.replace(inner, treated);
            }
            out = out.replace(raw.as_str(), treated);
        }
        out
    }
}

/// A stream's treatment: its rules, the key for `hash`, and the undeclared properties
/// to remove (with `[privacy] extra = "drop"`).
#[derive(Debug, Clone)]
pub struct Plan {
    rules: Vec<Rule>,
    key: Option<Arc<Key>>,
    /// The schema's top-level properties, when undeclared ones are removed.
    declared: Option<BTreeSet<String>>,
}

impl Plan {
    /// The rules of `schema` (none: `Ok(None)`). `key` is required when a rule hashes;
    /// errors name the property (`Err((property, reason))`).
    pub fn of_schema(
        schema: &Value,
        keys: &mut Keys<'_>,
        extra: ExtraPolicy,
    ) -> Result<Option<Plan>, (Option<String>, String)> {
        let mut rules = Vec::new();
        let mut reached = BTreeSet::new();
        if schema.get(ANNOTATION).is_some() {
            return Err((None, format!("{ANNOTATION} applies to properties, not to the whole event; put it on each property to treat")));
        }
        collect(
            schema,
            "",
            schema,
            &mut Vec::new(),
            &mut rules,
            &mut reached,
        )?;
        let mut everywhere = Vec::new();
        annotations(schema, String::new(), &mut everywhere);
        if let Some(lost) = everywhere.iter().find(|p| !reached.contains(*p)) {
            return Err((None, format!("{ANNOTATION} at {lost} is not on a property Sluice treats: it must sit on a property (top-level, or nested in the properties of an object or the items of an array), not inside anyOf, oneOf, allOf, if or a definition no property uses")));
        }
        if rules.is_empty() {
            return Ok(None);
        }
        let hashing = rules.iter().find(|r| r.treatment == Treatment::Hash);
        let key = keys.get(hashing.is_some()).map_err(|e| {
            (
                hashing.and_then(Rule::top).map(str::to_owned),
                format!("{e:#}"),
            )
        })?;
        if let (Some(rule), None) = (hashing, &key) {
            return Err((
                rule.top().map(str::to_owned),
                format!("{} asks for \"hash\" but no key is set: set [privacy] key_env (or key_file) to a long random secret, the same for every instance writing to this database", rule.pointer()),
            ));
        }
        let declared = (extra == ExtraPolicy::Drop).then(|| {
            schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default()
        });
        Ok(Some(Plan {
            rules,
            key,
            declared,
        }))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The treatment of top-level property `name` itself, if any.
    pub fn of_property(&self, name: &str) -> Option<Treatment> {
        self.rules
            .iter()
            .find(|r| r.is_top_level() && r.top() == Some(name))
            .map(|r| r.treatment)
    }

    /// Whether any rule lies under top-level property `name` (itself or nested).
    pub fn touches(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.top() == Some(name))
    }

    /// Treats `event` in place. A value of any type is treated (so a dead letter of an
    /// invalid event is treated too); `null` stays `null`.
    pub fn treat(&self, event: &mut Value) {
        self.treat_into(event, &mut Replaced::default());
    }

    /// [`Plan::treat`], returning what was replaced (for an error message to scrub).
    pub fn treat_recording(&self, event: &mut Value) -> Replaced {
        let mut replaced = Replaced {
            recording: true,
            ..Replaced::default()
        };
        self.treat_into(event, &mut replaced);
        replaced
    }

    fn treat_into(&self, event: &mut Value, replaced: &mut Replaced) {
        if let (Some(declared), Value::Object(map)) = (&self.declared, &mut *event) {
            let undeclared: Vec<String> = map
                .keys()
                .filter(|k| !declared.contains(*k))
                .cloned()
                .collect();
            for k in undeclared {
                if let Some(v) = map.remove(&k) {
                    replaced.push(|| text_of(&v), "…");
                }
            }
        }
        for rule in &self.rules {
            self.apply(&rule.path, rule.treatment, event, replaced);
        }
    }

    fn apply(&self, path: &[Step], treatment: Treatment, at: &mut Value, out: &mut Replaced) {
        let Some((step, rest)) = path.split_first() else {
            return;
        };
        match (step, at) {
            (Step::Items, Value::Array(items)) => {
                for item in items {
                    self.apply(rest, treatment, item, out);
                }
            }
            (Step::Property(name), Value::Object(map)) if rest.is_empty() => {
                match treatment {
                    Treatment::Drop => {
                        if let Some(v) = map.remove(name) {
                            out.push(|| text_of(&v), "…");
                        }
                    }
                    Treatment::Hash | Treatment::Mask => {
                        if let Some(v) = map.get_mut(name) {
                            if !v.is_null() {
                                // A string's own text; anything else's compact JSON.
                                let json;
                                let raw = match &*v {
                                    Value::String(s) => s.as_str(),
                                    other => {
                                        json = other.to_string();
                                        json.as_str()
                                    }
                                };
                                let treated = match (treatment, &self.key) {
                                    (Treatment::Hash, Some(key)) => key.hash(raw.as_bytes()),
                                    // A plan that hashes always has a key (of_schema).
                                    (Treatment::Hash, None) => "*".repeat(64),
                                    _ => mask(raw),
                                };
                                out.push(|| raw.to_owned(), &treated);
                                *v = Value::String(treated);
                            }
                        }
                    }
                }
            }
            (Step::Property(name), Value::Object(map)) => {
                if let Some(v) = map.get_mut(name) {
                    self.apply(rest, treatment, v, out);
                }
            }
            _ => {}
        }
    }

    /// `schema` as an already treated event must match: each treated property accepts
    /// any value (`hash` and `mask` replaced it with a string) and is no longer
    /// required (`drop` removed it).
    pub fn relaxed_schema(&self, schema: &Value) -> Value {
        let mut relaxed = schema.clone();
        for rule in &self.rules {
            relax(schema, &mut relaxed, &rule.path);
        }
        relaxed
    }
}

/// The text a treatment works on: a string's own, anything else's compact JSON.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Follows `schema`'s properties and items from `sub` (at `path` in events, at
/// `pointer` in the schema document), collecting a rule per annotation and the
/// schema pointers of the annotations reached.
fn collect(
    root: &Value,
    pointer: &str,
    sub: &Value,
    path: &mut Vec<Step>,
    rules: &mut Vec<Rule>,
    reached: &mut BTreeSet<String>,
) -> Result<(), (Option<String>, String)> {
    let (pointer, sub) = resolve(root, pointer, sub);
    let top = |path: &[Step]| match path.first() {
        Some(Step::Property(p)) => Some(p.clone()),
        _ => None,
    };
    if !path.is_empty() {
        if let Some(value) = sub.get(ANNOTATION) {
            reached.insert(pointer.clone());
            let treatment = value
                .as_str()
                .and_then(Treatment::from_name)
                .ok_or_else(|| {
                    (
                        top(path),
                        format!("{ANNOTATION} must be \"hash\", \"drop\" or \"mask\", not {value}"),
                    )
                })?;
            rules.push(Rule {
                path: path.clone(),
                treatment,
            });
            return Ok(());
        }
    }
    if path.len() >= MAX_DEPTH {
        return Ok(());
    }
    if let Some(Value::Object(props)) = sub.get("properties") {
        for (name, prop) in props {
            path.push(Step::Property(name.clone()));
            let at = format!("{pointer}/properties/{}", escape(name));
            collect(root, &at, prop, path, rules, reached)?;
            path.pop();
        }
    }
    if let Some(items @ Value::Object(_)) = sub.get("items") {
        path.push(Step::Items);
        collect(
            root,
            &format!("{pointer}/items"),
            items,
            path,
            rules,
            reached,
        )?;
        path.pop();
    }
    Ok(())
}

/// A JSON pointer segment.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// `sub` (at `pointer`) after following local `$ref`s, and where it is.
fn resolve<'a>(root: &'a Value, pointer: &str, sub: &'a Value) -> (String, &'a Value) {
    let (mut pointer, mut current) = (pointer.to_owned(), sub);
    for _ in 0..8 {
        let Some(target) = current
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        else {
            break;
        };
        match root.pointer(target) {
            Some(found) => (pointer, current) = (target.to_owned(), found),
            None => break,
        }
    }
    (pointer, current)
}

/// The schema pointers of every object holding the annotation.
fn annotations(at: &Value, pointer: String, out: &mut Vec<String>) {
    match at {
        Value::Object(map) => {
            if map.contains_key(ANNOTATION) {
                out.push(pointer.clone());
            }
            for (k, v) in map {
                if k != ANNOTATION {
                    annotations(v, format!("{pointer}/{}", escape(k)), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                annotations(v, format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Relaxes the schema at `path` (of events) in `schema`: the treated property accepts
/// any value and is not required. A local `$ref` on the way is replaced by its target
/// (read from `root`, the schema as written), so the relaxation stays local.
fn relax(root: &Value, schema: &mut Value, path: &[Step]) {
    let Some((step, rest)) = path.split_first() else {
        return;
    };
    let target = {
        let (_, target) = resolve(root, "", schema);
        (!std::ptr::eq(target, &*schema)).then(|| target.clone())
    };
    if let Some(target) = target {
        *schema = target;
    }
    let Value::Object(map) = schema else { return };
    match step {
        Step::Property(name) => {
            if rest.is_empty() {
                if let Some(Value::Array(required)) = map.get_mut("required") {
                    required.retain(|r| r.as_str() != Some(name));
                }
                if let Some(Value::Object(props)) = map.get_mut("properties") {
                    props.insert(name.clone(), Value::Object(Map::new()));
                }
            } else if let Some(prop) = map
                .get_mut("properties")
                .and_then(Value::as_object_mut)
                .and_then(|p| p.get_mut(name))
            {
                relax(root, prop, rest);
            }
        }
        Step::Items => {
            if let Some(items) = map.get_mut("items") {
                relax(root, items, rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keyed() -> PrivacyConfig {
        std::env::set_var("SLUICE_PRIVACY_UNIT_TEST_KEY", "0123456789abcdef");
        PrivacyConfig {
            key_env: Some("SLUICE_PRIVACY_UNIT_TEST_KEY".into()),
            ..PrivacyConfig::default()
        }
    }

    fn plan(schema: Value) -> Plan {
        let config = keyed();
        Plan::of_schema(&schema, &mut Keys::new(&config, ""), ExtraPolicy::Keep)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn masks_keep_the_last_four_characters() {
        assert_eq!(mask("4242424242424242"), "************4242");
        assert_eq!(mask("ab€de"), "*b€de");
        assert_eq!(mask("abcd"), "****");
        assert_eq!(mask(""), "");
    }

    #[test]
    fn rules_reach_nested_properties_and_array_items() {
        let p = plan(json!({
            "type": "object",
            "properties": {
                "email": {"type": "string", "x-sluice-privacy": "hash"},
                "customer": {"type": "object", "properties": {
                    "phone": {"$ref": "#/$defs/phone"}
                }},
                "items": {"type": "array", "items": {"type": "object", "properties": {
                    "card": {"type": "string", "x-sluice-privacy": "mask"},
                    "note": {"x-sluice-privacy": "drop"}
                }}}
            },
            "$defs": {"phone": {"type": "string", "x-sluice-privacy": "mask"}}
        }));
        let pointers: Vec<String> = p.rules().iter().map(Rule::pointer).collect();
        assert_eq!(
            pointers,
            [
                "/customer/phone",
                "/email",
                "/items/*/card",
                "/items/*/note"
            ]
        );
        let mut event = json!({
            "email": "reader@example.com",
            "customer": {"phone": "+4915112345678"},
            "items": [{"card": "4242424242424242", "note": "x"}, {"card": null}],
            "other": 1
        });
        let replaced = p.treat_recording(&mut event);
        assert_eq!(event["customer"]["phone"], "**********5678");
        assert_eq!(event["items"][0]["card"], "************4242");
        assert!(event["items"][0].get("note").is_none());
        assert_eq!(event["items"][1]["card"], Value::Null);
        assert_eq!(event["email"].as_str().unwrap().len(), 64);
        let said = replaced.scrub("\"reader@example.com\" is not a \"uri\"");
        assert!(!said.contains("reader@"), "{said}");
    }

    #[test]
    fn annotations_out_of_reach_or_misspelt_are_errors() {
        let config = keyed();
        let mut keys = Keys::new(&config, "");
        let lost = json!({"type": "object", "properties": {"a": {"anyOf": [
            {"type": "string", "x-sluice-privacy": "hash"}
        ]}}});
        let (_, e) = Plan::of_schema(&lost, &mut keys, ExtraPolicy::Keep).unwrap_err();
        assert!(e.contains("/properties/a/anyOf/0"), "{e}");
        let bad = json!({"type": "object", "properties": {"a": {"x-sluice-privacy": "encrypt"}}});
        let (prop, e) = Plan::of_schema(&bad, &mut keys, ExtraPolicy::Keep).unwrap_err();
        assert_eq!(prop.as_deref(), Some("a"));
        assert!(e.contains("\"hash\", \"drop\" or \"mask\""), "{e}");
        let hashed = json!({"type": "object", "properties": {"a": {"x-sluice-privacy": "hash"}}});
        let (prop, e) = Plan::of_schema(
            &hashed,
            &mut Keys::new(&PrivacyConfig::default(), ""),
            ExtraPolicy::Keep,
        )
        .unwrap_err();
        assert_eq!(prop.as_deref(), Some("a"));
        assert!(e.contains("key_env"), "{e}");
    }

    #[test]
    fn the_relaxed_schema_accepts_a_treated_event() {
        let schema = json!({"type": "object", "required": ["email", "secret"], "properties": {
            "email": {"type": "string", "format": "email", "x-sluice-privacy": "hash"},
            "secret": {"type": "string", "x-sluice-privacy": "drop"}
        }, "additionalProperties": false});
        let relaxed = plan(schema.clone()).relaxed_schema(&schema);
        let v = jsonschema::validator_for(&relaxed).unwrap();
        assert!(v.is_valid(&json!({"email": "ab12"})));
    }
}
