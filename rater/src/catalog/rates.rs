//! The stored rates: every tax rate and FX rate entry of the catalog, and the rules for adding
//! one. Pure; [`crate::store::rates`] reads and appends them in ClickHouse.
//!
//! A rate entry is dated, like a subscription: its identity is (region, code,
//! effective_from) for a tax rate and (from, to, effective_from) for an FX rate, and it is
//! immutable. Adding an identity already stored with the same rate changes nothing; with
//! another rate it is a conflict naming the field. A change of rate is a new entry with a later
//! `effective_from`, which applies to periods starting from then on; entries are never
//! dropped or overwritten.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tally_platform::ConfigError;

use crate::catalog::conflicts::ConflictKind;
use crate::catalog::error::CatalogError;
use crate::catalog::fx::{validate_fx_rate, FxRateSpec, FxTable};
use crate::catalog::registry::Novelty;
use crate::catalog::tax::{validate_tax_rate, TaxRateSpec, TaxTable};

/// A dated rate entry: a tax rate or an FX rate.
pub trait RateEntry: Clone + PartialEq + Serialize + DeserializeOwned {
    /// Names the kind in messages (`tax rate`).
    const KIND: &'static str;
    /// The field holding the rate (`rate_percent`).
    const RATE_FIELD: &'static str;
    /// The kind a conflicting stored entry is reported as.
    const CONFLICT: ConflictKind;
    /// The identity besides the date: (region, code) or (from, to).
    fn scope(&self) -> (&str, &str);
    fn effective_from(&self) -> &DateTime<Utc>;
    /// The rate, for messages.
    fn rate_text(&self) -> String;
    /// Checks the entry; errors name `at` and the field.
    fn validate(&self, at: &str) -> Result<(), ConfigError>;
}

impl RateEntry for TaxRateSpec {
    const KIND: &'static str = "tax rate";
    const RATE_FIELD: &'static str = "rate_percent";
    const CONFLICT: ConflictKind = ConflictKind::TaxRate;
    fn scope(&self) -> (&str, &str) {
        (&self.region, &self.code)
    }
    fn effective_from(&self) -> &DateTime<Utc> {
        &self.effective_from
    }
    fn rate_text(&self) -> String {
        format!("{}%", self.rate_percent)
    }
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        validate_tax_rate(self, at)
    }
}

impl RateEntry for FxRateSpec {
    const KIND: &'static str = "fx rate";
    const RATE_FIELD: &'static str = "rate";
    const CONFLICT: ConflictKind = ConflictKind::FxRate;
    fn scope(&self) -> (&str, &str) {
        (&self.from, &self.to)
    }
    fn effective_from(&self) -> &DateTime<Utc> {
        &self.effective_from
    }
    fn rate_text(&self) -> String {
        self.rate.to_string()
    }
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        validate_fx_rate(self, at).map(|_| ())
    }
}

/// The entries of one kind by identity: (scope, effective_from in ms).
#[derive(Debug, Clone)]
pub struct Entries<T>(BTreeMap<(String, String, i64), T>);

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(BTreeMap::new())
    }
}

impl<T: RateEntry> Entries<T> {
    /// Checks an entry (errors name `at`, e.g. `tax_rate.rate_percent`) and records it.
    pub fn add(&mut self, spec: &T, at: &str) -> Result<Novelty, CatalogError> {
        spec.validate(at)?;
        let (a, b) = spec.scope();
        let key = (
            a.to_owned(),
            b.to_owned(),
            spec.effective_from().timestamp_millis(),
        );
        match self.0.get(&key) {
            Some(stored) if stored == spec => Ok(Novelty::Stored),
            Some(stored) => Err(CatalogError::Conflict {
                setting: format!("{at}.{}", T::RATE_FIELD),
                detail: format!(
                    "the {} of {a}/{b} from {} is already stored as {}; rates are immutable, a \
                     change is a new entry with a later effective_from",
                    T::KIND,
                    effective_from_text(spec.effective_from()),
                    stored.rate_text()
                ),
            }),
            None => {
                self.0.insert(key, spec.clone());
                Ok(Novelty::New)
            }
        }
    }

    /// Every entry, by scope and date.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.values()
    }
}

/// Every stored tax and FX rate entry.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    pub tax: Entries<TaxRateSpec>,
    pub fx: Entries<FxRateSpec>,
}

