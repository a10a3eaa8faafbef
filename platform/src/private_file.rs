//! Writing generated credentials (passwords, NATS and ClickHouse user files) readable by
//! the owner only. It never logs what it writes.

/// Writes `text` to `path` readable by the owner only (0600 on Unix): generated credentials.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(text.as_bytes())
}
