use super::*;
use crate::config::RaterConfig;
use proptest::prelude::*;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_platform::usage::Units;

const NOV26: i64 = 1_795_651_200_000; // 2026-11-26T00:00Z
const UNIT: i128 = 1_000_000_000;

fn catalog() -> Catalog {
    let specs: Vec<MeterSpec> = serde_json::from_str(
        r#"[{"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n"},
            {"slug":"calls","event_type":"c","aggregation":"COUNT"}]"#,
    )
    .unwrap();
    let plans: Vec<crate::config::PlanSpec> = serde_json::from_str(
        r#"[{"id":"p","version":1,"currency":"USD","effective_from":"2020-01-01T00:00:00Z",
             "prices":[{"model":"per_unit","meter":"tokens","unit_price":"0.001"},
                       {"model":"graduated","meter":"calls","tiers":[
                          {"up_to":"10","unit_price":"0.10"},{"unit_price":"0.01"}]}]}]"#,
    )
    .unwrap();
    let rater = RaterConfig {
        default_plan: Some("p".into()),
        ..Default::default()
    };
    Catalog::new(plans, vec![], &rater, &validate_meters(specs).unwrap()).unwrap()
}

fn book(budgets: Vec<Budget>) -> Book {
    let mut b = Book::default();
    b.meters.insert("tokens".into(), Aggregation::Sum);
    b.meters.insert("calls".into(), Aggregation::Count);
    for budget in budgets {
        b.budgets
            .entry(budget.customer.clone())
            .or_default()
            .push(budget.validated().unwrap());
    }
    b
}

fn budget(limit: i64, agent: Option<&str>) -> Budget {
    Budget {
        customer: "acme".into(),
        budget_id: agent.map_or("all".into(), |a| format!("agent-{a}")),
        agent: agent.map(str::to_owned),
        meter: None,
        kind: Kind::Amount,
        limit: Decimal::from(limit),
        thresholds: vec![50, 80, 100],
        hard: true,
    }
}

fn tokens(agent: &str, at_ms: i64, n: i128) -> UsageRow {
    let start = u32::try_from(at_ms / 1000).unwrap();
    UsageRow {
        customer: "acme".into(),
        agent: agent.into(),
        meter: "tokens".into(),
        aggregation: "SUM".into(),
        group_key: "{}".into(),
        group_names: vec![],
        group_values: vec![],
        start,
        end: start + 60,
        events: 1,
        sum: Units(n * UNIT),
        min: Units(n * UNIT),
        max: Units(n * UNIT),
        latest: Units(n * UNIT),
        latest_time_ms: at_ms,
        latest_event_id: "e".into(),
        unique_values: vec![],
    }
}

fn ask<'a>(
    customer: &'a CustomerId,
    agent: &'a str,
    q: i64,
    id: &str,
    group: &'a BTreeMap<String, String>,
) -> Ask<'a> {
    Ask {
        customer,
        agent,
        meter: "tokens",
        quantity: Decimal::from(q),
        group,
        hold_id: id.into(),
        expires_at_ms: NOV26 + 60_000,
    }
}

#[test]
fn committed_usage_is_priced_per_customer_meter_and_agent() {
    let c = catalog();
    let mut b = book(vec![]);
    b.add_rows(&c, &[tokens("a", NOV26, 3000), tokens("b", NOV26, 1000)]);
    let costs = &b.customers["acme"].costs;
    assert_eq!(costs.total, Decimal::from(4));
    assert_eq!(costs.currency.as_deref(), Some("USD"));
    assert_eq!(costs.meters["tokens"].quantity, Decimal::from(4000));
    assert_eq!(
        costs.agents[&("a".into(), "tokens".into())].amount,
        Decimal::from(3)
    );
    assert_eq!(
        costs.agents[&("b".into(), "tokens".into())].amount,
        Decimal::from(1)
    );
}

#[test]
fn a_request_is_allowed_while_it_fits_and_holds_count_at_once() {
    let c = catalog();
    let mut b = book(vec![budget(10, None)]);
    b.add_rows(&c, &[tokens("a", NOV26, 9000)]); // $9 spent
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let now = NOV26 + 1000;
    let (a, h) = b.authorize(&c, &ask(&acme, "a", 2000, "h1", &g), now);
    assert!(!a.allow);
    assert_eq!(a.reason, Some(Reason::BudgetExceeded));
    assert_eq!(a.remaining, Some(Decimal::from(1)));
    assert!(h.is_none());
    let (a, h) = b.authorize(&c, &ask(&acme, "a", 1000, "h2", &g), now);
    assert!(a.allow, "{a:?}");
    assert_eq!(a.remaining, Some(Decimal::ZERO));
    assert_eq!(h.unwrap().amount, Decimal::from(1));
    // the hold counts for the next request, of any agent of the customer
    let (a, _) = b.authorize(&c, &ask(&acme, "other", 1, "h3", &g), now);
    assert_eq!(a.reason, Some(Reason::BudgetExceeded));
    // half the work's usage arrives: the hold still reserves the other half (its work may
    // still use it), so the spend and the hold leave nothing
    let used = [tokens("a", NOV26 + 2000, 500)];
    b.add_rows(&c, &used);
    let settled = b.settle("batch1", &[&used[0]], &[("acme".into(), "h2".into())]);
    assert!(settled.ended.is_empty());
    assert_eq!(settled.reduced.len(), 1);
    assert_eq!(settled.reduced[0].quantity, Decimal::from(500));
    assert_eq!(settled.reduced[0].amount, Decimal::new(5, 1));
    let (a, _) = b.authorize(&c, &ask(&acme, "other", 500, "h4", &g), now);
    assert_eq!(a.reason, Some(Reason::BudgetExceeded));
    // the work is done: its agent gives the rest back, and there is room again
    assert!(b.release("acme", "h2").is_some());
    let (a, _) = b.authorize(&c, &ask(&acme, "other", 500, "h4", &g), now);
    assert!(a.allow);
    assert_eq!(
        b.release("acme", "h4").map(|h| h.quantity),
        Some(Decimal::from(500))
    );
    assert!(b.release("acme", "h4").is_none());
}

