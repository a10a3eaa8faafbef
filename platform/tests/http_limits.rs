//! The shared HTTP server under trickling clients (issue 16, finding 9): 70 connections from
//! one address that send their headers and then a body one byte at a time used to take all 64
//! slots, so `/healthz` from anyone else waited for them. Now one address holds at most
//! `PER_PEER_MAX` connections (the rest are closed at once), another address is answered at
//! once, and every trickling body is refused with 408 after `BODY_TIMEOUT`. The server is the
//! one every listener runs ([`http::serve_router`]), with an axum router and the shared
//! extractors.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use tally_platform::http::{self, BODY_TIMEOUT, PER_PEER_MAX};
use tally_platform::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The server with an axum router: `GET /healthz`, `POST /echo` through [`http::Json`].
async fn start_router() -> (SocketAddr, Shutdown) {
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let router = http::Router::new()
        .route(
            "/healthz",
            get(|| async { http::json(StatusCode::OK, &serde_json::json!({"ok": true})) }),
        )
        .route(
            "/echo",
            post(|http::Json(v): http::Json<serde_json::Value>| async move {
                http::json(StatusCode::OK, &v)
            }),
        )
        .layer(axum::Extension(http::BodyLimit(1 << 10)));
    let router = http::with_fallbacks(router);
    let limits = http::ListenerLimits::default();
    tokio::spawn(http::serve_router(
        "test",
        listener,
        router,
        limits,
        shutdown.clone(),
    ));
    (addr, shutdown)
}

/// A connection to `to` from the loopback address `from` (Linux routes all of 127/8 locally).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closed `s` (EOF or reset) within `within`, reading nothing.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn trickling_bodies_neither_hold_nor_last_on_an_axum_router() {
    let (addr, shutdown) = start_router().await;
    trickle(addr, [127, 0, 0, 4], [127, 0, 0, 5]).await;
    // and the router answers what it does not route in the shared shape
    let answer = ask(addr, "GET /nope/").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.ends_with(
            r#"{"code":"not_found","detail":"GET /nope: no such route; see /v1/openapi.json"}"#
        ),
        "{answer}"
    );
    let answer = ask(addr, "DELETE /echo").await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.ends_with(r#"{"code":"method_not_allowed","detail":"DELETE /echo"}"#),
        "{answer}"
    );
    shutdown.cancel();
}

/// The whole answer to `request_line` without a body, on its own connection.
async fn ask(addr: SocketAddr, request_line: &str) -> String {
    let mut s = connect_from([127, 0, 0, 5], addr).await;
    let request = format!("{request_line} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

/// 70 trickling connections from `from`, a probe from `other`: the test of the module doc.
async fn trickle(addr: SocketAddr, from: [u8; 4], other: [u8; 4]) {
    let started = Instant::now();
    let mut tricklers = Vec::new();
    for _ in 0..70 {
        let mut s = connect_from(from, addr).await;
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n[")
            .await
            .unwrap();
        tricklers.push(s);
    }
    // the server accepts them in order: the ones past the address's limit are closed at once
    let mut served = Vec::new();
    let mut refused = 0;
    for mut s in tricklers {
        if closed_within(&mut s, Duration::from_millis(300)).await {
            refused += 1;
        } else {
            served.push(s);
        }
    }
    assert_eq!(served.len(), PER_PEER_MAX, "{refused} refused");
    assert_eq!(refused, 70 - PER_PEER_MAX);

    // another address is answered at once while they trickle
    let probe = Instant::now();
    let mut other = connect_from(other, addr).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), other.read_to_string(&mut answer))
        .await
        .expect("answered while one address trickles")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(probe.elapsed() < Duration::from_secs(2));

    // the trickling bodies are refused with 408 once BODY_TIMEOUT has passed, never before;
    // each gets two bytes every 0.3 s meanwhile (far from its 200)
    let deadline = started + BODY_TIMEOUT + Duration::from_secs(5);
    let mut answers: Vec<Option<String>> = vec![None; served.len()];
    while answers.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "a trickling body still unanswered: {answers:?}"
        );
        for (s, a) in served.iter_mut().zip(answers.iter_mut()) {
            if a.is_some() {
                continue;
            }
            // a write may fail once the server answered and closed: that is the point
            let _ = s.write_all(b"1,").await;
            let mut buf = vec![0u8; 512];
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await {
                *a = Some(String::from_utf8_lossy(&buf[..r.unwrap_or(0)]).into_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let answers: Vec<String> = answers.into_iter().flatten().collect();
    assert!(started.elapsed() >= BODY_TIMEOUT);
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 408"), "{a}");
        assert!(a.contains("\"request_timeout\""), "{a}");
    }
    // and the address has its slots back
    let mut again = connect_from(from, addr).await;
    again
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 7\r\nconnection: close\r\n\r\n[1,2,3]")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), again.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("[1,2,3]"), "{answer}");
}
