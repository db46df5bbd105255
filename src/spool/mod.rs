//! The durable spool (`[spool]`): with it, events answered `202` and TCP lines read are
//! on disk before they count as accepted, and survive `kill -9` and power loss.
//!
//! In: the rows and dead letters of a request, as it is queued. Out: a [`Ticket`] per
//! append, released by the batcher once those events are committed; at start-up, every
//! record that was never released ([`Spool::recover`]), to be written before new input
//! is taken. One [`Log`] per stream and one for the dead letters, under `dir`.
//!
//! Why not a crate: the spool must group-commit with the acknowledgements it gates,
//! release records in the order batches commit (which is not the order they were
//! written, with several writes in flight), and count its bytes against one budget for
//! every stream with the queue's backpressure. `yaque` and `queue-file` are
//! single-reader FIFO queues that remove on read, not on commit; `fjall` is a whole LSM
//! storage engine with its own compaction and memory; Vector's disk buffer (closest in
//! design: ledger plus checksummed data files) is not published as a crate. The format
//! here is small: checksummed frames in append-only segment files, deleted whole.

pub mod log;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};

use crate::event::{DeadLetter, Row, Stage};
pub use log::{Durability, Log, Ticket};

/// `[spool]`: where events answered `202` and TCP lines are kept on disk until their
/// batch commits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool; the spool is off when unset.
    pub dir: Option<PathBuf>,
    /// Disk budget in bytes; when full, producers get the backpressure of a full queue.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// `"always"` (fsync every append) or a group-commit interval such as `"10ms"`.
    #[serde(default = "default_spool_fsync", deserialize_with = "fsync_policy")]
    pub fsync: FsyncPolicy,
}

/// `spool.fsync`: when appends to the spool are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every append is fsynced before it is acknowledged.
    Always,
    /// Appends are fsynced together once per interval (group commit).
    Interval(Duration),
}

fn default_spool_max_bytes() -> u64 {
    10 * 1024 * 1024 * 1024
}
fn default_spool_fsync() -> FsyncPolicy {
    FsyncPolicy::Interval(Duration::from_millis(10))
}
fn fsync_policy<'de, D: Deserializer<'de>>(d: D) -> Result<FsyncPolicy, D::Error> {
    let text = String::deserialize(d)?;
    if text == "always" {
        return Ok(FsyncPolicy::Always);
    }
    match humantime::parse_duration(&text) {
        Ok(interval) if !interval.is_zero() => Ok(FsyncPolicy::Interval(interval)),
        _ => Err(serde::de::Error::custom(format!(
            "spool.fsync = {text:?}: write \"always\" or a group-commit interval such as \"10ms\""
        ))),
    }
}

/// Why an append was refused; nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool holds its whole disk budget (spool.max_bytes = {max_bytes} bytes) of events not yet committed")]
    Full { max_bytes: u64 },
    #[error("the spool's disk is full: {0}")]
    DiskFull(std::io::Error),
    #[error("cannot write the spool: {0}")]
    Io(std::io::Error),
}

impl SpoolError {
    /// Whether waiting may help (room is given back as batches commit).
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::Full { .. } | SpoolError::DiskFull(_))
    }
}

/// The name of the log of `stream`'s events kept on disk only, read back as its queue
/// has room (a directory `spill` inside the stream's).
pub fn spill_name(stream: &str) -> String {
    format!("{stream}/spill")
}

/// The stream a log belongs to (`None` for the dead letters').
pub fn stream_of(log: &str) -> Option<&str> {
    (log != DEAD_LETTERS).then(|| log.strip_suffix("/spill").unwrap_or(log))
}

/// The name of the dead letters' log.
pub const DEAD_LETTERS: &str = "_dead_letters";

/// Every log of the spool.
pub struct Spool {
    dir: PathBuf,
    /// The directory's lock file, held (`flock`) while this process uses the spool.
    _lock: std::fs::File,
    logs: HashMap<String, Arc<Log>>,
    fsync: FsyncPolicy,
    /// Bytes on disk in every log, against `max_bytes`.
    used: Arc<AtomicU64>,
}

