//! A transform's SQL file: split into statements, and `:from_load` / `:to_load`
//! replaced by the load ids of the run.
//!
//! One scan reads the text as the databases do, so that a `;` or a `:from_load` inside
//! a string literal (`'…'`), a quoted identifier (`"…"`, `` `…` ``), a comment (`--`,
//! `/* … */`) or a PostgreSQL dollar-quoted body (`$$ … $$`, `$fn$ … $fn$`) is left
//! alone, and a PostgreSQL cast (`x::date`) is not a parameter.

/// The two parameters a transform's SQL may use.
pub const FROM_LOAD: &str = "from_load";
pub const TO_LOAD: &str = "to_load";

/// A transform's statements, ready to be bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    statements: Vec<Vec<Piece>>,
}

/// A statement is text and parameters in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Param(Param),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    From,
    To,
}

impl Script {
    /// Reads `sql`; an unknown `:name` parameter or an unterminated quote or comment is
    /// an error that says where. `backslash_escapes`: a backslash escapes a quote in a
    /// string literal (MySQL/MariaDB; PostgreSQL and SQLite read it as a backslash).
    pub fn parse(sql: &str, backslash_escapes: bool) -> Result<Script, String> {
        let mut statements = Vec::new();
        let mut pieces: Vec<Piece> = Vec::new();
        let mut text = String::new();
        let bytes = sql.as_bytes();
        let mut i = 0;
        let line_of = |at: usize| sql[..at].matches('\n').count() + 1;
        while i < bytes.len() {
            let c = bytes[i];
            match c {
                b'\'' | b'"' | b'`' => {
                    let end = quoted_end(bytes, i, c, backslash_escapes).ok_or_else(|| {
                        format!("line {}: a {} is never closed", line_of(i), c as char)
                    })?;
                    text.push_str(&sql[i..end]);
                    i = end;
                }
                b'-' if bytes.get(i + 1) == Some(&b'-') => {
                    let end = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
                    text.push_str(&sql[i..end]);
                    i = end;
                }
                b'/' if bytes.get(i + 1) == Some(&b'*') => {
                    let end = sql[i + 2..]
                        .find("*/")
                        .map(|n| i + 2 + n + 2)
                        .ok_or_else(|| {
                            format!("line {}: a /* comment is never closed", line_of(i))
                        })?;
                    text.push_str(&sql[i..end]);
                    i = end;
                }
                b'$' => match dollar_tag(&sql[i..]) {
                    Some(tag) => {
                        let body = i + tag.len();
                        let end = sql[body..]
                            .find(tag)
                            .map(|n| body + n + tag.len())
                            .ok_or_else(|| {
                                format!(
                                    "line {}: the body opened by {tag} is never closed",
                                    line_of(i)
                                )
                            })?;
                        text.push_str(&sql[i..end]);
                        i = end;
                    }
                    None => {
                        text.push('$');
                        i += 1;
                    }
                },
                b':' if bytes.get(i + 1) == Some(&b':') => {
                    text.push_str("::");
                    i += 2;
                }
                b':' if bytes
                    .get(i + 1)
                    .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
                    && !previous_is_word(bytes, i) =>
                {
                    let name_end = sql[i + 1..]
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .map_or(bytes.len(), |n| i + 1 + n);
                    let param = match &sql[i + 1..name_end] {
                        FROM_LOAD => Param::From,
                        TO_LOAD => Param::To,
                        other => {
                            return Err(format!(
                                "line {}: unknown parameter :{other}; a transform's SQL may use :{FROM_LOAD} and :{TO_LOAD}",
                                line_of(i)
                            ))
                        }
                    };
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Param(param));
                    i = name_end;
                }
                b';' => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    let statement = std::mem::take(&mut pieces);
                    if !is_blank(&statement) {
                        statements.push(statement);
                    }
                    i += 1;
                }
                _ => {
                    // Whole characters: the bytes up to the next one that means something.
                    let end = sql[i..]
                        .find(['\'', '"', '`', '-', '/', '$', ':', ';'])
                        .map_or(bytes.len(), |n| if n == 0 { i + 1 } else { i + n });
                    text.push_str(&sql[i..end]);
                    i = end;
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if !is_blank(&pieces) {
            statements.push(pieces);
        }
        if statements.is_empty() {
            return Err("holds no statement".into());
        }
        Ok(Script { statements })
    }

    /// Whether the SQL uses `:from_load` or `:to_load`: an incremental transform; one
    /// that uses neither is a full refresh.
    pub fn is_incremental(&self) -> bool {
        self.statements
            .iter()
            .flatten()
            .any(|p| matches!(p, Piece::Param(_)))
    }

    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// The statements with the load ids of the run written in (integers, so written as
    /// literals).
    pub fn bind(&self, from_load: i64, to_load: i64) -> Vec<String> {
        self.statements
            .iter()
            .map(|pieces| {
                let mut sql = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => sql.push_str(t),
                        Piece::Param(Param::From) => sql.push_str(&from_load.to_string()),
                        Piece::Param(Param::To) => sql.push_str(&to_load.to_string()),
                    }
                }
                sql.trim().to_owned()
            })
            .collect()
    }

    /// Whether the last statement is a query (a `SELECT`, `WITH … SELECT`, `VALUES`):
    /// the rows a published transform publishes.
    pub fn ends_with_query(&self) -> bool {
        let Some(last) = self.statements.last() else {
            return false;
        };
        let text: String = last
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Param(_) => " 0 ",
            })
            .collect();
        let first = strip_comments(&text)
            .split(|c: char| !c.is_ascii_alphabetic())
            .find(|w| !w.is_empty())
            .unwrap_or_default()
            .to_ascii_lowercase();
        matches!(first.as_str(), "select" | "with" | "values" | "table")
    }
}