#[test]
fn per_agent_budgets_limit_only_their_agent() {
    let c = catalog();
    let mut b = book(vec![budget(2, Some("a"))]);
    b.add_rows(&c, &[tokens("a", NOV26, 2000), tokens("b", NOV26, 5000)]);
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let (a, _) = b.authorize(&c, &ask(&acme, "a", 1, "h1", &g), NOV26);
    assert_eq!(a.reason, Some(Reason::BudgetExceeded));
    let (a, _) = b.authorize(&c, &ask(&acme, "b", 100_000, "h2", &g), NOV26);
    assert!(a.allow);
}

#[test]
fn unknown_meters_and_customers_are_denied_with_their_reason() {
    let c = catalog();
    let mut b = book(vec![]);
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let mut q = ask(&acme, "a", 1, "h", &g);
    q.meter = "nope";
    assert_eq!(
        b.authorize(&c, &q, NOV26).0.reason,
        Some(Reason::UnknownMeter)
    );
    let no_default = Catalog::default();
    let mut b = book(vec![]);
    assert_eq!(
        b.authorize(&no_default, &ask(&acme, "a", 1, "h", &g), NOV26)
            .0
            .reason,
        Some(Reason::UnknownCustomer)
    );
}

#[test]
fn thresholds_cross_once_per_period_and_a_new_period_starts_from_zero() {
    let c = catalog();
    let mut b = book(vec![budget(10, None)]);
    b.add_rows(&c, &[tokens("a", NOV26, 5000)]);
    let t: Vec<u8> = b.crossings("acme").iter().map(|x| x.threshold).collect();
    assert_eq!(t, vec![50]);
    assert!(b.crossings("acme").is_empty(), "once");
    b.add_rows(&c, &[tokens("a", NOV26, 6000)]);
    let t: Vec<u8> = b.crossings("acme").iter().map(|x| x.threshold).collect();
    assert_eq!(t, vec![80, 100]);
    // December: a new period
    let dec = 1_796_083_200_000; // 2026-12-01T00:00Z
    b.add_rows(&c, &[tokens("a", dec, 1000)]);
    assert_eq!(b.customers["acme"].costs.total, Decimal::from(1));
    assert!(b.crossings("acme").is_empty());
    // a late row of November is not live spend any more
    b.add_rows(&c, &[tokens("a", NOV26, 99_000)]);
    assert_eq!(b.customers["acme"].costs.total, Decimal::from(1));
}

#[test]
fn holds_expire_and_restore_only_while_live() {
    let c = catalog();
    let mut b = book(vec![budget(10, None)]);
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let (_, h) = b.authorize(&c, &ask(&acme, "a", 10_000, "h1", &g), NOV26);
    let h = h.unwrap();
    assert!(b.expire(NOV26 + 59_999).is_empty());
    assert_eq!(b.expire(NOV26 + 60_000).len(), 1);
    b.restore(&c, h.clone(), NOV26 + 1);
    assert_eq!(b.holds().count(), 1);
    let mut fresh = book(vec![]);
    fresh.restore(&c, h, NOV26 + 60_000);
    assert_eq!(fresh.holds().count(), 0, "an expired hold is not restored");
}

#[test]
fn graduated_prices_cost_the_margin() {
    let c = catalog();
    let mut b = book(vec![Budget {
        meter: Some("calls".into()),
        ..budget(2, None)
    }]);
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let calls = |id: &str, q: i64| Ask {
        meter: "calls",
        ..ask(&acme, "a", q, id, &g)
    };
    // 10 calls at 0.10 = 1.00, then 0.01 each: 110 calls fit $2 exactly
    let (a, h) = b.authorize(&c, &calls("h1", 10), NOV26);
    assert!(a.allow);
    assert_eq!(h.unwrap().amount, Decimal::new(100, 2));
    let (a, h) = b.authorize(&c, &calls("h2", 100), NOV26);
    assert!(a.allow, "{a:?}");
    assert_eq!(h.unwrap().amount, Decimal::new(100, 2));
    assert_eq!(
        b.authorize(&c, &calls("h3", 1), NOV26).0.reason,
        Some(Reason::BudgetExceeded)
    );
}

