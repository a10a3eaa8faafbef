//! An event's identity: (customer, source, id). CloudEvents promises only that (source, id)
//! is unique, and JetStream deduplicates `Nats-Msg-Id` across the whole stream, so the
//! identity names all three and the message id is derived from all three: no customer's id
//! can suppress another customer's event, and no agent's id another agent's.
//!
//! The message id is `<customer>:<agent>:<id>`. Customer and agent ids never contain `:`
//! (`[A-Za-z0-9_-]`), so the text splits back into exactly one identity: two different
//! identities never share a message id.
//!
//! An imported (backfilled) event is a correction of its identity named
//! `bf:<import id>:<16 hex digits of a hash of the identity>`: the rater names it so, the
//! invoicer reads the import back out of it ([`backfill_import`]). Pure text; owns nothing else.

/// The `Nats-Msg-Id` header value every publisher sets for the event `id` of `agent` of
/// `customer` (the gateway, the SDKs, and direct NATS publishers, as the README says).
pub fn nats_msg_id(customer: &str, agent: &str, id: &str) -> String {
    let mut s = String::with_capacity(customer.len() + agent.len() + id.len() + 2);
    s.push_str(customer);
    s.push(':');
    s.push_str(agent);
    s.push(':');
    s.push_str(id);
    s
}

/// Whether `header` is the message id of (customer, agent, id), without building it.
pub fn is_nats_msg_id(header: &str, customer: &str, agent: &str, id: &str) -> bool {
    header.len() == customer.len() + agent.len() + id.len() + 2
        && header.starts_with(customer)
        && header[customer.len()..].starts_with(':')
        && header[customer.len() + 1..].starts_with(agent)
        && header[customer.len() + 1 + agent.len()..].starts_with(':')
        && header.ends_with(id)
}

/// The import a backfill's correction id names (`None`: not a backfill's id).
pub fn backfill_import(correction_id: &str) -> Option<&str> {
    let rest = correction_id.strip_prefix("bf:")?;
    let (import, hash) = rest.rsplit_once(':')?;
    (hash.len() == 16 && !import.is_empty()).then_some(import)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backfill_id_names_its_import() {
        assert_eq!(backfill_import("bf:imp-1:0123456789abcdef"), Some("imp-1"));
        assert_eq!(backfill_import("v-1"), None);
        assert_eq!(backfill_import("bf:x"), None);
    }

    #[test]
    fn message_ids_name_the_whole_identity() {
        assert_eq!(
            nats_msg_id("acme", "bot-1", "order-42"),
            "acme:bot-1:order-42"
        );
        assert_ne!(
            nats_msg_id("customer-1", "agent-1", "order-42"),
            nats_msg_id("customer-2", "agent-1", "order-42")
        );
        assert_ne!(
            nats_msg_id("c", "agent-1", "x"),
            nats_msg_id("c", "agent-2", "x")
        );
        // an id may contain ':', but customer and agent cannot: the text still names one
        // identity, read from the left
        let h = nats_msg_id("a", "b", "c:d");
        assert!(is_nats_msg_id(&h, "a", "b", "c:d"));
        assert!(!is_nats_msg_id(&h, "a", "b", "c"));
    }

    #[test]
    fn headers_are_checked_against_the_identity() {
        let h = nats_msg_id("acme", "bot", "e:1");
        assert!(is_nats_msg_id(&h, "acme", "bot", "e:1"));
        assert!(!is_nats_msg_id("e:1", "acme", "bot", "e:1"));
        assert!(!is_nats_msg_id("acme:bot:e:2", "acme", "bot", "e:1"));
        assert!(!is_nats_msg_id("acme:bos:e:1", "acme", "bot", "e:1"));
        assert!(!is_nats_msg_id("acmeXbotXe:1", "acme", "bot", "e:1"));
        assert!(!is_nats_msg_id("", "acme", "bot", "e:1"));
    }
}
