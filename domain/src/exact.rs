//! Reading exact decimals from configuration: strings (`"0.00002"`) and integers are
//! accepted, floats are refused because their text has already been rounded by the parser.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};

struct ExactVisitor;

impl Visitor<'_> for ExactVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a decimal written as a string, e.g. \"0.00002\", or an integer")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        crate::data::parse_decimal(v.trim())
            .or_else(|| Decimal::from_str(v.trim()).ok())
            .ok_or_else(|| E::custom(format!("{v:?} is not a decimal number")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        Err(E::custom(format!(
            "{v} is a float; write exact decimals as strings, e.g. \"{v}\""
        )))
    }
}

/// `#[serde(deserialize_with = "exact::decimal")]`.
pub fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    d.deserialize_any(ExactVisitor)
}

/// `#[serde(default, deserialize_with = "exact::opt_decimal")]`.
pub fn opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    d.deserialize_any(ExactVisitor).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct P {
        #[serde(deserialize_with = "decimal")]
        v: Decimal,
    }

    #[test]
    fn strings_and_integers_but_no_floats() {
        assert_eq!(
            serde_json::from_str::<P>(r#"{"v":"0.1"}"#).unwrap().v,
            Decimal::new(1, 1)
        );
        assert_eq!(
            serde_json::from_str::<P>(r#"{"v":7}"#).unwrap().v,
            Decimal::from(7)
        );
        assert!(serde_json::from_str::<P>(r#"{"v":0.1}"#).is_err());
        assert!(serde_json::from_str::<P>(r#"{"v":"abc"}"#).is_err());
    }
}
