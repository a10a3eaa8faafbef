//! The numbered ClickHouse migrations and the runner that applies them.
//!
//! Migrations are the SQL files in `migrations/` at the workspace root, embedded at build
//! time. Each is applied once per database, in order, and recorded in `schema_migrations`
//! with a checksum; an applied migration whose file changed afterwards is an error (write a
//! new migration instead). Statements are separated by `;` at the end of a line. The SQL must
//! run on ClickHouse 18.16 and on current releases (see DESIGN.md section 3).
//!
//! # Re-running and racing
//! A migration is recorded only after all its statements succeeded, so a run that stops in
//! between (a crash, a lost connection) leaves it unrecorded and the next run applies it again
//! from its first statement; two runners on one database both apply what they find pending.
//! Both are safe because every statement may run again:
//! - `CREATE ... IF NOT EXISTS` and `DROP ... IF EXISTS` are no-ops the second time;
//! - `ALTER TABLE <t> ADD COLUMN ...` (18.16 does not parse `ADD COLUMN IF NOT EXISTS`) counts
//!   as already applied when the server refuses it with code 44 ILLEGAL_COLUMN ("Cannot add
//!   column c: column with this name already exists") and every column it adds exists in the
//!   table (by name; types are not compared). ClickHouse applies one ALTER's columns all or
//!   none, so an interrupted run cannot leave only some. Only an ALTER whose every clause is
//!   `ADD COLUMN` is treated so; any other failed statement stops the run with its error.
//!
//! What is guaranteed: a re-run after an interruption, and each of several runners racing on
//! one database, finishes without error and records every migration it applied (a racing
//! migration may be recorded once per runner; readers group by version). Once all runners
//! have returned, the schema is the one the migrations describe: each recreates a view with
//! `DROP` then `CREATE`, and every runner's last `CREATE` of it is the newest definition.
//! While they race, such a view may be missing or older for a moment. Statements of another
//! kind (`INSERT`, other `ALTER`s) would not be safe to repeat: do not write them.
//!
//! # Engine-conditional migrations
//! A migration whose first line is `-- requires: <capability>` is applied only on servers that
//! have the capability; elsewhere it is recorded in `schema_migrations_skipped` (version, name,
//! checksum, reason, time) and not in `schema_migrations`, so a later run against a server that
//! has it (an upgrade) applies it then. The one capability is [`Requirement::SqlRbac`]
//! (`sql_rbac`): SQL users, roles and grants, ClickHouse 20.5 and later, judged from
//! `SELECT version()`. An unknown capability is an error, never a silent skip.
//!
//! # Placeholders
//! Statements run in the configured database, so tables are named unqualified. Where a
//! statement must name the database itself (`GRANT ... ON tally.*`), the file writes
//! `{database}` and the runner substitutes the configured name (validated as
//! `[A-Za-z_][A-Za-z0-9_]*`) before executing; the checksum covers the file as written.
//!
//! # On a cluster
//! With `clickhouse.cluster` set, the same files produce the replicated schema: the database,
//! the bookkeeping tables and every statement are rewritten by [`cluster::rewrite`] to run
//! `ON CLUSTER` with `Replicated*MergeTree` engines (ZooKeeper path
//! `/clickhouse/tables/{shard}/<database>/<table>`, replica `{replica}`), and the records in
//! `schema_migrations` are quorum writes like every other ([`crate::store::cluster_settings`]).
//! Every replica must be up while migrating: a distributed DDL waits for each host. Without a
//! cluster the statements run exactly as written.

pub mod cluster;

use clickhouse::Client;

use crate::config::ClickHouseConfig;
use crate::store;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $file,
            sql: include_str!(concat!("../../migrations/", $file)),
        }
    };
}

