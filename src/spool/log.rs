//! One append-only log of the spool: a directory of segment files for one stream (or
//! the dead letters).
//!
//! A segment is a sequence of frames: `"SL"`, the payload length (u32, little-endian),
//! the CRC-32C of length and payload (u32), the payload. An append writes whole frames
//! with one `write`, under a lock; on a failed write (a full disk) the segment is cut
//! back to its previous length, so a segment never holds half a frame that Sluice knows
//! of. Durability is a separate step: with `fsync = "always"` every append is fsynced
//! before it returns; otherwise a flusher fsyncs the segment once per interval (group
//! commit) and producers wait for the fsync that covers their append.
//!
//! Each append returns a [`Ticket`]; when the batcher has committed its events, the
//! ticket is released, and a segment whose records are all released is deleted (the
//! active one too: an idle spool holds no files). What is left on disk at start-up is,
//! by construction, what was not known to be committed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::{FsyncPolicy, SpoolError};

const MAGIC: [u8; 2] = *b"SL";
/// Magic, length, checksum.
pub const HEADER: usize = 10;
/// A segment is closed for appends once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
/// Longest payload a frame may declare; anything longer is corruption.
const MAX_FRAME: usize = 256 * 1024 * 1024;

fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

/// Appends the frame of `payload` to `out`.
pub fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payloads of the valid frames in `bytes`, and how many damaged regions were
/// skipped (a torn tail, a flipped byte, garbage between frames): after a bad frame the
/// reader looks for the next position where a whole frame checks out.
pub fn read_frames(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let (frames, damaged) = read_frames_at(bytes);
    (frames.into_iter().map(|(_, p)| p).collect(), damaged)
}

/// [`read_frames`], with each frame's offset in `bytes`.
pub fn read_frames_at(bytes: &[u8]) -> (Vec<(u64, &[u8])>, usize) {
    let mut records = Vec::new();
    let mut damaged = 0;
    let mut pos = 0;
    let mut in_damage = false;
    let frame_at = |pos: usize| -> Option<&[u8]> {
        let header = bytes.get(pos..pos + HEADER)?;
        if header[..2] != MAGIC {
            return None;
        }
        let len_bytes: [u8; 4] = header[2..6].try_into().ok()?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_FRAME {
            return None;
        }
        let crc = u32::from_le_bytes(header[6..10].try_into().ok()?);
        let payload = bytes.get(pos + HEADER..pos + HEADER + len)?;
        (checksum(len_bytes, payload) == crc).then_some(payload)
    };
    while pos < bytes.len() {
        match frame_at(pos) {
            Some(payload) => {
                records.push((pos as u64, payload));
                pos += HEADER + payload.len();
                in_damage = false;
            }
            None => {
                if !in_damage {
                    damaged += 1;
                    in_damage = true;
                }
                pos += 1;
            }
        }
    }
    (records, damaged)
}

/// The whole, valid frames at the start of `bytes` (written by this process, so
/// intact), and how many bytes they take.
fn whole_frames(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while let Some(header) = bytes.get(pos..pos + HEADER) {
        let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
        let Some(payload) = bytes.get(pos + HEADER..pos + HEADER + len) else {
            break;
        };
        records.push(payload);
        pos += HEADER + len;
    }
    (records, pos)
}

/// A segment's bookkeeping.
#[derive(Debug)]
struct Segment {
    bytes: u64,
    /// Records appended and not yet released.
    outstanding: usize,
    /// Byte ranges released while the segment stays (also noted on disk).
    released: Vec<(u64, u64)>,
    /// The file those ranges are noted in, kept open while the segment stays.
    notes: Option<File>,
}

struct State {
    /// The segment appends go to, if one is open.
    active: Option<(u64, File)>,
    next_segment: u64,
    segments: BTreeMap<u64, Segment>,
    /// Appends so far; an append's sequence number is the value after it.
    appended: u64,
    /// Where [`Log::read_next`] goes on: a segment and an offset in it.
    cursor: (u64, u64),
}

/// One stream's log.
pub struct Log {
    name: String,
    dir: PathBuf,
    fsync: FsyncPolicy,
    max_bytes: u64,
    /// Bytes on disk in the whole spool (every log), against `max_bytes`.
    used: Arc<AtomicU64>,
    state: Mutex<State>,
    /// The highest sequence number known to be on disk.
    durable: watch::Sender<u64>,
    /// Wakes the flusher after an append.
    dirty: Notify,
    /// Wakes a reader after an append.
    readable: Notify,
}

