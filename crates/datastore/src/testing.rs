//! Helpers for tests and benchmarks that need real database servers: a throwaway etcd on
//! loopback, and fresh databases on the machine's Postgres and MariaDB.
//!
//! Everything here talks to loopback only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Postgres server used by tests unless `RK3S_TEST_POSTGRES` says otherwise (an admin URL).
pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// MariaDB/MySQL server used by tests unless `RK3S_TEST_MYSQL` says otherwise (an admin URL).
pub const DEFAULT_MYSQL: &str = "mysql://root@127.0.0.1:3306/test";

/// A real etcd (Debian `etcd-server`) in a temporary directory, on free loopback ports. Killed
/// and removed on drop.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Child,
    dir: PathBuf,
    /// The client URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

/// Why a test server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    #[error("cannot start {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    NotReady(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestServerError {
    let what = what.into();
    move |source| TestServerError::Io { what, source }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server the caller starts
/// later. It is chosen at random below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), where neither the outgoing connections nor the
/// `bind(0)`s of tests running in parallel can take it before the server binds it (a port
/// the kernel hands out can be handed out again in that window); only another `free_port`
/// drawing the same number could, one chance in thousands.
pub fn free_port() -> std::io::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(12_000).max(10_000);
    if ephemeral_low > low {
        for _ in 0..64 {
            let port = rand::random_range(low..ephemeral_low);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdProcess {
    /// Starts `etcd` (from `$RK3S_ETCD_BIN` or `PATH`) and waits until it answers.
    pub fn start() -> Result<Self, TestServerError> {
        let bin = std::env::var("RK3S_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string());
        let dir = std::env::temp_dir().join(format!(
            "rk3s-etcd-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("etcd dir {}", dir.display())))?;
        let client_port = free_port().map_err(io_err("a free port"))?;
        let peer_port = free_port().map_err(io_err("a free port"))?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log"))
            .map_err(io_err(format!("etcd log in {}", dir.display())))?;
        let child = Command::new(&bin)
            .arg("--name=rk3s-test")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=rk3s-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--log-level=error")
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io_err(format!("{bin} (install Debian's etcd-server)")))?;
        let mut etcd = EtcdProcess {
            child,
            dir,
            endpoint: client,
        };
        etcd.wait_ready(client_port)?;
        Ok(etcd)
    }

    fn wait_ready(&mut self, port: u16) -> Result<(), TestServerError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                return Err(TestServerError::NotReady(format!(
                    "etcd exited with {status}: {log}"
                )));
            }
            // etcd answers /health once it has a leader.
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
                let mut body = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut body).is_ok()
                    && body.contains("\"true\"")
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(TestServerError::NotReady(
            "etcd did not become healthy within 30s".into(),
        ))
    }

    /// The etcd data directory's parent (logs live there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A name for a throwaway database: `rk3s_<tag>_<pid>_<random>`.
pub fn unique_db_name(tag: &str) -> String {
    format!(
        "rk3s_{tag}_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A Postgres endpoint for a database that does not exist yet (the backend creates it), on
/// the server of `$RK3S_TEST_POSTGRES` or [`DEFAULT_POSTGRES`].
pub fn postgres_endpoint(tag: &str) -> String {
    let admin = std::env::var("RK3S_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.into());
    replace_db(&admin, &unique_db_name(tag))
}

/// A MySQL endpoint for a database that does not exist yet (the backend creates it), on the
/// server of `$RK3S_TEST_MYSQL` or [`DEFAULT_MYSQL`].
pub fn mysql_endpoint(tag: &str) -> String {
    let admin = std::env::var("RK3S_TEST_MYSQL").unwrap_or_else(|_| DEFAULT_MYSQL.into());
    replace_db(&admin, &unique_db_name(tag))
}

fn replace_db(url: &str, db: &str) -> String {
    let base = match url.rsplit_once('/') {
        Some((base, _))
            if base.contains("://") && base.split("://").nth(1).is_some_and(|h| !h.is_empty()) =>
        {
            base
        }
        _ => url,
    };
    format!("{base}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable_and_outside_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("port range")
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("low end");
        for _ in 0..20 {
            let port = free_port().expect("free port");
            assert!(port < low, "{port} is in the ephemeral range from {low}");
            TcpListener::bind(("127.0.0.1", port)).expect("bindable");
        }
    }

    #[test]
    fn replace_db_swaps_the_path() {
        assert_eq!(
            replace_db("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            replace_db("mysql://root@127.0.0.1:3306/test", "y"),
            "mysql://root@127.0.0.1:3306/y"
        );
    }
}
