//! The rater's configuration: `[rater]`, `[[plans]]` and `[[subscriptions]]`.
//!
//! Decimals (prices, tier bounds) are written as strings or integers, never floats.
//!
//! It owns the file's shapes (what deserializes); it never validates a plan or subscription
//! against the others (that is [`crate::catalog`], which imports these types, never the
//! reverse).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::exact;
use tally_platform::ConfigError;

use crate::pricing::{Rate, Tier};

/// `[rater]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaterConfig {
    /// Plan for customers without a subscription; none: such usage is left unpriced (and
    /// counted in `tally_rater_unpriced_usage_total`). Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub default_plan: Option<String>,
    /// Seconds between rating passes when running continuously. Default 30.
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
    /// Periods overlapping `[now - lookback_secs, now]` are rated on every pass; it must cover
    /// the aggregator's allowed lateness. A period with an event corrected or imported
    /// (backfill) within the lookback is rated too, however old. Default 172800 (2 days).
    #[serde(default = "default_lookback_secs")]
    pub lookback_secs: u64,
    /// Prometheus endpoint. Default `127.0.0.1:9102`.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: String,
    /// Where `tally-rater serve` answers the HTTP API (catalog, explain); none: no API.
    /// Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub api_addr: Option<String>,
}

const fn default_interval_secs() -> u64 {
    30
}
const fn default_lookback_secs() -> u64 {
    2 * 86_400
}
fn default_metrics_addr() -> String {
    "127.0.0.1:9102".into()
}

impl Default for RaterConfig {
    fn default() -> Self {
        RaterConfig {
            default_plan: None,
            interval_secs: default_interval_secs(),
            lookback_secs: default_lookback_secs(),
            metrics_addr: default_metrics_addr(),
            api_addr: None,
        }
    }
}

impl RaterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_secs == 0 {
            return Err(ConfigError::invalid(
                "rater.interval_secs",
                "must be positive",
            ));
        }
        if self.lookback_secs == 0 {
            return Err(ConfigError::invalid(
                "rater.lookback_secs",
                "must be positive",
            ));
        }
        self.metrics_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::invalid("rater.metrics_addr", e))?;
        if let Some(a) = &self.api_addr {
            a.parse::<std::net::SocketAddr>()
                .map_err(|e| ConfigError::invalid("rater.api_addr", e))?;
        }
        Ok(())
    }
}

/// `[[plans]]`: one immutable plan version.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub id: String,
    pub version: u32,
    /// ISO 4217 code.
    pub currency: String,
    /// RFC 3339; the version applies to periods starting at or after this instant.
    pub effective_from: DateTime<Utc>,
    pub prices: Vec<PriceSpec>,
    /// Features and metered limits per period the version gives (`crate::catalog::entitlements`).
    #[serde(default, skip_serializing_if = "EntitlementsSpec::is_empty")]
    pub entitlements: EntitlementsSpec,
}

/// `entitlements = { features = [...], limits = [...] }` of a `[[plans]]` entry; validated by
/// `crate::catalog::entitlements::validate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntitlementsSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitSpec>,
}

impl EntitlementsSpec {
    pub fn is_empty(&self) -> bool {
        self.features.is_empty() && self.limits.is_empty()
    }
}

/// One metered limit per period.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub meter: String,
    /// Only usage with these group-by values counts (`{ model = "gpt-4o" }`); empty: all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group: BTreeMap<String, String>,
    #[serde(deserialize_with = "exact::decimal")]
    pub limit: Decimal,
}

/// `[[plans.prices]]`: the price of one meter. Which fields a model needs (see
/// docs/PRICING.md); a field a model does not use is refused:
/// - `per_unit`: `unit_price`
/// - `graduated`, `volume`: `tiers = [{up_to, unit_price}, ..., {unit_price}]`
/// - `package`: `package_size`, `package_price`
/// - `flat`: `amount`
/// - `dimensional`: `dimensions`, `rates = [{values, unit_price}]`, optional `default_unit_price`
///
/// Every model also takes `free_units`, `minimum` and `maximum`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    pub model: String,
    pub meter: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub unit_price: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub tiers: Option<Vec<Tier>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub package_size: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub package_price: Option<Decimal>,
    /// The flat fee per period.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub amount: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub dimensions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub rates: Option<Vec<Rate>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub default_unit_price: Option<Decimal>,
    /// Units free each period before the model applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub free_units: Option<Decimal>,
    /// The line's amount is trued up to at least this.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub minimum: Option<Decimal>,
    /// The line's amount is capped at this.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub maximum: Option<Decimal>,
    /// Tax code of the price (see `[[tax_rates]]`). Default `standard`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub tax_code: Option<String>,
    /// When a `flat` fee is billed: `in_arrears` (default: with its period) or `in_advance`
    /// (at its period's start, docs/PRICING.md "Fees billed in advance").
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub billing: Option<String>,
}

