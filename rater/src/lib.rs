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
//! - [`catalog`]: the catalog's pure rules, never touching storage: validated plans and
//!   subscriptions and which plan applies to whom, when; `plan` (one plan version and its
//!   prices), `entitlements`, `customers` and `meters` (validated), `registry` (the versions of
//!   customers, agents and meters, and how one is added), `tax` and `fx` (dated rates),
//!   `rates` (the stored rate entries and how one is added), `zone` (billing periods in a
//!   time zone).
//! - [`pricing`]: the pricing models, one file each.
//! - [`rating`]: a charge and how it is computed from usage (`charge`, pure), reading and
//!   folding committed usage (`usage`), explaining a stored charge (`explain`).
//! - [`store`]: everything kept in ClickHouse, append-only: the catalog, registry and rates
//!   (bootstrapped from the file), charges, corrections and backfill imports.
//! - [`run`]: one rating pass and the schedule.
//! - [`bootstrap`]: the file's catalog checked, then appended to the stores in order.
//! - [`corrections`]: corrections of committed events (void, amend), their rules.
//! - [`backfill`]: importing historical events for named periods exactly once, its rules.
//! - [`api`]: the HTTP API and its OpenAPI document: the catalog, explain, the registry
//!   (customers, agents, meters), tax and FX rates, the usage query
//!   (`GET /v1/meters/{slug}/query`), corrections and backfill, one module each.
//! - [`live`]: live spend control: the live book of a partition, authorize decisions, holds,
//!   budgets and their thresholds (`tally-spend`).
//! - [`metrics`]: every metric this crate emits.
//!
//! Imports between these modules go one way: [`pricing`] imports none of them, [`config`]
//! only [`pricing`], [`catalog`] only those two; everything else builds on them.

pub mod api;
pub mod backfill;
pub mod bootstrap;
pub mod catalog;
pub mod config;
pub mod corrections;
pub mod live;
pub mod metrics;
pub mod pricing;
pub mod rating;
pub mod run;
pub mod store;

pub use catalog::Catalog;
pub use config::RaterConfig;
pub use run::{rate_once, RateError, RateReport};
