//! Pseudonymization: customer and agent ids replaced by keyed hashes before anything is
//! stored, so NATS, ClickHouse, usage, charges and invoices only ever see pseudonyms.
//!
//! A pseudonym is `p-` and the first 20 bytes of HMAC-SHA256(key, kind ":" id) in hex (42
//! characters, a valid id). It is deterministic, so the same customer always bills under the
//! same pseudonym and whoever holds the key recomputes it from the real id (to configure a
//! subscription, or to label an invoice); without the key it cannot be reversed or guessed
//! from a list of names. The key is read from a file outside ClickHouse
//! (`ingest.pseudonym_key_file`) and never logged. Event `data` is never altered: only the
//! top-level `subject` and `source` attributes are replaced, the other bytes kept as sent.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use tally_domain::{AgentId, CustomerId};

/// Shortest key accepted, in bytes.
pub const KEY_MIN_BYTES: usize = 32;

/// Why a pseudonymizer cannot be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum PseudonymError {
    #[error("pseudonym key file {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("rewriting the event: {0}")]
    Rewrite(String),
}

/// Replaces ids by keyed hashes.
pub struct Pseudonymizer {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(key hidden)")
    }
}

impl Pseudonymizer {
    /// From raw key bytes (at least [`KEY_MIN_BYTES`]).
    pub fn new(key: &[u8]) -> Result<Self, PseudonymError> {
        if key.len() < KEY_MIN_BYTES {
            return Err(PseudonymError::Key {
                path: "(bytes)".into(),
                detail: format!("at least {KEY_MIN_BYTES} bytes are needed"),
            });
        }
        Ok(Pseudonymizer {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        })
    }

    /// From a file holding the key as hex (whitespace ignored), e.g. `openssl rand -hex 32`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, PseudonymError> {
        let err = |detail: String| PseudonymError::Key {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let hex: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if !hex.len().is_multiple_of(2) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err("must hold the key as hex digits".into()));
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
            .collect();
        Self::new(&bytes).map_err(|_| {
            err(format!(
                "at least {KEY_MIN_BYTES} bytes (64 hex digits) are needed"
            ))
        })
    }

    fn hash(&self, kind: &str, id: &str) -> String {
        let tag = ring::hmac::sign(&self.key, format!("{kind}:{id}").as_bytes());
        let hex: String = tag.as_ref()[..20]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("p-{hex}")
    }

    /// The customer's pseudonym.
    pub fn customer(&self, id: &CustomerId) -> CustomerId {
        CustomerId::new(self.hash("customer", id.as_str())).expect("a pseudonym is a valid id")
    }

    /// The agent's pseudonym (agents of different customers never collide: the customer is
    /// part of the hashed text).
    pub fn agent(&self, customer: &CustomerId, id: &AgentId) -> AgentId {
        let text = format!("{customer}/{id}");
        AgentId::new(self.hash("agent", &text)).expect("a pseudonym is a valid id")
    }
}

/// `raw` (a validated CloudEvent) with `subject` and `source` replaced; `data` and every other
/// attribute keep their bytes.
pub fn rewrite(
    raw: &[u8],
    customer: &CustomerId,
    agent: &AgentId,
) -> Result<Vec<u8>, PseudonymError> {
    let bad = |e: serde_json::Error| PseudonymError::Rewrite(e.to_string());
    let mut map: BTreeMap<String, &RawValue> = serde_json::from_slice(raw).map_err(bad)?;
    let subject = serde_json::value::to_raw_value(customer.as_str()).map_err(bad)?;
    let source = serde_json::value::to_raw_value(agent.as_str()).map_err(bad)?;
    map.insert("subject".into(), &subject);
    map.insert("source".into(), &source);
    serde_json::to_vec(&map).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_domain::UsageEvent;

    fn p(key: u8) -> Pseudonymizer {
        Pseudonymizer::new(&[key; 32]).unwrap()
    }

    #[test]
    fn pseudonyms_are_deterministic_valid_and_keyed() {
        let acme = CustomerId::new("acme").unwrap();
        assert_eq!(p(1).customer(&acme), p(1).customer(&acme));
        assert_ne!(p(1).customer(&acme), p(2).customer(&acme));
        assert_eq!(p(1).customer(&acme).as_str().len(), 42);
        let bot = AgentId::new("bot").unwrap();
        let globex = CustomerId::new("globex").unwrap();
        assert_ne!(p(1).agent(&acme, &bot), p(1).agent(&globex, &bot));
        assert!(Pseudonymizer::new(&[0; 16]).is_err());
    }

    #[test]
    fn rewriting_keeps_data_bytes_and_passes_the_contract_parser() {
        let raw = br#"{"specversion":"1.0","id":"e1","source":"bot","subject":"acme","type":"llm.tokens","time":"2026-11-26T21:00:00Z","data":{"tokens":"1.500000001","n":10000000000000000000001}}"#;
        let (c, a) = (
            CustomerId::new("p-c").unwrap(),
            AgentId::new("p-a").unwrap(),
        );
        let out = rewrite(raw, &c, &a).unwrap();
        let e = UsageEvent::parse(&out, 4096).unwrap();
        assert_eq!(
            (e.customer.as_str(), e.agent.as_str(), e.id.as_str()),
            ("p-c", "p-a", "e1")
        );
        assert_eq!(
            e.data.get(),
            r#"{"tokens":"1.500000001","n":10000000000000000000001}"#
        );
        assert!(!String::from_utf8(out).unwrap().contains("acme"));
    }
}
