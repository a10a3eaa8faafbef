//! The same migrations on a replicated ClickHouse: each statement of a migration file is
//! rewritten for a `<remote_servers>` cluster (`clickhouse.cluster`) before it runs, so the
//! numbered files stay the one description of the schema.
//!
//! It owns the rewrite only (pure text to text); [`super::apply`] decides when to use it.
//!
//! | statement | on a cluster |
//! |---|---|
//! | `CREATE DATABASE [IF NOT EXISTS] d` | `... d ON CLUSTER c` |
//! | `CREATE TABLE [IF NOT EXISTS] t (...) ENGINE = XMergeTree(args) ...` | `... db.t ON CLUSTER c (...) ENGINE = ReplicatedXMergeTree('/clickhouse/tables/{shard}/db/t', '{replica}'[, args]) ...` |
//! | `CREATE VIEW [IF NOT EXISTS] v AS SELECT ... FROM t` | `... db.v ON CLUSTER c AS SELECT ... FROM db.t` |
//! | `DROP TABLE\|VIEW [IF EXISTS] t`, `ALTER TABLE t ...` | `... db.t ON CLUSTER c ...` |
//! | `CREATE ROLE [IF NOT EXISTS] r` | `... r ON CLUSTER c` |
//! | `GRANT ...`, `REVOKE ...` | `GRANT ON CLUSTER c ...`, `REVOKE ON CLUSTER c ...` |
//!
//! Anything else is refused ([`ClusterRewriteError`]): a statement that would run on one
//! replica only must never pass silently. Names are qualified with the database because a
//! distributed DDL runs on every host in that host's default database, not the caller's
//! (18.16 resolves a view's tables when it creates it, so view bodies are qualified too).
//!
//! ZooKeeper paths: `/clickhouse/tables/{shard}/<database>/<table>`, replica name
//! `{replica}` (`{shard}` and `{replica}` are each server's `<macros>`). One database's
//! tables never share a path with another database's, so test databases and a production
//! database live side by side in one ZooKeeper.

/// The ZooKeeper path of a replicated table's shard: `{shard}` is the server's macro.
pub fn zookeeper_path(database: &str, table: &str) -> String {
    format!("/clickhouse/tables/{{shard}}/{database}/{table}")
}

/// A statement the cluster rewrite does not know how to replicate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("statement is not cluster-aware ({reason}): {statement}")]
pub struct ClusterRewriteError {
    pub reason: &'static str,
    pub statement: String,
}

/// The engines that have a `Replicated` variant taking the same arguments after the path and
/// replica name.
const MERGE_TREES: &[&str] = &[
    "MergeTree",
    "ReplacingMergeTree",
    "SummingMergeTree",
    "AggregatingMergeTree",
    "CollapsingMergeTree",
    "VersionedCollapsingMergeTree",
];

