//! The API's catalog routes (version 1, JSON): the stored catalog read per request
//! (`GET /v1/plans`, `GET /v1/plans/{id}`, `GET /v1/customers/{id}/subscriptions`), adding a
//! plan version or a subscription (`POST /v1/plans`, `POST /v1/subscriptions`) and cancelling
//! one (`POST /v1/subscriptions/cancel`).
//!
//! It owns how the catalog is shown and how a request becomes a catalog change; whether the
//! change is valid is decided by [`crate::catalog`] (through [`crate::store::catalog`]),
//! never here.

use hyper::StatusCode;
use serde::Serialize;
use tally_domain::CustomerId;
use tally_platform::http::ErrorCode;

use super::shared::{appended_reply, error, fail, json, parse, unavailable, ApiState, Reply};
use crate::catalog::{Catalog, Plan, Subscription};
use crate::config::{PlanSpec, SubscriptionSpec};
use crate::pricing::Price;

/// A plan version as the API shows it.
#[derive(Serialize)]
struct PlanView<'a> {
    id: &'a str,
    version: u32,
    currency: &'static str,
    effective_from: String,
    prices: Vec<PriceView<'a>>,
}

#[derive(Serialize)]
struct PriceView<'a> {
    meter: &'a str,
    #[serde(flatten)]
    price: &'a Price,
}

fn plan_view(p: &Plan) -> PlanView<'_> {
    let mut prices: Vec<PriceView<'_>> = p
        .prices
        .iter()
        .map(|(m, price)| PriceView {
            meter: m.as_str(),
            price,
        })
        .collect();
    prices.sort_by_key(|v| v.meter);
    PlanView {
        id: &p.id,
        version: p.version,
        currency: p.currency.code(),
        effective_from: rfc3339(p.effective_from_ms),
        prices,
    }
}

#[derive(Serialize)]
struct SubscriptionView<'a> {
    plan: &'a str,
    /// `weekly`, `monthly`, `quarterly`, `annual`: the periods of fees.
    interval: String,
    /// The periods of usage prices and minimums.
    usage_interval: String,
    billing_anchor_day: u32,
    /// The product line; empty: the main one.
    line: &'a str,
    /// The pinned plan version; none: the version effective at each period start.
    plan_version: Option<u32>,
    time_zone: &'static str,
    effective_from: Option<String>,
    effective_to: Option<String>,
    currency: Option<&'static str>,
    tax_region: Option<&'a str>,
    tax_exempt: bool,
    coupons: Vec<&'a str>,
}

