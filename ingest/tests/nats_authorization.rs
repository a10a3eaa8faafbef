//! The generated NATS authorization, on a nats-server of the test's own (never the shared
//! one): an agent user may publish to its customer's usage subjects and get JetStream acks,
//! and cannot publish to another customer's subjects or anywhere else.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tally_ingest::nats_auth::{render, users, NatsUser};

/// The nats-server binary: Debian's (`scripts/stack.sh up` installs it) or one on `PATH`.
fn nats_server() -> PathBuf {
    let candidates = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .find(|p| p.exists())
        .expect("nats-server is missing: run scripts/stack.sh up (it installs it)")
}

/// A nats-server on a free port with its data in a temporary directory; killed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(users: &[NatsUser]) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "tally-nats-auth-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(dir.join("js")).unwrap();
    std::fs::write(dir.join("nats-auth.conf"), render(users, "usage")).unwrap();
    let port = free_port();
    let main = format!(
        "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\ninclude \"nats-auth.conf\"\n",
        dir.join("js").display()
    );
    std::fs::write(dir.join("nats.conf"), main).unwrap();
    let child = Command::new(nats_server())
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nats-server");
    let server = Server {
        child,
        dir,
        url: format!("nats://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not start on port {port}");
}

async fn login(server: &Server, user: &NatsUser) -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::with_user_and_password(
        user.user.clone(),
        user.password.clone(),
    )
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
    let users = users("tally", &["acme", "globex"]).unwrap();
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
    let acme = login(&server, &users[1]).await;
    assert_eq!(publish(&acme, "usage.acme.bot-1", "a-1").await, Ok(()));
    assert!(
        publish(&acme, "usage.globex.bot-1", "a-2").await.is_err(),
        "acme published as globex"
    );
    assert!(publish(&acme, "usage_dlq.malformed", "a-3").await.is_err());
    let globex = login(&server, &users[2]).await;
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
