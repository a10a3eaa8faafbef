//! The bearer token: `tly_<token id>_<secret>`, the id 16 hex digits (public: it names the
//! token in listings, logs and the audit), the secret 64 hex digits (32 bytes from the OS).
//! Only SHA-256 of the secret is kept; a presented secret is hashed and the hashes compared
//! in constant time ([`subtle`]). Pure apart from drawing random bytes.

use subtle::ConstantTimeEq;

use crate::secrets::{generate_hex, hex};

/// The prefix that marks a Tally API token (the ingest gateway's keys start `tk_`).
pub const PREFIX: &str = "tly_";
/// Hex digits of a token id.
pub const ID_HEX: usize = 16;
/// Hex digits of a secret (32 bytes).
pub const SECRET_HEX: usize = 64;

/// A presented token, split (the secret is only hashed, never kept).
#[derive(Clone, Copy)]
pub struct Presented<'a> {
    pub token_id: &'a str,
    secret: &'a str,
}

impl std::fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Presented({}, <secret>)", self.token_id)
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl<'a> Presented<'a> {
    /// Splits `tly_<id>_<secret>`; `None` for anything else (no partial matches).
    pub fn parse(token: &'a str) -> Option<Presented<'a>> {
        let rest = token.strip_prefix(PREFIX)?;
        let (token_id, secret) = rest.split_once('_')?;
        (is_hex(token_id, ID_HEX) && is_hex(secret, SECRET_HEX))
            .then_some(Presented { token_id, secret })
    }

    /// SHA-256 of the secret.
    pub fn secret_sha256(&self) -> [u8; 32] {
        sha256(self.secret)
    }
}

/// SHA-256 of `secret`.
pub fn sha256(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal in time independent of where they differ.
pub fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// A fresh token: `(bearer token, token id, SHA-256 of its secret as hex)`.
pub fn generate() -> Result<(String, String, String), ring::error::Unspecified> {
    let token_id = generate_hex(ID_HEX / 2)?;
    let secret = generate_hex(SECRET_HEX / 2)?;
    let hash = hex(&sha256(&secret));
    Ok((format!("{PREFIX}{token_id}_{secret}"), token_id, hash))
}

/// Parses the hex SHA-256 stored with a token.
pub fn parse_hash(hex_text: &str) -> Option<[u8; 32]> {
    if !is_hex(hex_text, 64) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex_text.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_and_its_secret_matches_the_stored_hash() {
        let (token, id, hash) = generate().unwrap();
        let p = Presented::parse(&token).unwrap();
        assert_eq!(p.token_id, id);
        assert!(same_hash(&p.secret_sha256(), &parse_hash(&hash).unwrap()));
        assert!(!format!("{p:?}").contains(&token[4 + ID_HEX + 1..]));
        let (other, _, _) = generate().unwrap();
        assert_ne!(token, other);
    }

    #[test]
    fn anything_but_the_exact_shape_is_refused() {
        let id = "0123456789abcdef";
        let secret = "a".repeat(64);
        assert!(Presented::parse(&format!("tly_{id}_{secret}")).is_some());
        for bad in [
            String::new(),
            format!("tk_{id}_{secret}"),
            format!("tly_{id}{secret}"),
            format!("tly_{id}_{secret}0"),
            format!("tly_{}_{secret}", &id[1..]),
            format!("tly_{id}_{}", secret.to_uppercase()),
            format!("tly_{id}_{}z", &secret[1..]),
            format!(" tly_{id}_{secret}"),
        ] {
            assert!(Presented::parse(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn stored_hashes_parse_only_as_64_hex_digits() {
        assert_eq!(parse_hash(&"0f".repeat(32)), Some([15u8; 32]));
        assert_eq!(parse_hash("0f"), None);
        assert_eq!(parse_hash(&"zz".repeat(32)), None);
    }
}
