//! The correction rules over typed facts: voids, amends, refusals, races.

use super::*;

fn reading(meter: &str, group: &str, value: i64) -> Reading {
    Reading {
        meter: meter.into(),
        aggregation: "SUM".into(),
        window_start: 3600,
        window_secs: 3600,
        group_names: vec!["model".into()],
        group_values: vec![group.into()],
        group_key: format!("{{\"model\":\"{group}\"}}"),
        value: Decimal::from(value),
        events: 1,
    }
}

fn request(correction_id: &str, kind: &str, data: Option<&str>) -> Valid {
    CorrectionRequest {
        correction_id: correction_id.into(),
        kind: kind.into(),
        customer: "acme".into(),
        source: "bot".into(),
        id: "e-1".into(),
        time: "1970-01-01T01:30:00Z".into(),
        reason: "wrong".into(),
        data: data.map(|d| RawValue::from_string(d.into()).unwrap()),
    }
    .validate()
    .unwrap()
}

fn stored(correction_id: &str, revision: u32, kind: &str) -> Correction {
    Correction {
        correction_id: correction_id.into(),
        customer: "acme".into(),
        agent: "bot".into(),
        event_id: "e-1".into(),
        event_time_ms: 5_400_000,
        revision,
        kind: kind.into(),
        actor: "api:alice".into(),
        reason: "wrong".into(),
        created_ms: 1,
        created_at: 0,
        digest: String::new(),
    }
}

fn committed() -> Facts {
    Facts {
        readings: vec![reading("tokens", "a", 100)],
        ..Facts::default()
    }
}

/// (meter, group value, value, events) of each delta.
fn deltas(d: &Decision) -> Vec<(String, String, i64, i64)> {
    let Decision::Append(_, rows) = d else {
        panic!("expected an append, got {d:?}")
    };
    rows.iter()
        .map(|r| {
            (
                r.meter.clone(),
                r.group_values[0].clone(),
                i64::try_from(r.value.mantissa()).unwrap(),
                r.events,
            )
        })
        .collect()
}

#[test]
fn a_void_takes_away_each_committed_reading() {
    let d = decide(&request("v-1", "void", None), &committed(), "api:alice", 9).unwrap();
    assert_eq!(deltas(&d), vec![("tokens".into(), "a".into(), -100, -1)]);
    let Decision::Append(c, _) = d else {
        unreachable!()
    };
    assert_eq!(
        (c.revision, c.kind.as_str(), c.actor.as_str()),
        (1, "void", "api:alice")
    );
}

