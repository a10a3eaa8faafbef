//! The NATS subject layout of the event contract: `<prefix>.<customer>.<agent>`, where the
//! prefix is `usage` in production and something unique per test run in tests (JetStream
//! refuses two streams over the same subjects).

use crate::ids::{AgentId, CustomerId};

/// The subject an agent publishes to.
pub fn usage_subject(prefix: &str, customer: &CustomerId, agent: &AgentId) -> String {
    format!("{prefix}.{customer}.{agent}")
}

/// The wildcard a stream or consumer captures: `<prefix>.>`.
pub fn usage_wildcard(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// Splits `<prefix>.<customer>.<agent>` into its customer and agent tokens, without
/// validating them (the event body is validated against them). `None` if the subject does not
/// have exactly that shape.
pub fn split_usage_subject<'a>(prefix: &str, subject: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (customer, agent) = rest.split_once('.')?;
    if customer.is_empty() || agent.is_empty() || agent.contains('.') {
        return None;
    }
    Some((customer, agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let c = CustomerId::new("acme").unwrap();
        let a = AgentId::new("bot-1").unwrap();
        let s = usage_subject("usage", &c, &a);
        assert_eq!(s, "usage.acme.bot-1");
        assert_eq!(split_usage_subject("usage", &s), Some(("acme", "bot-1")));
    }

    #[test]
    fn wrong_shapes_are_refused() {
        assert_eq!(split_usage_subject("usage", "usage.acme"), None);
        assert_eq!(split_usage_subject("usage", "usage.acme.a.b"), None);
        assert_eq!(split_usage_subject("usage", "usagex.acme.a"), None);
        assert_eq!(split_usage_subject("usage", "other.acme.a"), None);
    }
}
