//! `tally-access`: renders one ClickHouse user per Tally service with least rights.
//!
//! ```text
//! tally-access sql       [--config FILE] [--out-dir DIR]   # SQL RBAC for current ClickHouse
//! tally-access users-xml [--config FILE] [--out-dir DIR]   # users.xml for ClickHouse 18.16
//! tally-access roles-migration                             # prints the roles migration
//! tally-access tokens-create --actor NAME --role ROLE [--config FILE]
//! tally-access tokens-list [--config FILE]
//! tally-access tokens-revoke --token-id ID [--config FILE]
//! ```
//! `tokens-*` manage the bearer tokens of the HTTP APIs (`api_tokens`, see
//! `tally_platform::auth`); run them with the migrator's ClickHouse user
//! (`TALLY_CLICKHOUSE__USER=tally_migrate`), the only one that may insert tokens.
//! `tokens-create` prints the token once (only its SHA-256 is stored); roles are `reader`,
//! `catalog_editor`, `invoice_operator`, `payments_operator`, `key_admin` and `admin`.
//! `sql` creates the roles (empty) and the users bound to them; the roles' grants come from
//! the migration `migrations/0009_service_roles.sql`, applied by `tally-migrate` (as
//! `tally_migrate`) after it. `roles-migration` prints what that file must contain.
//! Writes the rendering and `clickhouse-credentials.txt` (one `user password` per line, fresh
//! random passwords) into DIR (default `.`), both mode 0600. Each service then connects with
//! `TALLY_CLICKHOUSE__USER` and `TALLY_CLICKHOUSE__PASSWORD`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ring::rand::SecureRandom;
use serde::Deserialize;
use tally_platform::access::{self, Service};
use tally_platform::args::ConfigArg;
use tally_platform::auth::{self, Role, TokenRecord};
use tally_platform::clock::now_ms;
use tally_platform::private_file::write_private;
use tally_platform::{config, store, ClickHouseConfig};

/// One ClickHouse user per Tally service with least rights, and the API tokens of the HTTP APIs.
///
/// Run tokens-* with the migrator's ClickHouse user (TALLY_CLICKHOUSE__USER=tally_migrate),
/// the only one that may insert tokens. Each service then connects with
/// TALLY_CLICKHOUSE__USER and TALLY_CLICKHOUSE__PASSWORD from clickhouse-credentials.txt.
#[derive(Parser)]
#[command(name = "tally-access", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the SQL RBAC for a current ClickHouse (roles, empty, and the users bound to them)
    /// and clickhouse-credentials.txt
    Sql {
        /// Where clickhouse-access.sql and clickhouse-credentials.txt are written (mode 0600)
        #[arg(long, value_name = "DIR", default_value = ".")]
        out_dir: PathBuf,
    },
    /// Writes users.xml for ClickHouse 18.16 and clickhouse-credentials.txt
    UsersXml {
        /// Where users.xml and clickhouse-credentials.txt are written (mode 0600)
        #[arg(long, value_name = "DIR", default_value = ".")]
        out_dir: PathBuf,
    },
    /// Prints what migrations/0009_service_roles.sql must contain (reads no configuration)
    RolesMigration,
    #[command(flatten)]
    Tokens(TokenCommand),
}

/// The commands on the API tokens (`api_tokens`).
#[derive(Subcommand)]
enum TokenCommand {
    /// Creates an API token and prints it once (only its SHA-256 is stored)
    #[command(name = "tokens-create")]
    Create {
        /// Who the token is for (recorded with every change it makes)
        #[arg(long, value_name = "NAME")]
        actor: String,
        /// reader, catalog_editor, invoice_operator, payments_operator, key_admin or admin
        #[arg(long, value_name = "ROLE")]
        role: Role,
    },
    /// Lists the API tokens (ids, actors, roles; never a secret)
    #[command(name = "tokens-list")]
    List,
    /// Revokes an API token
    #[command(name = "tokens-revoke")]
    Revoke {
        /// The token's id, as tokens-list shows it
        #[arg(long, value_name = "ID")]
        token_id: String,
    },
}

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

/// A token as listed: never its secret or hash.
fn token_view(r: &TokenRecord) -> serde_json::Value {
    serde_json::json!({
        "token_id": r.token_id,
        "actor": r.actor,
        "role": r.role.name(),
        "created_ms": r.created_ms,
        "created_by": r.created_by,
        "revoked": r.revoked,
    })
}

/// Who runs the command, for `changed_by`: `$USER`, else `tally-access`.
fn operator() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| auth::store::validate_actor(u).is_ok())
        .unwrap_or_else(|| "tally-access".into())
}

fn tokens(command: TokenCommand, db: &clickhouse::Client) -> anyhow::Result<()> {
    let now_ms = now_ms();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match command {
            TokenCommand::Create { actor, role } => {
                let (bearer, record) =
                    auth::store::create(db, &actor, role, &operator(), now_ms).await?;
                let mut view = token_view(&record);
                view["token"] = serde_json::Value::String(bearer);
                println!("{}", serde_json::to_string_pretty(&view)?);
                eprintln!("store the token now: only its hash is kept");
            }
            TokenCommand::List => {
                for r in auth::store::load(db).await? {
                    println!("{}", token_view(&r));
                }
            }
            TokenCommand::Revoke { token_id } => {
                let r = auth::store::revoke(db, &token_id, &operator(), now_ms).await?;
                println!("{}", token_view(&r));
            }
        }
        Ok(())
    })
}

/// Renders the access of `users` to a database.
type Render = fn(&str, &[(Service, String)]) -> String;

/// The `[clickhouse]` section of the file, validated.
fn clickhouse(path: &std::path::Path) -> anyhow::Result<ClickHouseConfig> {
    let cfg: Config = config::load(path)?;
    cfg.clickhouse.validate()?;
    Ok(cfg.clickhouse)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (dir, file, render): (_, _, Render) = match cli.command {
        Command::RolesMigration => {
            print!("{}", access::roles_migration());
            return Ok(());
        }
        Command::Tokens(command) => {
            let db = store::connect(&clickhouse(&cli.config.path)?);
            return tokens(command, &db);
        }
        Command::Sql { out_dir } => (out_dir, "clickhouse-access.sql", |db, users| {
            access::rbac_sql(db, users).join(";\n") + ";\n"
        }),
        Command::UsersXml { out_dir } => (out_dir, "users.xml", access::users_xml),
    };
    let ch = clickhouse(&cli.config.path)?;
    let users = Service::ALL
        .iter()
        .map(|s| Ok((*s, password()?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let text = render(&ch.database, &users);
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