proptest! {
    /// Whatever the order of requests, settlements (with at most the declared quantity),
    /// releases and expiries, committed spend plus holds never exceed a hard budget.
    #[test]
    fn spend_and_holds_never_exceed_a_hard_budget(
        ops in proptest::collection::vec((0u8..4, 1i64..4000, 0usize..8), 1..200)
    ) {
        let c = catalog();
        let mut b = book(vec![budget(10, None)]);
        let acme = CustomerId::new("acme").unwrap();
        let g = BTreeMap::new();
        let mut held: Vec<Hold> = Vec::new();
        let mut now = NOV26;
        for (i, (op, q, pick)) in ops.into_iter().enumerate() {
            now += 10;
            match op {
                0 | 1 => {
                    let id = format!("h{i}");
                    if let (a, Some(h)) = b.authorize(&c, &ask(&acme, "a", q, &id, &g), now) {
                        prop_assert!(a.allow);
                        held.push(h);
                    }
                }
                2 if !held.is_empty() => {
                    let h = held.remove(pick % held.len());
                    let used = i128::from(q) % (h.quantity.mantissa() + 1);
                    let rows = [tokens("a", now, used)];
                    b.add_rows(&c, &rows);
                    let settled = b.settle(&format!("b{i}"), &[&rows[0]], &[("acme".into(), h.id)]);
                    held.extend(settled.reduced);
                }
                3 if !held.is_empty() => {
                    let h = held.remove(pick % held.len());
                    b.release("acme", &h.id);
                }
                _ => {}
            }
            if let Some(book) = b.customers.get("acme") {
                let holds: Decimal = book.holds.values().map(|h| h.amount).sum();
                prop_assert!(book.costs.total + holds <= Decimal::from(10));
            }
        }
    }
}

/// A catalog whose plan has entitlements: version 1 (from 2020) has the feature `search` and
/// 1,000 tokens of model `big` a period; version 2 (from 2026-12-01) drops the feature and
/// allows 2,000.
fn entitled_catalog() -> Catalog {
    let specs: Vec<MeterSpec> = serde_json::from_str(
        r#"[{"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n",
             "group_by":{"model":"$.model"}}]"#,
    )
    .unwrap();
    let plans: Vec<crate::config::PlanSpec> = serde_json::from_str(
        r#"[{"id":"p","version":1,"currency":"USD","effective_from":"2020-01-01T00:00:00Z",
             "prices":[{"model":"per_unit","meter":"tokens","unit_price":"0.001"}],
             "entitlements":{"features":["search"],
                             "limits":[{"meter":"tokens","group":{"model":"big"},"limit":"1000"}]}},
            {"id":"p","version":2,"currency":"USD","effective_from":"2026-12-01T00:00:00Z",
             "prices":[{"model":"per_unit","meter":"tokens","unit_price":"0.001"}],
             "entitlements":{"limits":[{"meter":"tokens","group":{"model":"big"},"limit":"2000"}]}}]"#,
    )
    .unwrap();
    let rater = RaterConfig {
        default_plan: Some("p".into()),
        ..Default::default()
    };
    Catalog::new(plans, vec![], &rater, &validate_meters(specs).unwrap()).unwrap()
}

fn model(m: &str) -> BTreeMap<String, String> {
    [("model".to_owned(), m.to_owned())].into()
}

fn big_tokens(at_ms: i64, n: i128) -> UsageRow {
    let mut r = tokens("a", at_ms, n);
    r.group_key = r#"{"model":"big"}"#.into();
    r.group_names = vec!["model".into()];
    r.group_values = vec!["big".into()];
    r
}

#[test]
fn metered_entitlements_count_usage_and_holds_of_the_groups_they_name() {
    let c = entitled_catalog();
    let mut b = book(vec![]);
    let acme = CustomerId::new("acme").unwrap();
    b.add_rows(&c, [&big_tokens(NOV26, 600)]);
    let (big, small) = (model("big"), model("small"));
    // 600 used: 300 fits, then another 200 does not (held 300 counts), other models are free
    let (a, h) = b.authorize(&c, &ask(&acme, "a", 300, "h1", &big), NOV26 + 1000);
    assert!(a.allow && h.is_some(), "{a:?}");
    let (a, _) = b.authorize(&c, &ask(&acme, "b", 200, "h2", &big), NOV26 + 1000);
    assert_eq!(a.reason, Some(Reason::EntitlementExceeded), "{a:?}");
    assert_eq!(a.remaining, Some(Decimal::from(100)));
    let (a, _) = b.authorize(&c, &ask(&acme, "b", 100, "h3", &big), NOV26 + 1000);
    assert!(a.allow, "exactly up to the limit: {a:?}");
    let (a, _) = b.authorize(&c, &ask(&acme, "b", 5000, "h4", &small), NOV26 + 1000);
    assert!(a.allow, "another model is not limited: {a:?}");
    let used = b.entitlement_use(&c, "acme");
    assert_eq!(used.features, vec!["search".to_owned()]);
    assert_eq!(used.limits[0].used, Decimal::from(600));
    assert_eq!(used.limits[0].held, Decimal::from(400));
    assert_eq!(used.limits[0].remaining, Decimal::ZERO);
}

#[test]
fn features_and_limits_follow_the_plan_version_of_the_period() {
    let c = entitled_catalog();
    let mut b = book(vec![]);
    let acme = CustomerId::new("acme").unwrap();
    assert!(b.feature(&c, &acme, "search", NOV26).allow);
    let no = b.feature(&c, &acme, "export", NOV26);
    assert_eq!(no.reason, Some(Reason::NotEntitled));
    // December: version 2 has no `search` and allows 2,000 of `big`
    let dec1 = NOV26 + 5 * 86_400_000;
    assert_eq!(
        b.feature(&c, &acme, "search", dec1).reason,
        Some(Reason::NotEntitled)
    );
    let big = model("big");
    let (a, _) = b.authorize(&c, &ask(&acme, "a", 1500, "h1", &big), dec1);
    assert!(a.allow, "{a:?}");
    let (a, _) = b.authorize(&c, &ask(&acme, "a", 501, "h2", &big), dec1);
    assert_eq!(a.reason, Some(Reason::EntitlementExceeded));
}

