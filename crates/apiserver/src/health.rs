//! `/version`, `/healthz`, `/livez`, `/readyz` (and each check alone, `/readyz/etcd`) and
//! `/metrics`.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::server::AppState;

/// The Kubernetes version this apiserver serves.
pub const GIT_VERSION: &str = "v1.33.0+rk3s";

pub(crate) async fn version() -> Response {
    crate::rest::json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "33",
            "emulationMajor": "1",
            "emulationMinor": "33",
            "minCompatibilityMajor": "1",
            "minCompatibilityMinor": "32",
            "gitVersion": GIT_VERSION,
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            }),
        }),
    )
}

/// One health check's result.
struct Check {
    name: &'static str,
    error: Option<String>,
}

async fn checks(state: &AppState, ready: bool) -> Vec<Check> {
    let mut out = vec![Check {
        name: "ping",
        error: None,
    }];
    if ready {
        let datastore = match state.store.current_revision().await {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        // Upstream's name for the storage check (K3s' kine answers to it too).
        out.push(Check {
            name: "etcd",
            error: datastore,
        });
        let bootstrap = (!state.bootstrapped()).then(|| "not finished".to_string());
        out.push(Check {
            name: "poststarthook/bootstrap-namespaces",
            error: bootstrap,
        });
    }
    out
}

/// The upstream health endpoint format: `ok`, or with `?verbose` one `[+]name ok` line per
/// check and `<endpoint> check passed`. Failing checks give 500 and `[-]name failed: reason
/// withheld`.
async fn health(state: &AppState, uri: &Uri, endpoint: &str, ready: bool) -> Response {
    let q = crate::rest::parse_query(uri);
    let excluded: Vec<&str> = q
        .get("exclude")
        .map(|s| s.split(',').collect())
        .unwrap_or_default();
    let results = checks(state, ready).await;
    let failed = results
        .iter()
        .any(|c| c.error.is_some() && !excluded.contains(&c.name));
    let verbose = q.contains_key("verbose") || failed;
    let mut body = String::new();
    if verbose {
        for c in &results {
            if excluded.contains(&c.name) {
                body.push_str(&format!("[+]{} excluded: ok\n", c.name));
            } else if let Some(e) = &c.error {
                tracing::warn!(check = c.name, error = %e, "{endpoint} check failed");
                body.push_str(&format!("[-]{} failed: reason withheld\n", c.name));
            } else {
                body.push_str(&format!("[+]{} ok\n", c.name));
            }
        }
        if failed {
            body.push_str(&format!("{endpoint} check failed\n"));
        } else {
            body.push_str(&format!("{endpoint} check passed\n"));
        }
    } else {
        body.push_str("ok");
    }
    let code = if failed {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (
                header::HeaderName::from_static("x-content-type-options"),
                "nosniff",
            ),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn healthz(State(s): State<AppState>, uri: Uri) -> Response {
    health(&s, &uri, "healthz", true).await
}

pub(crate) async fn livez(State(s): State<AppState>, uri: Uri) -> Response {
    health(&s, &uri, "livez", false).await
}

pub(crate) async fn readyz(State(s): State<AppState>, uri: Uri) -> Response {
    health(&s, &uri, "readyz", true).await
}

/// One check alone (`/readyz/etcd`, `/livez/ping`), as upstream: `ok`, 500 `internal server
/// error: <why>` when it fails, 404 for a check the endpoint does not have.
async fn single(state: &AppState, check: &str, ready: bool) -> Response {
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    match checks(state, ready)
        .await
        .into_iter()
        .find(|c| c.name == check)
    {
        None => (
            StatusCode::NOT_FOUND,
            text,
            "404 page not found\n".to_string(),
        )
            .into_response(),
        Some(Check { error: None, .. }) => (StatusCode::OK, text, "ok".to_string()).into_response(),
        Some(Check { error: Some(e), .. }) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            text,
            format!("internal server error: {e}\n"),
        )
            .into_response(),
    }
}

pub(crate) async fn healthz_check(
    State(s): State<AppState>,
    Path(check): Path<String>,
) -> Response {
    single(&s, &check, true).await
}

pub(crate) async fn livez_check(State(s): State<AppState>, Path(check): Path<String>) -> Response {
    single(&s, &check, false).await
}

pub(crate) async fn readyz_check(State(s): State<AppState>, Path(check): Path<String>) -> Response {
    single(&s, &check, true).await
}

pub(crate) async fn metrics(State(s): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
