use super::*;
use tally_domain::meter::{validate_meters, MeterSpec};

fn meter() -> Meter {
    let specs: Vec<MeterSpec> = serde_json::from_str(
        r#"[{"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n",
             "group_by":{"model":"$.model","kind":"$.kind"}}]"#,
    )
    .unwrap();
    validate_meters(specs).unwrap().remove(0)
}

fn t(text: &str) -> i64 {
    DateTime::parse_from_rfc3339(text).unwrap().timestamp()
}

fn q(query: &str) -> Result<Query, QueryError> {
    parse(Some(query), &meter(), t("2026-06-15T10:00:30Z"))
}

fn code(query: &str) -> &'static str {
    q(query).expect_err(query).code
}

#[test]
fn parameters_are_parsed() {
    let q = q(
        "customer=acme&from=2026-03-01T00:00:00%2B01:00&to=2026-03-03T00:00:00Z\
               &window_size=day&window_time_zone=Europe%2FBerlin&group_by=model&group_by=agent\
               &group_by=model&filter_group_kind=input&filter_group_kind=output",
    )
    .unwrap();
    assert_eq!(q.customer.as_str(), "acme");
    assert_eq!(q.from, t("2026-02-28T23:00:00Z"));
    assert_eq!(q.to, t("2026-03-03T00:00:00Z"));
    assert_eq!(q.window_size, Some(WindowSize::Day));
    assert_eq!(q.zone, chrono_tz::Europe::Berlin);
    assert_eq!(q.group_by, vec!["model", "agent"]);
    assert_eq!(
        q.filters["kind"],
        BTreeSet::from(["input".to_owned(), "output".to_owned()])
    );
    // the last window is cut at `to` (Berlin's midnight is 23:00 UTC)
    assert_eq!(
        q.bounds,
        vec![
            t("2026-02-28T23:00:00Z"),
            t("2026-03-01T23:00:00Z"),
            t("2026-03-02T23:00:00Z"),
            t("2026-03-03T23:00:00Z")
        ]
    );
}

#[test]
fn an_unescaped_plus_and_defaults() {
    let q = q("customer=acme&from=2026-06-15T09:00:00+00:00").unwrap();
    assert_eq!(q.from, t("2026-06-15T09:00:00Z"));
    // now rounded up to a whole minute
    assert_eq!(q.to, t("2026-06-15T10:01:00Z"));
    assert_eq!((q.window_size, q.zone), (None, Tz::UTC));
    assert_eq!(q.bounds, vec![q.from, q.to]);
}

#[test]
fn every_parameter_has_its_error() {
    let ok = "from=2026-06-01T00:00:00Z&to=2026-06-02T00:00:00Z";
    for (query, expected) in [
        (ok.to_owned(), "invalid_customer"),
        (format!("customer=a%20b&{ok}"), "invalid_customer"),
        (format!("customer=a&customer=b&{ok}"), "invalid_customer"),
        ("customer=a".to_owned(), "invalid_from"),
        ("customer=a&from=yesterday".to_owned(), "invalid_from"),
        (
            "customer=a&from=2026-06-01T00:00:30Z".to_owned(),
            "invalid_from",
        ),
        (
            "customer=a&from=1960-06-01T00:00:00Z".to_owned(),
            "invalid_from",
        ),
        (
            "customer=a&from=2026-06-01T00:00:00Z&to=2026-06-01T00:00:00.5Z".to_owned(),
            "invalid_to",
        ),
        (
            "customer=a&from=2026-06-01T00:00:00Z&to=2026-05-01T00:00:00Z".to_owned(),
            "invalid_range",
        ),
        (
            "customer=a&from=2020-06-01T00:00:00Z&to=2026-05-01T00:00:00Z".to_owned(),
            "invalid_range",
        ),
        (
            format!("customer=a&{ok}&window_size=WEEK"),
            "invalid_window_size",
        ),
        (
            format!("customer=a&{ok}&window_time_zone=Mars/Olympus"),
            "invalid_window_time_zone",
        ),
        (
            format!("customer=a&{ok}&group_by=colour"),
            "invalid_group_by",
        ),
        (
            format!("customer=a&{ok}&filter_group_colour=red"),
            "invalid_filter",
        ),
        (
            format!("customer=a&{ok}&windowSize=DAY"),
            "unknown_parameter",
        ),
        (format!("customer=a&{ok}&x=%zz"), "invalid_parameter"),
        (
            format!("customer=a&{ok}&filter_group_model={}", "m".repeat(300)),
            "invalid_filter",
        ),
        (
            format!("customer=a&{ok}{}", "&group_by=model".repeat(PARAMS_MAX)),
            "too_many_parameters",
        ),
        // a DAY window in Berlin starts at 22:00 or 23:00 UTC
        (
            format!("customer=a&{ok}&window_size=DAY&window_time_zone=Europe/Berlin"),
            "invalid_from",
        ),
        (
            "customer=a&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z&window_size=MINUTE"
                .to_owned(),
            "too_many_windows",
        ),
    ] {
        assert_eq!(code(&query), expected, "{query}");
    }
    // 10,000 minutes is the most
    let most = "customer=a&from=2026-01-01T00:00:00Z&to=2026-01-07T22:40:00Z&window_size=MINUTE";
    assert_eq!(q(most).unwrap().bounds.len(), WINDOWS_MAX + 1);
    let one_more =
        "customer=a&from=2026-01-01T00:00:00Z&to=2026-01-07T22:41:00Z&window_size=MINUTE";
    assert_eq!(code(one_more), "too_many_windows");
}

