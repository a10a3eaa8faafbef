//! Servers a test starts for itself (a nats-server or clickhouse-server with a special
//! configuration), never the shared ones: finding the binary, free ports, and a guard that
//! kills the process and removes its data directory on drop.

use std::path::PathBuf;
use std::process::Child;

/// A server process and its temporary directory; both go away on drop.
pub struct OwnServer {
    pub child: Child,
    pub dir: PathBuf,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now (the OS picks it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `name` in `/usr/sbin`, `/usr/bin` (where Debian installs the servers) or on `PATH`. For
/// `nats-server`, `TALLY_TEST_NATS_SERVER` names another binary when set: CI runs the NATS
/// tests a second time against a current release (`scripts/test-nats.sh`).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name == "nats-server" {
        if let Some(path) = std::env::var_os("TALLY_TEST_NATS_SERVER").map(PathBuf::from) {
            return path.exists().then_some(path);
        }
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .chain(on_path)
        .find(|p| p.exists())
}

/// A fresh temporary directory named after `tag`, this process and a free port number.
pub fn temp_dir(tag: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "tally-{tag}-{}-{}",
        std::process::id(),
        free_port()?
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// JetStream's file storage limit of the servers the tests start. Without one, nats-server takes
/// 75 % of the disk space free at its start and refuses a stream whose `max_bytes` (8 GiB by
/// default) does not fit: a CI machine with little free disk failed so. `max_bytes` is a limit,
/// not space taken; scripts/lib/servers.sh sets the same for the stacks' servers.
pub const TEST_MAX_FILE_STORE: &str = "1T";

/// Starts a nats-server with JetStream on a free port, with `extra` (for example a generated
/// `authorization` block) in its configuration; returns once it accepts connections.
pub async fn start_nats(extra: &str) -> std::io::Result<(OwnServer, u16)> {
    let dir = temp_dir("nats")?;
    let port = free_port()?;
    let conf = format!(
        "listen: \"127.0.0.1:{port}\"\n\
         jetstream {{ store_dir: \"{}\", max_file_store: {TEST_MAX_FILE_STORE} }}\n{extra}\n",
        dir.join("js").display()
    );
    std::fs::write(dir.join("nats.conf"), conf)?;
    let binary = find_binary("nats-server").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "nats-server is missing: run scripts/stack.sh up (it installs it)",
        )
    })?;
    let child = std::process::Command::new(binary)
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let server = OwnServer { child, dir };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((server, port));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("nats-server did not start on port {port}"),
    ))
}