fn subscription_view(s: &Subscription) -> SubscriptionView<'_> {
    SubscriptionView {
        plan: &s.plan,
        interval: s.cycle.cycle.interval(),
        usage_interval: s.usage_cycle.cycle.interval(),
        billing_anchor_day: s.cycle.cycle.anchor_day(),
        line: &s.line,
        plan_version: s.plan_version,
        time_zone: s.cycle.zone.map_or("UTC", |z| z.name()),
        effective_from: (s.from_ms != i64::MIN).then(|| rfc3339(s.from_ms)),
        effective_to: (s.to_ms != i64::MAX).then(|| rfc3339(s.to_ms)),
        currency: s.currency.map(|c| c.code()),
        tax_region: s.tax_region.as_deref(),
        tax_exempt: s.tax_exempt,
        coupons: s.coupons.iter().map(|c| c.id.as_str()).collect(),
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Answers from the stored catalog, read now; 503 `unavailable` when it cannot be read.
pub(crate) async fn read(state: &ApiState, show: impl FnOnce(&Catalog) -> Reply) -> Reply {
    match state.source.current(&state.db).await {
        Ok(catalog) => show(&catalog),
        Err(e) => unavailable(e),
    }
}

/// `GET /v1/plans`: every version of every plan.
pub(crate) fn plans(catalog: &Catalog) -> Reply {
    let plans: Vec<PlanView<'_>> = catalog.plans().map(plan_view).collect();
    json(StatusCode::OK, &plans)
}

/// `GET /v1/plans/{id}`: the plan's versions; 404 `not_found` for none.
pub(crate) fn plan(catalog: &Catalog, id: &str) -> Reply {
    let plans: Vec<PlanView<'_>> = catalog
        .plans()
        .filter(|p| p.id == id)
        .map(plan_view)
        .collect();
    if plans.is_empty() {
        return fail(ErrorCode::NotFound, format!("no plan {id:?}"));
    }
    json(StatusCode::OK, &plans)
}

/// `GET /v1/customers/{id}/subscriptions`; 400 `invalid_customer`; 409 `catalog_conflict`
/// for a customer quarantined because its stored records conflict (it has none in force, and
/// is not on the default plan either: an empty list would say it is).
pub(crate) fn subscriptions(catalog: &Catalog, customer: &str) -> Reply {
    let Ok(customer) = CustomerId::new(customer.to_owned()) else {
        return error(StatusCode::BAD_REQUEST, "invalid_customer", customer);
    };
    if let Some(why) = catalog.quarantine_of(customer.as_ref()) {
        return error(
            StatusCode::CONFLICT,
            "catalog_conflict",
            format!(
                "{customer}'s stored subscription records conflict, so it is left out of rating \
                 until they are resolved (docs/OPERATIONS.md, \"Conflicting catalog records\"): \
                 {why}"
            ),
        );
    }
    let subs: Vec<SubscriptionView<'_>> = catalog
        .subscriptions_of(&customer)
        .iter()
        .map(subscription_view)
        .collect();
    json(StatusCode::OK, &subs)
}

/// `POST /v1/plans`.
pub(crate) async fn add_plan(state: &ApiState, body: &[u8]) -> Reply {
    let plan: PlanSpec = match parse(body, "invalid_plan") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let identity = serde_json::json!({"id": plan.id, "version": plan.version});
    let added = state
        .source
        .add_plan(&state.db, plan, (state.now_ms)())
        .await;
    appended_reply(
        added.map(|a| a.plans_appended == 1),
        "invalid_plan",
        identity,
    )
}

/// `POST /v1/subscriptions`.
pub(crate) async fn add_subscription(state: &ApiState, body: &[u8]) -> Reply {
    let sub: SubscriptionSpec = match parse(body, "invalid_subscription") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let identity =
        serde_json::json!({"customer": sub.customer, "effective_from": sub.effective_from});
    let added = state
        .source
        .add_subscription(&state.db, sub, (state.now_ms)())
        .await;
    appended_reply(
        added.map(|a| a.subscriptions_appended == 1),
        "invalid_subscription",
        identity,
    )
}

/// `POST /v1/subscriptions/cancel`: `at` defaults to now; `at_period_end` cancels at the end
/// of the billing period containing `at`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelInput {
    customer: String,
    #[serde(default)]
    at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    at_period_end: bool,
    /// The line to cancel; default the main line.
    #[serde(default)]
    line: Option<String>,
}

/// `POST /v1/subscriptions/cancel`.
pub(crate) async fn cancel_subscription(state: &ApiState, body: &[u8]) -> Reply {
    let input: CancelInput = match parse(body, "invalid_cancellation") {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Ok(customer) = CustomerId::new(input.customer.clone()) else {
        return error(StatusCode::BAD_REQUEST, "invalid_customer", input.customer);
    };
    let now_ms = (state.now_ms)();
    let at_ms = input.at.map_or(now_ms, |t| t.timestamp_millis());
    let cancelled = state
        .source
        .cancel_subscription(
            &state.db,
            &customer,
            input.line.as_deref().unwrap_or_default(),
            at_ms,
            input.at_period_end,
            now_ms,
        )
        .await;
    let identity = match &cancelled {
        Ok((record, _)) => serde_json::json!({"customer": record.customer,
            "effective_from": record.effective_from, "state": record.state}),
        Err(_) => serde_json::Value::Null,
    };
    appended_reply(
        cancelled.map(|(_, a)| a.subscriptions_appended == 1),
        "invalid_cancellation",
        identity,
    )
}
