//! The rater: turns committed usage into charges.
//!
//! It owns the catalog (customers and their agents, meters, price plans as immutable versions
//! with an effective date, subscriptions that bind customers to plans and billing cycles,
//! dated tax and FX rates), the pricing models, and computing
//! period-to-date charges from the public usage view `v_usage`. Charges are written with a
//! deterministic id per (customer, period, meter, group, plan version) and a rising version,
//! so running the rater twice, or two raters at once, yields the same charges. It never
//! reads raw events, never writes usage and never issues invoices.
//!
//! **Rounding**: a charge's amount is computed at full precision from quantity and prices
//! and rounded once, to the currency's minor units, half away from zero
//! ([`tally_domain::Currency::round`]).
//!
//! # Layout
//! - [`config`]: the `[rater]`, `[[plans]]` and `[[subscriptions]]` sections.
//! - [`customers`]: `[[customers]]` and their agents, validated (pure).
//! - [`meters`]: a meter version of the catalog, validated (pure).
//! - [`registry`]: the stored versions of customers, agents and meters, and how one is added.
//! - [`registry_store`]: customers, agents and meters in ClickHouse, bootstrapped from the file.
//! - [`plan`]: one plan version and the validation of its prices.
//! - [`catalog`]: validated plans and subscriptions; which plan applies to whom, when.
//! - [`catalog_store`]: the catalog in ClickHouse, append-only, bootstrapped from the file.
//! - [`pricing`]: the pricing models, one file each.
//! - [`charge`]: a charge and how it is computed from usage (pure).
//! - [`tax`]: tax rates by region and code, with effective dates.
//! - [`fx`]: dated FX rates for billing in a currency a plan lacks.
//! - [`rates`]: the stored tax and FX rate entries, and how one is added.
//! - [`rates_store`]: tax and FX rates in ClickHouse, bootstrapped from the file.
//! - [`zone`]: billing periods in a subscription's time zone.
//! - [`usage`]: reading committed usage per customer, meter and period.
//! - [`store`]: writing charges.
//! - [`explain`]: one charge's usage, arithmetic, rounding, discounts and tax, checked.
//! - [`run`]: one rating pass and the schedule.
//! - [`live`]: live spend control: the live book of a partition, authorize decisions, holds,
//!   budgets and their thresholds (`tally-spend`).
//! - [`api`]: the HTTP API (catalog, explain) and its OpenAPI document; [`api_registry`]: its
//!   customer, agent and meter routes; [`api_rates`]: its tax and FX rate routes;
//!   [`api_query`]: the usage query (`GET /v1/meters/{slug}/query`); [`api_corrections`]:
//!   voiding and amending events.
//! - [`corrections`]: corrections of committed events (void, amend), their rules;
//!   [`corrections_store`]: their storage.
//! - [`backfill`]: importing historical events for named periods exactly once, its rules;
//!   [`backfill_store`]: the import against storage; [`api_backfill`]: `POST /v1/backfill`.
//! - [`metrics`]: every metric this crate emits.

pub mod api;
pub mod api_backfill;
pub mod api_corrections;
pub mod api_query;
pub mod api_rates;
pub mod api_registry;
pub mod backfill;
pub mod backfill_store;
pub mod catalog;
pub mod catalog_store;
pub mod charge;
pub mod config;
pub mod corrections;
pub mod corrections_store;
pub mod customers;
pub mod entitlements;
pub mod explain;
pub mod fx;
pub mod live;
pub mod meters;
pub mod metrics;
pub mod plan;
pub mod pricing;
pub mod rates;
pub mod rates_store;
pub mod registry;
pub mod registry_store;
pub mod run;
pub mod store;
pub mod tax;
pub mod usage;
pub mod zone;

pub use catalog::Catalog;
pub use config::RaterConfig;
pub use run::{rate_once, RateError, RateReport};
