use super::*;
use tally_domain::meter::{validate_meters, MeterSpec};

fn meters() -> Vec<Meter> {
    let specs: Vec<MeterSpec> =
        serde_json::from_str(r#"[{"slug":"calls","event_type":"c","aggregation":"COUNT"}]"#)
            .unwrap();
    validate_meters(specs).unwrap()
}

fn plans(toml_text: &str) -> Vec<PlanSpec> {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<PlanSpec>,
    }
    toml::from_str::<F>(toml_text).unwrap().plans
}

const TWO_VERSIONS: &str = r#"
    [[plans]]
    id = "p"
    version = 1
    currency = "USD"
    effective_from = "2026-01-01T00:00:00Z"
    prices = [{ model = "per_unit", meter = "calls", unit_price = "0.10" }]
    [[plans]]
    id = "p"
    version = 2
    currency = "USD"
    effective_from = "2026-06-01T00:00:00Z"
    prices = [{ model = "per_unit", meter = "calls", unit_price = "0.20" }]
"#;

#[test]
fn version_effective_at_period_start_applies() {
    let rater = RaterConfig {
        default_plan: Some("p".into()),
        ..Default::default()
    };
    let c = Catalog::new(plans(TWO_VERSIONS), vec![], &rater, &meters()).unwrap();
    let may = chrono::DateTime::parse_from_rfc3339("2026-05-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let june = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    assert_eq!(c.plan_at("p", may).unwrap().version, 1);
    assert_eq!(c.plan_at("p", june).unwrap().version, 2);
    assert!(c.plan_at("p", 0).is_none());
    assert_eq!(
        c.subscription(&CustomerId::new("x").unwrap()).unwrap().plan,
        "p"
    );
}

#[test]
fn a_pass_reads_the_whole_quarter_and_year_of_the_periods_it_rates() {
    let subs: Vec<SubscriptionSpec> = toml::from_str::<toml::Table>(
        r#"
        [[s]]
        customer = "q"
        plan = "p"
        interval = "quarterly"
        billing_anchor_month = 1
        [[s]]
        customer = "y"
        plan = "p"
        interval = "annual"
        usage_interval = "monthly"
        "#,
    )
    .unwrap()["s"]
        .clone()
        .try_into()
        .unwrap();
    let at = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    let rater = RaterConfig::default();
    let c = Catalog::new(plans(TWO_VERSIONS), subs.clone(), &rater, &meters()).unwrap();
    // Nov 28: the quarter Oct 1 - Jan 1 and the year's fee period Jan 1 - Jan 1 are rated
    assert_eq!(
        c.periods_reach(at("2026-11-28T00:00:00Z")),
        at("2026-01-01T00:00:00Z")
    );
    let quarter_only =
        Catalog::new(plans(TWO_VERSIONS), subs[..1].to_vec(), &rater, &meters()).unwrap();
    assert_eq!(
        quarter_only.periods_reach(at("2026-11-28T00:00:00Z")),
        at("2026-10-01T00:00:00Z")
    );
    // on a quarter's first instant only that quarter is read
    assert_eq!(
        quarter_only.periods_reach(at("2026-10-01T00:00:00Z")),
        at("2026-10-01T00:00:00Z")
    );
}

#[test]
fn a_cancellation_at_period_end_during_a_trial_ends_with_the_period() {
    let subs: Vec<SubscriptionSpec> = toml::from_str::<toml::Table>(
        r#"
        [[s]]
        customer = "t"
        plan = "p"
        effective_from = "2026-11-01T00:00:00Z"
        trial = { days = 14 }
        "#,
    )
    .unwrap()["s"]
        .clone()
        .try_into()
        .unwrap();
    let at = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    let c = Catalog::new(
        plans(TWO_VERSIONS),
        subs,
        &RaterConfig::default(),
        &meters(),
    )
    .unwrap();
    let t = CustomerId::new("t").unwrap();
    let cancel = c
        .cancellation(&t, "", at("2026-11-05T00:00:00Z"), true)
        .unwrap();
    // December 1st, not the trial's end (November 15th)
    assert_eq!(
        cancel.effective_from.map(|e| e.timestamp_millis()),
        Some(at("2026-12-01T00:00:00Z"))
    );
}

#[test]
fn bad_catalogs_name_the_setting() {
    let rater = RaterConfig::default();
    let bad_meter = TWO_VERSIONS.replacen("meter = \"calls\"", "meter = \"nope\"", 1);
    let err = Catalog::new(plans(&bad_meter), vec![], &rater, &meters())
        .unwrap_err()
        .to_string();
    assert!(err.contains("plans[0].prices[0].meter"), "{err}");
    let bad_cur = TWO_VERSIONS.replacen("USD", "XYZ", 1);
    let err = Catalog::new(plans(&bad_cur), vec![], &rater, &meters())
        .unwrap_err()
        .to_string();
    assert!(err.contains("plans[0].currency"), "{err}");
    let sub = SubscriptionSpec {
        customer: "acme".into(),
        plan: "missing".into(),
        billing_anchor_day: 1,
        coupons: vec![],
        tax_region: None,
        tax_exempt: false,
        effective_from: None,
        currency: None,
        time_zone: None,
        ends_at: None,
        state: SubscriptionState::Active,
        trial: None,
        interval: None,
        billing_anchor_month: None,
        usage_interval: None,
        line: None,
        plan_version: None,
    };
    let err = Catalog::new(plans(TWO_VERSIONS), vec![sub], &rater, &meters())
        .unwrap_err()
        .to_string();
    assert!(err.contains("subscriptions[0].plan"), "{err}");
}

fn refused(toml_text: &str) -> String {
    Catalog::new(plans(toml_text), vec![], &RaterConfig::default(), &meters())
        .unwrap_err()
        .to_string()
}

#[test]
fn a_plan_version_that_changes_an_existing_one_is_refused() {
    let changed = TWO_VERSIONS.replacen("version = 2", "version = 1", 1);
    let err = refused(&changed);
    assert!(err.contains("plans[1].version"), "{err}");
    assert!(err.contains("already declared by plans[0]"), "{err}");
    let same_instant = TWO_VERSIONS.replacen("2026-06-01", "2026-01-01", 1);
    assert!(refused(&same_instant).contains("plans[1].effective_from"));
    let older_higher = TWO_VERSIONS.replacen("2026-06-01", "2025-06-01", 1);
    assert!(refused(&older_higher).contains("a later effective_from needs a higher version"));
}

#[test]
fn bad_prices_are_refused_naming_the_field() {
    let price = |p: &str| {
        format!(
            "[[plans]]\nid = \"p\"\nversion = 1\ncurrency = \"USD\"\n\
             effective_from = \"2026-01-01T00:00:00Z\"\nprices = [{{ meter = \"calls\", {p} }}]\n"
        )
    };
    for (spec, field, says) in [
        (
            r#"model = "per_unit", unit_price = "-0.01""#,
            "plans[0].prices[0].unit_price",
            "negative",
        ),
        (
            r#"model = "per_unit""#,
            "plans[0].prices[0].unit_price",
            "required",
        ),
        (
            r#"model = "per_unit", unit_price = "1", tiers = []"#,
            "plans[0].prices[0].tiers",
            "not used",
        ),
        (
            r#"model = "graduated", tiers = [{ up_to = "100", unit_price = "1" }, { up_to = "50", unit_price = "1" }, { unit_price = "1" }]"#,
            "plans[0].prices[0].tiers",
            "tiers[1].up_to 50 overlaps",
        ),
        (
            r#"model = "volume", tiers = [{ up_to = "10", unit_price = "1" }]"#,
            "plans[0].prices[0].tiers",
            "last tier",
        ),
        (
            r#"model = "package", package_size = "0", package_price = "1""#,
            "plans[0].prices[0].package_size",
            "positive",
        ),
        (
            r#"model = "flat", amount = "-5""#,
            "plans[0].prices[0].amount",
            "negative",
        ),
        (
            r#"model = "per_unit", unit_price = "1", minimum = "10", maximum = "5""#,
            "plans[0].prices[0].maximum",
            "below",
        ),
        (
            r#"model = "per_unit", unit_price = "1", free_units = "-1""#,
            "plans[0].prices[0].free_units",
            "negative",
        ),
        (
            r#"model = "dimensional", dimensions = ["model"], rates = [{ values = ["x"], unit_price = "1" }]"#,
            "plans[0].prices[0].dimensions[0]",
            "not a group-by",
        ),
        (
            r#"model = "tiered", unit_price = "1""#,
            "plans[0].prices[0].model",
            "unknown model",
        ),
        (
            r#"model = "per_unit", unit_price = "1", billing = "in_advance""#,
            "plans[0].prices[0].billing",
            "only for a flat fee",
        ),
        (
            r#"model = "flat", amount = "30", minimum = "40", billing = "in_advance""#,
            "plans[0].prices[0].billing",
            "no minimum or maximum",
        ),
        (
            r#"model = "flat", amount = "30", billing = "upfront""#,
            "plans[0].prices[0].billing",
            "not in_arrears or in_advance",
        ),
    ] {
        let err = refused(&price(spec));
        assert!(err.contains(field) && err.contains(says), "{spec}: {err}");
    }
    let unknown_currency = price(r#"model = "per_unit", unit_price = "1""#).replace("USD", "ABC");
    assert!(refused(&unknown_currency).contains("plans[0].currency"));
}

#[test]
fn bad_coupons_are_refused_naming_the_field() {
    let rater = RaterConfig::default();
    for (coupon, field) in [
        (
            r#"id = "x", percent_off = "150", starts = "2026-01-01T00:00:00Z", duration = "once""#,
            "coupons[0].percent_off",
        ),
        (
            r#"id = "x", percent_off = "10", amount_off = "1", starts = "2026-01-01T00:00:00Z", duration = "once""#,
            "coupons[0].percent_off",
        ),
        (
            r#"id = "x", amount_off = "5", starts = "2026-01-01T00:00:00Z", duration = "once""#,
            "coupons[0].meter",
        ),
        (
            r#"id = "x", amount_off = "5", meter = "nope", starts = "2026-01-01T00:00:00Z", duration = "once""#,
            "coupons[0].meter",
        ),
        (
            r#"id = "x", percent_off = "10", starts = "2026-01-01T00:00:00Z", duration = "repeating""#,
            "coupons[0].periods",
        ),
        (
            r#"id = "x", percent_off = "10", starts = "2026-01-01T00:00:00Z", duration = "weekly""#,
            "coupons[0].duration",
        ),
    ] {
        #[derive(serde::Deserialize)]
        struct S {
            subscriptions: Vec<SubscriptionSpec>,
        }
        let text = format!(
            "[[subscriptions]]\ncustomer = \"acme\"\nplan = \"p\"\ncoupons = [{{ {coupon} }}]\n"
        );
        let subs = toml::from_str::<S>(&text).unwrap().subscriptions;
        let err = Catalog::new(plans(TWO_VERSIONS), subs, &rater, &meters())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("subscriptions[0].{field}")),
            "{coupon}: {err}"
        );
    }
}

