//! The documented Python example (`examples/python/send_events.py`, standard library only)
//! against a real gateway, run as docs/INGEST.md writes the command (the snippet marked
//! `<!-- run: ingest/tests/python_example.rs -->`), with the gateway's URL and a key in the
//! environment: its batch is accepted, and running it again with the same run id is answered
//! with duplicates, stored once.

mod support;

use std::process::Command;

use support::Harness;

const MARKER: &str = "<!-- run: ingest/tests/python_example.rs -->";

/// The documented command's words after its environment assignments, e.g. `python3
/// examples/python/send_events.py --customer acme --agent support-bot-7`.
fn documented_command() -> Vec<String> {
    let doc = include_str!("../../docs/INGEST.md");
    assert_eq!(doc.matches(MARKER).count(), 1, "one snippet is run here");
    let after = &doc[doc.find(MARKER).unwrap() + MARKER.len()..];
    let fence = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("the marker stands right before a sh fence");
    let script = &fence[..fence.find("```").expect("the fence closes")];
    let words: Vec<String> = script
        .replace("\\\n", " ")
        .split_whitespace()
        .skip_while(|w| w.contains('='))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        words[..2],
        ["python3", "examples/python/send_events.py"],
        "{script}"
    );
    words
}

fn run_example(url: &str, key: &str, run_id: &str) -> (bool, serde_json::Value) {
    let words = documented_command();
    let out = Command::new(&words[0])
        .args(&words[1..])
        .args(["--run-id", run_id])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("TALLY_GATEWAY_URL", url)
        .env("TALLY_API_KEY", key)
        .output()
        .expect("python3 must be installed to run the Python example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "not JSON: {stdout} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), json)
}

#[tokio::test]
async fn the_python_example_publishes_through_the_gateway_and_retries_are_duplicates() {
    let h = Harness::start("gw_python", |_| {}).await;
    let key = h.key("acme", &[]).await;
    let url = format!("http://{}", h.running.addr);
    let (url2, key2) = (url.clone(), key.clone());
    let (ok, first) = tokio::task::spawn_blocking(move || run_example(&url2, &key2, "py-run-1"))
        .await
        .unwrap();
    assert!(ok, "{first}");
    assert_eq!(first["accepted"], 3, "{first}");
    let (ok, again) = tokio::task::spawn_blocking(move || run_example(&url, &key, "py-run-1"))
        .await
        .unwrap();
    assert!(ok, "{again}");
    assert_eq!(again["duplicates"], 3, "{again}");
    assert_eq!(h.stored().await, 3);
    h.stop().await;
}