#[test]
fn a_request_id_answers_only_the_same_request_and_only_its_agent_releases_it() {
    let c = catalog();
    let mut b = book(vec![]);
    let acme = CustomerId::new("acme").unwrap();
    let none = BTreeMap::new();
    let (a, h) = b.authorize(&c, &ask(&acme, "a", 10, "r1", &none), NOV26);
    assert!(a.allow && h.is_some());
    // the same request again: the same hold, nothing more held
    let (again, h2) = b.authorize(&c, &ask(&acme, "a", 10, "r1", &none), NOV26);
    assert!(again.allow && h2.is_none());
    assert_eq!(again.hold_id.as_deref(), Some("r1"));
    // the same id for another quantity or agent: refused, not allowed for free
    let (other, _) = b.authorize(&c, &ask(&acme, "a", 1_000_000, "r1", &none), NOV26);
    assert_eq!(other.reason, Some(Reason::InvalidRequest));
    let (other, _) = b.authorize(&c, &ask(&acme, "b", 10, "r1", &none), NOV26);
    assert_eq!(other.reason, Some(Reason::InvalidRequest));
    assert_eq!(b.holds().count(), 1);
    // agent b cannot give agent a's hold back; a can
    assert!(b.release_by("acme", "b", "r1").is_none());
    assert!(b.release_by("acme", "a", "r1").is_some());
    assert_eq!(b.holds().count(), 0);
}

/// A wallet budget's limit is what the grants still hold plus the part of this period's
/// reservation that live usage accounts for: what the wallet pass took for a fee, a minimum
/// or tax (more than the live spend) is never given back to usage, and usage the pass has
/// consumed already is not counted twice.
#[test]
fn a_wallet_holds_usage_to_what_its_grants_and_this_periods_usage_leave() {
    let c = catalog();
    let wallet = Budget {
        budget_id: "prepaid".into(),
        kind: Kind::Wallet,
        limit: Decimal::ZERO,
        ..budget(0, None)
    };
    let mut b = book(vec![wallet]);
    // the grants hold $5 now; the pass took $4 for this period's charges so far
    b.budgets.get_mut("acme").unwrap()[0].limit = Decimal::from(5);
    b.wallet_reserved.insert("acme".into(), Decimal::from(4));
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let now = NOV26 + 1000;
    // $3 of usage live: the pass's $4 covered it and $1 more (a fee, tax): that $1 stays
    // taken, so $5 is left for usage, not $6
    b.add_rows(&c, &[tokens("a", NOV26, 3000)]);
    let (a, _) = b.authorize(&c, &ask(&acme, "a", 5001, "w1", &g), now);
    assert_eq!(a.reason, Some(Reason::BudgetExceeded), "{a:?}");
    assert_eq!(a.remaining, Some(Decimal::from(5)));
    let (a, h) = b.authorize(&c, &ask(&acme, "a", 5000, "w2", &g), now);
    assert!(a.allow, "{a:?}");
    assert_eq!(a.remaining, Some(Decimal::ZERO));
    b.release("acme", &h.unwrap().id);
    // $6 of usage live, the pass still at $4: the $2 it has not seen count at once
    b.add_rows(&c, &[tokens("a", NOV26 + 2000, 3000)]);
    let (a, _) = b.authorize(&c, &ask(&acme, "a", 3001, "w3", &g), now);
    assert_eq!(a.remaining, Some(Decimal::from(3)), "{a:?}");
    // the balance shows the same limit
    let budgets = b.budgets["acme"].clone();
    let limit = budgets[0].limit_with(Decimal::from(6), Decimal::from(4));
    assert_eq!(limit, Decimal::from(9));
    // a new period: the previous reservation counts for nothing (its spend starts at 0)
    assert_eq!(
        budgets[0].limit_with(Decimal::ZERO, Decimal::from(4)),
        Decimal::from(5)
    );
}

/// A hold whose work reports in several batches keeps reserving what the work may still use
/// (`quantity − usage so far`) until it is used up: a request that would need the rest is
/// denied in between (the old book removed the hold at the first batch and allowed it).
#[test]
fn a_hold_settles_partially_batch_by_batch_until_its_usage_used_it_up() {
    let c = catalog();
    let mut b = book(vec![budget(10, None)]);
    b.add_rows(&c, &[tokens("a", NOV26, 8000)]); // $8 spent
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let now = NOV26 + 1000;
    let (a, _) = b.authorize(&c, &ask(&acme, "a", 2000, "h", &g), now);
    assert!(a.allow, "{a:?}");
    let hold = [("acme".to_owned(), "h".to_owned())];
    // batch 1: 300 of the work's tokens, and 100 of agent b (not the hold's)
    let first = [
        tokens("a", NOV26 + 2000, 300),
        tokens("b", NOV26 + 2000, 100),
    ];
    b.add_rows(&c, &first);
    let s = b.settle("batch2", &[&first[0], &first[1]], &hold);
    assert!(s.ended.is_empty(), "{s:?}");
    assert_eq!(s.reduced[0].quantity, Decimal::from(1700));
    assert_eq!(s.reduced[0].amount, Decimal::new(17, 1));
    assert_eq!(b.holds().map(|h| h.quantity).sum::<Decimal>(), d(1700));
    // a retry of the request (its answer was lost) is still the same hold
    let (again, placed) = b.authorize(&c, &ask(&acme, "a", 2000, "h", &g), now);
    assert!(again.allow && placed.is_none(), "{again:?}");
    // $8.40 spent + $1.70 held: nothing is left for another agent
    let (a, _) = b.authorize(&c, &ask(&acme, "other", 1, "x", &g), now);
    assert_eq!(a.reason, Some(Reason::BudgetExceeded), "{a:?}");
    // batch 2: the rest of the work, and more than the hold had left: the hold ends
    let second = [tokens("a", NOV26 + 3000, 1800)];
    b.add_rows(&c, &second);
    let s = b.settle("batch3", &[&second[0]], &hold);
    assert_eq!(s.ended.len(), 1, "{s:?}");
    assert!(s.reduced.is_empty());
    assert_eq!(b.holds_active(), 0);
    // a later batch naming it again changes nothing
    assert_eq!(b.settle("batch4", &[&second[0]], &hold), Settled::default());
}