#[test]
fn floats_in_prices_are_refused_at_parse_time() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct F {
        plans: Vec<PlanSpec>,
    }
    let text = TWO_VERSIONS.replacen("unit_price = \"0.10\"", "unit_price = 0.10", 1);
    let err = toml::from_str::<F>(&text).unwrap_err().to_string();
    assert!(err.contains("float"), "{err}");
}

#[test]
fn a_cancellation_names_the_active_records_of_its_line_stored_after_it() {
    let subs: Vec<SubscriptionSpec> = toml::from_str::<toml::Table>(
        r#"
        [[s]]
        customer = "a"
        plan = "p"
        effective_from = "2026-11-01T00:00:00Z"
        [[s]]
        customer = "a"
        plan = "p"
        effective_from = "2027-02-01T00:00:00Z"
        [[s]]
        customer = "a"
        plan = "p"
        effective_from = "2027-01-01T00:00:00Z"
        [[s]]
        customer = "a"
        plan = "p"
        state = "paused"
        effective_from = "2027-03-01T00:00:00Z"
        [[s]]
        customer = "a"
        plan = "p"
        line = "other"
        effective_from = "2027-01-01T00:00:00Z"
        [[s]]
        customer = "b"
        plan = "p"
        effective_from = "2027-01-01T00:00:00Z"
        "#,
    )
    .unwrap()["s"]
        .clone()
        .try_into()
        .unwrap();
    let mut cancel = subs[0].clone();
    cancel.state = SubscriptionState::Cancelled;
    cancel.effective_from = Some("2026-12-15T00:00:00Z".parse().unwrap());
    let later: Vec<String> = records_after_cancellation(&subs, &cancel)
        .iter()
        .map(|s| s.effective_from.unwrap().to_rfc3339())
        .collect();
    // the same customer and line, active, later; in time order
    assert_eq!(
        later,
        ["2027-01-01T00:00:00+00:00", "2027-02-01T00:00:00+00:00"]
    );
    // after the last one, or a pause instead of a cancellation: none
    cancel.effective_from = Some("2027-02-10T00:00:00Z".parse().unwrap());
    assert!(records_after_cancellation(&subs, &cancel).is_empty());
    let mut pause = cancel.clone();
    pause.state = SubscriptionState::Paused;
    pause.effective_from = Some("2026-12-15T00:00:00Z".parse().unwrap());
    assert!(records_after_cancellation(&subs, &pause).is_empty());
}