#[test]
fn days_across_daylight_saving_changes_have_23_and_25_hours() {
    let berlin = chrono_tz::Europe::Berlin;
    // 2026-03-29: clocks go 02:00 -> 03:00; 2026-10-25: 03:00 -> 02:00
    let spring = windows(
        t("2026-03-28T00:00:00+01:00"),
        t("2026-03-31T00:00:00+02:00"),
        WindowSize::Day,
        berlin,
    )
    .unwrap();
    let lengths: Vec<i64> = spring.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(lengths, vec![24 * 3600, 23 * 3600, 24 * 3600]);
    let autumn = windows(
        t("2026-10-25T00:00:00+02:00"),
        t("2026-10-26T00:00:00+01:00"),
        WindowSize::Hour,
        berlin,
    )
    .unwrap();
    assert_eq!(autumn.len(), 26, "25 hours");
    assert!(autumn.windows(2).all(|w| w[1] - w[0] == 3600));
    // the repeated hour is labelled by its offset
    assert_eq!(rfc3339(autumn[2], berlin), "2026-10-25T02:00:00+02:00");
    assert_eq!(rfc3339(autumn[3], berlin), "2026-10-25T02:00:00+01:00");
    // New York, 2026-11-01: the DAY has 25 hours, months have their local lengths
    let ny = chrono_tz::America::New_York;
    assert_eq!(
        next_start(t("2026-11-01T00:00:00-04:00"), WindowSize::Day, ny)
            - t("2026-11-01T00:00:00-04:00"),
        25 * 3600
    );
    let months = windows(
        t("2026-01-01T00:00:00-05:00"),
        t("2027-01-01T00:00:00-05:00"),
        WindowSize::Month,
        ny,
    )
    .unwrap();
    assert_eq!(months.len(), 13);
    assert_eq!(months[3], t("2026-04-01T00:00:00-04:00"));
    assert_eq!(months[11], t("2026-12-01T00:00:00-05:00"));
}

#[test]
fn hours_in_a_half_hour_zone_and_a_missing_midnight() {
    let kolkata = chrono_tz::Asia::Kolkata;
    assert!(is_start(
        t("2026-06-01T10:30:00Z"),
        WindowSize::Hour,
        kolkata
    ));
    assert!(!is_start(
        t("2026-06-01T10:00:00Z"),
        WindowSize::Hour,
        kolkata
    ));
    assert_eq!(
        next_start(t("2026-06-01T10:30:00Z"), WindowSize::Hour, kolkata),
        t("2026-06-01T11:30:00Z")
    );
    // Lord Howe moves by half an hour: 2026-04-05 02:00 +11 -> 01:30 +10:30
    let lh = chrono_tz::Australia::Lord_Howe;
    let hours = windows(
        t("2026-04-05T00:00:00+11:00"),
        t("2026-04-05T04:00:00+10:30"),
        WindowSize::Hour,
        lh,
    )
    .unwrap();
    let lengths: Vec<i64> = hours.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(lengths.iter().sum::<i64>(), 4 * 3600 + 1800);
    assert!(hours.iter().all(|h| is_start(*h, WindowSize::Hour, lh)));
    // Santiago skips its midnight (2026-09-06 00:00 -> 01:00): that day starts at 01:00
    let santiago = chrono_tz::America::Santiago;
    let day = next_start(t("2026-09-05T00:00:00-04:00"), WindowSize::Day, santiago);
    assert_eq!(day, t("2026-09-06T01:00:00-03:00"));
    assert!(is_start(day, WindowSize::Day, santiago));
}

