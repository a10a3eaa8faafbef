//! Deterministic synthetic agents: a fleet of customers, each with agents that record LLM
//! token usage (by model and token kind) and tool calls. The same seed gives the same events,
//! so tests can compute what the pipeline must count. Quantities are integers; no float.

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_domain::{AgentId, CustomerId, EventId, IdError};

use crate::event::OutgoingEvent;

/// Models an agent may call.
pub const MODELS: [&str; 3] = ["gpt-4o", "claude-sonnet", "llama-3-70b"];
/// Token kinds.
pub const KINDS: [&str; 2] = ["input", "output"];
/// Tools an agent may call.
pub const TOOLS: [&str; 3] = ["search", "code", "browser"];

/// A fleet of synthetic agents.
pub struct Fleet {
    agents: Vec<(CustomerId, AgentId)>,
    run_id: String,
    rng: StdRng,
    next_seq: u64,
}

impl Fleet {
    /// `customers` customers named `<customer_prefix>-<n>`, each with `agents` agents named
    /// `agent-<n>`; event ids are `<run_id>-<seq>`.
    pub fn new(
        customer_prefix: &str,
        customers: usize,
        agents: usize,
        run_id: &str,
        seed: u64,
    ) -> Result<Fleet, IdError> {
        let mut all = Vec::with_capacity(customers * agents);
        for c in 1..=customers {
            let customer = CustomerId::new(format!("{customer_prefix}-{c}"))?;
            for a in 1..=agents {
                all.push((customer.clone(), AgentId::new(format!("agent-{a}"))?));
            }
        }
        EventId::new(format!("{run_id}-0"))?;
        Ok(Fleet {
            agents: all,
            run_id: run_id.to_owned(),
            rng: StdRng::seed_from_u64(seed),
            next_seq: 0,
        })
    }

    /// The next event, stamped `time`: 70% LLM token usage, 30% tool calls.
    pub fn next_event(&mut self, time: DateTime<Utc>) -> OutgoingEvent {
        let (customer, agent) = self.agents[self.rng.random_range(0..self.agents.len())].clone();
        self.next_seq += 1;
        let id = EventId::new(format!("{}-{}", self.run_id, self.next_seq))
            .expect("run id was validated");
        let (event_type, data) = if self.rng.random_bool(0.7) {
            let tokens: u32 = self.rng.random_range(1..=4000);
            let model = MODELS[self.rng.random_range(0..MODELS.len())];
            let kind = KINDS[self.rng.random_range(0..KINDS.len())];
            (
                "llm.tokens",
                serde_json::json!({"tokens": tokens, "model": model, "kind": kind}),
            )
        } else {
            let tool = TOOLS[self.rng.random_range(0..TOOLS.len())];
            ("tool.call", serde_json::json!({"tool": tool}))
        };
        OutgoingEvent {
            id,
            customer,
            agent,
            event_type: event_type.to_owned(),
            time,
            data,
            hold_id: None,
        }
    }

    /// A random number in `0..n`, from the fleet's seeded generator.
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    /// True with probability `p` (0 to 1), from the fleet's seeded generator.
    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events() {
        let t = Utc::now();
        let mut a = Fleet::new("cust", 2, 2, "r", 7).unwrap();
        let mut b = Fleet::new("cust", 2, 2, "r", 7).unwrap();
        for _ in 0..50 {
            assert_eq!(a.next_event(t).to_json(), b.next_event(t).to_json());
        }
    }

    #[test]
    fn ids_are_unique_and_valid() {
        let mut f = Fleet::new("cust", 3, 2, "run-1", 1).unwrap();
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| f.next_event(Utc::now()).id.to_string())
            .collect();
        assert_eq!(ids.len(), 1000);
        assert!(Fleet::new("bad prefix", 1, 1, "r", 1).is_err());
    }
}
