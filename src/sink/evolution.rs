//! Schema evolution at start-up: compares each stream's table with its schema and
//! returns the `ALTER TABLE … ADD COLUMN` statements for new optional properties, or a
//! refusal naming the change that cannot be applied safely and the DDL to run by hand.
//! [`plan`] is pure code; [`evolve_tables`] reads each table's columns through the
//! store and runs the statements.

use crate::schema::{OnConflict, Stream};
use std::sync::Arc;

use anyhow::Context;

use super::{Dialect, Store};

/// A column as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingColumn {
    pub name: String,
    pub nullable: bool,
    /// The type as the database reports it (`information_schema` / `pragma_table_info`).
    pub data_type: String,
}

/// The storage class of a column type, coarse enough that the spellings a database
/// reports for the type Sluice creates compare equal (`character varying` and `text`,
/// MariaDB's `json` reported as `longtext`, SQLite's type affinities).
fn storage_class(dialect: Dialect, data_type: &str) -> &'static str {
    let t = data_type.to_ascii_lowercase();
    let base = t.split('(').next().unwrap_or_default().trim();
    match dialect {
        Dialect::Postgres => match base {
            "text" | "character varying" | "character" | "varchar" | "char" => "text",
            "timestamp with time zone" | "timestamptz" => "timestamptz",
            "uuid" => "uuid",
            "bigint" | "integer" | "smallint" | "int" | "int8" | "int4" | "int2" => "integer",
            "double precision" | "real" | "float8" | "float4" => "number",
            "numeric" | "decimal" => "decimal",
            "boolean" | "bool" => "boolean",
            "jsonb" | "json" => "json",
            _ => "other",
        },
        Dialect::Mysql => match base {
            "varchar" | "char" | "text" | "tinytext" | "mediumtext" | "longtext" | "json" => "text",
            "datetime" | "timestamp" => "datetime",
            "bigint" | "int" | "integer" | "mediumint" | "smallint" => "integer",
            "tinyint" | "boolean" | "bool" => "boolean",
            "double" | "float" | "real" => "number",
            "decimal" | "numeric" => "decimal",
            _ => "other",
        },
        // SQLite's affinity rules (https://sqlite.org/datatype3.html, 3.1).
        Dialect::Sqlite if t.contains("int") => "integer",
        Dialect::Sqlite if t.contains("char") || t.contains("clob") || t.contains("text") => "text",
        Dialect::Sqlite if t.contains("real") || t.contains("floa") || t.contains("doub") => "real",
        Dialect::Sqlite => "other",
    }
}

