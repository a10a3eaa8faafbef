//! Dated FX rates, for billing a subscription in a currency its plan is not priced in.
//!
//! `[[fx_rates]]` entries say that from `effective_from` on, 1 unit of `from` is `rate` units
//! of `to`. A charge is priced in the plan's currency at full precision, converted with the
//! rate effective at its period's (or part's) start, and only then rounded, once, in the
//! billing currency. Pure.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{exact, Currency};
use tally_platform::ConfigError;

/// `[[fx_rates]]` (and the body of `POST /v1/fx_rates`): one rate, from a date. Its identity
/// is (from, to, effective_from); equal rates compare numerically.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FxRateSpec {
    /// ISO 4217 code of the plan's currency.
    pub from: String,
    /// ISO 4217 code of the billing currency.
    pub to: String,
    /// Units of `to` per unit of `from`; positive.
    #[serde(deserialize_with = "exact::decimal")]
    pub rate: Decimal,
    /// RFC 3339; the rate applies to periods starting at or after it.
    pub effective_from: DateTime<Utc>,
}

/// Validated rates per (from, to), sorted by `effective_from`.
#[derive(Debug, Clone, Default)]
pub struct FxTable {
    rates: HashMap<(Currency, Currency), Vec<(i64, Decimal)>>,
}

impl FxTable {
    /// Validates `fx_rates`; errors name the entry (`fx_rates[1].rate`).
    pub fn new(specs: Vec<FxRateSpec>) -> Result<FxTable, ConfigError> {
        let mut table = FxTable::default();
        for (i, s) in specs.iter().enumerate() {
            let at = format!("fx_rates[{i}]");
            let (from, to) = validate_fx_rate(s, &at)?;
            if !table.push(from, to, s) {
                return Err(ConfigError::invalid(
                    format!("{at}.effective_from"),
                    "another rate of this pair starts at the same instant",
                ));
            }
        }
        Ok(table)
    }

    /// Adds a validated rate; false if the pair has one from the same instant.
    pub(crate) fn push(&mut self, from: Currency, to: Currency, s: &FxRateSpec) -> bool {
        let at = s.effective_from.timestamp_millis();
        let list = self.rates.entry((from, to)).or_default();
        if list.iter().any(|(t, _)| *t == at) {
            return false;
        }
        let i = list.partition_point(|(t, _)| *t < at);
        list.insert(i, (at, s.rate));
        true
    }

    /// Whether any rate converts `from` to `to`.
    pub fn knows(&self, from: Currency, to: Currency) -> bool {
        self.rates.contains_key(&(from, to))
    }

    /// The rate effective at `at_ms`; none before the first.
    pub fn rate_at(&self, from: Currency, to: Currency, at_ms: i64) -> Option<Decimal> {
        let list = self.rates.get(&(from, to))?;
        list.iter()
            .rev()
            .find(|(t, _)| *t <= at_ms)
            .map(|(_, r)| *r)
    }
}

/// Checks one rate; its currencies. Errors name `at` and the field (`fx_rate.to`).
pub fn validate_fx_rate(s: &FxRateSpec, at: &str) -> Result<(Currency, Currency), ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let from: Currency = s
        .from
        .parse()
        .map_err(|e| ConfigError::invalid(field("from"), e))?;
    let to: Currency =
        s.to.parse()
            .map_err(|e| ConfigError::invalid(field("to"), e))?;
    if from == to {
        return Err(ConfigError::invalid(
            field("to"),
            "is the same currency as from",
        ));
    }
    if s.rate <= Decimal::ZERO {
        return Err(ConfigError::invalid(
            field("rate"),
            format!("{} must be positive", s.rate),
        ));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(from: &str, to: &str, rate: &str, at: &str) -> FxRateSpec {
        FxRateSpec {
            from: from.into(),
            to: to.into(),
            rate: rate.parse().unwrap(),
            effective_from: at.parse().unwrap(),
        }
    }

    #[test]
    fn the_rate_effective_at_the_period_start_applies() {
        let t = FxTable::new(vec![
            spec("USD", "EUR", "0.92", "2026-01-01T00:00:00Z"),
            spec("USD", "EUR", "0.95", "2026-02-01T00:00:00Z"),
        ])
        .unwrap();
        let (usd, eur) = ("USD".parse().unwrap(), "EUR".parse().unwrap());
        let at = |s: &str| {
            let ms = s.parse::<DateTime<Utc>>().unwrap().timestamp_millis();
            t.rate_at(usd, eur, ms).map(|r| r.to_string())
        };
        assert_eq!(at("2025-12-31T00:00:00Z"), None);
        assert_eq!(at("2026-01-31T23:59:59Z").as_deref(), Some("0.92"));
        assert_eq!(at("2026-02-01T00:00:00Z").as_deref(), Some("0.95"));
        assert!(t.rate_at(eur, usd, i64::MAX).is_none()); // no implied inverse
    }

    #[test]
    fn bad_rates_name_the_entry() {
        for (s, field) in [
            (
                spec("USD", "XYZ", "1", "2026-01-01T00:00:00Z"),
                "fx_rates[0].to",
            ),
            (
                spec("USD", "EUR", "0", "2026-01-01T00:00:00Z"),
                "fx_rates[0].rate",
            ),
            (
                spec("USD", "USD", "1", "2026-01-01T00:00:00Z"),
                "fx_rates[0].to",
            ),
        ] {
            let err = FxTable::new(vec![s]).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