/// An append's records; release it once they are committed.
#[must_use = "an unreleased ticket keeps its records on disk, to be replayed at start-up"]
pub struct Ticket {
    log: Arc<Log>,
    segment: u64,
    /// Where its records are in the segment: each one's `(start, end)` byte offsets.
    ranges: Vec<(u64, u64)>,
    seq: u64,
}

impl Ticket {
    /// The records are committed (or dead-lettered): they need not be replayed.
    pub fn release(self) {
        self.log.release(self.segment, &self.ranges);
    }

    /// The records were never accepted (the request they belong to was refused after
    /// they were appended): they must never be replayed. The same as [`Ticket::release`]
    /// for the log; said apart at the call site.
    pub fn discard(self) {
        self.log.release(self.segment, &self.ranges);
    }

    /// Waits until the records are durable under the log's fsync policy.
    pub async fn durable(&self) {
        self.log.wait_durable(self.seq).await;
    }

    /// Leaves the records to whoever reads them back (a spill log's reader); dropping a
    /// ticket does the same, this says it on purpose.
    pub fn keep(self) {}

    /// Splits off a ticket for the first `n` records (the rest stay with `self`), so that
    /// records read back together can be queued in pieces.
    pub fn split_off(&mut self, n: usize) -> Ticket {
        let n = n.min(self.ranges.len());
        let first: Vec<(u64, u64)> = self.ranges.drain(..n).collect();
        Ticket {
            log: self.log.clone(),
            segment: self.segment,
            ranges: first,
            seq: self.seq,
        }
    }

    /// What to wait on for durability, apart from the ticket (which travels with the
    /// events to the batcher).
    pub fn durability(&self) -> Durability {
        Durability {
            log: self.log.clone(),
            seq: self.seq,
        }
    }
}

/// A point of a log to wait for: see [`Ticket::durability`].
pub struct Durability {
    log: Arc<Log>,
    seq: u64,
}

impl Durability {
    pub async fn wait(&self) {
        self.log.wait_durable(self.seq).await;
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

/// The file beside a segment that lists the byte ranges of its records already
/// released while others in it were not: `(start, end)` as two little-endian u64s
/// each. Recovery skips them, so a restart never writes again what was committed (or
/// what was refused) while the segment stayed for other records. Not fsynced: lost
/// only with power, when the segment is replayed whole (at least once).
pub fn released_path(segment: &Path) -> PathBuf {
    segment.with_extension("rel")
}

/// The released ranges recorded beside `segment` (none if there is no such file; a
/// torn last entry is ignored).
pub fn released_ranges(segment: &Path) -> std::io::Result<Vec<(u64, u64)>> {
    let bytes = match std::fs::read(released_path(segment)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let (a, b) = c.split_at(8);
            let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap_or_default());
            (word(a), word(b))
        })
        .collect())
}