/// Every migration, in order. A test checks this list against the files on disk.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_usage.sql"),
    migration!(2, "0002_billing.sql"),
    migration!(3, "0003_public_views.sql"),
    migration!(4, "0004_usage_readings.sql"),
    migration!(5, "0005_api_keys.sql"),
    migration!(6, "0006_charge_discounts_and_tax.sql"),
    migration!(7, "0007_charge_fx.sql"),
    migration!(8, "0008_catalog.sql"),
    migration!(9, "0009_service_roles.sql"),
    migration!(10, "0010_catalog_customers_agents_meters.sql"),
    migration!(11, "0011_service_roles_catalog.sql"),
    migration!(12, "0012_invoice_transitions.sql"),
    migration!(13, "0013_invoice_totals_and_numbers.sql"),
    migration!(14, "0014_credit_notes.sql"),
    migration!(15, "0015_prepaid_credits.sql"),
    migration!(16, "0016_payments_ledger.sql"),
    migration!(17, "0017_dunning.sql"),
    migration!(18, "0018_payment_retries.sql"),
    migration!(19, "0019_catalog_tax_and_fx_rates.sql"),
    migration!(20, "0020_payment_profiles.sql"),
    migration!(21, "0021_service_roles_billing.sql"),
    migration!(22, "0022_sealed_rollups.sql"),
    migration!(23, "0023_service_roles_sealing.sql"),
    migration!(24, "0024_usage_rolled_up.sql"),
    migration!(25, "0025_service_roles_rolled_up.sql"),
    migration!(40, "0040_api_tokens_and_audit.sql"),
    migration!(41, "0041_service_roles_api_auth.sql"),
    migration!(50, "0050_live_spend.sql"),
    migration!(51, "0051_wallets.sql"),
    migration!(52, "0052_disputes_and_ledger_by_time.sql"),
    migration!(53, "0053_service_roles_disputes.sql"),
    migration!(60, "0060_usage_corrections.sql"),
    migration!(61, "0061_service_roles_corrections.sql"),
    migration!(62, "0062_usage_correction_data.sql"),
    migration!(63, "0063_service_roles_correction_data.sql"),
    migration!(64, "0064_correction_digests.sql"),
];

/// A capability a migration needs from the server (its `-- requires:` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// SQL users, roles and grants: ClickHouse 20.5 and later (18.16 has only users.xml).
    SqlRbac,
}

impl Requirement {
    /// The name used in the header.
    pub fn name(self) -> &'static str {
        match self {
            Requirement::SqlRbac => "sql_rbac",
        }
    }

    /// Whether a server of `version` has the capability.
    pub fn met_by(self, version: ServerVersion) -> bool {
        match self {
            Requirement::SqlRbac => (version.major, version.minor) >= (20, 5),
        }
    }
}

/// A ClickHouse server's `major.minor`, from `SELECT version()` (`18.16.1`, `26.9.2.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    /// Parses the text of `SELECT version()`; `None` when it is not `<major>.<minor>...`.
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }
}

/// The header prefix that makes a migration conditional.
pub const REQUIRES_HEADER: &str = "-- requires:";

/// The capability `sql` requires, from its first line (`-- requires: sql_rbac`), if any.
pub fn requirement(name: &str, sql: &str) -> Result<Option<Requirement>, MigrateError> {
    let first = sql.lines().next().unwrap_or("").trim();
    let Some(value) = first.strip_prefix(REQUIRES_HEADER) else {
        return Ok(None);
    };
    match value.trim() {
        "sql_rbac" => Ok(Some(Requirement::SqlRbac)),
        other => Err(MigrateError::UnknownRequirement {
            name: name.to_owned(),
            requirement: other.to_owned(),
        }),
    }
}

/// `stmt` with every `{database}` replaced by `database`.
pub fn substitute(stmt: &str, database: &str) -> String {
    stmt.replace("{database}", database)
}

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("clickhouse: {context}: {source}")]
    ClickHouse {
        context: String,
        source: clickhouse::error::Error,
    },
    #[error("migration {version} ({name}) was applied with checksum {applied} but the file now has {current}; add a new migration instead of editing an applied one")]
    Changed {
        version: u32,
        name: String,
        applied: String,
        current: String,
    },
    #[error("migration {name} requires {requirement:?}, which is not a known capability (known: sql_rbac)")]
    UnknownRequirement { name: String, requirement: String },
    #[error("the server's version {0:?} is not <major>.<minor>...")]
    Version(String),
    #[error("on cluster: {0}")]
    Cluster(#[from] cluster::ClusterRewriteError),
}

/// The statements of one migration file, comments stripped.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let code = line.split("--").next().unwrap_or("").trim_end();
        if code.trim().is_empty() {
            continue;
        }
        cur.push_str(code);
        cur.push('\n');
        if code.ends_with(';') {
            let stmt = cur.trim().trim_end_matches(';').trim().to_owned();
            if !stmt.is_empty() {
                out.push(stmt);
            }
            cur.clear();
        }
    }
    let rest = cur.trim();
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

/// FNV-1a of the file text, hex: stable across builds and platforms.
pub fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Applied {
    version: u32,
    checksum: String,
}

#[derive(clickhouse::Row, serde::Serialize)]
struct AppliedRow<'a> {
    version: u32,
    name: &'a str,
    checksum: String,
    applied_at: u32,
}

