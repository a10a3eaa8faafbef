//! The numbered ClickHouse migrations and the runner that applies them.
//!
//! Migrations are the SQL files in `migrations/` at the workspace root, embedded at build
//! time. Each is applied once per database, in order, and recorded in `schema_migrations`
//! with a checksum; an applied migration whose file changed afterwards is an error (write a
//! new migration instead). Statements are separated by `;` at the end of a line and must be
//! idempotent (`IF NOT EXISTS`), so two runners racing are harmless. The SQL must run on
//! ClickHouse 18.16 and on current releases (see DESIGN.md section 3).

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
];

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

fn ch(context: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> MigrateError {
    let context = context.into();
    move |source| MigrateError::ClickHouse { context, source }
}

/// Creates the database if needed and applies every pending migration. Returns the versions
/// applied by this call (empty when already up to date).
pub async fn apply(cfg: &ClickHouseConfig) -> Result<Vec<u32>, MigrateError> {
    let server = store::server(cfg);
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {}", cfg.database))
        .execute()
        .await
        .map_err(ch(format!("create database {}", cfg.database)))?;
    let db = store::connect(cfg);
    db.query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, checksum String, applied_at DateTime) \
         ENGINE = MergeTree() ORDER BY version",
    )
    .execute()
    .await
    .map_err(ch("create schema_migrations"))?;
    let applied: Vec<Applied> = db
        .query("SELECT version, any(checksum) FROM schema_migrations GROUP BY version ORDER BY version")
        .fetch_all()
        .await
        .map_err(ch("read schema_migrations"))?;
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
        apply_one(&db, m, current).await?;
        done.push(m.version);
    }
    Ok(done)
}

async fn apply_one(db: &Client, m: &Migration, checksum: String) -> Result<(), MigrateError> {
    for (i, stmt) in statements(m.sql).iter().enumerate() {
        db.query(stmt)
            .execute()
            .await
            .map_err(ch(format!("{} statement {}", m.name, i + 1)))?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut insert = db
        .insert::<AppliedRow<'_>>("schema_migrations")
        .await
        .map_err(ch("record migration"))?;
    insert
        .write(&AppliedRow {
            version: m.version,
            name: m.name,
            checksum,
            applied_at: u32::try_from(now).unwrap_or(u32::MAX),
        })
        .await
        .map_err(ch("record migration"))?;
    insert.end().await.map_err(ch("record migration"))?;
    tracing::info!(version = m.version, name = m.name, "migration applied");
    Ok(())
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
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
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
}