fn d(n: i64) -> Decimal {
    Decimal::from(n)
}

/// Two holds of the same agent and meter settled by one batch share its usage (each row's
/// usage counts once, in the order the batch names them), and a row of another group than
/// the one a request declared is not its work.
#[test]
fn holds_of_one_batch_share_its_usage_and_other_groups_are_not_theirs() {
    let c = entitled_catalog();
    let mut b = book(vec![]);
    let acme = CustomerId::new("acme").unwrap();
    let big = model("big");
    let now = NOV26 + 1000;
    for id in ["h1", "h2"] {
        let (a, _) = b.authorize(&c, &ask(&acme, "a", 100, id, &big), now);
        assert!(a.allow, "{a:?}");
    }
    let mut small = big_tokens(NOV26 + 2000, 1000);
    small.group_key = r#"{"model":"small"}"#.into();
    small.group_values = vec!["small".into()];
    let rows = [big_tokens(NOV26 + 2000, 130), small];
    let s = b.settle(
        "batch5",
        &[&rows[0], &rows[1]],
        &[("acme".into(), "h1".into()), ("acme".into(), "h2".into())],
    );
    // 130 tokens of model big: 100 end h1, 30 of h2 leave it 70
    assert_eq!(
        s.ended.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["h1"]
    );
    assert_eq!(s.reduced.len(), 1);
    assert_eq!(
        (s.reduced[0].id.as_str(), s.reduced[0].quantity),
        ("h2", d(70))
    );
}

/// A hold of a meter whose usage is a level (MAX, LATEST, MIN) ends at its first batch.
#[test]
fn a_hold_of_a_level_meter_ends_at_its_first_batch() {
    let c = catalog();
    let mut b = book(vec![]);
    b.meters.insert("tokens".into(), Aggregation::Max);
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let (a, _) = b.authorize(&c, &ask(&acme, "a", 100, "h", &g), NOV26);
    assert!(a.allow, "{a:?}");
    let mut row = tokens("a", NOV26, 10);
    row.aggregation = "MAX".into();
    let s = b.settle("batch6", &[&row], &[("acme".into(), "h".into())]);
    assert_eq!(s.ended.len(), 1);
    assert_eq!(b.holds_active(), 0);
}

/// `spend.max_holds_per_customer`: a customer at the cap is denied `too_many_holds` (its
/// other requests' retries are still answered); a release makes room; other customers are
/// not affected.
#[test]
fn a_customer_at_the_hold_cap_is_denied_until_a_hold_ends() {
    let c = catalog();
    let mut b = book(vec![]);
    b.max_holds_per_customer = Some(2);
    let (acme, beta) = (
        CustomerId::new("acme").unwrap(),
        CustomerId::new("beta").unwrap(),
    );
    let g = BTreeMap::new();
    for id in ["h1", "h2"] {
        assert!(b.authorize(&c, &ask(&acme, "a", 1, id, &g), NOV26).0.allow);
    }
    let (a, h) = b.authorize(&c, &ask(&acme, "a", 1, "h3", &g), NOV26);
    assert_eq!(a.reason, Some(Reason::TooManyHolds), "{a:?}");
    assert_eq!(a.reason.map(Reason::code), Some("too_many_holds"));
    assert!(h.is_none());
    // a retry of a placed request is the same hold, not a new one
    assert!(
        b.authorize(&c, &ask(&acme, "a", 1, "h2", &g), NOV26)
            .0
            .allow
    );
    assert!(
        b.authorize(&c, &ask(&beta, "a", 1, "h3", &g), NOV26)
            .0
            .allow
    );
    b.release("acme", "h1");
    assert!(
        b.authorize(&c, &ask(&acme, "a", 1, "h3", &g), NOV26)
            .0
            .allow
    );
    assert_eq!(b.holds_active(), 3);
}

/// Expiry takes the due holds only, soonest first, and never one already released, settled
/// or replaced; the count of active holds follows every change.
#[test]
fn expiry_takes_exactly_the_due_holds() {
    let c = catalog();
    let mut b = book(vec![]);
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    for i in 0..50i64 {
        let mut q = ask(&acme, "a", 10, &format!("h{i}"), &g);
        q.expires_at_ms = NOV26 + 1000 * (50 - i);
        assert!(b.authorize(&c, &q, NOV26).0.allow);
    }
    assert_eq!(b.holds_active(), 50);
    b.release("acme", "h49"); // due at +1 s
    let row = tokens("a", NOV26, 4);
    // h48 (due at +2 s) reduced to 6: replaced in the index, still due at +2 s
    let s = b.settle("batch7", &[&row], &[("acme".into(), "h48".into())]);
    assert_eq!(s.reduced.len(), 1);
    assert_eq!(b.holds_active(), 49);
    let due: Vec<String> = b.expire(NOV26 + 3000).into_iter().map(|h| h.id).collect();
    assert_eq!(due, ["h48", "h47"]);
    assert_eq!(b.holds_active(), 47);
    assert!(b.expire(NOV26 + 3999).is_empty());
    assert_eq!(b.expire(NOV26 + 50_000).len(), 47);
    assert_eq!((b.holds_active(), b.holds().count()), (0, 0));
}