/// Issue 17: what the stored catalog does with records that conflict (`conflicts`).
mod stored_conflicts {
    use super::*;

    fn subs(toml_text: &str) -> Vec<SubscriptionSpec> {
        toml::from_str::<toml::Table>(toml_text).unwrap()["s"]
            .clone()
            .try_into()
            .unwrap()
    }

    fn build(plans_text: &str, subs_text: &str, default_plan: Option<&str>) -> Catalog {
        let rater = RaterConfig {
            default_plan: default_plan.map(Into::into),
            ..Default::default()
        };
        Catalog::from_stored(
            plans(plans_text),
            subs(subs_text),
            &rater,
            &meters(),
            (TaxTable::default(), FxTable::default()),
            vec![],
        )
        .unwrap()
    }

    const NO_SUBS: &str = "s = []";

    // v2 recorded first, from June; v3 recorded after it but from March: each fits v1 alone
    // (what each API instance checked), together a later effective_from has a lower version
    const ORDER_RACE: &str = r#"
        [[plans]]
        id = "p"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "calls", unit_price = "0.10" }]
        [[plans]]
        id = "p"
        version = 3
        currency = "USD"
        effective_from = "2026-06-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "calls", unit_price = "0.30" }]
        [[plans]]
        id = "p"
        version = 2
        currency = "USD"
        effective_from = "2026-09-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "calls", unit_price = "0.20" }]
        [[plans]]
        id = "q"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "calls", unit_price = "1" }]
    "#;

    #[test]
    fn a_plan_version_that_does_not_fit_those_recorded_before_it_is_set_aside() {
        let rater = RaterConfig::default();
        assert!(
            Catalog::new(plans(ORDER_RACE), vec![], &rater, &meters()).is_err(),
            "the strict rules refuse the two together"
        );
        let c = build(ORDER_RACE, NO_SUBS, None);
        let versions: Vec<(&str, u32)> = c.plans().map(|p| (p.id.as_str(), p.version)).collect();
        assert_eq!(versions, vec![("p", 1), ("p", 3), ("q", 1)]);
        assert_eq!(c.conflicts().len(), 1);
        let conflict = &c.conflicts()[0];
        assert_eq!(
            (conflict.kind, conflict.outcome, conflict.identity.as_str()),
            (ConflictKind::Plan, Outcome::SetAside, "plan p v2")
        );
        assert!(
            conflict
                .detail
                .contains("a later effective_from needs a higher version"),
            "{}",
            conflict.detail
        );
        // the same records give the same catalog (no order of a map decides)
        let again = build(ORDER_RACE, NO_SUBS, None);
        assert_eq!(again.conflicts(), c.conflicts());
    }

    #[test]
    fn a_version_at_the_instant_of_one_recorded_before_it_is_set_aside() {
        let text = TWO_VERSIONS.replace("2026-06-01T00:00:00Z", "2026-01-01T00:00:00Z");
        let c = build(&text, NO_SUBS, Some("p"));
        assert_eq!(c.plans().map(|p| p.version).collect::<Vec<_>>(), vec![1]);
        assert!(c.conflicts()[0].detail.contains("same instant"));
    }

    const LINES: &str = r#"
        [[plans]]
        id = "p"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "calls", unit_price = "0.10" }]
    "#;

    #[test]
    fn a_customer_whose_records_do_not_build_is_quarantined_and_the_others_are_not() {
        // two lines of `split` price one meter (each record was valid alone when checked)
        let records = r#"
            [[s]]
            customer = "split"
            plan = "p"
            [[s]]
            customer = "split"
            plan = "p"
            line = "other"
            [[s]]
            customer = "fine"
            plan = "p"
            [[s]]
            customer = "pinned"
            plan = "p"
            plan_version = 7
        "#;
        let rater = RaterConfig::default();
        assert!(Catalog::new(plans(LINES), subs(records), &rater, &meters()).is_err());
        let c = build(LINES, records, Some("p"));
        let split = CustomerId::new("split").unwrap();
        let pinned = CustomerId::new("pinned").unwrap();
        let fine = CustomerId::new("fine").unwrap();
        assert!(c.quarantine_of("split").is_some());
        assert!(c.quarantine_of("pinned").unwrap().contains("no version 7"));
        assert!(c.quarantine_of("fine").is_none());
        // left out: no record, and not the default plan either
        assert!(c.subscription(&split).is_none());
        assert!(c.subscription_at(&pinned, 0).is_none());
        assert!(c.coverage_at(&split, i64::MAX).is_none());
        assert_eq!(c.subscription(&fine).unwrap().plan, "p");
        // a customer with no record is still on the default plan
        assert!(c.subscription(&CustomerId::new("other").unwrap()).is_some());
        let quarantined: Vec<&str> = c
            .conflicts()
            .iter()
            .filter(|x| x.outcome == Outcome::Quarantined)
            .map(|x| x.identity.as_str())
            .collect();
        assert_eq!(quarantined, vec!["pinned", "split"]);
    }

    #[test]
    fn a_customer_the_reader_could_not_read_is_quarantined() {
        let found = vec![Conflict {
            kind: ConflictKind::Subscription,
            outcome: Outcome::Quarantined,
            identity: "broken".into(),
            detail: "the body does not parse".into(),
        }];
        let records = r#"
            [[s]]
            customer = "broken"
            plan = "p"
        "#;
        let c = Catalog::from_stored(
            plans(LINES),
            subs(records),
            &RaterConfig::default(),
            &meters(),
            (TaxTable::default(), FxTable::default()),
            found,
        )
        .unwrap();
        assert!(c
            .subscription(&CustomerId::new("broken").unwrap())
            .is_none());
        assert_eq!(c.conflicts().len(), 1);
    }

    #[test]
    fn a_version_that_no_longer_validates_quarantines_its_plans_subscribers() {
        // v2 (from June) prices a meter the stored meters no longer have: its unpinned
        // subscriber must not fall back to v1 (that would change charges written with v2)
        let text = format!(
            "{}{}",
            TWO_VERSIONS.replace(
                "unit_price = \"0.20\"",
                "unit_price = \"0.20\" }, { model = \"per_unit\", meter = \"gone\", \
                 unit_price = \"1\""
            ),
            r#"
            [[plans]]
            id = "q"
            version = 1
            currency = "USD"
            effective_from = "2026-01-01T00:00:00Z"
            prices = [{ model = "per_unit", meter = "calls", unit_price = "1" }]
            "#
        );
        let records = r#"
            [[s]]
            customer = "unpinned"
            plan = "p"
            [[s]]
            customer = "other"
            plan = "q"
        "#;
        let c = build(&text, records, None);
        let unpinned = CustomerId::new("unpinned").unwrap();
        assert!(c.subscription_at(&unpinned, i64::MAX).is_none());
        let why = c.quarantine_of("unpinned").expect("quarantined");
        assert!(why.contains("plan p v2") && why.contains("gone"), "{why}");
        assert!(c.quarantine_of("other").is_none());
        let set_aside: Vec<&str> = c
            .conflicts()
            .iter()
            .filter(|x| x.outcome == Outcome::SetAside)
            .map(|x| x.identity.as_str())
            .collect();
        assert_eq!(set_aside, vec!["plan p v2"]);
        // a version that only lost a race (it does not fit one recorded before it) is set
        // aside and nobody is quarantined
        let raced = build(ORDER_RACE, records.replace("\"q\"", "\"p\"").as_str(), None);
        assert!(raced
            .conflicts()
            .iter()
            .all(|x| x.outcome == Outcome::SetAside));
    }

    #[test]
    fn a_default_plan_that_no_longer_reads_quarantines_its_customers_not_everyone() {
        // the reader could not parse the only version of the default plan `d`
        let found = vec![
            Conflict {
                kind: ConflictKind::Plan,
                outcome: Outcome::SetAside,
                identity: "plan d v1".into(),
                detail: "the body does not parse".into(),
            },
            Conflict {
                kind: ConflictKind::Plan,
                outcome: Outcome::Quarantined,
                identity: "d".into(),
                detail: "plan d v1: the body does not parse".into(),
            },
        ];
        let rater = RaterConfig {
            default_plan: Some("d".into()),
            ..Default::default()
        };
        let records = r#"
            [[s]]
            customer = "fine"
            plan = "p"
        "#;
        let c = Catalog::from_stored(
            plans(LINES),
            subs(records),
            &rater,
            &meters(),
            (TaxTable::default(), FxTable::default()),
            found,
        )
        .expect("builds: only the default plan's customers are left out");
        let fine = CustomerId::new("fine").unwrap();
        let walk_in = CustomerId::new("walk-in").unwrap();
        assert_eq!(c.subscription(&fine).unwrap().plan, "p");
        assert!(c.quarantine_of("fine").is_none());
        assert!(c.subscription(&walk_in).is_none());
        assert!(c.coverage_at(&walk_in, 0).is_none());
        let why = c
            .quarantine_of("walk-in")
            .expect("on the default plan: quarantined");
        assert!(why.contains("plan d v1"), "{why}");
        assert!(c.conflicts().iter().any(|x| x.kind == ConflictKind::Plan
            && x.outcome == Outcome::Quarantined
            && x.identity == "customers on the default plan d"));
    }

    #[test]
    fn a_default_plan_never_stored_is_a_configuration_error() {
        let rater = RaterConfig {
            default_plan: Some("nope".into()),
            ..Default::default()
        };
        let err = Catalog::from_stored(
            plans(LINES),
            vec![],
            &rater,
            &meters(),
            (TaxTable::default(), FxTable::default()),
            vec![],
        )
        .unwrap_err();
        assert!(err.to_string().contains("rater.default_plan"), "{err}");
    }
}
