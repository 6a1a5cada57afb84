//! The component entry point: `run(config, shutdown)` with its data dir.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use rk3s_apiserver::Config;

fn config(dir: &std::path::Path, port: u16) -> Config {
    let mut c = Config {
        https_listen_port: port,
        ..Config::default()
    };
    c.datastore.data_dir = dir.to_path_buf();
    c
}

/// Runs the apiserver until `/readyz` answers, then stops it; returns the CA it served with.
async fn run_once(dir: &std::path::Path) -> String {
    let port = rk3s_datastore::testing::free_port().expect("free port");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(rk3s_apiserver::run(config(dir, port), async {
        let _ = stopped.await;
    }));
    let ca = dir.join("server/tls/server-ca.crt");
    let mut ready = false;
    for _ in 0..100 {
        if ca.exists() {
            let out = tokio::process::Command::new("curl")
                .args(["-sf", "--cacert"])
                .arg(&ca)
                .arg(format!("https://127.0.0.1:{port}/readyz"))
                .output()
                .await
                .expect("curl runs");
            if out.status.success() {
                assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the apiserver never became ready on port {port}");
    // HTTP/2 by ALPN, HTTP/1.1 when asked.
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
                flag,
                "--cacert",
            ])
            .arg(&ca)
            .arg(format!("https://127.0.0.1:{port}/version"))
            .output()
            .await
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{flag}");
    }
    let _ = stop.send(());
    task.await
        .expect("run task")
        .expect("run returns Ok after shutdown");
    std::fs::read_to_string(&ca).expect("CA readable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_certificates_once_and_reuses_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = run_once(dir.path()).await;
    let tls = dir.path().join("server/tls");
    for (file, mode) in [
        ("server-ca.crt", 0o644),
        ("server-ca.key", 0o600),
        ("serving-kube-apiserver.crt", 0o644),
        ("serving-kube-apiserver.key", 0o600),
    ] {
        let meta = std::fs::metadata(tls.join(file)).expect(file);
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    assert!(dir.path().join("server/db/state.db").exists());
    let second = run_once(dir.path()).await;
    assert_eq!(first, second, "a restart reuses the CA");
}

#[test]
fn invalid_config_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = config(dir.path(), 0);
    c.datastore.datastore_endpoint = Some("nosuch://x".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let err = rt
        .block_on(rk3s_apiserver::run(c, async {}))
        .expect_err("bad endpoint");
    assert!(
        matches!(err, rk3s_apiserver::Error::InvalidConfig(_)),
        "{err}"
    );
    assert!(
        !dir.path().join("server").exists(),
        "validation touched the data dir"
    );
}
