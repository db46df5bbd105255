//! The stream rows' `INSERT`s through SQLite's C interface, where rusqlite has no way
//! to say it: text is bound without SQLite copying it (`SQLITE_STATIC`). rusqlite
//! binds every text with `SQLITE_TRANSIENT`, so SQLite allocates, copies and frees
//! each value once more per row; for a usual order that was about 2,600 instructions
//! of the 9,600 a row cost the writer (BENCHMARKS.md).
//!
//! The unsafe part is small and kept here: a [`Run`] borrows every text it binds for
//! as long as it lives, and runs the statement only when all its parameters were bound
//! by that run, so SQLite never reads a text that has gone.

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use rusqlite::ffi;

/// A statement prepared on one connection, finalized when dropped. It must be dropped
/// before its connection is closed (see `Opened` in `sqlite.rs`: its field order).
pub(super) struct Prepared {
    statement: NonNull<ffi::sqlite3_stmt>,
    db: NonNull<ffi::sqlite3>,
    parameters: c_int,
}

// SAFETY: a `Prepared` is used only together with its connection, behind the same
// lock; SQLite's statements may move between threads (rusqlite's `Connection` is
// `Send` for the same reason).
unsafe impl Send for Prepared {}

/// The error SQLite reports for `code` on `db`, as rusqlite would make it.
fn error(db: NonNull<ffi::sqlite3>, code: c_int) -> rusqlite::Error {
    // SAFETY: `db` is an open connection; the message is copied before anything else
    // runs on it.
    let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())) }
        .to_string_lossy()
        .into_owned();
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(message))
}

impl Prepared {
    /// Prepares `sql` (one statement) on `conn`, to be kept for many runs.
    pub(super) fn new(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<Prepared> {
        // SAFETY: the handle is only used while `conn` is open (see the type's doc).
        let db =
            NonNull::new(unsafe { conn.handle() }).ok_or_else(|| rusqlite::Error::InvalidQuery)?;
        let length = c_int::try_from(sql.len()).map_err(|_| {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None)
        })?;
        let mut statement = std::ptr::null_mut();
        // SAFETY: `sql` is valid for `length` bytes (no NUL needed with a length);
        // `statement` receives the new statement or null.
        let code = unsafe {
            ffi::sqlite3_prepare_v3(
                db.as_ptr(),
                sql.as_ptr().cast::<c_char>(),
                length,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut statement,
                std::ptr::null_mut(),
            )
        };
        if code != ffi::SQLITE_OK {
            return Err(error(db, code));
        }
        let statement = NonNull::new(statement).ok_or(rusqlite::Error::InvalidQuery)?;
        // SAFETY: a statement just prepared.
        let parameters = unsafe { ffi::sqlite3_bind_parameter_count(statement.as_ptr()) };
        Ok(Prepared {
            statement,
            db,
            parameters,
        })
    }

    /// Starts binding the parameters of one run, from the first on.
    pub(super) fn run<'t>(&mut self) -> Run<'_, 't> {
        Run {
            prepared: self,
            next: 1,
            texts: PhantomData,
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: the statement is finalized once, here; its connection is still open.
        unsafe { ffi::sqlite3_finalize(self.statement.as_ptr()) };
    }
}

/// One run of a [`Prepared`] statement: its parameters bound in order, each text
/// borrowed for `'t`, then [`Run::execute`].
pub(super) struct Run<'p, 't> {
    prepared: &'p mut Prepared,
    /// The next parameter to bind (SQLite counts from 1).
    next: c_int,
    texts: PhantomData<&'t str>,
}

