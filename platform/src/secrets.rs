//! Secrets in configuration: held so they never print ([`SecretString`]), and judged before
//! a service starts ([`check`]): outside the `dev` profile a secret must carry at least
//! [`SECRET_BITS_MIN`] bits (32 random bytes), must not be a value published in this
//! repository or a placeholder, and must not be a short pattern repeated.
//!
//! What "random bytes" a string holds cannot be measured, only bounded from above: the
//! estimate is its length times log2 of the alphabet its characters come from (16 for hex in
//! one case, 62 for letters and digits, 64 with `-`/`_`, 94 for any printable ASCII). So 64
//! hex digits (`openssl rand -hex 32`) or 43 base64url characters pass, and a long sentence of
//! lower-case words passes too: the check refuses the weak secrets people actually type
//! (`s`, `secret`, `change-me-0000`), it does not prove a strong one. [`generate_hex`] makes
//! one that is strong by construction. It never logs or returns a secret's text.

use serde::Deserialize;

use crate::config::{ConfigError, Profile};

/// Bits a secret must carry outside `dev`: 32 random bytes.
pub const SECRET_BITS_MIN: u32 = 256;

/// Values this repository ships or shipped (docker-compose fallbacks, examples, tests):
/// known to everyone, so refused outside `dev` whatever their length.
pub const PUBLISHED: &[&str] = &[
    "demo-payments-token-change-me-00",
    "whsec_demo_change_me",
    "demo-portal-signing-secret-change-me",
    "demo-dunning-signing-secret-change-me",
    "demo-admin-token-change-me-0000",
    "admin-token-for-tests-0123456789",
    "ops-test-payments-token-0123456789",
    "whsec_ops_test_secret",
    "ops-test-portal-signing-secret-0123",
    "ops-test-dunning-signing-secret-012",
    "whsec_test_0123456789",
    "tok_test_api",
    "portal_test_secret",
];

/// Words that mark a value as a placeholder, whatever surrounds them.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "change_me",
    "changeme",
    "replace-me",
    "replace_me",
    "example",
    "placeholder",
];

/// A secret string: deserialized like a string, never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> SecretString {
        SecretString(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

/// Why a secret is refused (never containing the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Weakness {
    #[error("must be set (file or environment)")]
    Missing,
    #[error(
        "is a value published in the Tally repository; generate your own (openssl rand -hex 32)"
    )]
    Published,
    #[error("looks like a placeholder; generate a secret (openssl rand -hex 32)")]
    Placeholder,
    #[error("repeats a character or a short pattern; generate a secret (openssl rand -hex 32)")]
    Repetitive,
    #[error("carries at most {bits} bits; at least {min} are required (32 random bytes: openssl rand -hex 32)")]
    TooShort { bits: u32, min: u32 },
}

/// Upper bound of the bits of randomness `s` can carry: its length times log2 of its
/// characters' alphabet.
pub fn estimated_bits(s: &str) -> u32 {
    let len = s.chars().count() as f64;
    let hex_lower = s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    let hex_upper = s.chars().all(|c| matches!(c, '0'..='9' | 'A'..='F'));
    let alphabet: u32 = if s.is_empty() {
        1
    } else if hex_lower || hex_upper {
        16
    } else {
        let has = |f: fn(char) -> bool| u32::from(s.chars().any(f));
        let other = s
            .chars()
            .filter(|c| !c.is_ascii_alphanumeric())
            .fold(0u32, |n, c| {
                n.max(if c == '-' || c == '_' { 2 } else { 32 })
            });
        26 * has(|c| c.is_ascii_lowercase())
            + 26 * has(|c| c.is_ascii_uppercase())
            + 10 * has(|c| c.is_ascii_digit())
            + other
    };
    (len * f64::from(alphabet.max(1)).log2()).floor() as u32
}

/// Whether `s` is a shorter string repeated (`abab`, `0000`), or one character makes more than
/// a quarter of it (`whsec_aaaa...`): no generator makes either (in 64 random hex digits a
/// digit's count above 16 is six standard deviations out).
fn repetitive(s: &str) -> bool {
    let b = s.as_bytes();
    let periodic = (1..=b.len() / 2).any(|p| (p..b.len()).all(|i| b[i] == b[i - p]));
    let mut counts = [0usize; 256];
    for &c in b {
        counts[usize::from(c)] += 1;
    }
    let dominated = b.len() >= 8 && counts.iter().any(|&n| n * 4 > b.len());
    periodic || dominated
}