impl Spool {
    /// Opens (creating) the spool in `dir` with a log per stream and one for dead letters.
    /// New segments are numbered after the ones already there, which [`Spool::recover`]
    /// reads.
    pub fn open(
        dir: PathBuf,
        streams: &[String],
        fsync: FsyncPolicy,
        max_bytes: u64,
    ) -> anyhow::Result<Spool> {
        use anyhow::Context;
        log::owner_only_dir(&dir)
            .with_context(|| format!("spool.dir = {}: cannot create it", dir.display()))?;
        let lock = lock_dir(&dir)?;
        let used = Arc::new(AtomicU64::new(0));
        let mut logs = HashMap::new();
        let names = streams
            .iter()
            .flat_map(|s| [s.clone(), spill_name(s)])
            .chain([DEAD_LETTERS.to_owned()]);
        for name in names {
            let name = name.as_str();
            let log_dir = dir.join(name);
            if log_dir.exists() {
                log::owner_only_dir(&log_dir).with_context(|| {
                    format!("cannot restrict the spool directory {}", log_dir.display())
                })?;
            }
            let mut existing = log::segments_in(&log_dir).with_context(|| {
                format!("cannot read the spool directory {}", log_dir.display())
            })?;
            // An empty segment (a write that failed on a full disk, before this
            // version removed them) holds nothing to recover.
            existing.retain(|(_, p)| {
                let empty = std::fs::metadata(p).is_ok_and(|m| m.len() == 0);
                if empty {
                    let _ = log::remove_segment(p);
                }
                !empty
            });
            let first = existing.last().map_or(1, |(id, _)| id + 1);
            let bytes: u64 = existing
                .iter()
                .filter_map(|(_, p)| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            // What is left from before counts against the budget until it is replayed.
            used.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            // Every log's series exist from start-up (what it held before included).
            crate::telemetry::spool_depth(name, bytes, 0);
            logs.insert(
                name.to_owned(),
                Log::new(name, log_dir, first, fsync, max_bytes, used.clone()),
            );
        }
        Ok(Spool {
            dir,
            _lock: lock,
            logs,
            fsync,
            used,
        })
    }

    pub fn log(&self, name: &str) -> Option<&Arc<Log>> {
        self.logs.get(name)
    }

    /// The log of `stream`'s events that are on disk only (its queue had no room).
    pub fn spill(&self, stream: &str) -> Option<&Arc<Log>> {
        self.logs.get(&spill_name(stream))
    }

    pub fn logs(&self) -> impl Iterator<Item = &Arc<Log>> {
        self.logs.values()
    }

    pub fn fsync(&self) -> FsyncPolicy {
        self.fsync
    }

    /// The replayed files (of `bytes`) are deleted: their room is the budget's again.
    pub fn replayed(&self, bytes: u64) {
        self.used
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The segment files every log held at start-up (older than any this process
    /// writes), by log, oldest first.
    pub fn leftovers(&self) -> anyhow::Result<Vec<(String, Vec<PathBuf>)>> {
        let mut out = Vec::new();
        for name in self.logs.keys() {
            let files = log::segments_in(&self.dir.join(name))?;
            if !files.is_empty() {
                out.push((name.clone(), files.into_iter().map(|(_, p)| p).collect()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Takes the spool directory's lock (`flock` on `dir/lock`, which holds the holder's
/// process id), so that two processes never share one spool: each would delete the
/// segments holding the other's acknowledged events. Refuses, naming the holder, when
/// another process has it.
fn lock_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            anyhow::anyhow!(
                "spool.dir = {}: cannot open its lock file: {e}",
                dir.display()
            )
        })?;
    if let Err(e) = file.try_lock() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        anyhow::bail!(
            "spool.dir = {} is in use by another Sluice process{} ({e}): two processes must never share a spool; give each its own spool.dir, or stop the other one",
            dir.display(),
            if holder.is_empty() { String::new() } else { format!(" (pid {holder})") }
        );
    }
    // The lock is held: write our pid for the next one to name.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// The records of one segment file of `log` not yet released (committed, or refused
/// with their request) when it was left, its damaged regions (skipped, logged and
/// counted, never fatal), and its size.
pub fn read_segment(
    log: &str,
    path: &std::path::Path,
) -> std::io::Result<(Vec<Vec<u8>>, usize, u64)> {
    let bytes = std::fs::read(path)?;
    let released = log::released_ranges(path)?;
    let (frames, damaged) = log::read_frames_at(&bytes);
    let frames: Vec<&[u8]> = frames
        .into_iter()
        .filter(|(at, _)| !released.iter().any(|(a, b)| a <= at && at < b))
        .map(|(_, payload)| payload)
        .collect();
    if damaged > 0 {
        tracing::warn!(
            log,
            file = %path.display(),
            damaged_regions = damaged,
            "Spool segment damaged (a torn write or a corrupt byte); the damaged records are skipped, the rest replayed."
        );
    }
    crate::telemetry::spool_recovered(log, frames.len(), damaged);
    let records = frames.into_iter().map(<[u8]>::to_vec).collect();
    Ok((records, damaged, bytes.len() as u64))
}

// Record payloads: a kind byte, then the fields. Rows keep their original text and are
// validated again when replayed (so a schema changed in between applies to them);
// dead letters keep every field.
const ROW: u8 = 1;
const LETTER: u8 = 2;
/// A row whose text its stream treated (`x-sluice-privacy`): filed again without
/// treating it twice. Records of kind 1 (written before this kind existed) are raw.
const TREATED_ROW: u8 = 3;
/// A dead letter whose payload is treated: replayed without treating it twice.
const TREATED_LETTER: u8 = 4;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A row's record: when it was received, where from, its index, its text.
pub fn encode_row(row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(row.raw.len() + row.source.len() + 24);
    out.push(if row.treated { TREATED_ROW } else { ROW });
    out.extend_from_slice(&row.received_at.timestamp_micros().to_le_bytes());
    out.extend_from_slice(&(row.index as u64).to_le_bytes());
    put_str(&mut out, &row.source);
    put_str(&mut out, &row.raw);
    out
}

/// A dead letter's record.
pub fn encode_letter(letter: &DeadLetter) -> Vec<u8> {
    let mut out = Vec::with_capacity(letter.payload.len() + letter.error.len() + 64);
    out.push(if letter.treated {
        TREATED_LETTER
    } else {
        LETTER
    });
    out.extend_from_slice(&letter.received_at.timestamp_micros().to_le_bytes());
    out.extend_from_slice(&(letter.index as u64).to_le_bytes());
    put_str(&mut out, &letter.source);
    put_str(&mut out, letter.stream.as_deref().unwrap_or(""));
    out.push(u8::from(letter.stream.is_some()));
    put_str(&mut out, letter.stage.as_str());
    put_str(&mut out, &letter.error);
    put_str(&mut out, &letter.payload);
    out
}

/// A decoded record.
pub enum Record {
    /// A row's text, to validate again.
    Row {
        raw: String,
        /// Whether the text is treated already (`x-sluice-privacy`).
        treated: bool,
        source: Arc<str>,
        received_at: DateTime<Utc>,
        index: usize,
    },
    Letter(DeadLetter),
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    fn string(&mut self) -> Option<String> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// Decodes a record written by [`encode_row`] or [`encode_letter`]; `None` if it is
/// not one (the checksum matched, so this means a record of another version).
pub fn decode(payload: &[u8]) -> Option<Record> {
    let mut r = Reader(payload);
    let kind = r.u8()?;
    let received_at = DateTime::from_timestamp_micros(r.u64()? as i64)?;
    let index = usize::try_from(r.u64()?).ok()?;
    let source: Arc<str> = r.string()?.into();
    match kind {
        ROW | TREATED_ROW => Some(Record::Row {
            raw: r.string()?,
            treated: kind == TREATED_ROW,
            source,
            received_at,
            index,
        }),
        LETTER | TREATED_LETTER => {
            let stream = r.string()?;
            let has_stream = r.u8()? == 1;
            let stage = Stage::from_name(&r.string()?)?;
            let error = r.string()?;
            let payload = r.string()?;
            // The fields were made storable and bounded before they were spooled, so
            // building the letter again keeps them as they are.
            let letter = DeadLetter::new(
                has_stream.then_some(stream.as_str()),
                stage,
                &error,
                payload.as_bytes(),
                &source,
                received_at,
                index,
                usize::MAX,
            );
            Some(Record::Letter(if kind == TREATED_LETTER {
                letter.treated()
            } else {
                letter
            }))
        }
        _ => None,
    }
}