/// A wallet pays invoices after tax: for a customer whose subscription has a tax region, a
/// wallet budget counts live spend, holds and requests with their tax (an amount budget of
/// the same customer stays before tax). The old book counted them before tax and allowed
/// work the wallet could not pay.
#[test]
fn a_wallet_budget_counts_usage_with_the_customers_tax() {
    let specs: Vec<MeterSpec> = serde_json::from_str(
        r#"[{"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n"}]"#,
    )
    .unwrap();
    let plans: Vec<crate::config::PlanSpec> = serde_json::from_str(
        r#"[{"id":"p","version":1,"currency":"EUR","effective_from":"2020-01-01T00:00:00Z",
             "prices":[{"model":"per_unit","meter":"tokens","unit_price":"0.001"}]}]"#,
    )
    .unwrap();
    let subs: Vec<crate::config::SubscriptionSpec> =
        serde_json::from_str(r#"[{"customer":"acme","plan":"p","tax_region":"DE"}]"#).unwrap();
    let taxes = crate::catalog::tax::TaxTable::new(vec![crate::catalog::tax::TaxRateSpec {
        region: "DE".into(),
        code: crate::catalog::tax::DEFAULT_TAX_CODE.into(),
        rate_percent: Decimal::from(19),
        effective_from: "2020-01-01T00:00:00Z".parse().unwrap(),
    }])
    .unwrap();
    let c = Catalog::new(
        plans,
        subs,
        &RaterConfig::default(),
        &validate_meters(specs).unwrap(),
    )
    .unwrap()
    .with_taxes(taxes)
    .unwrap();
    let wallet = Budget {
        budget_id: "prepaid".into(),
        kind: Kind::Wallet,
        limit: Decimal::ZERO,
        ..budget(0, None)
    };
    let mut b = book(vec![wallet, budget(100, None)]);
    // the grants hold 11.90 EUR: 10 EUR of usage and its 19 % tax
    b.budgets.get_mut("acme").unwrap()[0].limit = Decimal::new(1190, 2);
    b.add_rows(&c, &[tokens("a", NOV26, 5000)]); // 5 EUR + 0.95 tax
    assert_eq!(b.customers["acme"].costs.total, Decimal::from(5));
    assert_eq!(
        b.customers["acme"].costs.total_with_tax(),
        Decimal::new(595, 2)
    );
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let now = NOV26 + 1000;
    // 6 EUR more is 7.14 with tax: past the wallet (before tax it would have fitted)
    let (a, _) = b.authorize(&c, &ask(&acme, "a", 6000, "w1", &g), now);
    assert_eq!(a.reason, Some(Reason::BudgetExceeded), "{a:?}");
    assert_eq!(a.detail.as_deref(), Some("budget prepaid"));
    assert_eq!(a.remaining, Some(Decimal::new(595, 2)));
    // 5 EUR more (5.95 with tax) uses the wallet exactly
    let (a, h) = b.authorize(&c, &ask(&acme, "a", 5000, "w2", &g), now);
    assert!(a.allow, "{a:?}");
    let h = h.unwrap();
    assert_eq!((h.amount, h.tax), (Decimal::from(5), Decimal::new(95, 2)));
    assert_eq!(
        b.authorize(&c, &ask(&acme, "b", 1, "w3", &g), now).0.reason,
        Some(Reason::BudgetExceeded)
    );
    // the balance shows the wallet's spend and hold with tax, the amount budget's without
    let book = &b.customers["acme"];
    let budgets = b.budgets["acme"].clone();
    let bal = super::super::decider::balance_of(
        "acme",
        book.period,
        &book.costs,
        book.holds.values(),
        (&budgets, Decimal::ZERO),
    );
    assert_eq!(bal.budgets[0].spent, Decimal::new(595, 2));
    assert_eq!(bal.budgets[0].held, Decimal::new(595, 2));
    assert_eq!(bal.budgets[0].remaining, Decimal::ZERO);
    assert_eq!(bal.budgets[1].spent, Decimal::from(5));
    assert_eq!(bal.budgets[1].held, Decimal::from(5));
    // half the work's usage arrives: half the hold's tax goes with half its amount
    let half = [tokens("a", NOV26 + 2000, 2500)];
    b.add_rows(&c, &half);
    let s = b.settle("batch8", &[&half[0]], &[("acme".into(), "w2".into())]);
    assert_eq!(s.reduced[0].tax, Decimal::new(475, 3));
}

