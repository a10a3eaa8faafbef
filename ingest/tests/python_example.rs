//! The documented Python example (`examples/python/send_events.py`, standard library only)
//! against a real gateway: its batch is accepted, and running it again with the same run id
//! is answered with duplicates, stored once.

mod support;

use std::process::Command;

use support::Harness;

fn run_example(url: &str, key: &str, run_id: &str) -> (bool, serde_json::Value) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python/send_events.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .args([
            "--customer",
            "acme",
            "--agent",
            "py-agent",
            "--run-id",
            run_id,
        ])
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
