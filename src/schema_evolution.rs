//! Schema evolution at start-up: compares each stream's table with its schema and
//! returns the `ALTER TABLE … ADD COLUMN` statements for new optional properties, or a
//! refusal naming the change that cannot be applied safely and the DDL to run by hand.
//! Pure code: the caller reads the table's columns and runs the statements.

use crate::schema::{Stream, EXTRA, RECEIVED_AT};
use crate::sink::Dialect;

/// A column as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingColumn {
    pub name: String,
    pub nullable: bool,
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
    let has = |name: &str| existing.iter().any(|c| c.name.eq_ignore_ascii_case(name));
    let mut wanted: Vec<(String, String, bool)> = stream
        .columns
        .iter()
        .map(|c| {
            let is_id = stream.id_field.as_deref() == Some(c.name.as_str());
            (c.name.clone(), dialect.column_type(c.ty, is_id), c.nullable)
        })
        .collect();
    wanted.push((
        RECEIVED_AT.to_owned(),
        dialect.timestamp_type().to_owned(),
        false,
    ));
    if stream.has_extra {
        wanted.push((EXTRA.to_owned(), dialect.json_type().to_owned(), true));
    }
    let mut statements = Vec::new();
    let mut problems = Vec::new();
    for (name, ty, nullable) in &wanted {
        if has(name) {
            continue;
        }
        let column = dialect.quote(name);
        if *nullable {
            statements.push(format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"));
        } else if !table_has_rows && dialect != Dialect::Sqlite {
            statements.push(format!(
                "ALTER TABLE {table} ADD COLUMN {column} {ty} NOT NULL"
            ));
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
