//! `cargo xtask deps`: what the tests need on a Debian machine, installed idempotently.
//!
//! - Debian packages: checked with `dpkg-query` first, so that a machine that has them all runs
//!   no apt command at all.
//! - The machine's PostgreSQL (127.0.0.1:5432, trust auth) and MariaDB (127.0.0.1:3306, root
//!   without password): started if their port does not answer. They are machine set-up, not
//!   installed here (their authentication is part of that set-up); `RK3S_TEST_POSTGRES` and
//!   `RK3S_TEST_MYSQL` point the tests at other servers, which this command leaves alone.
//! - etcd is not started: tests start their own, on loopback, in a temp dir.
//! - The official Kubernetes Python client (`kubernetes` from PyPI, pinned), in a virtualenv
//!   under the target directory made with Debian's `python3`: the apiserver's Python client
//!   tests run it (`RK3S_PYTHON`, which `cargo xtask test` sets to the venv's interpreter).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd;

/// Debian packages the tests (and, for the node side, the later issues' tests) need, with why.
pub(crate) const PACKAGES: &[(&str, &str)] = &[
    (
        "protobuf-compiler",
        "protoc, for prost-build (etcd-client's generated gRPC code)",
    ),
    (
        "libprotobuf-dev",
        "the well-known .proto files (google/protobuf/descriptor.proto) etcd-client's protos import",
    ),
    (
        "etcd-server",
        "the real etcd the datastore tests run against",
    ),
    (
        "etcd-client",
        "etcdctl, which the etcd-endpoint tests drive",
    ),
    ("sqlite3", "the sqlite3 shell, to look into SQLite stores"),
    (
        "python3-venv",
        "a virtualenv for the Kubernetes Python client the apiserver tests drive",
    ),
    ("curl", "HTTP checks of the apiserver tests"),
    ("kubectl", "the first client of the apiserver tests"),
    (
        "containerd",
        "the container runtime the kubelet drives over CRI",
    ),
    ("runc", "the OCI runtime under containerd"),
    ("iptables", "rules the pod network and the proxy install"),
    ("nftables", "Service routing of rk3s-proxy"),
    (
        "iproute2",
        "ip(8), to set up and check pod network namespaces",
    ),
    ("busybox-static", "the busybox test image is built from it"),
    (
        "systemd",
        "systemd-analyze, which verifies the units in crates/deploy/systemd",
    ),
];

/// How long a database server may take to answer after being started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs the missing packages and starts the database servers if they are down.
pub(crate) fn ensure() -> anyhow::Result<()> {
    println!("== deps: Debian packages");
    ensure_packages()?;
    println!("== deps: database servers");
    ensure_postgres()?;
    ensure_mariadb()?;
    println!("== deps: the Kubernetes Python client");
    ensure_python_client()?;
    Ok(())
}

/// The `kubernetes` package the Python client tests use (pinned: the newest release when the
/// tests were written).
const PYTHON_CLIENT: &str = "kubernetes==37.0.2";

/// The interpreter of the Python client's virtualenv (`<target dir>/python-client`).
pub(crate) fn python_client() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    target.join("python-client").join("bin").join("python")
}

/// Makes the virtualenv and installs the pinned client into it unless it is there already.
fn ensure_python_client() -> anyhow::Result<()> {
    let python = python_client();
    let has_client = || {
        Command::new(&python)
            .args([
                "-c",
                "import kubernetes, sys; sys.exit(kubernetes.__version__ != sys.argv[1])",
            ])
            .arg(PYTHON_CLIENT.trim_start_matches("kubernetes=="))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_client() {
        println!("{PYTHON_CLIENT} present in {}", python.display());
        return Ok(());
    }
    let venv = python
        .parent()
        .and_then(Path::parent)
        .context("the virtualenv's directory")?;
    cmd::run(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(venv),
    )?;
    cmd::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(PYTHON_CLIENT),
    )?;
    if !has_client() {
        bail!(
            "pip installed {PYTHON_CLIENT} into {} but it does not import",
            venv.display()
        );
    }
    Ok(())
}

fn ensure_packages() -> anyhow::Result<()> {
    if !cmd::on_path("dpkg-query") {
        let names: Vec<&str> = PACKAGES.iter().map(|(name, _)| *name).collect();
        bail!(
            "cargo xtask deps installs Debian packages with apt, and this machine has no dpkg; \
             install the equivalents of these by hand: {}",
            names.join(" ")
        );
    }
    let missing = missing_packages();
    if missing.is_empty() {
        println!("all {} packages present", PACKAGES.len());
        return Ok(());
    }
    println!("missing: {}", missing.join(" "));
    for (name, why) in PACKAGES.iter().filter(|(name, _)| missing.contains(name)) {
        println!("  {name}: {why}");
    }
    cmd::run(&mut apt(&["update"])?)?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    cmd::run(&mut apt(&install)?)?;
    let still = missing_packages();
    if !still.is_empty() {
        bail!(
            "apt-get install finished but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !installed(name))
        .collect()
}

/// Whether dpkg says `package` is installed.
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| is_installed_status(&String::from_utf8_lossy(&out.stdout)))
}

