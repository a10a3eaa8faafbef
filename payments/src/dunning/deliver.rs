//! Sending one signed notification over HTTP: `POST` of the JSON body with
//! `Tally-Signature: t=<secs>,v1=<hex hmac of "{t}.{body}">` (the scheme Stripe uses, so
//! receivers verify it the same way) and `Tally-Notification-Id`. Plain `http://` only,
//! bounded by a timeout. Never logs the secret or the signature.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::signature::{self, Secret};

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 0 when no response arrived.
    pub status_code: u16,
    pub delivered: bool,
    pub error: String,
}

/// Posts `body` to `url`, signed with `secret` at `now_secs`.
pub async fn post(
    url: &str,
    notification_id: &str,
    body: &str,
    secret: &Secret,
    now_secs: i64,
    timeout: Duration,
) -> Attempt {
    match tokio::time::timeout(timeout, send(url, notification_id, body, secret, now_secs)).await {
        Ok(Ok(status)) => Attempt {
            status_code: status,
            delivered: (200..300).contains(&status),
            error: if (200..300).contains(&status) {
                String::new()
            } else {
                format!("HTTP {status}")
            },
        },
        Ok(Err(e)) => Attempt {
            status_code: 0,
            delivered: false,
            error: e,
        },
        Err(_) => Attempt {
            status_code: 0,
            delivered: false,
            error: format!("timed out after {} ms", timeout.as_millis()),
        },
    }
}

async fn send(
    url: &str,
    notification_id: &str,
    body: &str,
    secret: &Secret,
    now_secs: i64,
) -> Result<u16, String> {
    let uri: Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("url {url:?}: only http:// is supported"));
    }
    let host = uri.host().ok_or_else(|| format!("url {url:?}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("Tally-Notification-Id", notification_id)
        .header(
            "Tally-Signature",
            signature::header(secret, now_secs, body.as_bytes()),
        )
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    // drain (bounded by the timeout around us) so the receiver sees a complete exchange
    let _ = response.into_body().collect().await;
    Ok(status)
}