/// Deletes a segment and its released ranges.
pub fn remove_segment(segment: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(released_path(segment)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_file(segment)
}

/// Creates a spool file readable by its owner only: it holds event payloads.
pub(super) fn owner_only_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Creates `dir` (and its parents) for the owner only.
pub(super) fn owner_only_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

impl Log {
    /// A log in `dir`, whose new segments are numbered after `first_segment`.
    pub fn new(
        name: &str,
        dir: PathBuf,
        first_segment: u64,
        fsync: FsyncPolicy,
        max_bytes: u64,
        used: Arc<AtomicU64>,
    ) -> Arc<Log> {
        Arc::new(Log {
            name: name.to_owned(),
            dir,
            fsync,
            max_bytes,
            used,
            state: Mutex::new(State {
                active: None,
                next_segment: first_segment,
                segments: BTreeMap::new(),
                appended: 0,
                cursor: (first_segment, 0),
            }),
            durable: watch::channel(0).0,
            dirty: Notify::new(),
            readable: Notify::new(),
        })
    }

    /// The segment and byte range [`Log::read_next`] would read next, if any.
    fn unread_range(state: &State) -> Option<(u64, u64, u64)> {
        let (segment, offset) = state.cursor;
        if let Some(s) = state.segments.get(&segment) {
            if offset < s.bytes {
                return Some((segment, offset, s.bytes));
            }
        }
        state
            .segments
            .range(segment + 1..)
            .find(|(_, s)| s.bytes > 0)
            .map(|(id, s)| (*id, 0, s.bytes))
    }

    /// Whether records were appended that [`Log::read_next`] has not read yet.
    pub fn has_unread(&self) -> bool {
        Self::unread_range(&lock(&self.state)).is_some()
    }

    /// Waits until there may be something to read.
    pub async fn readable(&self) {
        let notified = self.readable.notified();
        tokio::pin!(notified);
        // Registered before the check, so an append in between is not missed.
        notified.as_mut().enable();
        if self.has_unread() {
            return;
        }
        notified.await;
    }

    /// The next records appended and not yet read (about `max_bytes` of them, at least
    /// one), with the ticket that releases them once they are committed. For a log whose
    /// records live only on disk (a stream's spill), read back as its queue has room.
    pub fn read_next(
        self: &Arc<Self>,
        max_bytes: u64,
    ) -> std::io::Result<Option<(Vec<Vec<u8>>, Ticket)>> {
        let Some((segment, offset, end)) = Self::unread_range(&lock(&self.state)) else {
            return Ok(None);
        };
        use std::io::{Read, Seek, SeekFrom};
        let mut file = File::open(segment_path(&self.dir, segment))?;
        file.seek(SeekFrom::Start(offset))?;
        let mut want = (end - offset).min(max_bytes.max(HEADER as u64));
        let mut buf = Vec::new();
        let (records, consumed) = loop {
            buf.resize(want as usize, 0);
            file.read_exact(&mut buf)?;
            let (records, consumed) = whole_frames(&buf);
            if !records.is_empty() || want == end - offset {
                break (records, consumed);
            }
            // The next frame is larger than asked for: read all of it.
            want = end - offset;
            file.seek(SeekFrom::Start(offset))?;
        };
        if records.is_empty() {
            return Err(std::io::Error::other(format!(
                "spool segment {} of {} holds no whole record at offset {offset}",
                segment, self.name
            )));
        }
        let mut state = lock(&self.state);
        state.cursor = (segment, offset + consumed as u64);
        // Records discarded since they were appended (their request was refused) are
        // skipped: they were never accepted.
        let released = state
            .segments
            .get(&segment)
            .map(|s| s.released.clone())
            .unwrap_or_default();
        drop(state);
        let mut ranges = Vec::with_capacity(records.len());
        let mut kept = Vec::with_capacity(records.len());
        let mut start = offset;
        for r in records {
            let end = start + (HEADER + r.len()) as u64;
            if !released.iter().any(|(a, b)| *a <= start && start < *b) {
                ranges.push((start, end));
                kept.push(r.to_vec());
            }
            start = end;
        }
        Ok(Some((
            kept,
            Ticket {
                log: self.clone(),
                segment,
                ranges,
                seq: 0,
            },
        )))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends one record per payload, as one write. Refused without writing anything
    /// when the spool's disk budget has no room, or when the disk is full.
    pub fn append(self: &Arc<Self>, payloads: &[Vec<u8>]) -> Result<Ticket, SpoolError> {
        let mut buf = Vec::with_capacity(payloads.iter().map(|p| p.len() + HEADER).sum());
        for p in payloads {
            frame(&mut buf, p);
        }
        let len = buf.len() as u64;
        let mut state = lock(&self.state);
        // The budget is checked under this log's lock; other logs may race by at most
        // one append each, which is the bound's slack.
        if self.used.load(Ordering::Relaxed) + len > self.max_bytes {
            return Err(SpoolError::Full {
                max_bytes: self.max_bytes,
            });
        }
        let rotate = match &state.active {
            Some((id, _)) => state
                .segments
                .get(id)
                .is_some_and(|s| s.bytes >= SEGMENT_BYTES),
            None => true,
        };
        if rotate {
            if let Some((_, file)) = state.active.take() {
                // What the flusher has not yet synced of the closed segment.
                file.sync_data().map_err(SpoolError::Io)?;
            }
            owner_only_dir(&self.dir).map_err(SpoolError::Io)?;
            let id = state.next_segment;
            state.next_segment += 1;
            let file = owner_only_file(&segment_path(&self.dir, id)).map_err(SpoolError::Io)?;
            state.segments.insert(
                id,
                Segment {
                    bytes: 0,
                    outstanding: 0,
                    released: Vec::new(),
                    notes: None,
                },
            );
            state.active = Some((id, file));
        }
        let State {
            active, segments, ..
        } = &mut *state;
        let Some((id, file)) = active.as_mut() else {
            return Err(SpoolError::Io(std::io::Error::other("no active segment")));
        };
        let id = *id;
        let segment = segments
            .get_mut(&id)
            .expect("the active segment is tracked");
        let start = segment.bytes;
        let written = file.write_all(&buf).and_then(|()| match self.fsync {
            FsyncPolicy::Always => {
                let started = std::time::Instant::now();
                file.sync_data()?;
                crate::telemetry::spool_fsync(started.elapsed().as_secs_f64());
                Ok(())
            }
            FsyncPolicy::Interval(_) => Ok(()),
        });
        if let Err(e) = written {
            // Cut back whatever part was written (or written and not synced): the
            // segment ends with the last whole frame that was acknowledged, and an
            // append is all or nothing. A segment left empty is not kept.
            let _ = file.set_len(start);
            if start == 0 {
                segments.remove(&id);
                *active = None;
                let _ = std::fs::remove_file(segment_path(&self.dir, id));
            }
            return Err(if e.raw_os_error() == Some(28) {
                SpoolError::DiskFull(e)
            } else {
                SpoolError::Io(e)
            });
        }
        segment.bytes += len;
        segment.outstanding += payloads.len();
        self.used.fetch_add(len, Ordering::Relaxed);
        state.appended += 1;
        let seq = state.appended;
        let mut ranges = Vec::with_capacity(payloads.len());
        let mut at = start;
        for p in payloads {
            let end = at + (HEADER + p.len()) as u64;
            ranges.push((at, end));
            at = end;
        }
        match self.fsync {
            FsyncPolicy::Always => {
                drop(state);
                self.durable.send_modify(|d| *d = (*d).max(seq));
            }
            FsyncPolicy::Interval(_) => {
                drop(state);
                self.dirty.notify_one();
            }
        }
        self.readable.notify_waiters();
        self.report();
        Ok(Ticket {
            log: self.clone(),
            segment: id,
            ranges,
            seq,
        })
    }

    async fn wait_durable(&self, seq: u64) {
        let mut rx = self.durable.subscribe();
        let _ = rx.wait_for(|d| *d >= seq).await;
    }

    /// Releases the records of segment `id` at `ranges` (see [`Ticket`]): the segment is
    /// deleted once all of its records are, and until then the released ranges are
    /// noted beside it, so that recovery does not write them again.
    fn release(&self, id: u64, ranges: &[(u64, u64)]) {
        let records = ranges.len();
        if records == 0 {
            return;
        }
        let mut state = lock(&self.state);
        let Some(segment) = state.segments.get_mut(&id) else {
            return;
        };
        segment.outstanding = segment.outstanding.saturating_sub(records);
        let path = segment_path(&self.dir, id);
        if segment.outstanding == 0 {
            let bytes = segment.bytes;
            state.segments.remove(&id);
            if state.active.as_ref().is_some_and(|(a, _)| *a == id) {
                // The next append opens a new segment.
                state.active = None;
            }
            drop(state);
            if let Err(e) = remove_segment(&path) {
                tracing::warn!(log = %self.name, error = %e, "Could not delete a committed spool segment.");
            }
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        } else {
            // Contiguous records as one range each.
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for &(a, b) in ranges {
                match merged.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => merged.push((a, b)),
                }
            }
            segment.released.extend_from_slice(&merged);
            let entries: Vec<u8> = merged
                .iter()
                .flat_map(|(a, b)| a.to_le_bytes().into_iter().chain(b.to_le_bytes()))
                .collect();
            // Under the lock, so that the segment is not deleted meanwhile.
            let noted = match &mut segment.notes {
                Some(file) => file.write_all(&entries),
                None => owner_only_file(&released_path(&path)).and_then(|mut f| {
                    f.write_all(&entries)?;
                    segment.notes = Some(f);
                    Ok(())
                }),
            };
            drop(state);
            if let Err(e) = noted {
                tracing::warn!(log = %self.name, error = %e, "Could not note released spool records; a restart before their segment is deleted writes them again.");
            }
        }
        self.report();
    }

    /// Publishes this log's bytes and outstanding records.
    fn report(&self) {
        let state = lock(&self.state);
        let bytes: u64 = state.segments.values().map(|s| s.bytes).sum();
        let records: usize = state.segments.values().map(|s| s.outstanding).sum();
        drop(state);
        crate::telemetry::spool_depth(&self.name, bytes, records);
    }

    /// Group commit: after an append, waits `interval` for more, then fsyncs the
    /// active segment once for all of them. Runs until the log is dropped elsewhere and
    /// `stop` is cancelled; a last fsync covers what was appended before.
    pub async fn flush_every(
        self: Arc<Self>,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let stopping = tokio::select! {
                _ = self.dirty.notified() => false,
                _ = stop.cancelled() => true,
            };
            if !stopping {
                tokio::time::sleep(interval).await;
            }
            let (file, seq) = {
                let state = lock(&self.state);
                let file = state.active.as_ref().and_then(|(_, f)| f.try_clone().ok());
                (file, state.appended)
            };
            if seq > *self.durable.borrow() {
                if let Some(file) = file {
                    let started = std::time::Instant::now();
                    let synced = tokio::task::spawn_blocking(move || file.sync_data()).await;
                    match synced {
                        Ok(Ok(())) => {
                            crate::telemetry::spool_fsync(started.elapsed().as_secs_f64())
                        }
                        Ok(Err(e)) => {
                            tracing::error!(log = %self.name, error = %e, "fsync of the spool failed; retrying.");
                            self.dirty.notify_one();
                            continue;
                        }
                        Err(_) => continue,
                    }
                }
                // No active file: its segment was released whole, nothing to sync.
                self.durable.send_modify(|d| *d = (*d).max(seq));
            }
            if stopping {
                return;
            }
        }
    }
}