impl<'t> Run<'_, 't> {
    fn bound(&mut self, code: c_int) -> rusqlite::Result<()> {
        if code != ffi::SQLITE_OK {
            return Err(error(self.prepared.db, code));
        }
        self.next += 1;
        Ok(())
    }

    fn statement(&self) -> *mut ffi::sqlite3_stmt {
        self.prepared.statement.as_ptr()
    }

    /// Binds `text` to the next parameter. SQLite reads it where it is, when the
    /// statement runs: `'t` keeps it there.
    pub(super) fn text(&mut self, text: &'t str) -> rusqlite::Result<()> {
        let length = c_int::try_from(text.len()).map_err(|_| {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None)
        })?;
        // SAFETY: `text` outlives this run (`'t`), and the statement runs only within
        // it (`execute` takes the run); SQLITE_STATIC: SQLite neither copies nor frees.
        let code = unsafe {
            ffi::sqlite3_bind_text(
                self.statement(),
                self.next,
                text.as_ptr().cast::<c_char>(),
                length,
                ffi::SQLITE_STATIC(),
            )
        };
        self.bound(code)
    }

    pub(super) fn int(&mut self, n: i64) -> rusqlite::Result<()> {
        // SAFETY: a live statement; SQLite checks the index.
        let code = unsafe { ffi::sqlite3_bind_int64(self.statement(), self.next, n) };
        self.bound(code)
    }

    pub(super) fn float(&mut self, f: f64) -> rusqlite::Result<()> {
        // SAFETY: as `int`.
        let code = unsafe { ffi::sqlite3_bind_double(self.statement(), self.next, f) };
        self.bound(code)
    }

    pub(super) fn null(&mut self) -> rusqlite::Result<()> {
        // SAFETY: as `int`.
        let code = unsafe { ffi::sqlite3_bind_null(self.statement(), self.next) };
        self.bound(code)
    }

    /// Runs the statement once (it returns no rows) and resets it: the rows it
    /// changed. Every parameter must have been bound by this run, so that none still
    /// points at an earlier run's text.
    pub(super) fn execute(self) -> rusqlite::Result<usize> {
        if self.next != self.prepared.parameters + 1 {
            return Err(rusqlite::Error::InvalidParameterCount(
                usize::try_from(self.next - 1).unwrap_or(0),
                usize::try_from(self.prepared.parameters).unwrap_or(0),
            ));
        }
        let statement = self.statement();
        let db = self.prepared.db;
        // SAFETY: every parameter is bound to a value alive for this call.
        let code = unsafe { ffi::sqlite3_step(statement) };
        let result = match code {
            // SAFETY: the connection is open.
            ffi::SQLITE_DONE => {
                Ok(usize::try_from(unsafe { ffi::sqlite3_changes64(db.as_ptr()) }).unwrap_or(0))
            }
            ffi::SQLITE_ROW => Err(rusqlite::Error::ExecuteReturnedResults),
            // The message is taken before the reset, which may replace it.
            code => Err(error(db, code)),
        };
        // SAFETY: a live statement; its error, if any, was read above.
        unsafe { ffi::sqlite3_reset(statement) };
        result
    }
}

/// The rows' connection's WAL hook: after each commit SQLite tells it how many frames
/// the log holds. Past [`CHECKPOINT_FRAMES`] (SQLite's own default for its automatic
/// checkpoint) it wakes the checkpointer, a thread of its own that copies the log into
/// the database on a connection of its own, instead of the writer doing so inside its
/// commit (copying, then an fsync of the database file: about a quarter of the writer's
/// time). SQLite writes the log again from its start only when a write begins with
/// every frame copied, which a checkpoint running beside a busy writer rarely leaves;
/// so past [`WRITER_CHECKPOINT_FRAMES`] the writer checkpoints itself, as SQLite does
/// by default: by then the checkpointer has copied most of the log, and what is left
/// is the last commits' frames. A transaction larger than that (four batches of large
/// events) would make the writer copy every one of its frames itself: the writer's
/// threshold is also at least three times the last transaction's frames, so the
/// checkpointer copies the first two while the writer goes on. The log stays about
/// twice SQLite's usual size, or three transactions.
///
/// Registering it replaces SQLite's automatic checkpoint (which is a WAL hook too). It
/// must be dropped after its connection is closed (see `Opened` in `sqlite.rs`).
pub(super) struct WalHook {
    _state: Box<HookState>,
}

/// What [`wal_hook`] keeps from commit to commit.
struct HookState {
    wake: std::sync::mpsc::SyncSender<()>,
    /// Frames in the log after the last commit (the hook runs on the writer's thread,
    /// one commit at a time; atomic only to be shared with it).
    frames: std::sync::atomic::AtomicI32,
}

/// Frames in the log past which the checkpointer is woken.
pub(super) const CHECKPOINT_FRAMES: c_int = 1000;
/// Frames in the log past which the writer checkpoints itself (or more, see
/// [`WalHook`]).
pub(super) const WRITER_CHECKPOINT_FRAMES: c_int = 2 * CHECKPOINT_FRAMES;