#[derive(clickhouse::Row, serde::Serialize)]
struct SkippedRow<'a> {
    version: u32,
    name: &'a str,
    checksum: String,
    reason: String,
    skipped_at: u32,
}

fn ch(context: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> MigrateError {
    let context = context.into();
    move |source| MigrateError::ClickHouse { context, source }
}

fn now_secs() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(now).unwrap_or(u32::MAX)
}

/// `stmt` as it runs: `{database}` substituted and, on a cluster, rewritten to run on every
/// replica ([`cluster::rewrite`]).
pub fn prepared(stmt: &str, cfg: &ClickHouseConfig) -> Result<String, MigrateError> {
    let sql = substitute(stmt, &cfg.database);
    match &cfg.cluster {
        Some(c) => Ok(cluster::rewrite(&sql, c, &cfg.database)?),
        None => Ok(sql),
    }
}

/// Creates the database and the bookkeeping tables if needed.
async fn prepare(cfg: &ClickHouseConfig) -> Result<Client, MigrateError> {
    let server = store::server(cfg);
    let create = prepared(
        &format!("CREATE DATABASE IF NOT EXISTS {}", cfg.database),
        cfg,
    )?;
    server
        .query(&create)
        .execute()
        .await
        .map_err(ch(format!("create database {}", cfg.database)))?;
    let db = store::connect(cfg);
    for (table, columns) in [
        (
            "schema_migrations",
            "version UInt32, name String, checksum String, applied_at DateTime",
        ),
        (
            "schema_migrations_skipped",
            "version UInt32, name String, checksum String, reason String, skipped_at DateTime",
        ),
    ] {
        let sql = prepared(
            &format!("CREATE TABLE IF NOT EXISTS {table} ({columns}) ENGINE = MergeTree() ORDER BY version"),
            cfg,
        )?;
        db.query(&sql)
            .execute()
            .await
            .map_err(ch(format!("create {table}")))?;
    }
    Ok(db)
}

async fn server_version(db: &Client) -> Result<ServerVersion, MigrateError> {
    let text: String = db
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(ch("read the server version"))?;
    ServerVersion::parse(&text).ok_or(MigrateError::Version(text))
}

/// Creates the database if needed and applies every pending migration. Returns the versions
/// applied by this call (empty when already up to date); migrations skipped because the
/// server lacks what they require are recorded in `schema_migrations_skipped` and logged.
pub async fn apply(cfg: &ClickHouseConfig) -> Result<Vec<u32>, MigrateError> {
    let db = prepare(cfg).await?;
    let applied: Vec<Applied> = db
        .query("SELECT version, any(checksum) FROM schema_migrations GROUP BY version ORDER BY version")
        .fetch_all()
        .await
        .map_err(ch("read schema_migrations"))?;
    let skipped: Vec<u32> = db
        .query("SELECT DISTINCT version FROM schema_migrations_skipped ORDER BY version")
        .fetch_all()
        .await
        .map_err(ch("read schema_migrations_skipped"))?;
    let mut version = None;
    let mut done = Vec::new();
    for m in MIGRATIONS {
        let current = checksum(m.sql);
        if let Some(a) = applied.iter().find(|a| a.version == m.version) {
            if a.checksum != current {
                return Err(MigrateError::Changed {
                    version: m.version,
                    name: m.name.to_owned(),
                    applied: a.checksum.clone(),
                    current,
                });
            }
            continue;
        }
        if let Some(req) = requirement(m.name, m.sql)? {
            let v = match version {
                Some(v) => v,
                None => *version.insert(server_version(&db).await?),
            };
            if !req.met_by(v) {
                if !skipped.contains(&m.version) {
                    record_skipped(&db, m, current, req, v).await?;
                }
                continue;
            }
        }
        apply_one(&db, cfg, m, current).await?;
        done.push(m.version);
    }
    Ok(done)
}

async fn record_skipped(
    db: &Client,
    m: &Migration,
    checksum: String,
    req: Requirement,
    v: ServerVersion,
) -> Result<(), MigrateError> {
    let reason = format!(
        "not applicable: requires {} and the server is {}.{}",
        req.name(),
        v.major,
        v.minor
    );
    let mut insert = db
        .insert::<SkippedRow<'_>>("schema_migrations_skipped")
        .await
        .map_err(ch("record skipped migration"))?;
    insert
        .write(&SkippedRow {
            version: m.version,
            name: m.name,
            checksum,
            reason: reason.clone(),
            skipped_at: now_secs(),
        })
        .await
        .map_err(ch("record skipped migration"))?;
    insert.end().await.map_err(ch("record skipped migration"))?;
    tracing::info!(version = m.version, name = m.name, %reason, "migration skipped");
    Ok(())
}

