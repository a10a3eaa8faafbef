//! The generated NATS authorization, on a nats-server of the test's own (never the shared
//! one): an agent user may publish to its customer's usage subjects and get JetStream acks,
//! and cannot publish to another customer's subjects or anywhere else.

use std::time::Duration;

use tally_ingest::nats_auth::{render, users, Names, NatsUser};
use tally_platform::own_server::{start_nats, OwnServer};

/// A nats-server of this test's own and its URL.
struct Server {
    _process: OwnServer,
    url: String,
}

async fn start(users: &[NatsUser]) -> Server {
    let (process, port) = start_nats(&render(
        users,
        &Names {
            prefix: "usage",
            dlq_prefix: "usage_dlq",
            stream: "USAGE",
            spend_root: "tally",
        },
    ))
    .await
    .expect("starting nats-server");
    Server {
        _process: process,
        url: format!("nats://127.0.0.1:{port}"),
    }
}

/// Logs in as `user` with its own reply subjects (`_INBOX.<user>`), as every client must.
async fn login(server: &Server, user: &NatsUser) -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::with_user_and_password(
        user.user.clone(),
        user.password.clone(),
    )
    .custom_inbox_prefix(tally_platform::streams::inbox_prefix(&user.user))
    .connect(&server.url)
    .await
    .unwrap_or_else(|e| panic!("{} cannot log in: {e}", user.user));
    async_nats::jetstream::new(client)
}

async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    id: &str,
) -> Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, "{}".into())
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(2), ack).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no ack within 2 s".into()),
    }
}

#[tokio::test]
async fn an_agent_can_publish_only_to_its_own_customers_subjects() {
    let users = users(&["acme", "globex"]).unwrap();
    let server = start(&users).await;
    let service = login(&server, &users[0]).await;
    service
        .create_stream(async_nats::jetstream::stream::Config {
            name: "USAGE".into(),
            subjects: vec!["usage.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let acme = login(
        &server,
        users.iter().find(|u| u.user == "agent-acme").unwrap(),
    )
    .await;
    assert_eq!(publish(&acme, "usage.acme.bot-1", "a-1").await, Ok(()));
    assert!(
        publish(&acme, "usage.globex.bot-1", "a-2").await.is_err(),
        "acme published as globex"
    );
    assert!(publish(&acme, "usage_dlq.malformed", "a-3").await.is_err());
    let globex = login(
        &server,
        users.iter().find(|u| u.user == "agent-globex").unwrap(),
    )
    .await;
    assert_eq!(publish(&globex, "usage.globex.bot-1", "g-1").await, Ok(()));

    let mut stream = service.get_stream("USAGE").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    for (seq, subject) in [(1, "usage.acme.bot-1"), (2, "usage.globex.bot-1")] {
        assert_eq!(
            stream.get_raw_message(seq).await.unwrap().subject.as_str(),
            subject
        );
    }
    let wrong =
        async_nats::ConnectOptions::with_user_and_password("agent-acme".into(), "wrong".into())
            .connect(&server.url)
            .await;
    assert!(wrong.is_err(), "a wrong password must not log in");
}
