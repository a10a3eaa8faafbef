//! An AI agent recording its usage with the Tally SDK: LLM tokens by model and kind, and tool
//! calls, published to JetStream in the background and flushed on exit.
//!
//! ```sh
//! scripts/stack.sh up
//! cargo run -p tally-ingest --example agent -- acme support-bot-7
//! ```
//! Uses `[nats]` from `config/tally.toml` (or `TALLY_CONFIG`, `TALLY_NATS__URL`, ...).

use anyhow::Context;
use serde::Deserialize;
use tally_domain::{AgentId, CustomerId};
use tally_ingest::sdk::{Agent, SdkConfig};
use tally_platform::{config, streams, NatsConfig};

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    nats: NatsConfig,
}

/// What one step of a (pretend) agent loop consumed.
struct Step {
    model: &'static str,
    input_tokens: u64,
    output_tokens: u64,
    tool: Option<&'static str>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let customer =
        CustomerId::new(argv.next().unwrap_or_else(|| "acme".into())).context("customer")?;
    let agent =
        AgentId::new(argv.next().unwrap_or_else(|| "support-bot-7".into())).context("agent")?;
    let cfg: Config = config::load(&config::default_path())?;
    cfg.nats.validate()?;
    let js = async_nats::jetstream::new(streams::connect(&cfg.nats).await?);
    streams::ensure(&js, &cfg.nats).await?;

    let sdk = Agent::start(js, &cfg.nats.subject_prefix, SdkConfig::default());
    let usage = sdk.recorder(customer, agent);
    let steps = [
        Step {
            model: "gpt-4o",
            input_tokens: 1200,
            output_tokens: 340,
            tool: Some("search"),
        },
        Step {
            model: "gpt-4o",
            input_tokens: 2100,
            output_tokens: 95,
            tool: Some("browser"),
        },
        Step {
            model: "claude-sonnet",
            input_tokens: 800,
            output_tokens: 410,
            tool: None,
        },
    ];
    for step in &steps {
        // ... call the model, then record what the provider reported ...
        usage
            .llm_tokens(step.model, "input", step.input_tokens)
            .await?;
        usage
            .llm_tokens(step.model, "output", step.output_tokens)
            .await?;
        if let Some(tool) = step.tool {
            // ... run the tool ...
            usage.tool_call(tool).await?;
        }
    }
    let stats = sdk.close().await?;
    println!(
        "recorded {} events: {} stored, {} duplicates, {} retries, {} failed",
        stats.stored + stats.duplicates + stats.failed,
        stats.stored,
        stats.duplicates,
        stats.retries,
        stats.failed
    );
    anyhow::ensure!(stats.failed == 0, "some usage was not stored");
    Ok(())
}
