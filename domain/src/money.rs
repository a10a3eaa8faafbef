//! Currencies and the one rounding rule.
//!
//! **Rounding rule**: an amount is rounded to its currency's ISO 4217 minor units, half away
//! from zero (0.005 USD -> 0.01), exactly once: when a charge line's amount is computed from
//! quantity and prices. Unit prices and intermediate tier amounts keep full precision; totals
//! are sums of already-rounded lines, so they never need rounding again.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// Why a currency or amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?}; known are {known}", known = KNOWN.iter().map(|c| c.0).collect::<Vec<_>>().join(", "))]
    UnknownCurrency(String),
    #[error("amount {0} does not fit in minor units")]
    Overflow(Decimal),
}

/// ISO 4217 codes and their minor units. Add rows here; nothing else needs to change.
const KNOWN: &[(&str, u32)] = &[
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("CHF", 2),
    ("CAD", 2),
    ("AUD", 2),
    ("SEK", 2),
    ("NOK", 2),
    ("DKK", 2),
    ("PLN", 2),
    ("INR", 2),
    ("CNY", 2),
    ("BRL", 2),
    ("MXN", 2),
    ("SGD", 2),
    ("HKD", 2),
    ("NZD", 2),
    ("ZAR", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("ISK", 0),
    ("CLP", 0),
    ("VND", 0),
    ("BHD", 3),
    ("KWD", 3),
    ("OMR", 3),
    ("JOD", 3),
    ("TND", 3),
];

/// A currency with its minor units. Serialized as its code; deserialized from a code it
/// knows (by hand: a derived impl would only read `'static` input, for the `&'static str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct Currency {
    code: &'static str,
    minor_units: u32,
}

impl Currency {
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point (USD 2, JPY 0, BHD 3).
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }

    /// Applies the rounding rule: minor units, half away from zero.
    pub fn round(&self, amount: Decimal) -> Decimal {
        amount.round_dp_with_strategy(self.minor_units, RoundingStrategy::MidpointAwayFromZero)
    }

    /// An already-rounded amount as an integer count of minor units.
    pub fn to_minor(&self, amount: Decimal) -> Result<i64, MoneyError> {
        debug_assert_eq!(self.round(amount), amount, "to_minor takes rounded amounts");
        let scaled = amount.checked_mul(Decimal::from(10i64.pow(self.minor_units)));
        scaled
            .and_then(|s| i64::try_from(s.trunc()).ok())
            .ok_or(MoneyError::Overflow(amount))
    }

    /// Minor units back to a decimal amount with the currency's scale.
    pub fn from_minor(&self, minor: i64) -> Decimal {
        Decimal::new(minor, self.minor_units)
    }

    /// `minor` units as invoices print them, with the currency's scale and code: `1234` USD
    /// is `12.34 USD`, `1234` JPY is `1234 JPY`, `-5` BHD is `-0.005 BHD`.
    pub fn amount(&self, minor: i64) -> String {
        format!("{} {}", self.from_minor(minor), self.code)
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, MoneyError> {
        KNOWN
            .iter()
            .find(|(code, _)| *code == s)
            .map(|(code, minor_units)| Currency {
                code,
                minor_units: *minor_units,
            })
            .ok_or_else(|| MoneyError::UnknownCurrency(s.to_owned()))
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, MoneyError> {
        s.parse()
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Code;
        impl serde::de::Visitor<'_> for Code {
            type Value = Currency;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO 4217 currency code")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Currency, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Code)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code.to_owned()
    }
}

impl PartialEq<&str> for Currency {
    fn eq(&self, other: &&str) -> bool {
        self.code == *other
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cur(code: &str) -> Currency {
        code.parse().unwrap()
    }

    #[test]
    fn amounts_print_with_the_currencys_scale_and_code() {
        let cases = [
            ("USD", 1234, "12.34 USD"),
            ("USD", 5, "0.05 USD"),
            ("USD", -1999, "-19.99 USD"),
            ("JPY", 1234, "1234 JPY"),
            ("BHD", -5, "-0.005 BHD"),
            ("EUR", 0, "0.00 EUR"),
        ];
        for (code, minor, want) in cases {
            assert_eq!(cur(code).amount(minor), want, "{minor} {code}");
        }
    }

    #[test]
    fn deserializes_known_codes_only() {
        let usd: Currency = serde_json::from_str(r#""USD""#).unwrap();
        assert_eq!((usd.code(), usd.minor_units()), ("USD", 2));
        let owned = String::from(r#""BHD""#);
        let bhd: Currency = serde_json::from_str(&owned).unwrap();
        assert_eq!(bhd.minor_units(), 3);
        assert_eq!(serde_json::to_string(&bhd).unwrap(), r#""BHD""#);
        let err = serde_json::from_str::<Currency>(r#""XXX""#).unwrap_err();
        assert!(
            err.to_string().contains("unknown currency \"XXX\""),
            "{err}"
        );
    }

    #[test]
    fn minor_units_per_currency() {
        assert_eq!(cur("USD").minor_units(), 2);
        assert_eq!(cur("JPY").minor_units(), 0);
        assert_eq!(cur("BHD").minor_units(), 3);
        assert!("XXX".parse::<Currency>().is_err());
    }

    #[test]
    fn rounds_half_away_from_zero() {
        assert_eq!(cur("USD").round(Decimal::new(5, 3)), Decimal::new(1, 2));
        assert_eq!(cur("USD").round(Decimal::new(4999, 5)), Decimal::new(5, 2));
        assert_eq!(cur("USD").round(Decimal::new(-5, 3)), Decimal::new(-1, 2));
        assert_eq!(cur("JPY").round(Decimal::new(25, 1)), Decimal::from(3));
        assert_eq!(
            cur("BHD").round(Decimal::new(12345, 4)),
            Decimal::new(1235, 3)
        );
    }

    #[test]
    fn minor_unit_round_trip() {
        let usd = cur("USD");
        assert_eq!(usd.to_minor(Decimal::new(1234, 2)).unwrap(), 1234);
        assert_eq!(usd.from_minor(1234), Decimal::new(1234, 2));
        assert_eq!(cur("JPY").to_minor(Decimal::from(7)).unwrap(), 7);
    }

    proptest! {
        #[test]
        fn rounding_is_within_half_a_minor_unit(units in -1_000_000_000_000i64..1_000_000_000_000, scale in 0u32..12) {
            for code in ["USD", "JPY", "BHD"] {
                let c = cur(code);
                let a = Decimal::new(units, scale);
                let r = c.round(a);
                let half = Decimal::new(5, c.minor_units() + 1);
                prop_assert!((r - a).abs() <= half);
                prop_assert!(r.scale() <= c.minor_units());
                prop_assert_eq!(c.round(r), r);
            }
        }
    }
}