/// The segment files of a log directory, oldest first.
pub fn segments_in(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id {
            found.push((id, path));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            frame(&mut out, p);
        }
        out
    }

    #[test]
    fn frames_read_back_and_damage_is_skipped_not_fatal() {
        let bytes = framed(&[b"one", b"two", b"three"]);
        assert_eq!(
            read_frames(&bytes),
            (vec![&b"one"[..], b"two", b"three"], 0)
        );
        // A torn tail: the last frame is cut.
        let torn = &bytes[..bytes.len() - 2];
        assert_eq!(read_frames(torn), (vec![&b"one"[..], b"two"], 1));
        // A flipped byte in the middle frame's payload: that frame only is lost.
        let mut flipped = bytes.clone();
        flipped[HEADER + 3 + HEADER + 1] ^= 0x40;
        assert_eq!(read_frames(&flipped), (vec![&b"one"[..], b"three"], 1));
        // A flipped byte in a length field: the reader finds the next frame.
        let mut length = bytes.clone();
        length[HEADER + 3 + 3] ^= 0x01;
        assert_eq!(read_frames(&length), (vec![&b"one"[..], b"three"], 1));
    }

    /// A log `s` in `dir`, fsyncing every append, with a budget of `max_bytes`.
    fn log_in(dir: &Path, max_bytes: u64, used: Arc<AtomicU64>) -> Arc<Log> {
        Log::new(
            "s",
            dir.to_path_buf(),
            1,
            FsyncPolicy::Always,
            max_bytes,
            used,
        )
    }

    #[tokio::test]
    async fn records_released_while_their_segment_stays_are_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(dir.path(), 1 << 20, Arc::new(AtomicU64::new(0)));
        let a = log.append(&[b"a1".to_vec(), b"a2".to_vec()]).unwrap();
        let b = log.append(&[b"b1".to_vec()]).unwrap();
        let c = log.append(&[b"c1".to_vec(), b"c2".to_vec()]).unwrap();
        a.release();
        c.discard();
        let files = segments_in(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "b keeps the segment");
        let (records, damaged, _) = crate::spool::read_segment("s", &files[0].1).unwrap();
        assert_eq!((records, damaged), (vec![b"b1".to_vec()], 0));
        b.release();
        assert!(segments_in(dir.path()).unwrap().is_empty());
        assert!(!released_path(&files[0].1).exists(), "its notes go with it");
    }

    #[tokio::test]
    async fn released_segments_are_deleted_and_the_budget_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let used = Arc::new(AtomicU64::new(0));
        let log = log_in(dir.path(), 1000, used.clone());
        let a = log.append(&[b"hello".to_vec(), b"world".to_vec()]).unwrap();
        a.durable().await;
        assert_eq!(segments_in(dir.path()).unwrap().len(), 1);
        assert_eq!(used.load(Ordering::Relaxed), 2 * HEADER as u64 + 10);
        assert!(matches!(
            log.append(&[vec![0u8; 2000]]),
            Err(SpoolError::Full { .. })
        ));
        a.release();
        assert!(
            segments_in(dir.path()).unwrap().is_empty(),
            "an idle spool holds no file"
        );
        assert_eq!(used.load(Ordering::Relaxed), 0);
        let b = log.append(&[b"again".to_vec()]).unwrap();
        let files = segments_in(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let bytes = std::fs::read(&files[0].1).unwrap();
        assert_eq!(read_frames(&bytes).0, vec![&b"again"[..]]);
        b.release();
    }
}
