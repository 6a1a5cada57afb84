//! The official Kubernetes Python client (`kubernetes` from PyPI) against an in-process
//! apiserver: discovery, typed CRUD, pagination, selectors, errors, conflicts, patches,
//! defaults, scale, Services, a watch from a resourceVersion and custom objects
//! (`tests/python/client.py`).
//!
//! `cargo xtask test` installs the client into a virtualenv and sets `RK3S_PYTHON` to its
//! interpreter. Without it the test says so and passes, except under CI (`CI=true`), where a
//! missing client is a failure.

mod common;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_against_the_apiserver() {
    let Some(python) = std::env::var_os("RK3S_PYTHON") else {
        assert!(
            std::env::var("CI").is_err(),
            "RK3S_PYTHON is not set: run the suite with `cargo xtask test`"
        );
        eprintln!("skipped: RK3S_PYTHON is not set (`cargo xtask test` sets it)");
        return;
    };
    let t = TestServer::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&t.kubeconfig)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {}: {e}", python.to_string_lossy()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client's checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
}