#[test]
fn what_is_read_follows_the_windows() {
    let utc_days =
        q("customer=a&from=2026-06-01T00:00:00Z&to=2026-06-05T00:00:00Z&window_size=DAY").unwrap();
    assert_eq!(
        shape(&utc_days),
        ReadShape {
            resolution: Resolution::Days,
            split_days: vec![],
            by_month: false
        }
    );
    let utc_months =
        q("customer=a&from=2026-01-01T00:00:00Z&to=2026-06-01T00:00:00Z&window_size=MONTH")
            .unwrap();
    assert!(shape(&utc_months).by_month);
    let whole = q("customer=a&from=2026-01-01T00:00:00Z&to=2026-06-01T00:00:00Z").unwrap();
    assert!(shape(&whole).by_month);
    let tokyo = q(
        "customer=a&from=2026-01-31T15:00:00Z&to=2026-03-31T15:00:00Z\
                   &window_size=MONTH&window_time_zone=Asia/Tokyo",
    )
    .unwrap();
    let s = shape(&tokyo);
    assert!(!s.by_month);
    assert_eq!(
        s.split_days,
        vec![
            secs(t("2026-01-31T00:00:00Z")),
            secs(t("2026-02-28T00:00:00Z"))
        ]
    );
    let minutes =
        q("customer=a&from=2026-06-01T00:00:00Z&to=2026-06-01T01:00:00Z&window_size=MINUTE")
            .unwrap();
    assert_eq!(shape(&minutes).resolution, Resolution::Windows);
}

fn row(agent: &str, model: &str, start: i64, len: i64, value: i128, uniques: &[&str]) -> UsageRow {
    let u = usage::Units(value * 1_000_000_000);
    UsageRow {
        customer: "a".into(),
        agent: agent.into(),
        meter: "tokens".into(),
        aggregation: "SUM".into(),
        group_key: String::new(),
        group_names: vec!["kind".into(), "model".into()],
        group_values: vec!["input".into(), model.into()],
        start: secs(start),
        end: secs(start + len),
        events: 2,
        sum: u,
        min: u,
        max: u,
        latest: u,
        latest_time_ms: start * 1000,
        latest_event_id: format!("e{start}"),
        unique_values: uniques.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn rows_fold_into_windows_and_groups_by_aggregation() {
    let q = q(
        "customer=a&from=2026-06-01T00:00:00Z&to=2026-06-01T02:00:00Z\
               &window_size=HOUR&group_by=model&filter_group_agent=bot",
    )
    .unwrap();
    let h = t("2026-06-01T00:00:00Z");
    let mut f = Fold::new(&q);
    for r in [
        row("bot", "m1", h, 60, 5, &["x", "y"]),
        row("bot", "m1", h + 600, 60, 7, &["y"]),
        row("bot", "m2", h + 60, 60, 1, &["z"]),
        row("bot", "m1", h + 3600, 60, 2, &["x"]),
        row("other", "m1", h, 60, 100, &["q"]),
    ] {
        f.add(&r).unwrap();
    }
    let values = |agg: &str| -> Vec<(String, String, String)> {
        f.rows(agg)
            .unwrap()
            .into_iter()
            .map(|r| (r.window_start, r.group_by["model"].clone(), r.value))
            .collect()
    };
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        values("SUM"),
        vec![
            s("2026-06-01T00:00:00Z", "m1", "12"),
            s("2026-06-01T00:00:00Z", "m2", "1"),
            s("2026-06-01T01:00:00Z", "m1", "2")
        ]
    );
    assert_eq!(values("COUNT")[0].2, "4");
    assert_eq!(values("MAX")[0].2, "7");
    assert_eq!(values("MIN")[0].2, "5");
    assert_eq!(values("LATEST")[0].2, "7");
    assert_eq!(values("UNIQUE_COUNT")[0].2, "2");
    // a stored window coarser than the window asked for cannot be answered
    let mut coarse = Fold::new(&q);
    let e = coarse
        .add(&row("bot", "m1", h + 3000, 7200, 1, &[]))
        .unwrap_err();
    assert_eq!((e.status.as_u16(), e.code), (422, "window_size_too_small"));
}

#[test]
fn decoding_form_text() {
    assert_eq!(decode("a+b%2B%2Fc").as_deref(), Some("a b+/c"));
    assert_eq!(decode("%e2%82%ac").as_deref(), Some("€"));
    assert_eq!(decode("%2"), None);
    assert_eq!(decode("%ff"), None);
}