async fn apply_one(
    db: &Client,
    cfg: &ClickHouseConfig,
    m: &Migration,
    checksum: String,
) -> Result<(), MigrateError> {
    for (i, stmt) in statements(m.sql).iter().enumerate() {
        let context = format!("{} statement {}", m.name, i + 1);
        let sql = prepared(stmt, cfg)?;
        let Err(err) = db.query(&sql).execute().await else {
            continue;
        };
        // the columns are read from the statement as written (unqualified, no ON CLUSTER)
        if !columns_already_added(db, &substitute(stmt, &cfg.database), &err).await? {
            return Err(ch(context)(err));
        }
        tracing::info!(
            version = m.version,
            name = m.name,
            statement = i + 1,
            "columns already added (an earlier or concurrent run); statement counted as applied"
        );
    }
    let mut insert = db
        .insert::<AppliedRow<'_>>("schema_migrations")
        .await
        .map_err(ch("record migration"))?;
    insert
        .write(&AppliedRow {
            version: m.version,
            name: m.name,
            checksum,
            applied_at: now_secs(),
        })
        .await
        .map_err(ch("record migration"))?;
    insert.end().await.map_err(ch("record migration"))?;
    tracing::info!(version = m.version, name = m.name, "migration applied");
    Ok(())
}

/// ClickHouse's ILLEGAL_COLUMN, the code of "Cannot add column c: column with this name
/// already exists" on 18.16 and on current releases.
pub const ILLEGAL_COLUMN: u32 = 44;

/// The code of a ClickHouse exception (`Code: 44, e.displayText() = ...` on 18.16,
/// `Code: 44. DB::Exception: ...` later); `None` for other errors.
pub fn exception_code(err: &clickhouse::error::Error) -> Option<u32> {
    let clickhouse::error::Error::BadResponse(text) = err else {
        return None;
    };
    let (_, rest) = text.split_once("Code: ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The table and the columns of `ALTER TABLE <table> ADD COLUMN <c> <type> [, ADD COLUMN ...]`;
/// `None` for any other statement, including an ALTER with another kind of clause.
pub fn added_columns(stmt: &str) -> Option<(String, Vec<String>)> {
    let keyword = |w: Option<&str>, k: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(k));
    let (alter, rest) = first_word(stmt);
    let (table_word, rest) = first_word(rest);
    let (table, clauses) = first_word(rest);
    if !keyword(Some(alter), "ALTER") || !keyword(Some(table_word), "TABLE") || table.is_empty() {
        return None;
    }
    let mut columns = Vec::new();
    for clause in split_top_level(clauses) {
        let mut words = clause.split_whitespace();
        if !keyword(words.next(), "ADD") || !keyword(words.next(), "COLUMN") {
            return None;
        }
        match words.next() {
            Some(name) if !name.eq_ignore_ascii_case("IF") => columns.push(name.replace('`', "")),
            _ => return None,
        }
    }
    Some((table.replace('`', ""), columns))
}

/// The first whitespace-separated word of `text` and what follows it.
fn first_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    text.split_at(text.find(char::is_whitespace).unwrap_or(text.len()))
}