/// Called by SQLite after each commit of the hooked connection, with its write lock
/// released; `arg` is the hook's [`HookState`].
unsafe extern "C" fn wal_hook(
    arg: *mut std::ffi::c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    frames: c_int,
) -> c_int {
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: `arg` is the boxed state, alive as long as the connection is open.
    let state = unsafe { &*arg.cast::<HookState>() };
    let before = state.frames.swap(frames, Relaxed);
    // The log starts again after a checkpoint copied all of it.
    let this_commit = if frames > before {
        frames - before
    } else {
        frames
    };
    let writer_at = WRITER_CHECKPOINT_FRAMES.max(this_commit.saturating_mul(3));
    if frames >= writer_at {
        // As SQLite's own hook does; its result is of no use here (the checkpointer
        // or a reader in the way only leaves more of the log to the next commit).
        // SAFETY: `db` and `name` are what SQLite passed for this commit.
        unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                db,
                name,
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    } else if frames >= CHECKPOINT_FRAMES {
        // Full: the checkpointer is woken already.
        let _ = state.wake.try_send(());
    }
    ffi::SQLITE_OK
}

impl WalHook {
    /// Hooks `conn`'s commits, waking the checkpointer through `wake`.
    pub(super) fn install(
        conn: &rusqlite::Connection,
        wake: std::sync::mpsc::SyncSender<()>,
    ) -> rusqlite::Result<WalHook> {
        // SAFETY: the handle is used once, now, while `conn` is open.
        let db =
            NonNull::new(unsafe { conn.handle() }).ok_or_else(|| rusqlite::Error::InvalidQuery)?;
        let state = Box::new(HookState {
            wake,
            frames: std::sync::atomic::AtomicI32::new(0),
        });
        let arg = std::ptr::from_ref::<HookState>(&state)
            .cast_mut()
            .cast::<std::ffi::c_void>();
        // SAFETY: `arg` points into the box, which outlives the connection (the type's
        // doc), and `wal_hook` only reads the state through it (its counter atomic).
        unsafe { ffi::sqlite3_wal_hook(db.as_ptr(), Some(wal_hook), arg) };
        Ok(WalHook { _state: state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (a TEXT NOT NULL, b INTEGER, c REAL, d TEXT)")
            .expect("create");
        conn
    }

    fn rows(conn: &rusqlite::Connection) -> Vec<(String, i64, f64, Option<String>)> {
        let mut select = conn.prepare("SELECT a, b, c, d FROM t").expect("select");
        let rows = select
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        rows
    }

    #[test]
    fn a_run_executes_only_when_it_bound_every_parameter_itself() {
        let conn = table();
        let mut insert =
            Prepared::new(&conn, "INSERT INTO t VALUES (?, ?, ?, ?)").expect("prepare");
        {
            let text = String::from("first");
            let mut run = insert.run();
            run.text(&text).expect("a");
            run.int(7).expect("b");
            run.float(1.5).expect("c");
            run.null().expect("d");
            assert_eq!(run.execute().expect("insert"), 1);
        }
        // The first run's text is gone: a run that binds less must not reuse it.
        let mut run = insert.run();
        run.text("second").expect("a");
        assert!(matches!(
            run.execute(),
            Err(rusqlite::Error::InvalidParameterCount(1, 4))
        ));
        assert_eq!(rows(&conn), vec![("first".to_owned(), 7, 1.5, None)]);
    }

    #[test]
    fn a_refused_row_reports_sqlites_extended_code_and_message_and_the_statement_runs_again() {
        let conn = table();
        let mut insert =
            Prepared::new(&conn, "INSERT INTO t VALUES (?, ?, ?, ?)").expect("prepare");
        let mut run = insert.run();
        for _ in 0..4 {
            run.null().expect("bind");
        }
        match run.execute() {
            Err(rusqlite::Error::SqliteFailure(e, Some(message))) => {
                assert_eq!(e.extended_code, ffi::SQLITE_CONSTRAINT_NOTNULL);
                assert_eq!(message, "NOT NULL constraint failed: t.a");
            }
            other => panic!("expected a NOT NULL failure, got {other:?}"),
        }
        let mut run = insert.run();
        run.text("after").expect("a");
        run.int(1).expect("b");
        run.float(2.5).expect("c");
        run.text("d").expect("d");
        assert_eq!(run.execute().expect("insert"), 1);
        assert_eq!(
            rows(&conn),
            vec![("after".to_owned(), 1, 2.5, Some("d".to_owned()))]
        );
    }

    #[test]
    fn bad_sql_is_refused_with_sqlites_message() {
        let conn = table();
        match Prepared::new(&conn, "INSERT INTO missing VALUES (?)") {
            Err(rusqlite::Error::SqliteFailure(_, Some(message))) => {
                assert_eq!(message, "no such table: missing")
            }
            Err(other) => panic!("expected SQLite's error, got {other:?}"),
            Ok(_) => panic!("prepared a statement on a missing table"),
        }
    }
}
