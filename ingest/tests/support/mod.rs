//! Shared by the gateway tests: a gateway on a free port (and its admin API on another) over
//! the test's own stream and database, with an API token of role `key_admin` for the admin
//! API, a minimal HTTP/1.1 client (one keep-alive connection per [`Http`]), and events.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tally_ingest::gateway::{self, auth::Scope, key_store, Gateway, IngestConfig, Running};
use tally_platform::auth::{self, Role};
use tally_platform::openapi;
use tally_platform::shutdown::Shutdown;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;

pub struct Harness {
    pub env: TestEnv,
    pub gw: Arc<Gateway>,
    pub running: Running,
    pub js: async_nats::jetstream::Context,
    /// `Bearer <token>` of role `key_admin` (actor `key-admin`) for the admin API.
    pub admin: String,
}

impl Harness {
    pub async fn start(test: &str, edit: impl FnOnce(&mut IngestConfig)) -> Harness {
        Self::start_mapped(test, edit, |gw| gw).await
    }

    /// Like [`Harness::start`], with `map` applied to the gateway before it serves.
    pub async fn start_mapped(
        test: &str,
        edit: impl FnOnce(&mut IngestConfig),
        map: impl FnOnce(Gateway) -> Gateway,
    ) -> Harness {
        let env = TestEnv::new(test).await;
        let mut cfg = IngestConfig {
            listen_addr: "127.0.0.1:0".into(),
            admin_addr: "127.0.0.1:0".into(),
            ..IngestConfig::default()
        };
        edit(&mut cfg);
        cfg.validate().expect("test config");
        let nats = streams::connect(&env.nats).await.expect("nats");
        let js = async_nats::jetstream::new(nats);
        streams::ensure(&js, &env.nats).await.expect("streams");
        let addr = cfg.listen().expect("addr");
        let admin = token(&env.db(), "key-admin", Role::KeyAdmin).await;
        let gw = Arc::new(map(Gateway::new(
            cfg,
            js.clone(),
            &env.nats.subject_prefix,
            Some(env.db()),
        )));
        let running = gateway::start(gw.clone(), addr, Shutdown::new())
            .await
            .expect("start");
        Harness {
            env,
            gw,
            running,
            js,
            admin: format!("Bearer {admin}"),
        }
    }

    /// A key for `customer` (all agents, or only `agents`), known to the gateway at once.
    pub async fn key(&self, customer: &str, agents: &[&str]) -> String {
        let agents: Vec<String> = agents.iter().map(|a| a.to_string()).collect();
        let scope: Scope = key_store::scope_from(customer, &agents, "test").expect("scope");
        let (token, record) = key_store::create(&self.env.db(), scope, "test", 0)
            .await
            .expect("create key");
        self.gw.keys.upsert(record);
        token
    }

    pub async fn http(&self) -> Http {
        Http::connect(self.running.addr).await
    }

    /// A connection to the admin API's own listener.
    pub async fn admin_http(&self) -> Http {
        let addr = self.running.admin_addr.expect("the admin API listens");
        Http::connect_to(addr, gateway::admin::OPENAPI).await
    }

    /// Number of messages in the test's usage stream.
    pub async fn stored(&self) -> u64 {
        let mut s = self
            .js
            .get_stream(&self.env.nats.stream)
            .await
            .expect("stream");
        s.info().await.expect("info").state.messages
    }

    pub async fn stop(self) {
        self.running.stop().await;
        self.env.cleanup().await;
    }
}

/// An API token of `role` for `actor`, stored in `db`: the bearer token.
pub async fn token(db: &clickhouse::Client, actor: &str, role: Role) -> String {
    auth::store::create(db, actor, role, "test", 0)
        .await
        .expect("token created")
        .0
}

/// One keep-alive HTTP/1.1 connection. Every JSON answer to a route its listener's OpenAPI
/// document describes must fit the document (and so must a JSON request it accepted).
pub struct Http {
    sender: SendRequest<Full<Bytes>>,
    /// The OpenAPI document of the listener it talks to.
    doc: serde_json::Value,
}

pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub json: serde_json::Value,
}

impl Http {
    /// A connection to the public listener.
    pub async fn connect(addr: SocketAddr) -> Http {
        Http::connect_to(addr, gateway::server::OPENAPI_PUBLIC).await
    }

    /// A connection to a listener whose OpenAPI document is `doc`.
    pub async fn connect_to(addr: SocketAddr, doc: &str) -> Http {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let doc = serde_json::from_str(doc).expect("the OpenAPI document is JSON");
        Http { sender, doc }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body: Bytes = body.into();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        // a JSON request as the document describes it (not gzip, not a CloudEvents type)
        let sent = (header("content-type") == Some("application/json")
            && header("content-encoding").is_none())
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten();
        let req = req.body(Full::new(body)).expect("request");
        self.sender.ready().await.expect("connection ready");
        let resp = self.sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        let answered_json = headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if answered_json {
            let fits =
                openapi::check_exchange(&self.doc, method, path, sent.as_ref(), status, &json);
            if let Err(e) = fits {
                panic!("the answer does not fit the OpenAPI document: {e}");
            }
        }
        Answer {
            status,
            headers,
            json,
        }
    }

    /// `POST /v1/events` with `key` and a content type.
    pub async fn events(
        &mut self,
        key: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Answer {
        let auth = format!("Bearer {key}");
        self.send(
            "POST",
            "/v1/events",
            &[("authorization", &auth), ("content-type", content_type)],
            body,
        )
        .await
    }

    pub async fn batch(&mut self, key: &str, events: &[String]) -> Answer {
        let body = format!("[{}]", events.join(","));
        self.events(key, "application/cloudevents-batch+json", body)
            .await
    }
}

/// A valid event for `customer`/`agent` with id `id`.
pub fn event(id: &str, customer: &str, agent: &str) -> String {
    event_with(
        id,
        customer,
        agent,
        r#"{"tokens":12,"model":"gpt-4o","kind":"output"}"#,
    )
}

pub fn event_with(id: &str, customer: &str, agent: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"{agent}","subject":"{customer}","type":"llm.tokens","time":"2026-11-26T21:00:00.123Z","data":{data}}}"#
    )
}

/// The `(status, code, field)` of each result.
pub fn outcomes(a: &Answer) -> Vec<(String, Option<String>, Option<String>)> {
    a.json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().map(str::to_owned);
            (s("status").unwrap_or_default(), s("code"), s("field"))
        })
        .collect()
}
