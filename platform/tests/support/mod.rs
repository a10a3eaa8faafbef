//! Shared by the separation-of-duties tests: a ClickHouse 18.16 server of the test's own,
//! configured with the users.xml that `tally-access users-xml` renders, and clients that log
//! in as one service's user.

#![allow(dead_code)] // each test file uses a part

use std::process::{Command, Stdio};
use std::time::Duration;

use tally_platform::access::{users_xml, Service};
use tally_platform::own_server::{find_binary, free_port, temp_dir, OwnServer};

/// Every service with the password `pw-<user>`.
pub fn users() -> Vec<(Service, String)> {
    Service::ALL.iter().map(|s| (*s, password(*s))).collect()
}

/// The test password of `service`.
pub fn password(service: Service) -> String {
    format!("pw-{}", service.user())
}

/// A clickhouse-server of this test's own and its HTTP URL.
pub struct Server {
    _process: OwnServer,
    pub url: String,
}

pub async fn start(users: &[(Service, String)]) -> Server {
    let (http, tcp) = (free_port().unwrap(), free_port().unwrap());
    let dir = temp_dir("ch-access").unwrap();
    for sub in ["data", "tmp", "user_files", "log"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let d = dir.display();
    let config = format!(
        r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/err.log</errorlog></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <mlock_executable>false</mlock_executable>
</yandex>
"#
    );
    std::fs::write(dir.join("config.xml"), config).unwrap();
    std::fs::write(dir.join("users.xml"), users_xml("tally", users)).unwrap();
    let binary = find_binary("clickhouse-server")
        .expect("clickhouse-server is missing: run scripts/stack.sh up (it installs it)");
    let child = Command::new(binary)
        .arg(format!("--config-file={d}/config.xml"))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting clickhouse-server");
    let server = Server {
        _process: OwnServer { child, dir },
        url: format!("http://127.0.0.1:{http}"),
    };
    for _ in 0..300 {
        let probe = clickhouse::Client::default().with_url(&server.url);
        if probe.query("SELECT 1").execute().await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("clickhouse-server did not start on port {http}");
}

pub fn as_user(server: &Server, user: &str, password: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(&server.url)
        .with_user(user)
        .with_password(password)
        .with_database("tally")
        .with_validation(false)
}

pub async fn run(c: &clickhouse::Client, sql: &str) -> Result<(), String> {
    c.query(sql).execute().await.map_err(|e| e.to_string())
}

/// A client logged in as `service` with its test password.
pub fn service(server: &Server, service: Service) -> clickhouse::Client {
    as_user(server, service.user(), &password(service))
}
