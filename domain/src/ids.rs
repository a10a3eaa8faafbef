//! Validated identifiers. Each is a newtype so a customer id can never be passed where an
//! agent id is expected; construction is the only place the character rules are checked.
//!
//! Customer and agent ids appear as NATS subject tokens, so they are limited to
//! `[A-Za-z0-9_-]{1,64}`. Event ids are 1 to 128 printable ASCII characters.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long, at most {max} allowed")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} contains the character {ch:?}, allowed are {allowed}")]
    BadChar {
        kind: &'static str,
        ch: char,
        allowed: &'static str,
    },
}

fn check(
    kind: &'static str,
    s: &str,
    max: usize,
    ok: fn(char) -> bool,
    allowed: &'static str,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some(ch) = s.chars().find(|c| !ok(*c)) {
        return Err(IdError::BadChar { kind, ch, allowed });
    }
    // every allowed character is ASCII, so bytes are characters
    if s.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_printable(c: char) -> bool {
    c.is_ascii_graphic()
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $ok:path, $allowed:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest accepted id, in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                Self::validate(&s)?;
                Ok(Self(s))
            }

            /// Checks `s` against this id's rules without copying it.
            pub fn validate(s: &str) -> Result<(), IdError> {
                check($kind, s, $max, $ok, $allowed)
            }

            /// Wraps `s`, already checked by [`Self::validate`].
            #[allow(dead_code)] // not every id type is built from a parsed event
            pub(crate) fn validated(s: String) -> Self {
                debug_assert!(Self::validate(&s).is_ok());
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A customer: the CloudEvent `subject` and the second NATS subject token.
    CustomerId, "customer id", 64, is_token_char, "[A-Za-z0-9_-]"
);
id_type!(
    /// An agent: the CloudEvent `source` and the third NATS subject token.
    AgentId, "agent id", 64, is_token_char, "[A-Za-z0-9_-]"
);
id_type!(
    /// The idempotency key of one event (CloudEvent `id`, header `Nats-Msg-Id`).
    EventId, "event id", 128, is_printable, "printable ASCII"
);
id_type!(
    /// A meter's slug, as declared in configuration.
    MeterSlug, "meter slug", 64, is_token_char, "[A-Za-z0-9_-]"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_follow_subject_token_rules() {
        assert!(CustomerId::new("acme-1_B").is_ok());
        assert_eq!(
            CustomerId::new(""),
            Err(IdError::Empty {
                kind: "customer id"
            })
        );
        assert!(matches!(
            CustomerId::new("a.b"),
            Err(IdError::BadChar { ch: '.', .. })
        ));
        assert!(matches!(
            CustomerId::new("a*"),
            Err(IdError::BadChar { ch: '*', .. })
        ));
        assert!(CustomerId::new("x".repeat(64)).is_ok());
        assert!(matches!(
            CustomerId::new("x".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
    }

    #[test]
    fn event_ids_allow_printable_ascii_up_to_128() {
        assert!(EventId::new("01JDW8K3:a/b.c").is_ok());
        assert!(EventId::new("x".repeat(128)).is_ok());
        assert!(EventId::new("x".repeat(129)).is_err());
        assert!(EventId::new("has space").is_err());
        assert!(EventId::new("tab\t").is_err());
    }

    #[test]
    fn ids_deserialize_through_validation() {
        let ok: Result<AgentId, _> = serde_json::from_str("\"bot-7\"");
        assert!(ok.is_ok());
        let bad: Result<AgentId, _> = serde_json::from_str("\"bot 7\"");
        assert!(bad.is_err());
    }
}