/// A hold reduced by a batch is journaled with the batch that reduced it; after a restart
/// (storage read again, the journal replayed, the feed re-read from before the join point)
/// the same batch settles it again: it must not reduce it a second time, nor give the share
/// it took to another hold of the batch. Before, the hold of 2000 tokens reduced to 1700 by
/// 300 tokens of usage became 1400 at the restart and $0.30 more was admitted.
#[test]
fn a_batch_read_again_after_a_restart_does_not_reduce_a_hold_twice() {
    use super::super::journal::{holds_of, Record};
    let c = catalog();
    let budgets = || vec![budget(11, None)];
    let mut b = book(budgets());
    let spent = [tokens("a", NOV26, 8000)]; // $8 spent
    b.add_rows(&c, &spent);
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let now = NOV26 + 1000;
    let mut journal = Vec::new();
    for (id, q) in [("h", 2000), ("h2", 200)] {
        let (a, h) = b.authorize(&c, &ask(&acme, "a", q, id, &g), now);
        assert!(a.allow, "{a:?}");
        journal.push(Record::Place { hold: h.unwrap() });
    }
    // batch b1: 300 of agent a's tokens, naming both holds: h takes them all
    let used = [tokens("a", NOV26 + 2000, 300)];
    let names = [
        ("acme".to_owned(), "h".to_owned()),
        ("acme".to_owned(), "h2".to_owned()),
    ];
    b.add_rows(&c, &used);
    let s = b.settle("b1", &[&used[0]], &names);
    assert_eq!(s.reduced.len(), 1, "{s:?}");
    assert_eq!(s.reduced[0].quantity, d(1700));
    assert_eq!(s.reduced[0].settled.get("b1"), Some(&d(300)));
    journal.extend(s.reduced.into_iter().map(|hold| Record::Place { hold }));
    // the restart: storage has both rows, the journal gives the holds back
    let mut again = book(budgets());
    again.add_rows(&c, &[spent[0].clone(), used[0].clone()]);
    let later = NOV26 + 5000;
    for h in holds_of(journal) {
        again.restore(&c, h, later);
    }
    // the feed is re-read from before the join point: b1 again
    assert_eq!(again.settle("b1", &[&used[0]], &names), Settled::default());
    let held: BTreeMap<&str, Decimal> =
        again.holds().map(|h| (h.id.as_str(), h.quantity)).collect();
    assert_eq!(held, BTreeMap::from([("h", d(1700)), ("h2", d(200))]));
    // $11 − $8.30 spent − $1.70 − $0.20 held = $0.80 left: 801 tokens ($0.801) are denied
    let (a, _) = again.authorize(&c, &ask(&acme, "a", 801, "x", &g), later);
    assert_eq!(a.reason, Some(Reason::BudgetExceeded), "{a:?}");
    assert_eq!(a.remaining, Some(Decimal::new(8, 1)));
    let (a, _) = again.authorize(&c, &ask(&acme, "a", 800, "y", &g), later);
    assert!(a.allow, "{a:?}");
    // a later batch still reduces it, from what is left
    let more = [tokens("a", NOV26 + 6000, 700)];
    again.add_rows(&c, &more);
    let s = again.settle("b2", &[&more[0]], &names[..1]);
    assert_eq!(s.reduced[0].quantity, d(1000));
    assert_eq!(
        s.reduced[0].settled,
        BTreeMap::from([("b1".to_owned(), d(300)), ("b2".to_owned(), d(700))])
    );
}

/// A catalog of two plans and the subscriptions `subs` (JSON): `llm` prices tokens (version 1
/// at 0.001, version 2 from 2026-11-01 at 0.002; version 1 has the feature `search`), `tools`
/// prices calls at 0.10 with the feature `browse` and at most 8 calls a period.
fn lines_catalog(subs: &str) -> Catalog {
    let specs: Vec<MeterSpec> = serde_json::from_str(
        r#"[{"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n"},
            {"slug":"calls","event_type":"c","aggregation":"COUNT"}]"#,
    )
    .unwrap();
    let plans: Vec<crate::config::PlanSpec> = serde_json::from_str(
        r#"[{"id":"llm","version":1,"currency":"USD","effective_from":"2020-01-01T00:00:00Z",
             "prices":[{"model":"per_unit","meter":"tokens","unit_price":"0.001"}],
             "entitlements":{"features":["search"]}},
            {"id":"llm","version":2,"currency":"USD","effective_from":"2026-11-01T00:00:00Z",
             "prices":[{"model":"per_unit","meter":"tokens","unit_price":"0.002"}]},
            {"id":"tools","version":1,"currency":"USD","effective_from":"2020-01-01T00:00:00Z",
             "prices":[{"model":"per_unit","meter":"calls","unit_price":"0.10"}],
             "entitlements":{"features":["browse"],"limits":[{"meter":"calls","limit":"8"}]}}]"#,
    )
    .unwrap();
    let subs: Vec<crate::config::SubscriptionSpec> = serde_json::from_str(subs).unwrap();
    Catalog::new(
        plans,
        subs,
        &RaterConfig::default(),
        &validate_meters(specs).unwrap(),
    )
    .unwrap()
}

fn calls(at_ms: i64, n: u64) -> UsageRow {
    let mut r = tokens("a", at_ms, 0);
    r.meter = "calls".into();
    r.aggregation = "COUNT".into();
    r.events = n;
    r
}

