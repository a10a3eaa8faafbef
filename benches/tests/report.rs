//! The one benchmark command end to end: `tally-bench report --quick` against the local stack
//! (own streams and databases) must write a markdown and a JSON report naming all seven
//! scenarios, each with a numeric baseline, figure and ratio. Sizes are tiny (`--quick`), so
//! this checks the harness, never performance.

use std::process::Command;

const SCENARIOS: [&str; 7] = [
    "e2e_throughput",
    "latency",
    "aggregator_cpu",
    "dedup_memory",
    "rater",
    "invoicer",
    "clickhouse_insert",
];

#[test]
fn quick_report_has_all_seven_scenarios_with_numbers() {
    let out = std::env::temp_dir().join(format!("tally-bench-report-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(["report", "--quick", "--out"])
        .arg(&out)
        .status()
        .expect("tally-bench runs");
    assert!(status.success(), "tally-bench report --quick failed");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["quick"], true);
    let scenarios = json["scenarios"].as_array().unwrap();
    let ids: Vec<&str> = scenarios
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, SCENARIOS);
    for s in scenarios {
        let id = s["id"].as_str().unwrap();
        for field in ["/baseline/value", "/ours/value", "/ratio"] {
            let v = s.pointer(field).and_then(|v| v.as_f64());
            assert!(
                v.is_some_and(|v| v.is_finite() && v > 0.0),
                "{id}{field} is {v:?}"
            );
        }
        assert!(s["target"].as_str().is_some_and(|t| !t.is_empty()), "{id}");
        assert!(s["met"].is_boolean() || id == "clickhouse_insert", "{id}");
    }
    let latency = &scenarios[1]["percentiles"];
    for p in [
        "ours p50 ms",
        "ours p99 ms",
        "ours p99.9 ms",
        "baseline p99 ms",
    ] {
        assert!(latency[p].as_f64().is_some_and(|v| v > 0.0), "latency {p}");
    }
    assert!(json["machine"]["nats"].as_str().is_some_and(|v| v != "?"));
    assert!(json["machine"]["clickhouse"]
        .as_str()
        .is_some_and(|v| v != "?"));

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 7, "{md}");
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | # | scenario | unit | baseline | ours | ratio | target | met? |
        assert_eq!(cells[1], (i + 1).to_string());
        for cell in [cells[4], cells[5]] {
            let number = cell.rsplit(": ").next().unwrap().replace(',', "");
            assert!(number.parse::<f64>().is_ok(), "row {}: {cell:?}", i + 1);
        }
        assert!(cells[6].parse::<f64>().is_ok(), "ratio of row {}", i + 1);
        assert!(
            ["met", "**missed**", "no target"].contains(&cells[8]),
            "row {}: {}",
            i + 1,
            cells[8]
        );
    }
    for title in [
        "end-to-end throughput",
        "latency",
        "aggregator CPU",
        "dedup memory",
        "rater",
        "invoicer",
        "ClickHouse insert",
    ] {
        assert!(md.contains(title), "{title} missing from the markdown");
    }
    let _ = std::fs::remove_dir_all(&out);
}