/// The RFC 3339 form of an entry's `effective_from`, as stored (milliseconds, `Z`).
pub fn effective_from_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Rates {
    /// Every tax rate entry, by region, code and date.
    pub fn tax_rates(&self) -> impl Iterator<Item = &TaxRateSpec> {
        self.tax.iter()
    }

    /// Every FX rate entry, by pair and date.
    pub fn fx_rates(&self) -> impl Iterator<Item = &FxRateSpec> {
        self.fx.iter()
    }

    /// The tax table the rater prices with.
    pub fn tax_table(&self) -> TaxTable {
        let mut t = TaxTable::default();
        for s in self.tax.iter() {
            t.push(s); // identities are unique, so never from the same instant twice
        }
        t
    }

    /// The FX table the rater prices with.
    pub fn fx_table(&self) -> FxTable {
        let mut t = FxTable::default();
        for s in self.fx.iter() {
            if let Ok((from, to)) = validate_fx_rate(s, "fx_rate") {
                t.push(from, to, s);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tax(json: &str) -> TaxRateSpec {
        serde_json::from_str(json).expect("a tax rate")
    }

    fn fx(json: &str) -> FxRateSpec {
        serde_json::from_str(json).expect("an fx rate")
    }

    #[test]
    fn rates_are_immutable_dated_entries() {
        let mut r = Rates::default();
        let de =
            tax(r#"{"region":"DE","rate_percent":"19","effective_from":"2026-01-01T00:00:00Z"}"#);
        assert_eq!(r.tax.add(&de, "tax_rate").expect("new"), Novelty::New);
        let same = tax(
            r#"{"region":"DE","code":"standard","rate_percent":"19.00","effective_from":"2026-01-01T00:00:00Z"}"#,
        );
        assert_eq!(r.tax.add(&same, "tax_rate").expect("same"), Novelty::Stored);
        let changed =
            tax(r#"{"region":"DE","rate_percent":"16","effective_from":"2026-01-01T00:00:00Z"}"#);
        match r.tax.add(&changed, "tax_rate") {
            Err(CatalogError::Conflict { setting, detail }) => {
                assert_eq!(setting, "tax_rate.rate_percent");
                assert!(
                    detail.contains(
                        "DE/standard from 2026-01-01T00:00:00.000Z is already stored as 19%"
                    ),
                    "{detail}"
                );
            }
            other => panic!("a changed rate is a conflict: {other:?}"),
        }
        let later =
            tax(r#"{"region":"DE","rate_percent":"16","effective_from":"2026-07-01T00:00:00Z"}"#);
        assert_eq!(r.tax.add(&later, "tax_rate").expect("new"), Novelty::New);
        let t = r.tax_table();
        let at = |s: &str| {
            s.parse::<chrono::DateTime<chrono::Utc>>()
                .expect("time")
                .timestamp_millis()
        };
        let rate = |ms| {
            t.rate_at("DE", "standard", ms)
                .map(|a| a.rate_percent.to_string())
        };
        assert_eq!(rate(at("2026-06-30T23:59:59Z")).as_deref(), Some("19"));
        assert_eq!(rate(at("2026-07-01T00:00:00Z")).as_deref(), Some("16"));

        let usd_eur = fx(
            r#"{"from":"USD","to":"EUR","rate":"0.92","effective_from":"2026-01-01T00:00:00Z"}"#,
        );
        assert_eq!(r.fx.add(&usd_eur, "fx_rate").expect("new"), Novelty::New);
        assert_eq!(
            r.fx.add(&usd_eur, "fx_rate").expect("same"),
            Novelty::Stored
        );
        let moved = fx(
            r#"{"from":"USD","to":"EUR","rate":"0.95","effective_from":"2026-01-01T00:00:00Z"}"#,
        );
        let err = r.fx.add(&moved, "fx_rate").expect_err("changed");
        assert!(err.to_string().contains("fx_rate.rate"), "{err}");
        let (usd, eur) = ("USD".parse().expect("usd"), "EUR".parse().expect("eur"));
        assert_eq!(
            r.fx_table().rate_at(usd, eur, at("2026-02-01T00:00:00Z")),
            Some("0.92".parse().expect("d"))
        );
    }

    #[test]
    fn bad_rates_name_the_field() {
        let mut r = Rates::default();
        let err = r
            .tax.add(&tax(r#"{"region":"DE","rate_percent":"-1","effective_from":"2026-01-01T00:00:00Z"}"#), "tax_rate")
            .expect_err("negative");
        assert!(err.to_string().contains("tax_rate.rate_percent"), "{err}");
        let err = r
            .fx.add(&fx(r#"{"from":"USD","to":"XYZ","rate":"1","effective_from":"2026-01-01T00:00:00Z"}"#), "fx_rate")
            .expect_err("unknown currency");
        assert!(err.to_string().contains("fx_rate.to"), "{err}");
        assert_eq!(r.tax_rates().count() + r.fx_rates().count(), 0);
    }
}
