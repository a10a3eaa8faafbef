//! The backfill rules over typed facts: imports, re-runs, events already present, refusals.

use rust_decimal::Decimal;
use tally_domain::meter::{validate_meters, MeterSpec};

use super::*;

/// 2026-10-05T01:00:00Z.
const OCT5: i64 = 1_791_162_000_000;
const DAY: i64 = 86_400_000;

fn meters() -> Vec<Meter> {
    let specs: Vec<MeterSpec> = serde_json::from_str(
        r#"[{"slug":"tokens","event_type":"llm.tokens","aggregation":"SUM","value_property":"$.tokens","group_by":{"model":"$.model"}},
            {"slug":"calls","event_type":"tool.call","aggregation":"COUNT"},
            {"slug":"peak","event_type":"gpu.load","aggregation":"MAX","value_property":"$.load"}]"#,
    )
    .unwrap();
    validate_meters(specs).unwrap()
}

fn event(id: &str, event_type: &str, time_ms: i64, data: &str) -> UsageEvent {
    let time = chrono::DateTime::from_timestamp_millis(time_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let text = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"bot","subject":"acme","type":"{event_type}","time":"{time}","data":{data}}}"#
    );
    UsageEvent::parse(text.as_bytes(), 65_536).unwrap()
}

fn tokens(id: &str, n: u64) -> UsageEvent {
    event(
        id,
        "llm.tokens",
        OCT5,
        &format!(r#"{{"tokens":{n},"model":"gpt-4o"}}"#),
    )
}

/// October 2026, imported on December 3rd.
fn october() -> Import {
    Import {
        import_id: "imp-1".into(),
        from_ms: 1_790_812_800_000,
        to_ms: 1_793_491_200_000,
        reason: "migrated from another biller".into(),
        actor: "api:alice".into(),
        now_ms: 1_796_256_000_000,
    }
}

fn facts(e: &UsageEvent) -> Facts {
    Facts {
        committed: false,
        of_event: Vec::new(),
        same_id: None,
        target: readings(&meters(), e),
    }
}

fn stored(correction_id: &str, kind: &str) -> Correction {
    Correction {
        correction_id: correction_id.into(),
        customer: "acme".into(),
        agent: "bot".into(),
        event_id: "e-1".into(),
        event_time_ms: OCT5,
        revision: 1,
        kind: kind.into(),
        actor: "api:bob".into(),
        reason: "earlier".into(),
        created_ms: 1,
        created_at: 0,
        digest: String::new(),
    }
}

fn code(d: &Decision) -> &'static str {
    match d {
        Decision::Refused(r) => r.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_event_of_the_period_becomes_a_backfill_correction_with_its_readings() {
    let e = tokens("e-1", 1_500_000);
    let Decision::Append(c, deltas) = decide(&october(), &e, &facts(&e)) else {
        panic!("imported")
    };
    assert_eq!(c.kind, "backfill");
    assert_eq!(c.revision, 1);
    assert_eq!(c.actor, "api:alice");
    assert_eq!(import_of(&c.correction_id), Some("imp-1"));
    assert_eq!(c.correction_id, correction_id("imp-1", &e));
    assert_eq!(deltas.len(), 1);
    let d = &deltas[0];
    assert_eq!(
        (d.meter.as_str(), d.value, d.events, d.group_key.as_str()),
        (
            "tokens",
            Decimal::from(1_500_000),
            1,
            r#"{"model":"gpt-4o"}"#
        )
    );
    // its minute: 01:00:00 of October 5th
    assert_eq!((d.window_start, d.window_secs), (1_791_162_000, 60));
}

#[test]
fn count_meters_import_one_event_each() {
    let e = event("c-1", "tool.call", OCT5 + 61_000, "{}");
    let Decision::Append(_, deltas) = decide(&october(), &e, &facts(&e)) else {
        panic!("imported")
    };
    assert_eq!(
        (deltas[0].meter.as_str(), deltas[0].value, deltas[0].events),
        ("calls", Decimal::ONE, 1)
    );
    assert_eq!(deltas[0].window_start, 1_791_162_060);
}

#[test]
fn the_same_identity_gets_the_same_id_in_an_import_and_another_in_another() {
    let (a, b) = (tokens("e-1", 1), tokens("e-1", 2));
    assert_eq!(correction_id("imp-1", &a), correction_id("imp-1", &b));
    assert_ne!(correction_id("imp-1", &a), correction_id("imp-2", &a));
    assert_ne!(
        correction_id("imp-1", &a),
        correction_id("imp-1", &tokens("e-2", 1))
    );
    assert_eq!(import_of("v-1"), None);
}

#[test]
fn a_rerun_finds_its_correction_and_appends_nothing() {
    let e = tokens("e-1", 5);
    let mine = Correction {
        correction_id: correction_id("imp-1", &e),
        ..stored("", "backfill")
    };
    let f = Facts {
        of_event: vec![mine.clone()],
        same_id: Some(mine.clone()),
        ..facts(&e)
    };
    assert_eq!(
        decide(&october(), &e, &f),
        Decision::Present(Present::Imported(mine.correction_id))
    );
}

#[test]
fn an_event_committed_live_or_imported_by_another_import_is_present() {
    let e = tokens("e-1", 5);
    let live = Facts {
        committed: true,
        ..facts(&e)
    };
    assert_eq!(
        decide(&october(), &e, &live),
        Decision::Present(Present::Committed)
    );
    let other = Facts {
        of_event: vec![stored("bf:imp-0:0000000000000001", "backfill")],
        ..facts(&e)
    };
    assert_eq!(
        decide(&october(), &e, &other),
        Decision::Present(Present::Imported("bf:imp-0:0000000000000001".into()))
    );
}

#[test]
fn events_outside_the_period_or_too_recent_are_refused() {
    let before = event(
        "e-0",
        "llm.tokens",
        1_790_812_800_000 - 1,
        r#"{"tokens":1}"#,
    );
    assert_eq!(
        code(&decide(&october(), &before, &facts(&before))),
        "outside_period"
    );
    let at_end = event("e-9", "llm.tokens", 1_793_491_200_000, r#"{"tokens":1}"#);
    assert_eq!(
        code(&decide(&october(), &at_end, &facts(&at_end))),
        "outside_period"
    );
    let mut recent = october();
    recent.now_ms = OCT5 + DAY / 2;
    let e = tokens("e-1", 1);
    assert_eq!(code(&decide(&recent, &e, &facts(&e))), "too_recent");
}

#[test]
fn meters_that_do_not_add_up_unknown_types_and_bad_data_are_refused() {
    let peak = event("g-1", "gpu.load", OCT5, r#"{"load":7}"#);
    let d = decide(&october(), &peak, &facts(&peak));
    assert_eq!(code(&d), "not_importable");
    let unknown = event("u-1", "other.type", OCT5, "{}");
    assert_eq!(
        code(&decide(&october(), &unknown, &facts(&unknown))),
        "unknown_meter"
    );
    let negative = event("n-1", "llm.tokens", OCT5, r#"{"tokens":-3}"#);
    assert_eq!(
        code(&decide(&october(), &negative, &facts(&negative))),
        "invalid_quantity"
    );
}

#[test]
fn an_id_naming_another_correction_is_refused() {
    let e = tokens("e-1", 5);
    let mut other = stored(&correction_id("imp-1", &e), "backfill");
    other.event_id = "e-2".into();
    let f = Facts {
        same_id: Some(other),
        ..facts(&e)
    };
    assert_eq!(code(&decide(&october(), &e, &f)), "correction_exists");
    let mut void = stored(&correction_id("imp-1", &e), "void");
    void.revision = 2;
    let f = Facts {
        same_id: Some(void),
        ..facts(&e)
    };
    assert_eq!(code(&decide(&october(), &e, &f)), "correction_exists");
}

#[test]
fn the_identity_imported_by_this_import_at_another_time_is_present() {
    // issue 17, item 11: the time is not part of the identity (refused
    // `correction_exists` before)
    let e = tokens("e-1", 5);
    let mut mine = stored(&correction_id("imp-1", &e), "backfill");
    mine.event_time_ms = OCT5 + 300_000;
    let f = Facts {
        of_event: vec![mine.clone()],
        same_id: Some(mine.clone()),
        ..facts(&e)
    };
    assert_eq!(
        decide(&october(), &e, &f),
        Decision::Present(Present::Imported(mine.correction_id))
    );
}

#[test]
fn a_live_commit_of_the_identity_counts_within_the_horizon_either_side() {
    // issue 17, item 11: matched by identity within the aggregator's dedup horizon, not at
    // the exact time
    let h = HORIZON_SECS;
    assert!(committed_within(&[OCT5], OCT5, h));
    assert!(committed_within(&[OCT5 - 300_000], OCT5, h));
    assert!(committed_within(&[OCT5 + 300_000], OCT5, h));
    assert!(committed_within(&[OCT5 - DAY], OCT5, h));
    assert!(committed_within(&[OCT5 + DAY], OCT5, h));
    assert!(!committed_within(&[OCT5 - DAY - 1], OCT5, h));
    assert!(!committed_within(&[OCT5 + DAY + 1], OCT5, h));
    assert!(committed_within(&[OCT5 + 3 * DAY, OCT5 + DAY], OCT5, h));
    assert!(!committed_within(&[], OCT5, h));
    // another horizon (the aggregator's setting)
    assert!(committed_within(&[OCT5 + 7 * DAY], OCT5, 7 * 86_400));
    assert!(!committed_within(&[OCT5 + 300_001], OCT5, 300));
    // no overflow; a negative horizon is none
    assert!(!committed_within(&[i64::MIN], i64::MAX, i64::MAX));
    assert!(committed_within(&[OCT5], OCT5, -5));
    assert!(!committed_within(&[OCT5 + 1], OCT5, -5));
}

#[test]
fn the_import_needs_an_id_a_reason_and_a_period() {
    assert!(october().validate().is_ok());
    let mut bad = october();
    bad.import_id = "a:b".into();
    assert!(bad.validate().is_err());
    let mut bad = october();
    bad.reason = "  ".into();
    assert!(bad.validate().is_err());
    let mut bad = october();
    bad.to_ms = bad.from_ms;
    assert!(bad.validate().is_err());
}

#[test]
fn a_report_counts_refusals_by_reason_and_keeps_a_few_examples() {
    let mut r = Report::default();
    for i in 0..25 {
        r.refuse(
            i,
            format!("bot/e-{i}"),
            Refusal {
                code: "outside_period",
                detail: String::new(),
            },
        );
    }
    assert_eq!(r.refused.get("outside_period"), Some(&25));
    assert_eq!(r.examples.len(), EXAMPLES_MAX);
}
