//! `tally-access`: renders one ClickHouse user per Tally service with least rights.
//!
//! ```text
//! tally-access sql       [--config FILE] [--out-dir DIR]   # SQL RBAC for current ClickHouse
//! tally-access users-xml [--config FILE] [--out-dir DIR]   # users.xml for ClickHouse 18.16
//! tally-access roles-migration                             # prints the roles migration
//! ```
//! `sql` creates the roles (empty) and the users bound to them; the roles' grants come from
//! the migration `migrations/0009_service_roles.sql`, applied by `tally-migrate` (as
//! `tally_migrate`) after it. `roles-migration` prints what that file must contain.
//! Writes the rendering and `clickhouse-credentials.txt` (one `user password` per line, fresh
//! random passwords) into DIR (default `.`), both mode 0600. Each service then connects with
//! `TALLY_CLICKHOUSE__USER` and `TALLY_CLICKHOUSE__PASSWORD`.

use std::path::Path;

use anyhow::Context;
use ring::rand::SecureRandom;
use serde::Deserialize;
use tally_platform::access::{self, Service};
use tally_platform::args::Args;
use tally_platform::private_file::write_private;
use tally_platform::{config, ClickHouseConfig};

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    clickhouse: ClickHouseConfig,
}

fn password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the OS random number generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn main() -> anyhow::Result<()> {
    let (command, args) = Args::parse_command(
        std::env::args().skip(1),
        &["sql", "users-xml", "roles-migration"],
        &["config", "out-dir"],
    )?;
    if command == "roles-migration" {
        print!("{}", access::roles_migration());
        return Ok(());
    }
    let cfg: Config = config::load(&config::path(&args))?;
    cfg.clickhouse.validate()?;
    let users = Service::ALL
        .iter()
        .map(|s| Ok((*s, password()?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dir = Path::new(args.raw("out-dir").unwrap_or("."));
    let db = &cfg.clickhouse.database;
    let (file, text) = match command.as_str() {
        "sql" => (
            "clickhouse-access.sql",
            access::rbac_sql(db, &users).join(";\n") + ";\n",
        ),
        _ => ("users.xml", access::users_xml(db, &users)),
    };
    write_private(&dir.join(file), &text).with_context(|| format!("writing {file}"))?;
    let creds: String = users
        .iter()
        .map(|(s, p)| format!("{} {p}\n", s.user()))
        .collect();
    write_private(&dir.join("clickhouse-credentials.txt"), &creds)
        .context("writing clickhouse-credentials.txt")?;
    println!(
        "wrote {} and {}",
        dir.join(file).display(),
        dir.join("clickhouse-credentials.txt").display()
    );
    Ok(())
}
