//! PostgreSQL writer: `COPY … FROM STDIN` in text format, one per batch, inside the
//! load's transaction (opened with its registration, committed with its ledger row: see
//! `generic::OpenLoad`). Text-format COPY is also what Postgres-wire databases such as
//! CockroachDB and YugabyteDB accept. With `id_field`, the batch is copied into a
//! per-connection temporary table and moved with `INSERT … ON CONFLICT DO NOTHING`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Executor as _, PgPool};

use super::dialect::{copy_text_cell, copy_text_escape, Dialect};
use super::generic::delete_replayed;
use super::generic::{commit_error, OpenLoad};
use super::ledger::Load;
use super::store::{Pools, Store};
use super::DatabaseConfig;
use super::{sink_error, BatchWriter, RowBatch, SinkError, Storage, Written};
use crate::event::{Cell, DeadLetter, Row};
use crate::schema::Stream;

const DIALECT: Dialect = Dialect::Postgres;

/// The PostgreSQL batch writer.
pub struct PgCopy {
    pool: PgPool,
}

/// Connects to PostgreSQL: the batch writer and the shared store on one pool, and the
/// store's health connection.
pub async fn connect(config: &DatabaseConfig) -> Result<Storage, SinkError> {
    let err = sink_error(DIALECT);
    let mut options = PgConnectOptions::from_str(&config.url).map_err(&err)?;
    // `pg_stat_activity` names the instance of each session (unless the URL names it).
    if options.get_application_name().is_none() {
        options = options.application_name(&format!("sluice {}", super::ledger::instance()));
    }
    let (pool, health) = super::open_pools::<sqlx::Postgres>(config, options, DIALECT).await?;
    Ok(Storage {
        writer: Arc::new(PgCopy { pool: pool.clone() }),
        store: Store::new(
            Pools::Postgres(pool),
            Pools::Postgres(health),
            DIALECT,
            usize::MAX,
        ),
    })
}

/// Encodes `rows` as COPY text-format lines, in [`Dialect::column_list`] order, each
/// with `load` as its `_load_id`.
pub fn encode_rows(stream: &Stream, rows: &[Row], load: Option<i64>) -> String {
    let load = load.map_or_else(|| "\\N".to_owned(), |id| id.to_string());
    let mut out = String::with_capacity(rows.iter().map(|r| r.raw.len() + 64).sum());
    // The rows of one request share their time of receipt: its text is made once.
    let mut received: Option<(chrono::DateTime<chrono::Utc>, String)> = None;
    for row in rows {
        for cell in &row.cells {
            copy_text_cell(&mut out, cell);
            out.push('\t');
        }
        match &received {
            Some((at, text)) if *at == row.received_at => out.push_str(text),
            _ => {
                let mut text = String::with_capacity(32);
                copy_text_cell(&mut text, &Cell::Timestamp(row.received_at));
                out.push_str(&text);
                received = Some((row.received_at, text));
            }
        }
        if stream.has_extra {
            out.push('\t');
            match &row.extra {
                Some(extra) => copy_text_escape(&mut out, extra),
                None => out.push_str("\\N"),
            }
        }
        out.push('\t');
        out.push_str(&load);
        out.push('\n');
    }
    out
}

/// Encodes dead letters as COPY text-format lines, in [`super::dialect::DEAD_LETTER_COLUMNS`] order.
fn encode_dead_letters(letters: &[DeadLetter]) -> String {
    let mut out = String::with_capacity(
        letters
            .iter()
            .map(|d| d.payload.len() + d.error.len() + 96)
            .sum(),
    );
    for d in letters {
        match &d.stream {
            Some(s) => copy_text_escape(&mut out, s),
            None => out.push_str("\\N"),
        }
        for text in [d.stage.as_str(), &d.error, &d.payload, &d.source] {
            out.push('\t');
            copy_text_escape(&mut out, text);
        }
        out.push('\t');
        copy_text_cell(&mut out, &Cell::Timestamp(d.received_at));
        out.push('\t');
        copy_text_cell(&mut out, &Cell::Int(d.attempts.into()));
        out.push_str(if d.treated { "\tt\n" } else { "\tf\n" });
    }
    out
}

async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    data: String,
) -> Result<usize, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(data.into_bytes()).await?;
    let rows = copy.finish().await?;
    Ok(usize::try_from(rows).unwrap_or(usize::MAX))
}

/// A per-connection staging table name for `table`, stable and within 63 bytes.
fn staging_table(table: &str) -> String {
    let mut h = DefaultHasher::new();
    table.hash(&mut h);
    format!("sluice_stage_{:016x}", h.finish())
}

impl BatchWriter for PgCopy {
    fn dialect(&self) -> Dialect {
        DIALECT
    }

    fn write_batch<'a>(&'a self, batch: RowBatch<'a>) -> Written<'a> {
        Box::pin(async move {
            let conn = self.pool.acquire().await.map_err(sink_error(DIALECT))?;
            let mut load = OpenLoad::begin(conn, DIALECT, batch.stream).await?;
            let id = load.id;
            let written = write_load(load.conn(), batch, id).await;
            load.end(written).await
        })
    }

    fn write_dead_letters<'a>(&'a self, letters: &'a [DeadLetter]) -> Written<'a> {
        Box::pin(async move {
            let err = sink_error(DIALECT);
            let mut conn = self.pool.acquire().await.map_err(&err)?;
            let statement = DIALECT.copy_dead_letters();
            copy_in(&mut conn, &statement, encode_dead_letters(letters))
                .await
                .map_err(&err)
        })
    }
}

/// Writes the batch as load `load_id`, inside the transaction [`OpenLoad::begin`]
/// opened: its replayed dead letters deleted, its rows, then its registration claimed,
/// its ledger row and the commit in one round trip.
async fn write_load(
    conn: &mut PgConnection,
    batch: RowBatch<'_>,
    load_id: i64,
) -> Result<usize, SinkError> {
    let (stream, rows, replayed) = batch.parts();
    let err = sink_error(DIALECT);
    let data = encode_rows(
        stream,
        &super::upsert::last_per_key(stream, rows),
        Some(load_id),
    );
    delete_replayed::<sqlx::Postgres>(conn, DIALECT, replayed).await?;
    let stored = match &stream.key {
        None => {
            let statement = DIALECT.copy_rows(&stream.table, stream);
            copy_in(conn, &statement, data).await.map_err(&err)?
        }
        Some(_) => {
            // Through a per-connection staging table, so that a row whose key is
            // stored is skipped (`id_field`) or replaces it (`upsert_key`) instead of
            // failing the COPY.
            let stage = staging_table(&stream.table);
            sqlx::query(&DIALECT.create_staging(&stage, &stream.table))
                .execute(&mut *conn)
                .await
                .map_err(&err)?;
            let statement = DIALECT.copy_rows(&stage, stream);
            copy_in(conn, &statement, data).await.map_err(&err)?;
            let inserted = sqlx::query(&DIALECT.insert_from_staging(&stage, stream))
                .execute(&mut *conn)
                .await
                .map_err(&err)?
                .rows_affected();
            usize::try_from(inserted).unwrap_or(usize::MAX)
        }
    };
    let mut load = Load::of(stream, rows);
    load.pointer = batch.pointer.cloned();
    let commit = DIALECT.commit_load(load_id, &load, stored, &chrono::Utc::now());
    // Several statements: sent as one simple query (no bound values).
    conn.execute(commit.as_str())
        .await
        .map_err(commit_error(DIALECT, load_id, &load))?;
    Ok(stored)
}