/// `dpkg-query -f '${Status}'` prints `install ok installed` for an installed package; a
/// removed one with its configuration left says `deinstall ok config-files`.
fn is_installed_status(status: &str) -> bool {
    status.trim().ends_with(" installed") && status.trim().starts_with("install ")
}

/// `apt-get <args>`, non-interactive, as root.
fn apt(args: &[&str]) -> anyhow::Result<Command> {
    let mut full = vec!["DEBIAN_FRONTEND=noninteractive", "apt-get"];
    full.extend(args);
    privileged("env", &full)
}

/// A command run as root: directly when we are root, through `sudo` otherwise.
fn privileged(program: &str, args: &[&str]) -> anyhow::Result<Command> {
    if is_root()? {
        return Ok(cmd::new(program, args));
    }
    if !cmd::on_path("sudo") {
        bail!(
            "`{program} {}` needs root, and there is no sudo: run as root",
            args.join(" ")
        );
    }
    let mut command = Command::new("sudo");
    command.arg(program).args(args);
    Ok(command)
}

fn is_root() -> anyhow::Result<bool> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("cannot run `id -u`")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn ensure_postgres() -> anyhow::Result<()> {
    if let Some(url) = std::env::var_os("RK3S_TEST_POSTGRES") {
        println!(
            "postgres: RK3S_TEST_POSTGRES={} (not managed here)",
            url.to_string_lossy()
        );
        return Ok(());
    }
    if answers(5432) {
        println!("postgres: 127.0.0.1:5432 answers");
        return Ok(());
    }
    let clusters = Path::new("/etc/postgresql");
    let version = newest_cluster_version(clusters).with_context(|| {
        format!(
            "PostgreSQL is not set up ({} has no cluster): the integration tests need a server \
             on 127.0.0.1:5432 with trust authentication, or RK3S_TEST_POSTGRES=<admin URL>",
            clusters.display()
        )
    })?;
    cmd::run(&mut privileged(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "start"],
    )?)?;
    wait_for("postgres", 5432)
}

fn ensure_mariadb() -> anyhow::Result<()> {
    if let Some(url) = std::env::var_os("RK3S_TEST_MYSQL") {
        println!(
            "mariadb: RK3S_TEST_MYSQL={} (not managed here)",
            url.to_string_lossy()
        );
        return Ok(());
    }
    if answers(3306) {
        println!("mariadb: 127.0.0.1:3306 answers");
        return Ok(());
    }
    let daemon = "/usr/sbin/mariadbd";
    if !Path::new(daemon).exists() {
        bail!(
            "MariaDB is not installed ({daemon} is missing): the integration tests need a server \
             on 127.0.0.1:3306 (root, no password), or RK3S_TEST_MYSQL=<admin URL>"
        );
    }
    // Its socket directory lives on /run, which a reboot empties.
    cmd::run(&mut privileged(
        "install",
        &["-d", "-o", "mysql", "-g", "mysql", "/run/mysqld"],
    )?)?;
    cmd::run(&mut privileged(
        "start-stop-daemon",
        &["--start", "--oknodo", "--background", "--exec", daemon],
    )?)?;
    wait_for("mariadb", 3306)
}

/// The highest-numbered PostgreSQL version under `/etc/postgresql` with a `main` cluster.
fn newest_cluster_version(dir: &Path) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("main").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .max_by_key(|v| version_key(v))
}

/// `"9.6"` < `"15"`: compare versions by their numeric parts.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn wait_for(name: &str, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if answers(port) {
            println!("{name}: 127.0.0.1:{port} answers");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("{name} was started but 127.0.0.1:{port} did not answer within {START_TIMEOUT:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lines() {
        assert!(is_installed_status("install ok installed"));
        assert!(!is_installed_status("deinstall ok config-files"));
        assert!(!is_installed_status("install ok half-configured"));
        assert!(!is_installed_status(""));
    }

    #[test]
    fn newest_postgres_version_wins() {
        let dir = tempdir();
        for v in ["9.6", "15", "13"] {
            std::fs::create_dir_all(dir.join(v).join("main")).expect("create cluster dir");
        }
        std::fs::create_dir_all(dir.join("16")).expect("a version without a main cluster");
        assert_eq!(newest_cluster_version(&dir).as_deref(), Some("15"));
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(newest_cluster_version(&dir), None);
    }

    #[test]
    fn package_list_has_no_duplicates() {
        let mut names: Vec<&str> = PACKAGES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PACKAGES.len());
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-deps-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }
}