/// `stmt` (one statement, comments stripped, `{database}` substituted) rewritten to run on
/// every replica of `cluster` for `database`.
pub fn rewrite(stmt: &str, cluster: &str, database: &str) -> Result<String, ClusterRewriteError> {
    let refuse = |reason| ClusterRewriteError {
        reason,
        statement: stmt.to_owned(),
    };
    let words = Words::new(stmt);
    let on = format!(" ON CLUSTER {cluster}");
    let qualified = |name: &str| {
        if name.contains('.') {
            name.to_owned()
        } else {
            format!("{database}.{name}")
        }
    };
    match words.upper(3).as_slice() {
        [w1, w2, ..] if w1 == "GRANT" || w1 == "REVOKE" => {
            let _ = w2;
            let (head, rest) = words.split_after(1);
            Ok(format!("{head}{on}{rest}"))
        }
        [c, d, ..] if c == "CREATE" && d == "DATABASE" => {
            let (head, name, rest) = words
                .name_after(&["CREATE", "DATABASE"])
                .ok_or_else(|| refuse("no database name"))?;
            Ok(format!("{head}{name}{on}{rest}"))
        }
        [c, r, ..] if c == "CREATE" && r == "ROLE" => {
            let (head, name, rest) = words
                .name_after(&["CREATE", "ROLE"])
                .ok_or_else(|| refuse("no role name"))?;
            Ok(format!("{head}{name}{on}{rest}"))
        }
        [c, t, ..] if c == "CREATE" && t == "TABLE" => {
            let (head, name, rest) = words
                .name_after(&["CREATE", "TABLE"])
                .ok_or_else(|| refuse("no table name"))?;
            let table = name.rsplit('.').next().unwrap_or(&name).to_owned();
            let rest = replicated_engine(rest, database, &table)
                .ok_or_else(|| refuse("not a MergeTree-family engine"))?;
            Ok(format!("{head}{}{on}{rest}", qualified(&name)))
        }
        [c, v, ..] if c == "CREATE" && v == "VIEW" => {
            let (head, name, rest) = words
                .name_after(&["CREATE", "VIEW"])
                .ok_or_else(|| refuse("no view name"))?;
            Ok(format!(
                "{head}{}{on}{}",
                qualified(&name),
                qualify_tables(rest, database)
            ))
        }
        [d, t, ..] if d == "DROP" && (t == "TABLE" || t == "VIEW") => {
            let kind = if t == "TABLE" { "TABLE" } else { "VIEW" };
            let (head, name, rest) = words
                .name_after(&["DROP", kind])
                .ok_or_else(|| refuse("no table name"))?;
            Ok(format!("{head}{}{on}{rest}", qualified(&name)))
        }
        [a, t, ..] if a == "ALTER" && t == "TABLE" => {
            let (head, name, rest) = words
                .name_after(&["ALTER", "TABLE"])
                .ok_or_else(|| refuse("no table name"))?;
            Ok(format!("{head}{}{on}{rest}", qualified(&name)))
        }
        _ => Err(refuse(
            "only CREATE, DROP and ALTER of tables, views, roles and databases, GRANT and REVOKE",
        )),
    }
}

/// The statement's words with their byte offsets (outside quotes nothing is split).
struct Words<'a> {
    text: &'a str,
    spans: Vec<(usize, usize)>,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Words<'a> {
        let mut spans = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            let word = !(c.is_whitespace() || c == '(');
            match (word, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    spans.push((s, i));
                    start = None;
                }
                _ => {}
            }
            if spans.len() >= 12 {
                break;
            }
        }
        if let Some(s) = start {
            if spans.len() < 12 {
                spans.push((s, text.len()));
            }
        }
        Words { text, spans }
    }

    fn word(&self, i: usize) -> Option<&'a str> {
        self.spans.get(i).map(|(s, e)| &self.text[*s..*e])
    }

    /// The first `n` words in upper case.
    fn upper(&self, n: usize) -> Vec<String> {
        (0..n)
            .filter_map(|i| self.word(i))
            .map(str::to_ascii_uppercase)
            .collect()
    }

    /// The text up to the end of word `n` (exclusive index) and the rest.
    fn split_after(&self, n: usize) -> (&'a str, &'a str) {
        let end = self.spans.get(n - 1).map_or(self.text.len(), |(_, e)| *e);
        self.text.split_at(end)
    }

    /// After the keywords `kw` and an optional `IF [NOT] EXISTS`: (the text before the name,
    /// the name, the text after it).
    fn name_after(&self, kw: &[&str]) -> Option<(&'a str, String, &'a str)> {
        let mut i = kw.len();
        let is = |i: usize, k: &str| self.word(i).is_some_and(|w| w.eq_ignore_ascii_case(k));
        if is(i, "IF") && is(i + 1, "NOT") && is(i + 2, "EXISTS") {
            i += 3;
        } else if is(i, "IF") && is(i + 1, "EXISTS") {
            i += 2;
        }
        let (start, end) = *self.spans.get(i)?;
        let name = &self.text[start..end];
        if name.eq_ignore_ascii_case("AS") || name.is_empty() {
            return None;
        }
        Some((
            &self.text[..start],
            name.replace('`', ""),
            &self.text[end..],
        ))
    }
}

