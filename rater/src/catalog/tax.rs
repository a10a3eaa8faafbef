//! Taxes: rates by tax region and tax code with effective dates, applied per charge line.
//!
//! A subscription names its tax region (none: its charges carry no tax) or is exempt; each
//! price has a tax code (default `standard`). A charge is taxed at the rate for (region,
//! code) effective at its period's start (the latest `effective_from` at or before it), on
//! its rounded amount after discounts; the tax is rounded by the same rule (half away from
//! zero, to the currency's minor units). Invoice tax is the sum of the lines' taxes. Pure.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::exact;
use tally_platform::ConfigError;

/// The tax code of a price that names none (defined with the price, in pricing).
pub use crate::pricing::DEFAULT_TAX_CODE;

/// `[[tax_rates]]` (and the body of `POST /v1/tax_rates`): one rate, from a date. Its
/// identity is (region, code, effective_from); equal values compare numerically (`"19"` and
/// `"19.0"` are the same rate).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaxRateSpec {
    /// A tax region, e.g. `DE` or `US-NY`.
    pub region: String,
    /// A tax code of prices, e.g. `standard` or `digital-services`.
    #[serde(default = "default_code")]
    pub code: String,
    /// Percent, e.g. `"19"` or `"8.875"`; 0 to 100.
    #[serde(deserialize_with = "exact::decimal")]
    pub rate_percent: Decimal,
    /// RFC 3339; the rate applies to periods starting at or after it.
    pub effective_from: DateTime<Utc>,
}

fn default_code() -> String {
    DEFAULT_TAX_CODE.into()
}

/// The tax that applies to a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRate {
    pub region: String,
    pub code: String,
    pub rate_percent: Decimal,
}

/// Validated rates: per region, then code (looked up without allocating), sorted by
/// `effective_from`.
#[derive(Debug, Clone, Default)]
pub struct TaxTable {
    rates: HashMap<String, HashMap<String, Vec<(i64, Decimal)>>>,
}

impl TaxTable {
    /// Validates `tax_rates`; errors name the entry (`tax_rates[2].rate_percent`).
    pub fn new(specs: Vec<TaxRateSpec>) -> Result<TaxTable, ConfigError> {
        let mut table = TaxTable::default();
        for (i, s) in specs.iter().enumerate() {
            let at = format!("tax_rates[{i}]");
            validate_tax_rate(s, &at)?;
            if !table.push(s) {
                return Err(ConfigError::invalid(
                    format!("{at}.effective_from"),
                    "another rate of this region and code starts at the same instant",
                ));
            }
        }
        Ok(table)
    }

    /// Adds a validated rate; false if its (region, code) has one from the same instant.
    pub(crate) fn push(&mut self, s: &TaxRateSpec) -> bool {
        let from_ms = s.effective_from.timestamp_millis();
        let list = self
            .rates
            .entry(s.region.clone())
            .or_default()
            .entry(s.code.clone())
            .or_default();
        if list.iter().any(|(t, _)| *t == from_ms) {
            return false;
        }
        let at = list.partition_point(|(t, _)| *t < from_ms);
        list.insert(at, (from_ms, s.rate_percent));
        true
    }

    /// Whether any rate exists for (region, code).
    pub fn knows(&self, region: &str, code: &str) -> bool {
        self.rates.get(region).is_some_and(|c| c.contains_key(code))
    }

    /// The rate for (region, code) effective at `at_ms`; none before the first one.
    pub fn rate_at(&self, region: &str, code: &str, at_ms: i64) -> Option<AppliedRate> {
        let list = self.rates.get(region)?.get(code)?;
        let (_, rate) = list.iter().rev().find(|(t, _)| *t <= at_ms)?;
        Some(AppliedRate {
            region: region.to_owned(),
            code: code.to_owned(),
            rate_percent: *rate,
        })
    }
}

/// Checks one rate; errors name `at` and the field (`tax_rate.rate_percent`).
pub fn validate_tax_rate(s: &TaxRateSpec, at: &str) -> Result<(), ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    if s.region.is_empty() {
        return Err(ConfigError::invalid(field("region"), "is empty"));
    }
    if s.code.is_empty() {
        return Err(ConfigError::invalid(field("code"), "is empty"));
    }
    if s.rate_percent < Decimal::ZERO || s.rate_percent > Decimal::ONE_HUNDRED {
        return Err(ConfigError::invalid(
            field("rate_percent"),
            format!("{} is not from 0 to 100", s.rate_percent),
        ));
    }
    Ok(())
}

/// The unrounded tax on a (rounded) net amount.
pub fn tax_on(net: Decimal, rate_percent: Decimal) -> Decimal {
    net * rate_percent / Decimal::ONE_HUNDRED
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(region: &str, rate: &str, from: &str) -> TaxRateSpec {
        TaxRateSpec {
            region: region.into(),
            code: DEFAULT_TAX_CODE.into(),
            rate_percent: rate.parse().unwrap(),
            effective_from: from.parse().unwrap(),
        }
    }

    #[test]
    fn the_rate_effective_at_the_period_start_applies() {
        let t = TaxTable::new(vec![
            spec("DE", "19", "2020-01-01T00:00:00Z"),
            spec("DE", "16", "2020-07-01T00:00:00Z"),
            spec("DE", "19", "2021-01-01T00:00:00Z"),
        ])
        .unwrap();
        let at = |s: &str| {
            let ms = s.parse::<DateTime<Utc>>().unwrap().timestamp_millis();
            t.rate_at("DE", DEFAULT_TAX_CODE, ms)
                .map(|r| r.rate_percent.to_string())
        };
        assert_eq!(at("2019-12-01T00:00:00Z"), None);
        assert_eq!(at("2020-06-01T00:00:00Z").as_deref(), Some("19"));
        assert_eq!(at("2020-07-01T00:00:00Z").as_deref(), Some("16")); // from the instant on
        assert_eq!(at("2021-02-01T00:00:00Z").as_deref(), Some("19"));
        assert!(t.rate_at("FR", DEFAULT_TAX_CODE, 0).is_none());
    }

    #[test]
    fn bad_rates_name_the_entry() {
        let err = TaxTable::new(vec![spec("DE", "119", "2020-01-01T00:00:00Z")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tax_rates[0].rate_percent"), "{err}");
        let err = TaxTable::new(vec![
            spec("DE", "19", "2020-01-01T00:00:00Z"),
            spec("DE", "16", "2020-01-01T00:00:00Z"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("tax_rates[1].effective_from"), "{err}");
    }

    #[test]
    fn tax_is_a_percentage_of_the_net_amount() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(tax_on(d("100.00"), d("19")), d("19"));
        assert_eq!(tax_on(d("9.99"), d("8.875")), d("0.8866125")); // -> 0.89 in USD
    }
}
