//! Property tests of the gateway's decoder on hostile input: no bytes, batch or event make it
//! panic; every result is either events or a refusal with a stable code. Each property runs
//! `PROPTEST_CASES` cases (default 2000); a panic or a failed property fails the test with the
//! minimal input, so "0 crashes" is the test passing. Counts print with `--nocapture`.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use tally_ingest::gateway::decode::{check_shape, decode_event, gunzip, split_batch, Limits};

fn limits() -> Limits {
    Limits {
        body_max_bytes: 1 << 16,
        event_max_bytes: 2048,
        batch_max_events: 8,
        depth_max: 4,
        string_max_bytes: 64,
    }
}

/// JSON-ish text: fragments of real events, brackets, quotes, escapes and noise.
fn jsonish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just(r#""specversion":"1.0""#.to_owned()),
        Just(r#""id":"e1""#.to_owned()),
        Just(r#""subject":"acme","source":"bot""#.to_owned()),
        Just(r#""type":"llm.tokens","time":"2026-11-26T21:00:00Z""#.to_owned()),
        Just(r#""data":{"tokens":5}"#.to_owned()),
        "[a-z0-9 .\\-]{0,8}",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Runs `property` on `cases()` inputs, panicking with the minimal failing input if any case
/// fails or panics; returns the executions.
fn check<S: Strategy>(strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>) -> u64
where
    S::Value: std::fmt::Debug,
{
    let executions = AtomicU64::new(0);
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest::test_runner::TestRunner::new(config)
        .run(&strategy, |v| {
            executions.fetch_add(1, Ordering::Relaxed);
            property(v)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    executions.load(Ordering::Relaxed)
}

#[test]
fn the_batch_parser_never_panics_and_respects_its_bound() {
    let runs = check(jsonish(), |text| {
        let body = format!("[{text}]");
        if let Ok(events) = split_batch(body.as_bytes(), limits().batch_max_events) {
            prop_assert!(!events.is_empty() && events.len() <= limits().batch_max_events);
            for e in events {
                let _ = decode_event(e.get().as_bytes(), &limits());
            }
        }
        let _ = split_batch(text.as_bytes(), limits().batch_max_events);
        Ok(())
    });
    println!("batch parser: {runs} executions, 0 crashes");
}

#[test]
fn the_event_decoder_never_panics_on_any_bytes() {
    let runs = check(proptest::collection::vec(any::<u8>(), 0..600), |bytes| {
        let _ = check_shape(&bytes, 4, 64);
        let _ = decode_event(&bytes, &limits());
        let _ = gunzip(&bytes, 4096);
        Ok(())
    });
    println!("event decoder (raw bytes): {runs} executions, 0 crashes");
}

#[test]
fn an_accepted_event_respected_every_limit() {
    let runs = check(jsonish(), |text| {
        let body = format!("{{{text}}}");
        if decode_event(body.as_bytes(), &limits()).is_ok() {
            prop_assert!(body.len() <= limits().event_max_bytes);
            prop_assert!(check_shape(body.as_bytes(), 4, 64).is_ok());
        }
        Ok(())
    });
    println!("event decoder (JSON-ish): {runs} executions, 0 crashes");
}