/// `rest` (what follows a table's name) with its `ENGINE = XMergeTree[(args)]` made
/// `ReplicatedXMergeTree(path, '{replica}'[, args])`; `None` for any other engine.
fn replicated_engine(rest: &str, database: &str, table: &str) -> Option<String> {
    let upper = rest.to_ascii_uppercase();
    let at = find_word(&upper, "ENGINE")?;
    let after = &rest[at + "ENGINE".len()..];
    let eq = after.find('=')?;
    if !after[..eq].trim().is_empty() {
        return None;
    }
    let engine_start = at + "ENGINE".len() + eq + 1;
    let tail = &rest[engine_start..];
    let trimmed = tail.trim_start();
    let engine_at = engine_start + (tail.len() - trimmed.len());
    let name_len = trimmed
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(trimmed.len());
    let engine = &trimmed[..name_len];
    if !MERGE_TREES.contains(&engine) {
        return None;
    }
    let after_name = &trimmed[name_len..];
    let (args, after_args) = match after_name.strip_prefix('(') {
        Some(inner) => {
            let close = inner.find(')')?;
            (inner[..close].trim(), &inner[close + 1..])
        }
        None => ("", after_name),
    };
    let mut engine_args = format!("'{}', '{{replica}}'", zookeeper_path(database, table));
    if !args.is_empty() {
        engine_args.push_str(", ");
        engine_args.push_str(args);
    }
    Some(format!(
        "{}Replicated{engine}({engine_args}){after_args}",
        &rest[..engine_at]
    ))
}