#[test]
fn a_resent_correction_is_recorded_once_and_an_id_is_never_reused() {
    let mut facts = committed();
    facts.same_id = Some((stored("v-1", 1, "void"), String::new()));
    facts.of_event = vec![stored("v-1", 1, "void")];
    let again = decide(&request("v-1", "void", None), &facts, "api:bob", 10).unwrap();
    assert_eq!(again, Decision::Recorded(stored("v-1", 1, "void")));
    let other = decide(
        &request("v-1", "amend", Some(r#"{"tokens":1}"#)),
        &facts,
        "x",
        10,
    );
    assert_eq!(other.unwrap_err().code(), "correction_exists");
}

#[test]
fn a_voided_event_is_not_corrected_again_and_unknown_events_are_refused() {
    let mut facts = committed();
    facts.of_event = vec![stored("v-1", 1, "void")];
    let e = decide(&request("v-2", "void", None), &facts, "x", 10).unwrap_err();
    assert_eq!(e.code(), "already_voided");
    assert_eq!(
        e.to_string(),
        "the event is already voided by correction \"v-1\""
    );
    let e = decide(&request("v-2", "void", None), &Facts::default(), "x", 10).unwrap_err();
    assert_eq!(e.code(), "event_not_found");
}

#[test]
fn only_sum_meters_are_corrected() {
    let mut facts = committed();
    let mut count = reading("calls", "a", 1);
    count.aggregation = "COUNT".into();
    facts.readings.push(count);
    let e = decide(&request("v-1", "void", None), &facts, "x", 10).unwrap_err();
    assert_eq!(e.code(), "not_correctable");
}

#[test]
fn a_race_is_won_by_the_smallest_correction_id_of_a_revision() {
    let all = vec![
        stored("v-b", 1, "void"),
        stored("v-a", 1, "void"),
        stored("m-z", 2, "amend"),
    ];
    let ids: Vec<&str> = winners(&all)
        .iter()
        .map(|c| c.correction_id.as_str())
        .collect();
    assert_eq!(ids, ["v-a", "m-z"]);
    assert_eq!(winner(&all, &all[0]).unwrap().correction_id, "v-a");
}

#[test]
fn an_amend_is_its_target_minus_the_current_readings() {
    // same group, lower quantity
    let mut facts = committed();
    facts.target = vec![reading("tokens", "a", 40)];
    let d = decide(&request("m-1", "amend", Some("{}")), &facts, "x", 10).unwrap();
    assert_eq!(deltas(&d), vec![("tokens".into(), "a".into(), -60, 0)]);
    // another group: the old one goes, the new one comes
    facts.target = vec![reading("tokens", "b", 40)];
    let d = decide(&request("m-1", "amend", Some("{}")), &facts, "x", 10).unwrap();
    assert_eq!(
        deltas(&d),
        vec![
            ("tokens".into(), "a".into(), -100, -1),
            ("tokens".into(), "b".into(), 40, 1)
        ]
    );
    // a second amend starts from the first: committed 100 (a) + counted deltas -100 (a), +40 (b)
    let mut undo = reading("tokens", "a", -100);
    undo.events = -1;
    facts.deltas = vec![undo, reading("tokens", "b", 40)];
    facts.of_event = vec![stored("m-1", 1, "amend")];
    facts.target = vec![reading("tokens", "b", 70)];
    let d = decide(&request("m-2", "amend", Some("{}")), &facts, "x", 10).unwrap();
    assert_eq!(deltas(&d), vec![("tokens".into(), "b".into(), 30, 0)]);
    let Decision::Append(c, _) = d else {
        unreachable!()
    };
    assert_eq!(c.revision, 2);
    // then a void takes away what is current, not what was committed
    let d = decide(&request("v-9", "void", None), &facts, "x", 10).unwrap();
    assert_eq!(deltas(&d), vec![("tokens".into(), "b".into(), -40, -1)]);
}

#[test]
fn the_meters_read_an_amends_data() {
    let meters = tally_domain::meter::validate_meters(
        serde_json::from_str(
            r#"[{"slug":"tokens","event_type":"llm.tokens","aggregation":"SUM",
                 "value_property":"$.tokens","group_by":{"model":"$.model"}},
                {"slug":"other","event_type":"tool.call","aggregation":"COUNT"}]"#,
        )
        .unwrap(),
    )
    .unwrap();
    let data = RawValue::from_string(r#"{"tokens":"12.5","model":"a"}"#.into()).unwrap();
    let read = amended(&meters, "llm.tokens", &data, (3600, 3600)).unwrap();
    assert_eq!(
        read,
        vec![{
            let mut r = reading("tokens", "a", 0);
            r.value = Decimal::new(125, 1);
            r
        }]
    );
    let negative = RawValue::from_string(r#"{"tokens":-1,"model":"a"}"#.into()).unwrap();
    let e = amended(&meters, "llm.tokens", &negative, (3600, 3600)).unwrap_err();
    assert_eq!(e.code(), "invalid_quantity");
}

#[test]
fn requests_are_checked_field_by_field() {
    let base = || CorrectionRequest {
        correction_id: "v-1".into(),
        kind: "void".into(),
        customer: "acme".into(),
        source: "bot".into(),
        id: "e-1".into(),
        time: "2026-11-26T21:00:00.123Z".into(),
        reason: "why".into(),
        data: None,
    };
    let field = |r: CorrectionRequest| match r.validate() {
        Err(CorrectionError::Invalid { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(base().validate().unwrap().time_ms, 1_795_726_800_123);
    assert_eq!(
        field(CorrectionRequest {
            kind: "delete".into(),
            ..base()
        }),
        "kind"
    );
    let data = Some(RawValue::from_string("{}".into()).unwrap());
    assert_eq!(
        field(CorrectionRequest {
            data: data.clone(),
            ..base()
        }),
        "data"
    );
    assert_eq!(
        field(CorrectionRequest {
            kind: "amend".into(),
            ..base()
        }),
        "data"
    );
    assert_eq!(
        field(CorrectionRequest {
            reason: "  ".into(),
            ..base()
        }),
        "reason"
    );
    assert_eq!(
        field(CorrectionRequest {
            time: "yesterday".into(),
            ..base()
        }),
        "time"
    );
    assert_eq!(
        field(CorrectionRequest {
            source: "a b".into(),
            ..base()
        }),
        "source"
    );
    assert_eq!(
        field(CorrectionRequest {
            correction_id: String::new(),
            ..base()
        }),
        "correction_id"
    );
}

#[test]
fn an_imported_event_is_voided_or_amended_by_its_imports_deltas() {
    // no committed readings: the backfill's delta is the event's reading
    let facts = Facts {
        deltas: vec![reading("tokens", "a", 100)],
        of_event: vec![stored("bf:imp-1:0123456789abcdef", 1, "backfill")],
        ..Facts::default()
    };
    let d = decide(&request("v-1", "void", None), &facts, "api:alice", 9).unwrap();
    assert_eq!(deltas(&d), vec![("tokens".into(), "a".into(), -100, -1)]);
    let Decision::Append(c, _) = d else {
        unreachable!()
    };
    assert_eq!(c.revision, 2);
    let amend = Facts {
        target: vec![reading("tokens", "a", 40)],
        ..facts.clone()
    };
    let d = decide(
        &request("m-1", "amend", Some(r#"{"tokens":40}"#)),
        &amend,
        "x",
        9,
    )
    .unwrap();
    assert_eq!(deltas(&d), vec![("tokens".into(), "a".into(), -60, 0)]);
    // without its import it is unknown
    let none = Facts {
        of_event: Vec::new(),
        ..facts
    };
    let e = decide(&request("v-1", "void", None), &none, "x", 9).unwrap_err();
    assert_eq!(e.code(), "event_not_found");
}

/// The deltas and data an attempt of `req` over `facts` would write, as left by it failing
/// before its correction row.
fn left_by(req: &Valid, facts: &Facts) -> Leftover {
    let Decision::Append(_, deltas) = decide(req, facts, "api:alice", 9).unwrap() else {
        panic!("expected an append")
    };
    Leftover {
        deltas,
        data: match req.change.data() {
            "" => Vec::new(),
            d => vec![d.to_owned()],
        },
    }
}

#[test]
fn a_failed_attempt_is_completed_only_by_the_same_content() {
    let amend = request("fix-1", "amend", Some(r#"{"tokens":25}"#));
    let mut facts = committed();
    // the amend to 25 tokens wrote its delta (-75) and data, not its row
    facts.target = vec![reading("tokens", "a", 25)];
    facts.leftover = left_by(&amend, &facts);
    // a void under the id, of the same event: refused, the leftover -75 never counts beside -100
    let e = decide(&request("fix-1", "void", None), &facts, "x", 10).unwrap_err();
    assert_eq!(e.code(), "correction_exists");
    // an amend to another quantity: refused
    let mut other = facts.clone();
    other.target = vec![reading("tokens", "a", 50)];
    let e = decide(
        &request("fix-1", "amend", Some(r#"{"tokens":50}"#)),
        &other,
        "x",
        10,
    )
    .unwrap_err();
    assert_eq!(e.code(), "correction_exists");
    // the same amend again: appended, the very delta of the attempt (written twice, read once)
    let d = decide(&amend, &facts, "api:alice", 10).unwrap();
    assert_eq!(deltas(&d), vec![("tokens".into(), "a".into(), -75, 0)]);
}

#[test]
fn a_failed_void_of_one_event_is_not_counted_with_a_correction_of_another() {
    // a void of e-1 failed before its row; the same id then names a void of e-2, which would
    // be revision 1 too: readers would count both voids under (fix-1, 1)
    let mut facts = committed();
    facts.leftover = left_by(&request("fix-1", "void", None), &facts);
    let mut of_e2 = request("fix-1", "void", None);
    of_e2.event_id = EventId::new("e-2").unwrap();
    let e = decide(&of_e2, &facts, "x", 10).unwrap_err();
    assert_eq!(e.code(), "correction_exists");
}

#[test]
fn a_failed_attempt_of_an_earlier_revision_never_counts_and_leaves_the_id_to_its_retry() {
    // a void failed before its row as revision 1; meanwhile amend m-1 became revision 1 (to
    // 40 tokens); the void re-sent is revision 2, of minus 40 tokens, and the leftover minus
    // 100 of revision 1 is never read (no row of fix-1 names revision 1)
    let mut facts = committed();
    facts.leftover = left_by(&request("fix-1", "void", None), &facts);
    facts.of_event = vec![stored("m-1", 1, "amend")];
    let mut m1 = reading("tokens", "a", -60);
    m1.events = 0;
    facts.deltas = vec![m1];
    let d = decide(&request("fix-1", "void", None), &facts, "x", 10).unwrap();
    assert_eq!(deltas(&d), vec![("tokens".into(), "a".into(), -40, -1)]);
    let Decision::Append(c, _) = d else {
        unreachable!()
    };
    assert_eq!(c.revision, 2);
    // but leftover data of an amend is never taken for a void's
    facts.leftover.data = vec![r#"{"tokens":25}"#.into()];
    let e = decide(&request("fix-1", "void", None), &facts, "x", 10).unwrap_err();
    assert_eq!(e.code(), "correction_exists");
}

/// The row a request makes at `now_ms` (its digest set), as an instance stores it.
fn made(req: &Valid, facts: &Facts, now_ms: i64) -> (Correction, Vec<Delta>) {
    match decide(req, facts, "api:alice", now_ms).unwrap() {
        Decision::Append(c, d) => (c, d),
        other => panic!("expected an append, got {other:?}"),
    }
}

#[test]
fn a_digest_is_the_content_not_the_actor_the_revision_or_the_time() {
    let void = request("v-1", "void", None);
    let (a, deltas) = made(&void, &committed(), 5);
    assert_eq!(a.digest.len(), 32);
    assert!(deltas.iter().all(|d| d.digest == a.digest));
    let mut later = a.clone();
    (later.actor, later.revision, later.created_ms) = ("api:bob".into(), 2, 99);
    assert_eq!(digest(&later, ""), a.digest);
    let amend = |data: &str| made(&request("v-1", "amend", Some(data)), &committed(), 5).0;
    let (x, y) = (amend(r#"{"n":1}"#), amend(r#"{"n":2}"#));
    assert_ne!(x.digest, y.digest);
    assert_ne!(x.digest, a.digest);
    let mut other_reason = a.clone();
    other_reason.reason = "other".into();
    assert_ne!(digest(&other_reason, ""), a.digest);
    // fields are length-prefixed: moving a byte between two fields is another content
    let (mut p, mut q) = (a.clone(), a.clone());
    (p.kind, p.reason) = ("voi".into(), "dwrong".into());
    (q.kind, q.reason) = ("void".into(), "wrong".into());
    assert_ne!(digest(&p, ""), digest(&q, ""));
}

#[test]
fn of_two_contents_under_one_id_the_earliest_row_counts_then_the_smaller_digest() {
    let void = made(&request("c-1", "void", None), &committed(), 10).0;
    let amend = made(
        &request("c-1", "amend", Some(r#"{"n":1}"#)),
        &committed(),
        20,
    )
    .0;
    // the earliest stored row, whatever order the rows are read in
    for rows in [
        vec![void.clone(), amend.clone()],
        vec![amend.clone(), void.clone()],
    ] {
        assert_eq!(contents(&rows), vec![&void]);
        assert_eq!(content_of(&rows, "c-1"), Some(&void));
        assert_eq!(winners(&rows), vec![&void]);
    }
    // made in the same millisecond: the smaller digest
    let mut tie = amend.clone();
    tie.created_ms = void.created_ms;
    let smaller = if tie.digest < void.digest {
        &tie
    } else {
        &void
    };
    for rows in [
        vec![void.clone(), tie.clone()],
        vec![tie.clone(), void.clone()],
    ] {
        assert_eq!(content_of(&rows, "c-1"), Some(smaller));
        assert_eq!(winners(&rows), vec![smaller]);
    }
}

#[test]
fn a_losing_content_of_another_event_does_not_count_for_that_event() {
    // c-1 voids e-1 (earliest) and, racing, voids e-2; v-9 voids e-2 as well
    let first = stored("c-1", 1, "void");
    let mut loser = stored("c-1", 1, "void");
    (loser.event_id, loser.created_ms, loser.digest) = ("e-2".into(), 5, "00".into());
    let mut other = stored("v-9", 1, "void");
    other.event_id = "e-2".into();
    let rows = vec![loser.clone(), other.clone(), first.clone()];
    assert_eq!(winners(&rows), vec![&first, &other]);
    assert_eq!(winners_of(&rows, "bot", "e-2"), vec![&other]);
    assert_eq!(winner(&rows, &loser), Some(&other));
    // so e-2 is not voided for the rules either: it can be corrected
    let mut req = request("v-3", "void", None);
    req.event_id = EventId::new("e-2".to_owned()).unwrap();
    // (the store reads every row of the event's ids, of any event)
    let facts = Facts {
        of_event: vec![loser, first],
        ..committed()
    };
    assert!(decide(&req, &facts, "x", 10).is_ok());
}

#[test]
fn the_data_of_a_stored_content_is_the_one_its_digest_names() {
    let (x, _) = made(
        &request("c-1", "amend", Some(r#"{"n":1}"#)),
        &committed(),
        5,
    );
    let data = vec![r#"{"n":2}"#.to_owned(), r#"{"n":1}"#.to_owned()];
    assert_eq!(data_of(&x, &data), r#"{"n":1}"#);
    let mut legacy = x.clone();
    legacy.digest = String::new();
    assert_eq!(data_of(&legacy, &data), r#"{"n":2}"#);
}