/// Where the quote opened at `start` ends (one past its closing quote); a doubled quote
/// is an escaped one, and so is a backslash-escaped one where `backslash_escapes`.
fn quoted_end(bytes: &[u8], start: usize, quote: u8, backslash_escapes: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote == b'\'' && backslash_escapes => i += 2,
            b if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// A PostgreSQL dollar-quote tag at the start of `s` (`$$`, `$body$`), if it is one.
fn dollar_tag(s: &str) -> Option<&str> {
    let rest = &s[1..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let tag_name = &rest[..end];
    if rest[end..].starts_with('$') && !tag_name.starts_with(|c: char| c.is_ascii_digit()) {
        Some(&s[..end + 2])
    } else {
        None
    }
}

/// Whether the byte before `i` belongs to a word (`a:b` is not a parameter).
fn previous_is_word(bytes: &[u8], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')
}

fn is_blank(pieces: &[Piece]) -> bool {
    pieces.iter().all(|p| match p {
        Piece::Text(t) => strip_comments(t).trim().is_empty(),
        Piece::Param(_) => false,
    })
}

/// `text` without its `--` and `/* */` comments (quotes already kept whole by the scan).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let line = rest.find("--");
        let block = rest.find("/*");
        match (line, block) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = rest[b + 2..]
                    .find("*/")
                    .map_or("", |n| &rest[b + 2 + n + 2..]);
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_on_semicolons_outside_quotes_and_comments() {
        let script = Script::parse(
            "CREATE TABLE t (a text); -- a comment; with a semicolon\n\
             INSERT INTO t VALUES ('x;y', \"q;\", `b;`) /* c; */;\n\
             CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n\
             SELECT 'it''s; fine', $$ a; b $$\n",
            false,
        )
        .unwrap();
        let sql = script.bind(1, 2);
        assert_eq!(sql.len(), 4, "{sql:?}");
        assert_eq!(sql[0], "CREATE TABLE t (a text)");
        assert!(
            sql[1].ends_with("INSERT INTO t VALUES ('x;y', \"q;\", `b;`) /* c; */"),
            "{}",
            sql[1]
        );
        assert!(sql[2].contains("$body$ SELECT 1; $body$"), "{}", sql[2]);
        assert_eq!(sql[3], "SELECT 'it''s; fine', $$ a; b $$");
        assert!(!script.is_incremental());
        assert!(script.ends_with_query());
    }

    #[test]
    fn load_ids_are_bound_where_they_are_parameters_only() {
        let script = Script::parse(
            "DELETE FROM t WHERE _load_id BETWEEN :from_load AND :to_load;\n\
             INSERT INTO t SELECT x::date, ':from_load', \"a:to_load\" FROM s WHERE _load_id <= :to_load;\n\
             -- :nothing here\n",
            false,
        )
        .unwrap();
        assert!(script.is_incremental());
        assert!(!script.ends_with_query());
        let sql = script.bind(11, 42);
        assert_eq!(sql, vec![
            "DELETE FROM t WHERE _load_id BETWEEN 11 AND 42".to_owned(),
            "INSERT INTO t SELECT x::date, ':from_load', \"a:to_load\" FROM s WHERE _load_id <= 42".to_owned(),
        ]);
    }

    #[test]
    fn a_backslash_escapes_a_quote_on_mysql_only() {
        let windows = r"SELECT 'C:\'; SELECT 1";
        assert_eq!(
            Script::parse(windows, false).unwrap().bind(0, 0),
            vec![r"SELECT 'C:\'", "SELECT 1"]
        );
        let mysql = r"SELECT 'it\'s'; SELECT 1";
        assert_eq!(
            Script::parse(mysql, true).unwrap().bind(0, 0),
            vec![r"SELECT 'it\'s'", "SELECT 1"]
        );
        assert!(Script::parse(mysql, false).is_err());
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        assert_eq!(
            Script::parse("SELECT 1;\nSELECT :since", false).unwrap_err(),
            "line 2: unknown parameter :since; a transform's SQL may use :from_load and :to_load"
        );
        assert_eq!(
            Script::parse("SELECT 1;\n\nSELECT 'open", false).unwrap_err(),
            "line 3: a ' is never closed"
        );
        assert_eq!(
            Script::parse("-- only a comment;\n", false).unwrap_err(),
            "holds no statement"
        );
    }

    #[test]
    fn a_query_is_recognised_after_comments() {
        let script = Script::parse(
            "UPDATE t SET a = 1; /* rows */ -- published\n WITH x AS (SELECT 1) SELECT * FROM x",
            false,
        )
        .unwrap();
        assert!(script.ends_with_query());
        assert_eq!(script.len(), 2);
    }
}