/// The byte offset of `word` in `upper` (already upper case) as a whole word.
fn find_word(upper: &str, word: &str) -> Option<usize> {
    let bytes = upper.as_bytes();
    let boundary =
        |i: usize| i >= bytes.len() || !(bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_');
    let mut from = 0;
    while let Some(pos) = upper[from..].find(word) {
        let at = from + pos;
        if (at == 0 || boundary(at - 1)) && boundary(at + word.len()) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// A view body with every table after `FROM` or `JOIN` (not `ARRAY JOIN`) qualified with
/// `database`, unless it is already qualified, a subquery or a table function. Quoted text
/// is left alone.
fn qualify_tables(body: &str, database: &str) -> String {
    let mut out = String::with_capacity(body.len() + 64);
    let mut quote: Option<char> = None;
    let mut prev_words: [String; 2] = [String::new(), String::new()];
    let mut chars = body.char_indices().peekable();
    let mut pending = false;
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        if c == '\'' || c == '"' || c == '`' {
            quote = Some(c);
            pending = false;
            out.push(c);
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let end = body[i..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .map_or(body.len(), |n| i + n);
            let word = &body[i..end];
            let next = body[end..].chars().next();
            if pending && next != Some('.') && next != Some('(') {
                out.push_str(database);
                out.push('.');
            }
            out.push_str(word);
            let upper = word.to_ascii_uppercase();
            pending = upper == "FROM" || (upper == "JOIN" && prev_words[1] != "ARRAY");
            prev_words = [std::mem::take(&mut prev_words[1]), upper];
            while chars.peek().is_some_and(|(j, _)| *j < end) {
                chars.next();
            }
            continue;
        }
        if !c.is_whitespace() {
            pending = false;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(stmt: &str) -> String {
        rewrite(stmt, "tally", "db").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn tables_become_replicated_on_the_cluster() {
        assert_eq!(
            rw("CREATE TABLE IF NOT EXISTS usage_seals (\n    part UInt32\n) ENGINE = MergeTree()\nORDER BY (part, day)"),
            "CREATE TABLE IF NOT EXISTS db.usage_seals ON CLUSTER tally (\n    part UInt32\n) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db/usage_seals', '{replica}')\nORDER BY (part, day)"
        );
        assert_eq!(
            rw("CREATE TABLE IF NOT EXISTS charges (v UInt64) ENGINE = ReplacingMergeTree(version) ORDER BY x"),
            "CREATE TABLE IF NOT EXISTS db.charges ON CLUSTER tally (v UInt64) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/charges', '{replica}', version) ORDER BY x"
        );
        assert_eq!(
            rw("CREATE TABLE catalog_plans (a String) ENGINE = MergeTree\nORDER BY a"),
            "CREATE TABLE db.catalog_plans ON CLUSTER tally (a String) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db/catalog_plans', '{replica}')\nORDER BY a"
        );
    }

    #[test]
    fn views_drops_alters_and_grants_run_on_every_replica() {
        assert_eq!(
            rw("CREATE VIEW IF NOT EXISTS v_usage AS\nSELECT a FROM usage_partials\nWHERE batch_id NOT IN (SELECT batch_id FROM usage_aborts) AND x = 'FROM t'"),
            "CREATE VIEW IF NOT EXISTS db.v_usage ON CLUSTER tally AS\nSELECT a FROM db.usage_partials\nWHERE batch_id NOT IN (SELECT batch_id FROM db.usage_aborts) AND x = 'FROM t'"
        );
        assert_eq!(
            qualify_tables("SELECT 1 FROM (SELECT 2 FROM system.one) ARRAY JOIN arr JOIN t2 USING x FROM numbers(3)", "db"),
            "SELECT 1 FROM (SELECT 2 FROM system.one) ARRAY JOIN arr JOIN db.t2 USING x FROM numbers(3)"
        );
        assert_eq!(
            rw("DROP TABLE IF EXISTS v_usage"),
            "DROP TABLE IF EXISTS db.v_usage ON CLUSTER tally"
        );
        assert_eq!(
            rw("ALTER TABLE payments ADD COLUMN m String"),
            "ALTER TABLE db.payments ON CLUSTER tally ADD COLUMN m String"
        );
        assert_eq!(
            rw("CREATE ROLE IF NOT EXISTS tally_rater_role"),
            "CREATE ROLE IF NOT EXISTS tally_rater_role ON CLUSTER tally"
        );
        assert_eq!(
            rw("GRANT SELECT ON db.charges TO r"),
            "GRANT ON CLUSTER tally SELECT ON db.charges TO r"
        );
        assert_eq!(
            rw("REVOKE ALL ON db.* FROM r"),
            "REVOKE ON CLUSTER tally ALL ON db.* FROM r"
        );
        assert_eq!(
            rw("CREATE DATABASE IF NOT EXISTS db"),
            "CREATE DATABASE IF NOT EXISTS db ON CLUSTER tally"
        );
    }

    #[test]
    fn every_statement_of_every_migration_has_a_cluster_form() {
        for m in super::super::MIGRATIONS {
            for stmt in super::super::statements(m.sql) {
                let stmt = super::super::substitute(&stmt, "db");
                let out =
                    rewrite(&stmt, "tally", "db").unwrap_or_else(|e| panic!("{}: {e}", m.name));
                assert!(out.contains(" ON CLUSTER tally"), "{}: {out}", m.name);
                if stmt.to_ascii_uppercase().starts_with("CREATE TABLE") {
                    assert!(out.contains("ENGINE = Replicated"), "{}: {out}", m.name);
                }
            }
        }
    }

    #[test]
    fn other_statements_are_refused() {
        assert!(rewrite("INSERT INTO t VALUES (1)", "c", "db").is_err());
        assert!(rewrite("CREATE TABLE t (x UInt8) ENGINE = Memory", "c", "db").is_err());
    }
}