/// The statements that bring `existing` (the table's columns, non-empty) in line with
/// `stream`'s schema, or why that cannot be done automatically.
pub fn plan(
    dialect: Dialect,
    stream: &Stream,
    existing: &[ExistingColumn],
    table_has_rows: bool,
) -> Result<Vec<String>, String> {
    let table = dialect.quote(&stream.table);
    let wanted = dialect.table_columns(stream);
    let mut statements = Vec::new();
    let mut problems = Vec::new();
    for (name, ty, nullable) in &wanted {
        if let Some(current) = existing.iter().find(|c| c.name.eq_ignore_ascii_case(name)) {
            if storage_class(dialect, &current.data_type) != storage_class(dialect, ty) {
                problems.push(format!(
                    "column `{name}` of table {table} is {} but the schema now makes it {ty}: change the column (e.g. {}) or the schema",
                    current.data_type,
                    match dialect {
                        Dialect::Postgres => format!("ALTER TABLE {table} ALTER COLUMN {} TYPE {ty} USING …", dialect.quote(name)),
                        Dialect::Mysql => format!("ALTER TABLE {table} MODIFY {} {ty}", dialect.quote(name)),
                        Dialect::Sqlite => format!("recreate {table} with {} {ty}", dialect.quote(name)),
                    }
                ));
            }
            continue;
        }
        let column = dialect.quote(name);
        if *nullable {
            statements.push(dialect.add_column(&stream.table, name, ty, false));
        } else if !table_has_rows && dialect != Dialect::Sqlite {
            statements.push(dialect.add_column(&stream.table, name, ty, true));
        } else {
            problems.push(format!(
                "property `{name}` is now required, but table {table} already has rows without it: make it optional in the schema, or fill it yourself, e.g. ALTER TABLE {table} ADD COLUMN {column} {ty} NOT NULL DEFAULT <value>"
            ));
        }
    }
    for column in existing {
        let declared = wanted
            .iter()
            .any(|(n, _, _)| n.eq_ignore_ascii_case(&column.name));
        if !declared && !column.nullable {
            let fix = match dialect {
                Dialect::Postgres => format!(
                    "ALTER TABLE {table} ALTER COLUMN {} DROP NOT NULL",
                    dialect.quote(&column.name)
                ),
                Dialect::Mysql => format!(
                    "ALTER TABLE {table} MODIFY {} <its type> NULL",
                    dialect.quote(&column.name)
                ),
                Dialect::Sqlite => format!(
                    "recreate {table} without NOT NULL on {}",
                    dialect.quote(&column.name)
                ),
            };
            problems.push(format!(
                "column `{}` of table {table} is NOT NULL but the schema no longer declares it, so every insert would fail: {fix}",
                column.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(statements)
    } else {
        Err(format!(
            "stream `{}` ({}): {}",
            stream.name,
            stream.schema_file.display(),
            problems.join("; ")
        ))
    }
}

/// A statement start-up runs to bring an existing table in line with its stream.
#[derive(Debug, Clone)]
pub struct Change {
    pub stream: String,
    pub sql: String,
    /// What it does, for messages: "a new column", "id_field's unique key".
    pub what: &'static str,
}

/// What start-up would do to the existing tables: the statements it would run, and the
/// changes it cannot apply by itself (each naming the DDL to run by hand).
#[derive(Debug, Default)]
pub struct Pending {
    pub changes: Vec<Change>,
    pub problems: Vec<String>,
    /// The streams whose table does not exist yet (created by `Store::prepare`).
    pub missing: Vec<Arc<Stream>>,
}

/// Compares each stream's existing table with its schema and settings (read only).
pub async fn pending(store: &Store, streams: &[Arc<Stream>]) -> anyhow::Result<Pending> {
    let mut pending = Pending::default();
    for stream in streams {
        let existing = store
            .describe_table(&stream.table)
            .await
            .context("cannot read the tables' columns")?;
        if existing.is_empty() {
            pending.missing.push(stream.clone());
            continue;
        }
        // Most starts change nothing: then the table is not read at all (a table locked
        // by someone else does not hold up the start, or a replay job).
        if !matches!(plan(store.dialect(), stream, &existing, true), Ok(s) if s.is_empty()) {
            let has_rows = store
                .table_has_rows(&stream.table)
                .await
                .context("cannot read the tables")?;
            match plan(store.dialect(), stream, &existing, has_rows) {
                Ok(statements) => {
                    pending
                        .changes
                        .extend(statements.into_iter().map(|sql| Change {
                            stream: stream.name.clone(),
                            sql,
                            what: "a new column",
                        }))
                }
                Err(problem) => pending.problems.push(problem),
            }
        }
        // The table exists (an empty description was skipped above).
        match unique_key(store, stream).await? {
            Ok(statements) => pending
                .changes
                .extend(statements.into_iter().map(|sql| Change {
                    stream: stream.name.clone(),
                    sql,
                    what: match stream.key.as_ref().map(|k| &k.on_conflict) {
                        Some(OnConflict::Replace { .. }) => "upsert_key's unique key",
                        _ => "id_field's unique key",
                    },
                })),
            Err(problem) => pending.problems.push(problem),
        }
    }
    Ok(pending)
}

/// Adds the columns of new optional properties, and the unique key of an `id_field`
/// set on an existing table; stops start-up, naming the change and the DDL to run,
/// when a change cannot be applied safely. Returns the streams whose table does not
/// exist yet.
pub async fn evolve_tables(
    store: &Store,
    streams: &[Arc<Stream>],
) -> anyhow::Result<Vec<Arc<Stream>>> {
    let Pending {
        changes,
        problems,
        missing,
    } = pending(store, streams).await?;
    anyhow::ensure!(
        problems.is_empty(),
        "the schemas changed in ways Sluice cannot apply by itself:\n{}",
        problems.join("\n")
    );
    for change in changes {
        tracing::info!(stream = %change.stream, sql = %change.sql, "Schema or settings changed: adding {} to the table.", change.what);
        store
            .execute_ddl(vec![change.sql.clone()])
            .await
            .with_context(|| {
                format!(
                    "cannot add {} for stream `{}`; once the cause is resolved, run it yourself or start again: {}",
                    change.what, change.stream, change.sql
                )
            })?;
    }
    Ok(missing)
}

/// The statements giving `stream`'s existing table the unique key its `id_field` or
/// `upsert_key` needs (set on a stream whose table was made without it: every write would then fail
/// on PostgreSQL and SQLite, or silently store redeliveries twice on MySQL), none when
/// it has one. `Err` counts the rows that already repeat an id, with the DDL to run
/// once they are resolved.
async fn unique_key(store: &Store, stream: &Stream) -> anyhow::Result<Result<Vec<String>, String>> {
    let Some(key) = &stream.key else {
        return Ok(Ok(Vec::new()));
    };
    let table = &stream.table;
    if store
        .has_unique_key(table, &key.columns)
        .await
        .context("cannot read the tables' unique keys")?
    {
        return Ok(Ok(Vec::new()));
    }
    let dialect = store.dialect();
    let statements = dialect.add_unique_key(stream, &key.columns);
    let duplicates = store
        .count_duplicates(table, &key.columns)
        .await
        .context("cannot count the rows that repeat an id")?;
    let setting = match &key.on_conflict {
        OnConflict::Skip => format!("id_field = \"{}\"", key.columns.join("")),
        OnConflict::Replace { .. } => format!("upsert_key = {:?}", key.columns),
    };
    if duplicates > 0 {
        return Ok(Err(format!(
            "stream `{}` sets {setting} but table {} has no unique key on it, and {duplicates} of its rows repeat an id an earlier row holds: remove or merge them, then start again (Sluice adds the key) or add it yourself: {}",
            stream.name,
            dialect.quote(table),
            statements.join("; ")
        )));
    }
    Ok(Ok(statements))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_types_sluice_creates_are_recognised_as_reported() {
        use crate::schema::ColumnType as T;
        let types = [
            T::Text { max_length: None },
            T::Text {
                max_length: Some(8),
            },
            T::Timestamp,
            T::Uuid,
            T::Integer,
            T::Number,
            T::Boolean,
            T::Json,
            T::Hash,
            T::Decimal {
                precision: 12,
                scale: 2,
            },
        ];
        let reported = |d: Dialect, ty: T| -> &'static str {
            match (d, ty) {
                (Dialect::Postgres, T::Text { .. } | T::Hash) => "text",
                (Dialect::Postgres, T::Timestamp) => "timestamp with time zone",
                (Dialect::Postgres, T::Uuid) => "uuid",
                (Dialect::Postgres, T::Integer) => "bigint",
                (Dialect::Postgres, T::Number) => "double precision",
                (Dialect::Postgres, T::Boolean) => "boolean",
                (Dialect::Postgres, T::Json) => "jsonb",
                (Dialect::Postgres, T::Decimal { .. }) => "numeric",
                (Dialect::Mysql, T::Decimal { .. }) => "decimal",
                (
                    Dialect::Mysql,
                    T::Text {
                        max_length: Some(_),
                    },
                ) => "varchar",
                (Dialect::Mysql, T::Text { .. } | T::Json) => "longtext",
                (Dialect::Mysql, T::Timestamp) => "datetime",
                (Dialect::Mysql, T::Uuid | T::Hash) => "char",
                (Dialect::Mysql, T::Integer) => "bigint",
                (Dialect::Mysql, T::Number) => "double",
                (Dialect::Mysql, T::Boolean) => "tinyint",
                (Dialect::Sqlite, _) => "",
            }
        };
        for d in [Dialect::Postgres, Dialect::Mysql, Dialect::Sqlite] {
            for ty in types {
                let created = d.column_type(ty, false);
                let seen = if d == Dialect::Sqlite {
                    created.clone()
                } else {
                    reported(d, ty).to_owned()
                };
                assert_eq!(
                    storage_class(d, &seen),
                    storage_class(d, &created),
                    "{d:?} {ty:?}"
                );
                assert_ne!(storage_class(d, &created), "other", "{d:?} {ty:?}");
            }
        }
        assert_ne!(
            storage_class(Dialect::Postgres, "text"),
            storage_class(Dialect::Postgres, "double precision")
        );
    }
}