/// `[[subscriptions]]`: a customer on a plan.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    pub customer: String,
    pub plan: String,
    /// Day of the month billing periods start (1 to 31; 31 means the last day). Default 1.
    /// For a `weekly` interval, the ISO weekday (1 Monday to 7 Sunday).
    #[serde(default = "default_anchor")]
    pub billing_anchor_day: u32,
    /// `weekly`, `monthly` (default), `quarterly` or `annual`: the billing period of the
    /// plan's prices (and of its recurring fees).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub interval: Option<Interval>,
    /// Month (1 to 12) a `quarterly` or `annual` period starts in (and every 3rd or 12th
    /// month from it). Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub billing_anchor_month: Option<u32>,
    /// The period of usage prices and minimums when it differs from `interval` (e.g.
    /// `monthly` usage under an `annual` fee): `flat` fees follow `interval`, every other
    /// price this one, with the same anchors and time zone. Default: `interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub usage_interval: Option<Interval>,
    /// Discounts on this customer's charges.
    #[serde(default)]
    pub coupons: Vec<CouponSpec>,
    /// Tax region (see `[[tax_rates]]`); none: charges carry no tax.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub tax_region: Option<String>,
    /// The customer is exempt from tax (its charges record the region, with zero tax).
    #[serde(default)]
    pub tax_exempt: bool,
    /// RFC 3339; the subscription applies to usage from this instant until the customer's
    /// next subscription starts. Default: from the beginning. A change inside a billing
    /// period splits that period's charges at this instant.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub effective_from: Option<DateTime<Utc>>,
    /// ISO 4217 code the customer is billed in; default: the plan's currency. A plan in
    /// another currency is converted with `[[fx_rates]]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub currency: Option<String>,
    /// IANA time zone of the billing periods (`Asia/Tokyo`); default UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub time_zone: Option<String>,
    /// RFC 3339; the subscription ends at this instant (after `effective_from`): its last
    /// period is cut there, its fees and minimums prorated, and that period's invoice is
    /// finalized from this instant on. Default: no end.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// `active` (default), `paused` (from `effective_from` until the customer's next record:
    /// no fees, minimums or usage billed) or `cancelled` (ends the subscription for good at
    /// `effective_from`, like `ends_at`).
    #[serde(default, skip_serializing_if = "SubscriptionState::is_active")]
    pub state: SubscriptionState,
    /// A trial from `effective_from`: the charges of its parts are discounted (100% by
    /// default: free), then the subscription converts to its paid terms.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub trial: Option<TrialSpec>,
    /// The product line (`llm`, `seats`): a customer's lines run side by side, each with its
    /// own plan and terms, its records chained by `effective_from` within the line. Two lines
    /// whose plans price the same meter are refused. Default: the main line.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub line: Option<String>,
    /// Pins the record to this version of its plan; a later version applies only through a
    /// migration (a new record of the line from the migration instant naming the new
    /// version). Default: not pinned, the version effective at each period start.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub plan_version: Option<u32>,
}

/// A billing interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Weekly,
    Monthly,
    Quarterly,
    Annual,
}

/// What a subscription record does from its `effective_from`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    #[default]
    Active,
    Paused,
    Cancelled,
}

impl SubscriptionState {
    pub fn is_active(&self) -> bool {
        *self == SubscriptionState::Active
    }
}

/// `trial = { days = 14 }` or `{ periods = 1, percent_off = "50" }`: exactly one of `days`
/// (from `effective_from`) or `periods` (billing periods, counting the one containing
/// `effective_from`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrialSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub periods: Option<u32>,
    /// Percent off every charge of the trial, above 0 and at most 100. Default 100 (free).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub percent_off: Option<Decimal>,
}

/// `[[subscriptions.coupons]]`: a discount for a number of billing periods.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CouponSpec {
    /// Shown on the discount line.
    pub id: String,
    /// Percent off each charge (above 0, at most 100); or `amount_off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub percent_off: Option<Decimal>,
    /// Fixed amount off per period, in the plan's currency; needs `meter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub amount_off: Option<Decimal>,
    /// Only charges of this meter. Default: every meter (percent_off only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub meter: Option<String>,
    /// RFC 3339; the coupon starts with the billing period containing this instant.
    pub starts: DateTime<Utc>,
    /// `once`, `repeating` (with `periods`) or `forever`.
    pub duration: String,
    /// Billing periods a `repeating` coupon lasts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub periods: Option<u32>,
}

const fn default_anchor() -> u32 {
    1
}