/// A customer pinned to version 1 of its plan is priced and entitled by version 1 while
/// version 2 (twice the price, without the feature) is in force for everyone else. The old
/// book priced it with version 2: 4000 tokens cost $8 and a $10 budget left $2.
#[test]
fn a_customer_pinned_to_a_plan_version_is_priced_and_entitled_by_it() {
    let c = lines_catalog(
        r#"[{"customer":"acme","plan":"llm","plan_version":1,"effective_from":"2026-01-01T00:00:00Z"},
            {"customer":"beta","plan":"llm","effective_from":"2026-01-01T00:00:00Z"}]"#,
    );
    let mut b = book(vec![
        budget(10, None),
        Budget {
            customer: "beta".into(),
            ..budget(10, None)
        },
    ]);
    let mut beta_row = tokens("a", NOV26, 4000);
    beta_row.customer = "beta".into();
    b.add_rows(&c, &[tokens("a", NOV26, 4000), beta_row]);
    assert_eq!(b.customers["acme"].costs.total, d(4)); // 4000 × 0.001
    assert_eq!(b.customers["beta"].costs.total, d(8)); // 4000 × 0.002
    let (acme, beta) = (
        CustomerId::new("acme").unwrap(),
        CustomerId::new("beta").unwrap(),
    );
    let g = BTreeMap::new();
    let now = NOV26 + 1000;
    // $10 − $4: 6001 tokens ($6.001) are too many, 6000 fit exactly
    let (a, _) = b.authorize(&c, &ask(&acme, "a", 6001, "h1", &g), now);
    assert_eq!(a.reason, Some(Reason::BudgetExceeded), "{a:?}");
    assert_eq!(a.remaining, Some(d(6)));
    let (a, h) = b.authorize(&c, &ask(&acme, "a", 6000, "h2", &g), now);
    assert!(a.allow, "{a:?}");
    assert_eq!(a.remaining, Some(Decimal::ZERO));
    assert_eq!(h.unwrap().amount, d(6));
    // beta pays version 2: $10 − $8 leaves 1000 tokens
    let (a, _) = b.authorize(&c, &ask(&beta, "a", 1001, "h3", &g), now);
    assert_eq!(a.remaining, Some(d(2)), "{a:?}");
    assert!(b.feature(&c, &acme, "search", now).allow);
    assert_eq!(
        b.feature(&c, &beta, "search", now).reason,
        Some(Reason::NotEntitled)
    );
    assert_eq!(
        b.entitlement_use(&c, "acme").plan.as_deref(),
        Some("llm v1")
    );
}

/// A customer with two lines (`llm` on the main line, `tools` on line `tools`): the second
/// line's meter is priced by its plan, so its spend counts against an amount budget and a
/// wallet, and its entitlements hold. The old book priced calls at 0 (only the first line's
/// plan) and allowed every request of them.
#[test]
fn the_second_lines_meter_counts_against_budgets_wallets_and_its_entitlements() {
    let c = lines_catalog(
        r#"[{"customer":"acme","plan":"llm","effective_from":"2026-01-01T00:00:00Z"},
            {"customer":"acme","plan":"tools","line":"tools","effective_from":"2026-01-01T00:00:00Z"}]"#,
    );
    let acme = CustomerId::new("acme").unwrap();
    let g = BTreeMap::new();
    let now = NOV26 + 1000;
    let calls_ask = |q: i64, id: &str| Ask {
        meter: "calls",
        quantity: d(q),
        hold_id: id.into(),
        customer: &acme,
        agent: "a",
        group: &g,
        expires_at_ms: NOV26 + 60_000,
    };
    let used = [calls(NOV26, 5), tokens("a", NOV26, 200)];
    // an amount budget of $1: 5 calls ($0.50) and 200 tokens ($0.40 at version 2) spent
    let mut b = book(vec![budget(1, None)]);
    b.add_rows(&c, &used);
    let costs = &b.customers["acme"].costs;
    assert_eq!(costs.meters["calls"].amount, Decimal::new(5, 1));
    assert_eq!(costs.total, Decimal::new(9, 1));
    let (a, _) = b.authorize(&c, &calls_ask(2, "c1"), now); // $0.20
    assert_eq!(a.reason, Some(Reason::BudgetExceeded), "{a:?}");
    assert_eq!(a.remaining, Some(Decimal::new(1, 1)));
    let (a, h) = b.authorize(&c, &calls_ask(1, "c2"), now);
    assert!(a.allow, "{a:?}");
    assert_eq!(h.unwrap().amount, Decimal::new(1, 1));
    // a wallet whose grants hold $1.10
    let wallet = Budget {
        budget_id: "prepaid".into(),
        kind: Kind::Wallet,
        limit: Decimal::ZERO,
        ..budget(0, None)
    };
    let mut w = book(vec![wallet]);
    w.budgets.get_mut("acme").unwrap()[0].limit = Decimal::new(11, 1);
    w.add_rows(&c, &used);
    let (a, _) = w.authorize(&c, &calls_ask(3, "c3"), now); // $0.30 > $0.20 left
    assert_eq!(a.reason, Some(Reason::BudgetExceeded), "{a:?}");
    assert_eq!(a.detail.as_deref(), Some("budget prepaid"));
    assert_eq!(a.remaining, Some(Decimal::new(2, 1)));
    let (a, _) = w.authorize(&c, &calls_ask(2, "c4"), now);
    assert!(a.allow, "{a:?}");
    // the tools line's entitlements: `browse`, and at most 8 calls (5 used)
    let mut e = book(vec![]);
    e.add_rows(&c, &used);
    assert!(e.feature(&c, &acme, "browse", now).allow);
    assert!(!e.feature(&c, &acme, "search", now).allow); // llm v2 has no `search`
    let (a, _) = e.authorize(&c, &calls_ask(4, "c5"), now);
    assert_eq!(a.reason, Some(Reason::EntitlementExceeded), "{a:?}");
    assert_eq!(a.remaining, Some(d(3)));
    assert!(e.authorize(&c, &calls_ask(3, "c6"), now).0.allow);
    let ent = e.entitlement_use(&c, "acme");
    assert_eq!(ent.plan.as_deref(), Some("llm v2, tools v1"));
    assert_eq!(ent.features, ["browse"]);
    assert_eq!((ent.limits[0].used, ent.limits[0].held), (d(5), d(3)));
}
