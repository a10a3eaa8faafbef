//! Issue 16, finding 12: the HTTP listeners speak plain HTTP and are meant to sit behind a
//! TLS-terminating proxy (docs/SECURITY.md, "TLS"). This runs that deployment: nginx (Debian's
//! `nginx-light`, which scripts/stack.sh installs with the test tools) terminates TLS with a
//! certificate made by the test's own CA and proxies `/v1/` to a real tally-gateway over
//! keep-alive, as the documented configuration does. An agent (curl) that trusts the CA sends
//! a batch over https: it is accepted and stored with its identity; the same request without
//! the CA is refused by the client (the certificate is verified), and a plain-http request to
//! the TLS port never reaches the gateway.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_e2e::certificate;
use tally_ingest::gateway::key_store;
use tally_platform::own_server::{find_binary, free_port, temp_dir, OwnServer};
use tally_platform::testkit::TestEnv;

/// nginx in the foreground with everything under `dir`, terminating TLS on `port` and
/// proxying `/v1/` to `upstream`.
fn start_nginx(dir: &Path, port: u16, upstream: std::net::SocketAddr) -> OwnServer {
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream gateway {{ server {upstream}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate     {d}/server.pem;
    ssl_certificate_key {d}/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size 1m;
    location /v1/ {{
      proxy_pass http://gateway;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = find_binary("nginx").expect(
        "nginx is missing: TALLY_TEST_TOOLS=1 scripts/stack.sh up installs it (nginx-light)",
    );
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx");
    OwnServer {
        child,
        dir: dir.to_owned(),
    }
}

/// curl's exit code, HTTP status and body for a POST of `body` to `url`.
fn curl(url: &str, ca: Option<&Path>, key: &str, body: &str) -> (i32, String, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("authorization: Bearer {key}")])
        .args(["-H", "content-type: application/cloudevents-batch+json"])
        .args(["--data-binary", body]);
    if let Some(ca) = ca {
        c.arg("--cacert").arg(ca);
    }
    let out = c.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, status) = text.rsplit_once('\n').unwrap_or(("", ""));
    (
        out.status.code().unwrap_or(-1),
        status.to_owned(),
        format!("{answer}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_over_https_through_a_terminating_proxy_are_stored() {
    let env = TestEnv::new("gw_behind_tls").await;
    let (gw, running, js) = tally_e2e::start_gateway(&env).await;
    let scope = key_store::scope_from("acme", &[], "e2e").unwrap();
    let (key, record) = key_store::create(&env.db(), scope, "e2e", 0).await.unwrap();
    gw.keys.upsert(record);

    let dir = temp_dir("gw-tls").expect("a directory for nginx and its certificates");
    certificate(&dir, "ca", "tally-test-ca", None, &[]);
    certificate(
        &dir,
        "server",
        "127.0.0.1",
        Some("ca"),
        &[
            "subjectAltName=IP:127.0.0.1",
            "basicConstraints=CA:FALSE",
            "extendedKeyUsage=serverAuth",
        ],
    );
    let port = free_port().unwrap();
    let _nginx = start_nginx(&dir, port, running.addr);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx did not listen; its log: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let now = chrono::Utc::now().to_rfc3339();
    let body = format!(
        r#"[{{"specversion":"1.0","id":"tls-1","source":"bot-1","subject":"acme","type":"llm.tokens","time":"{now}","data":{{"tokens":42,"model":"gpt-4o","kind":"output"}}}}]"#
    );
    let url = format!("https://127.0.0.1:{port}/v1/events");
    // without the CA the client refuses the certificate: nothing is sent
    let (code, _, text) = curl(&url, None, &key, &body);
    assert_eq!(code, 60, "curl must refuse an unknown CA: {text}");
    // plain http to the TLS port never reaches the gateway
    let (_, status, _) = curl(
        &format!("http://127.0.0.1:{port}/v1/events"),
        None,
        &key,
        &body,
    );
    assert_eq!(
        status, "400",
        "nginx answers plain http on its TLS port with 400"
    );
    // with the CA: accepted by the gateway behind the proxy
    let (code, status, answer) = curl(&url, Some(&dir.join("ca.pem")), &key, &body);
    assert_eq!((code, status.as_str()), (0, "200"), "{answer}");
    let json: serde_json::Value = serde_json::from_str(answer.trim()).expect("the gateway's JSON");
    assert_eq!(json["results"][0]["status"], "accepted", "{json}");
    // once, with its identity
    let stream = js.get_stream(&env.nats.stream).await.unwrap();
    let msg = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        msg.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("acme:bot-1:tls-1")
    );
    let mut stream = stream;
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    running.stop().await;
    env.cleanup().await;
}