/// Judges `secret` for a profile: in `dev` only presence; elsewhere presence, published and
/// placeholder values, repetition and at least `bits_min` estimated bits.
pub fn judge(secret: &str, profile: Profile, bits_min: u32) -> Result<(), Weakness> {
    if secret.is_empty() {
        return Err(Weakness::Missing);
    }
    if profile == Profile::Dev {
        return Ok(());
    }
    if PUBLISHED.contains(&secret) {
        return Err(Weakness::Published);
    }
    let lower = secret.to_ascii_lowercase();
    if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return Err(Weakness::Placeholder);
    }
    if repetitive(secret) {
        return Err(Weakness::Repetitive);
    }
    let bits = estimated_bits(secret);
    if bits < bits_min {
        return Err(Weakness::TooShort {
            bits,
            min: bits_min,
        });
    }
    Ok(())
}

/// [`judge`] with [`SECRET_BITS_MIN`], as a configuration error naming `setting`.
pub fn check(setting: &str, secret: &SecretString, profile: Profile) -> Result<(), ConfigError> {
    check_bits(setting, secret, profile, SECRET_BITS_MIN)
}

/// [`judge`] with another floor (a provider's secret whose format we do not choose), as a
/// configuration error naming `setting`.
pub fn check_bits(
    setting: &str,
    secret: &SecretString,
    profile: Profile,
    bits_min: u32,
) -> Result<(), ConfigError> {
    judge(secret.expose(), profile, bits_min).map_err(|w| {
        let detail = match profile {
            Profile::Dev => w.to_string(),
            p => format!("{w} (profile {})", p.name()),
        };
        ConfigError::invalid(setting, detail)
    })
}

/// `bytes` fresh random bytes from the OS, as lower-case hex.
pub fn generate_hex(bytes: usize) -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut buf)?;
    Ok(hex(&buf))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_pass_everywhere() {
        for _ in 0..50 {
            let s = generate_hex(32).unwrap();
            assert_eq!(judge(&s, Profile::Production, SECRET_BITS_MIN), Ok(()));
        }
        // 43 base64url characters are 32 bytes too
        let b64 = "q3Vx_9Lr-TgW2mZp8cYbN0aKsEfHjD4uI6oPl1nXwRt";
        assert_eq!(judge(b64, Profile::Staging, SECRET_BITS_MIN), Ok(()));
    }

    /// Issue 16, finding 7: secrets of one character, and the demo values docker-compose
    /// shipped, used to pass outside the dev profile.
    #[test]
    fn weak_published_and_placeholder_secrets_are_refused_outside_dev() {
        let cases = [
            ("s", "bits"),
            ("3f9a0c7e1b5d2468ace0f13579bdf024", "bits"),
            ("demo-payments-token-change-me-00", "published"),
            ("whsec_demo_change_me", "published"),
            (
                "my-own-secret-change-me-please-now-0123456789-abcdefghij",
                "placeholder",
            ),
            (&"ab".repeat(64), "repeats"),
            (&"0".repeat(64), "repeats"),
            (&format!("whsec_{}", "a".repeat(40)), "repeats"),
        ];
        for (secret, why) in cases {
            for profile in [Profile::Staging, Profile::Production] {
                let e = judge(secret, profile, SECRET_BITS_MIN).unwrap_err();
                assert!(e.to_string().contains(why), "{secret:?} {profile:?}: {e}");
                if secret.len() > 8 {
                    assert!(!e.to_string().contains(secret), "the secret is never shown");
                }
            }
            assert_eq!(judge(secret, Profile::Dev, SECRET_BITS_MIN), Ok(()));
        }
        assert_eq!(
            judge("", Profile::Dev, SECRET_BITS_MIN),
            Err(Weakness::Missing)
        );
    }

    #[test]
    fn the_error_names_the_setting_and_profile_but_not_the_secret() {
        let e = check(
            "portal.signing_secret",
            &SecretString::new("x"),
            Profile::Production,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("portal.signing_secret") && e.contains("production"),
            "{e}"
        );
        assert!(!e.contains("\"x\""), "{e}");
    }

    #[test]
    fn the_estimate_is_length_times_alphabet() {
        assert_eq!(estimated_bits(&"f".repeat(64)), 256);
        assert_eq!(estimated_bits("abc"), 12); // hex digits: 3 * 4
        assert_eq!(estimated_bits("xyz"), 14); // 3 * log2(26)
        assert_eq!(estimated_bits("aB3"), 17); // 3 * log2(62)
        assert_eq!(estimated_bits(""), 0);
    }

    #[test]
    fn secrets_never_print() {
        let s = SecretString::new("tok_very_secret");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", SecretString::default()), "<unset>");
    }
}