/// `text` split on the commas outside parentheses and quotes.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut quote, mut start) = (Vec::new(), 0i32, None, 0);
    for (i, c) in text.char_indices() {
        match (c, quote) {
            ('\'' | '`' | '"', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            (_, Some(_)) => {}
            ('(', None) => depth += 1,
            (')', None) => depth -= 1,
            (',', None) if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Whether `err`, the failure of `sql`, means its columns were already added: an `ADD COLUMN`
/// ALTER refused with [`ILLEGAL_COLUMN`] while every column it adds exists.
async fn columns_already_added(
    db: &Client,
    sql: &str,
    err: &clickhouse::error::Error,
) -> Result<bool, MigrateError> {
    if exception_code(err) != Some(ILLEGAL_COLUMN) {
        return Ok(false);
    }
    let Some((table, columns)) = added_columns(sql) else {
        return Ok(false);
    };
    let read = ch(format!("read the columns of {table}"));
    let existing: Vec<String> = match table.split_once('.') {
        Some((database, table)) => db
            .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
            .bind(database)
            .bind(table),
        None => db
            .query(
                "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = ?",
            )
            .bind(table.as_str()),
    }
    .fetch_all()
    .await
    .map_err(read)?;
    Ok(columns.iter().all(|c| existing.contains(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_on_disk_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        // versions increase; a range may be left free for migrations landing in parallel
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert!(
                i == 0 || m.version > MIGRATIONS[i - 1].version,
                "{}",
                m.name
            );
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }

    #[test]
    fn statements_split_on_line_final_semicolons() {
        let s = statements(
            "-- header\nCREATE TABLE a (x String) -- c\nENGINE = Memory;\n\nSELECT ';';\nSELECT 1",
        );
        assert_eq!(
            s,
            vec![
                "CREATE TABLE a (x String)\nENGINE = Memory",
                "SELECT ';'",
                "SELECT 1"
            ]
        );
    }

    #[test]
    fn sql_rbac_is_met_from_clickhouse_20_5_on() {
        let v = |t: &str| ServerVersion::parse(t).unwrap();
        assert!(!Requirement::SqlRbac.met_by(v("18.16.1")));
        assert!(!Requirement::SqlRbac.met_by(v("20.4.9.110")));
        assert!(Requirement::SqlRbac.met_by(v("20.5.2.7")));
        assert!(Requirement::SqlRbac.met_by(v("26.9.2.1")));
        assert_eq!(ServerVersion::parse("unknown"), None);
        assert_eq!(ServerVersion::parse("18"), None);
    }

    #[test]
    fn only_a_first_line_header_makes_a_migration_conditional() {
        let req = |sql: &str| requirement("x.sql", sql);
        assert_eq!(
            req("-- requires: sql_rbac\nCREATE ROLE r;").unwrap(),
            Some(Requirement::SqlRbac)
        );
        assert_eq!(req("-- a comment\n-- requires: sql_rbac\n").unwrap(), None);
        assert_eq!(
            req("CREATE TABLE t (x UInt8) ENGINE = Memory;").unwrap(),
            None
        );
        assert!(matches!(
            req("-- requires: time_travel\n"),
            Err(MigrateError::UnknownRequirement { .. })
        ));
        for m in MIGRATIONS {
            requirement(m.name, m.sql).expect("every migration's header is known");
        }
    }

    #[test]
    fn the_database_placeholder_is_substituted() {
        assert_eq!(
            substitute("GRANT SELECT ON {database}.* TO r", "tally"),
            "GRANT SELECT ON tally.* TO r"
        );
    }

    #[test]
    fn add_column_alters_name_their_table_and_columns() {
        let (table, columns) = added_columns(
            "alter table `t`\n    ADD COLUMN a Int64 DEFAULT f(x, 'a,b'),\n    ADD COLUMN `b` Array(Tuple(String, UInt8))",
        )
        .unwrap();
        assert_eq!(table, "t");
        assert_eq!(columns, vec!["a", "b"]);
        assert_eq!(
            added_columns("alter table tally.payments add column m String"),
            Some(("tally.payments".into(), vec!["m".into()]))
        );
        for other in [
            "ALTER TABLE t ADD COLUMN a String, DROP COLUMN b",
            "ALTER TABLE t MODIFY COLUMN a String",
            "ALTER TABLE t DELETE WHERE 1",
            "CREATE TABLE IF NOT EXISTS t (a String) ENGINE = Memory",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS a String",
        ] {
            assert_eq!(added_columns(other), None, "{other}");
        }
        let adding: Vec<u32> = MIGRATIONS
            .iter()
            .filter(|m| statements(m.sql).iter().any(|s| added_columns(s).is_some()))
            .map(|m| m.version)
            .collect();
        assert_eq!(adding, vec![6, 7, 13, 18, 22, 50, 64]);
    }

    #[test]
    fn exception_codes_are_read_from_old_and_new_server_messages() {
        let bad = |t: &str| clickhouse::error::Error::BadResponse(t.into());
        assert_eq!(
            exception_code(&bad("Code: 44, e.displayText() = DB::Exception: Cannot add column b: column with this name already exists, e.what() = DB::Exception")),
            Some(ILLEGAL_COLUMN)
        );
        assert_eq!(
            exception_code(&bad("Code: 44. DB::Exception: Cannot add column `b`: column with this name already exists. (ILLEGAL_COLUMN) (version 24.8.1.1)")),
            Some(ILLEGAL_COLUMN)
        );
        assert_eq!(exception_code(&bad("Bad Gateway")), None);
        assert_eq!(exception_code(&clickhouse::error::Error::TimedOut), None);
    }
}
