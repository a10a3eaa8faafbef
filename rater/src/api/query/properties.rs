use super::*;
use proptest::prelude::*;
use tally_domain::meter::{validate_meters, MeterSpec};

fn meter() -> Meter {
    let specs: Vec<MeterSpec> = serde_json::from_str(
        r#"[{"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n",
             "group_by":{"model":"$.model","kind":"$.kind"}}]"#,
    )
    .unwrap();
    validate_meters(specs).unwrap().remove(0)
}

const NOW: i64 = 1_781_517_630; // 2026-06-15T10:00:30Z

fn accepted_is_sound(q: &Query) {
    assert!(q.from < q.to, "{q:?}");
    assert!(q.to - q.from <= RANGE_DAYS_MAX * 86_400 + 86_400, "{q:?}");
    assert_eq!(q.bounds.first(), Some(&q.from));
    assert!(q.bounds.windows(2).all(|w| w[0] < w[1]), "{q:?}");
    assert!(q.bounds.len() <= WINDOWS_MAX + 1);
    assert!(q.bounds.last().is_some_and(|&end| end >= q.to), "{q:?}");
    assert!(q
        .group_by
        .iter()
        .all(|g| ["model", "kind", AGENT].contains(&g.as_str())));
}

/// A parameter, well-formed or not.
fn param() -> impl Strategy<Value = String> {
    let zone = prop_oneof![
        Just("UTC"),
        Just("Europe%2FBerlin"),
        Just("America%2FNew_York"),
        Just("Asia%2FKolkata"),
        Just("Australia%2FLord_Howe"),
        Just("Mars%2FOlympus"),
    ];
    let instant = (
        2000i32..2100,
        1u32..=13,
        0u32..=31,
        0u32..=24,
        0u32..=60,
        -14i32..=14,
    )
        .prop_map(|(y, mo, d, h, mi, off)| {
            let sign = if off < 0 { "-" } else { "%2B" };
            format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:00{sign}{:02}:00",
                off.abs()
            )
        });
    prop_oneof![
        "[a-z]{0,12}".prop_map(|c| format!("customer={c}")),
        instant.clone().prop_map(|t| format!("from={t}")),
        instant.prop_map(|t| format!("to={t}")),
        prop_oneof![
            Just("minute"),
            Just("HOUR"),
            Just("day"),
            Just("Month"),
            Just("week")
        ]
        .prop_map(|w| format!("window_size={w}")),
        zone.prop_map(|z| format!("window_time_zone={z}")),
        prop_oneof![Just("model"), Just("kind"), Just("agent"), Just("x")]
            .prop_map(|g| format!("group_by={g}")),
        "[a-z%+=&0-9]{0,20}".prop_map(|f| format!("filter_group_model={f}")),
        "[a-zA-Z0-9%+=&;_.-]{0,30}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_query_strings_never_panic(query in "[ -~]{0,200}") {
        if let Ok(q) = parse(Some(&query), &meter(), NOW) {
            accepted_is_sound(&q);
        }
    }

    #[test]
    fn structured_queries_are_accepted_only_when_sound(
        params in prop::collection::vec(param(), 0..8)
    ) {
        let query = params.join("&");
        match parse(Some(&query), &meter(), NOW) {
            Ok(q) => accepted_is_sound(&q),
            Err(e) => {
                prop_assert!(!e.code.is_empty());
                prop_assert!(e.status.is_client_error(), "{query}: {e:?}");
            }
        }
    }

    /// Whole-hour ranges of up to a month in UTC are accepted with one window per hour.
    #[test]
    fn hourly_windows_cover_the_range(start_h in 0i64..10_000, hours in 1i64..=744) {
        let from = 1_767_225_600 + start_h * 3600; // 2026-01-01T00:00:00Z + whole hours
        let to = from + hours * 3600;
        prop_assume!(to <= NOW);
        let fmt = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let query = format!("customer=acme&from={}&to={}&window_size=HOUR", fmt(from), fmt(to));
        let q = parse(Some(&query), &meter(), NOW).unwrap();
        accepted_is_sound(&q);
        prop_assert_eq!(q.bounds.len() as i64, hours + 1);
        prop_assert!(q.bounds.windows(2).all(|w| w[1] - w[0] == 3600));
    }
}
