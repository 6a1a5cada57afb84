//! The same `etcdctl` session against a real etcd and against `rk3s-datastore` over SQLite,
//! each started empty: the outputs must be the same, once the IDs that differ by nature
//! (cluster, member, lease) are normalized.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rk3s_datastore::testing::{EtcdProcess, free_port};

/// Long enough for anything on a loaded machine; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(30);

/// `rk3s-datastore` on a fresh SQLite file, killed on drop.
struct Rk3s {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl Rk3s {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port().expect("free port");
        let log = std::fs::File::create(dir.path().join("rk3s.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rk3s-datastore"))
            .arg(format!("--listen-address=127.0.0.1:{port}"))
            .arg(format!("--data-dir={}", dir.path().display()))
            .arg(format!(
                "--datastore-endpoint=sqlite://{}/state.db",
                dir.path().display()
            ))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start rk3s-datastore");
        let mut rk3s = Rk3s {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = rk3s.child.try_wait() {
                panic!("rk3s-datastore exited with {status}: {}", rk3s.log());
            }
            assert!(
                Instant::now() < deadline,
                "rk3s-datastore not listening: {}",
                rk3s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        rk3s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rk3s.log")).unwrap_or_default()
    }
}

impl Drop for Rk3s {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a process that should exit by itself; kills it (and fails) after `patience`.
fn kill_after(mut child: Child, patience: Duration) -> std::process::Output {
    let deadline = Instant::now() + patience;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {patience:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Runs etcdctl; returns the exit code, stdout, and stderr without etcdctl's JSON log lines
/// (they carry timestamps and client IDs).
fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl (install Debian's etcd-client)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write etcdctl stdin");
    }
    let out = child.wait_with_output().expect("etcdctl output");
    let stderr: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "$ etcdctl {}\nrc={}\n{}{}",
        args.join(" "),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        stderr
    )
}

/// Replaces the number after each `"<field>":` with `N`.
fn mask_json_numbers(text: &str, fields: &[&str]) -> String {
    let mut text = text.to_string();
    for field in fields {
        let pat = format!("\"{field}\":");
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(i) = rest.find(&pat) {
            out.push_str(&rest[..i + pat.len()]);
            rest = &rest[i + pat.len()..];
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits > 0 {
                out.push('N');
            }
            rest = &rest[digits..];
        }
        out.push_str(rest);
        text = out;
    }
    text
}

/// Replaces `remaining(<n>s)`: the seconds left depend on when the command ran.
fn mask_remaining(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("remaining(") {
        out.push_str(&rest[..i + "remaining(".len()]);
        rest = &rest[i + "remaining(".len()..];
        let end = rest.find(')').unwrap_or(rest.len());
        out.push('N');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Sorts the keys of `attached keys([..])`: etcd lists them in no particular order.
fn sort_attached_keys(text: &str) -> String {
    const OPEN: &str = "attached keys([";
    let Some(start) = text.find(OPEN).map(|i| i + OPEN.len()) else {
        return text.to_string();
    };
    let Some(len) = text[start..].find("])") else {
        return text.to_string();
    };
    let mut keys: Vec<&str> = text[start..start + len].split(' ').collect();
    keys.sort_unstable();
    format!(
        "{}{}{}",
        &text[..start],
        keys.join(" "),
        &text[start + len..]
    )
}

/// The lease ID (hex) in `lease <id> granted with TTL(..)`.
fn lease_id(grant: &str) -> String {
    grant
        .lines()
        .find_map(|l| {
            l.strip_prefix("lease ")
                .and_then(|l| l.split_whitespace().next())
        })
        .unwrap_or_else(|| panic!("no lease granted in {grant:?}"))
        .to_string()
}

/// Runs `etcdctl watch` and returns its first `lines` lines of output, then kills it. `during`
/// runs once the watch has printed `ready_after` lines.
fn watch(
    endpoint: &str,
    args: &[&str],
    ready_after: usize,
    lines: usize,
    during: impl FnOnce(),
) -> String {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("watch")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run etcdctl watch");
    let stdout = child.stdout.take().expect("watch stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let mut during = Some(during);
    while seen.len() < lines {
        if seen.len() == ready_after
            && let Some(f) = during.take()
        {
            f();
        }
        match rx.recv_timeout(PATIENCE) {
            Ok(line) => seen.push(line),
            Err(err) => panic!("etcdctl watch {args:?} gave only {seen:?}: {err}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    format!("$ etcdctl watch {}\n{}\n", args.join(" "), seen.join("\n"))
}

/// The whole session; returns its normalized transcript, one entry per command.
fn session(ep: &str) -> Vec<String> {
    let mut t = Vec::new();
    let mut run = |args: &[&str]| t.push(etcdctl(ep, args, None));
    run(&["put", "foo", "bar"]); // 2
    run(&["put", "foo", "baz", "--prev-kv"]); // 3
    run(&["put", "dir/a", "1"]); // 4
    run(&["put", "dir/b", "2"]); // 5
    run(&["put", "dir/c", "3"]); // 6
    run(&["get", "foo"]);
    run(&["get", "foo", "-w", "json"]);
    run(&["get", "missing"]);
    run(&["get", "dir/", "--prefix"]);
    run(&["get", "dir/", "--prefix", "--keys-only"]);
    run(&["get", "dir/", "--prefix", "--limit", "2", "-w", "json"]);
    run(&[
        "get",
        "dir/",
        "--prefix",
        "--sort-by=MODIFY",
        "--order=DESCEND",
    ]);
    run(&["get", "dir/", "--prefix", "--rev", "5", "-w", "json"]);
    run(&["get", "dir/a", "dir/c"]);
    run(&["get", "foo", "--rev", "2"]);
    run(&["get", "", "--from-key", "--keys-only"]);
    run(&["put", "", "empty-key"]);

    // Transactions from stdin: compares, blank line, success ops, blank line, failure ops.
    let txn = |input: &str, json: bool| {
        let args: &[&str] = if json {
            &["txn", "-w", "json"]
        } else {
            &["txn"]
        };
        let mut out = etcdctl(ep, args, Some(input));
        out.push_str(&format!("(stdin: {input:?})\n"));
        out
    };
    t.push(txn(
        "mod(\"foo\") = \"3\"\n\nput foo new\nget foo\n\nget dir/a\n\n",
        false,
    )); // 7
    t.push(txn(
        "mod(\"foo\") = \"3\"\n\nput foo newer\n\nget foo\n\n",
        false,
    ));
    t.push(txn(
        "value(\"foo\") = \"new\"\nversion(\"foo\") > \"2\"\ncreate(\"dir/a\") < \"5\"\n\nput foo v2\ndel dir/c\n\nget dir/c\n\n",
        true,
    )); // 8
    t.push(txn("mod(\"nope\") = \"0\"\n\nput nope created\n\n\n", true)); // 9
    t.push(txn("value(\"foo\") != \"v2\"\n\n\nget foo\n\n", true));

    // Leases.
    let grant = etcdctl(ep, &["lease", "grant", "600"], None);
    let id = lease_id(&grant);
    let mut leased = vec![grant];
    leased.push(etcdctl(
        ep,
        &["put", "leased/a", "1", &format!("--lease={id}")],
        None,
    )); // 10
    leased.push(etcdctl(
        ep,
        &["put", "leased/b", "2", &format!("--lease={id}")],
        None,
    )); // 11
    leased.push(etcdctl(ep, &["get", "leased/a", "-w", "json"], None));
    leased.push(etcdctl(ep, &["lease", "timetolive", &id, "--keys"], None));
    leased.push(etcdctl(ep, &["lease", "keep-alive", "--once", &id], None));
    leased.push(etcdctl(ep, &["lease", "list"], None));
    leased.push(etcdctl(ep, &["lease", "revoke", &id], None)); // 12
    leased.push(etcdctl(ep, &["get", "leased/", "--prefix"], None));
    leased.push(etcdctl(ep, &["lease", "timetolive", &id], None));
    leased.push(etcdctl(
        ep,
        &["put", "leased/c", "3", &format!("--lease={id}")],
        None,
    ));
    let lease_json = mask_json_numbers(&leased.join(""), &["lease"]);
    t.push(sort_attached_keys(&mask_remaining(&lease_json)).replace(&id, "<lease>"));

    let mut run = |args: &[&str]| t.push(etcdctl(ep, args, None));
    run(&["del", "dir/", "--prefix"]); // 13
    run(&["del", "dir/", "--prefix"]);
    run(&["del", "foo", "--prev-kv"]); // 14
    run(&["get", "", "--prefix", "-w", "json"]);

    // Watch: history from a revision with previous values, then a live change.
    run(&["put", "w/a", "1"]); // 15
    run(&["put", "w/a", "2"]); // 16
    run(&["put", "w/b", "1"]); // 17
    run(&["del", "w/a"]); // 18
    // Four events of history (3 + 5 + 3 + 5 lines with previous values), then a live PUT.
    t.push(watch(
        ep,
        &["--prefix", "w/", "--rev", "15", "--prev-kv"],
        16,
        19,
        || {
            etcdctl(ep, &["put", "w/c", "live"], None); // 19
        },
    ));
    t.push(watch(ep, &["w/b", "--rev", "16"], 0, 3, || {}));

    // Compaction: old revisions become unreadable, the same way.
    let mut run = |args: &[&str]| t.push(etcdctl(ep, args, None));
    run(&["compaction", "17"]);
    run(&["get", "w/b", "--rev", "17"]);
    run(&["get", "w/b", "--rev", "16"]);
    run(&["get", "w/b", "--rev", "1000"]);
    run(&["compaction", "16"]);
    // A watch from a compacted revision: etcdctl reports it and exits by itself.
    t.push(etcdctl(
        ep,
        &["watch", "w/", "--prefix", "--rev", "10"],
        None,
    ));
    t.push(etcdctl(ep, &["get", "", "--prefix", "--keys-only"], None));
    t.push(etcdctl(ep, &["put", "w/b", "--ignore-value"], None));
    t.push(etcdctl(ep, &["put", "absent", "--ignore-value"], None));
    t.push(etcdctl(ep, &["get", "w/b", "-w", "json"], None));

    t.into_iter()
        .map(|out| mask_json_numbers(&out, &["cluster_id", "member_id", "raft_term", "ID"]))
        .collect()
}

#[test]
fn etcdctl_sees_the_same_as_with_etcd() {
    let etcd = EtcdProcess::start().expect("start etcd (install Debian's etcd-server)");
    let expected = session(&etcd.endpoint);
    drop(etcd);

    let rk3s = Rk3s::start();
    let actual = session(&rk3s.endpoint);
    if std::env::var_os("RK3S_ETCDCTL_TRANSCRIPT").is_some() {
        eprintln!("{}", actual.join("\n"));
    }
    assert_eq!(expected.len(), actual.len());
    for (want, got) in expected.iter().zip(&actual) {
        assert_eq!(
            got,
            want,
            "\n--- etcd:\n{want}\n--- rk3s:\n{got}\n--- rk3s log:\n{}",
            rk3s.log()
        );
    }
}

#[test]
fn etcdctl_endpoint_status_health_and_members() {
    let rk3s = Rk3s::start();
    let ep = rk3s.endpoint.as_str();
    etcdctl(ep, &["put", "a", "1"], None);

    let status = etcdctl(ep, &["endpoint", "status", "-w", "json"], None);
    assert!(status.contains("rc=0\n"), "{status}");
    for field in [
        "\"version\":\"3.5",
        "\"dbSize\":",
        "\"leader\":",
        "\"raftIndex\":2",
        "\"revision\":2",
    ] {
        assert!(status.contains(field), "{field} missing in {status}");
    }
    let table = etcdctl(ep, &["endpoint", "status", "-w", "table"], None);
    assert!(table.contains("rc=0\n") && table.contains(ep), "{table}");

    let health = etcdctl(ep, &["endpoint", "health"], None);
    assert!(
        health.contains("rc=0\n") && health.contains("is healthy"),
        "{health}"
    );

    let members = etcdctl(ep, &["member", "list"], None);
    assert!(
        members.contains("rc=0\n") && members.contains(&format!("rk3s, , {ep}")),
        "{members}"
    );

    // What the endpoint does not do is refused with a gRPC error, not faked.
    let defrag = etcdctl(ep, &["defrag"], None);
    assert!(
        defrag.contains("rc=1\n") && defrag.contains("code = Unimplemented"),
        "{defrag}"
    );
    let snapshot_path = rk3s.dir.path().join("snap.db");
    let snapshot = etcdctl(
        ep,
        &["snapshot", "save", &snapshot_path.display().to_string()],
        None,
    );
    assert!(
        !snapshot.contains("rc=0\n") && snapshot.contains("Unimplemented"),
        "{snapshot}"
    );
    let add = etcdctl(
        ep,
        &["member", "add", "x", "--peer-urls=http://127.0.0.1:1"],
        None,
    );
    assert!(
        !add.contains("rc=0\n") && add.contains("Unimplemented"),
        "{add}"
    );
}

#[test]
fn binary_names_what_is_wrong_with_its_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = format!("--data-dir={}", dir.path().display());
    let config = dir.path().join("rk3s.yaml");
    std::fs::write(
        &config,
        "listen-address: 127.0.0.1:0\ndatastore-endpiont: sqlite:///x.db\n",
    )
    .expect("write config");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        // Each case fails before serving; `kill_after` only ends a bug.
        let child = Command::new(env!("CARGO_BIN_EXE_rk3s-datastore"))
            .arg(&data_dir)
            .args(args)
            .env_remove("RK3S_DATASTORE_ENDPOINT")
            .env_remove("K3S_DATASTORE_ENDPOINT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rk3s-datastore");
        let out = kill_after(child, PATIENCE);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let config_arg = format!("--config={}", config.display());
    let (code, err) = run(&[&config_arg], &[]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("datastore-endpiont") && err.contains(&config.display().to_string()),
        "{err}"
    );

    // The environment is below the flags: a bad endpoint from the environment is named...
    let (code, err) = run(
        &["--listen-address=127.0.0.1:0"],
        &[("RK3S_DATASTORE_ENDPOINT", "redis://u:secret@h/0")],
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains("redis://u:***@h/0") && !err.contains("secret"),
        "{err}"
    );
    // ...and wins over the file.
    let file2 = dir.path().join("endpoint.yaml");
    std::fs::write(&file2, "datastore-endpoint: bogus://file\n").expect("write config");
    let (code, err) = run(
        &[
            &format!("--config={}", file2.display()),
            "--listen-address=127.0.0.1:0",
        ],
        &[("RK3S_DATASTORE_ENDPOINT", "nope://environment")],
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains("nope://environment") && !err.contains("bogus://file"),
        "{err}"
    );
    // K3s' variable is understood too.
    let (code, err) = run(
        &["--listen-address=127.0.0.1:0"],
        &[("K3S_DATASTORE_ENDPOINT", "nope://x")],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("nope://x"), "{err}");

    // An unreachable datastore is an error naming it.
    let (code, err) = run(
        &[
            "--listen-address=127.0.0.1:0",
            "--datastore-endpoint=postgres://rk3s@127.0.0.1:1/db",
        ],
        &[],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("postgres://rk3s@127.0.0.1:1/db"), "{err}");

    // A listen address in use is named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, err) = run(&[&format!("--listen-address={addr}")], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains(&addr), "{err}");
}

#[test]
fn binary_flags_win_over_environment_and_file_and_sigterm_stops_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().expect("free port");
    let config = dir.path().join("rk3s.yaml");
    std::fs::write(
        &config,
        format!("listen-address: 127.0.0.1:{port}\ndatastore-endpoint: bogus://file\n"),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rk3s-datastore"))
        .arg(format!("--config={}", config.display()))
        .arg(format!(
            "--datastore-endpoint=sqlite://{}/state.db",
            dir.path().display()
        ))
        .env("RK3S_DATASTORE_ENDPOINT", "bogus://environment")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rk3s-datastore");
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            panic!(
                "exited with {status}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "not listening on the config file's address"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ep = format!("http://127.0.0.1:{port}");
    assert!(etcdctl(&ep, &["put", "k", "v"], None).contains("rc=0\nOK"));

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let out = child.wait_with_output().expect("rk3s-datastore exits");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit status {:?}: {log}", out.status);
    assert!(
        log.contains("serving the etcd v3 API") && log.contains(&format!("127.0.0.1:{port}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("sqlite://{}/state.db", dir.path().display())),
        "{log}"
    );
}
