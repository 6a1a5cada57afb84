//! The process lifecycle of `rk3s server` (the real binary) as a service manager sees it:
//! systemd's readiness protocol (`Type=notify`) through a fake `NOTIFY_SOCKET`, and SIGTERM at
//! early moments of the start.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{READY, STARTUP, Server, Setup, free_port, port_arg};

/// Bound on a stop. Generous: the assertion is that the process stops by itself and cleanly,
/// not how fast (a component stuck at shutdown is cancelled by the supervisor after 10 s, which
/// the log would report; that is the failure looked for, not the time).
const STOP: Duration = Duration::from_secs(60);

/// The supervisor's report of a component that did not stop by itself.
const STUCK: &str = "did not stop in time";

fn server_cmd(setup: &Setup) -> std::process::Command {
    let port = free_port().expect("free port");
    setup.server_cmd(&["--https-listen-port", &port_arg(port)])
}

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// systemd's `Type=notify`: with `NOTIFY_SOCKET` set (a unix datagram socket, as systemd
/// passes it), the server sends `READY=1` once the API answers — kubectl works then — and
/// `STOPPING=1` when SIGTERM arrives, then exits 0.
#[test]
fn notify_socket_gets_ready_then_stopping() {
    let setup = Setup::new("");
    let path = setup.path("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(STARTUP))
        .expect("read timeout");
    let mut cmd = server_cmd(&setup);
    cmd.env("NOTIFY_SOCKET", &path);
    let server = Server::spawn(cmd);

    let ready = recv(&socket);
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("STATUS=serving the API on https://")),
        "{ready:?}"
    );
    // Ready means ready: the admin kubeconfig is written and the API answers through it.
    assert_eq!(
        setup.kubectl_ok(&["get", "--raw", "/readyz"], ""),
        "ok",
        "readyz right after READY=1"
    );
    assert_eq!(
        setup.kubectl_ok(&["get", "ns", "kube-system", "-o", "name"], ""),
        "namespace/kube-system\n"
    );

    let (status, log) = server.signal_within("-TERM", STOP);
    let stopping = recv(&socket);
    assert_eq!(stopping.lines().collect::<Vec<_>>(), ["STOPPING=1"]);
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    assert!(!log.iter().any(|l| l.contains(STUCK)), "{}", log.join("\n"));
}

/// Without `NOTIFY_SOCKET` nothing is sent and nothing fails (the other tests run so too);
/// with one that nobody listens on, the server logs it and serves anyway.
#[test]
fn a_dead_notify_socket_is_not_fatal() {
    let setup = Setup::new("");
    let mut cmd = server_cmd(&setup);
    cmd.env("NOTIFY_SOCKET", setup.path("nobody-listens.sock"));
    let (server, _) = Server::start(cmd);
    assert_eq!(
        setup.kubectl_ok(&["get", "ns", "default", "-o", "name"], ""),
        "namespace/default\n"
    );
    let (status, log) = server.signal_within("-TERM", STOP);
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("cannot notify systemd")),
        "{}",
        log.join("\n")
    );
}

/// SIGTERM at several early moments — before the datastore and PKI are ready, right when the
/// API is ready and the scheduler and controller manager start (leader election), and while the
/// controllers make their first lists (cache sync) — stops the process by itself, with exit
/// status 0, no component left for the supervisor to cancel.
#[test]
fn sigterm_during_startup_exits_zero() {
    for moment in [
        "starting rk3s server",
        READY,
        "became leader; scheduling",
        "starting controller",
    ] {
        let setup = Setup::new("");
        let mut server = Server::spawn(server_cmd(&setup));
        server.wait_for(moment);
        let (status, log) = server.signal_within("-TERM", STOP);
        let log = log.join("\n");
        assert!(
            status.success(),
            "SIGTERM at {moment:?}: {status}; log:\n{log}"
        );
        assert!(!log.contains(STUCK), "SIGTERM at {moment:?}; log:\n{log}");
        assert!(
            log.contains("SIGTERM: shutting down"),
            "SIGTERM at {moment:?}; log:\n{log}"
        );
    }
}
