//! `/api/v1/componentstatuses`: v1 `ComponentStatus`, deprecated upstream since v1.19 and
//! still served (read-only: get and list, with a deprecation warning), so that
//! `kubectl get componentstatuses` answers as on a K3s server.
//!
//! Upstream probes the scheduler's and controller manager's `/healthz` on their local ports
//! and each etcd server. `rk3s server` runs those components in the process that embeds the
//! apiserver, which knows their state without a port: it reports it into a
//! [`ComponentHealth`] handed to [`crate::Apiserver::component_health`]. A standalone
//! apiserver, with no embedder reporting, probes as upstream: `https://127.0.0.1:10259/healthz`
//! (`scheduler`) and `https://127.0.0.1:10257/healthz` (`controller-manager`), the certificate
//! not verified, 20 s at most each; healthy with the body as message, else unhealthy with
//! upstream's message (Go's error text for a refused connection, `HTTP probe failed with
//! statuscode: N`). [`crate::Apiserver::component_probes`] points the probes elsewhere. The
//! datastore is `etcd-0`, checked as `/readyz/etcd` checks it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::handlers::Selectors;
use super::{Query, Target};
use crate::server::AppState;
use crate::status::ApiError;

/// Upstream's deprecation warning for v1 ComponentStatus.
const DEPRECATED: &str = "v1 ComponentStatus is deprecated in v1.19+";
/// The name the datastore is listed under.
const DATASTORE: &str = "etcd-0";

/// How long one probe may take (upstream's `probeTimeOut`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the components' health comes from.
#[derive(Debug, Clone)]
pub(crate) enum Components {
    /// An embedder reports it.
    Reported(ComponentHealth),
    /// Probes of `https://<addr>/healthz`, by component name.
    Probed(Vec<(String, SocketAddr)>),
}

impl Default for Components {
    /// Upstream's probes: the scheduler's and controller manager's secure ports on loopback.
    fn default() -> Self {
        let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Components::Probed(vec![
            ("controller-manager".into(), local(10257)),
            ("scheduler".into(), local(10259)),
        ])
    }
}

/// The condition of a probed component, as upstream's HTTP prober judges the answer: 2xx is
/// healthy (the body is the message), 3xx unknown, anything else (or no answer) unhealthy.
fn probed(name: &str, answer: Result<(u16, String), String>) -> Value {
    let (status, message) = match answer {
        Ok((code, body)) if (200..300).contains(&code) => ("True", body),
        Ok((code, body)) if (300..400).contains(&code) => (
            "Unknown",
            format!("Probe terminated redirects, Response body: {body}"),
        ),
        Ok((code, _)) => (
            "False",
            format!("HTTP probe failed with statuscode: {code}"),
        ),
        Err(e) => ("False", e),
    };
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": name},
        "conditions": [{"type": "Healthy", "status": status, "message": message}],
    })
}

/// Probes every component at once.
async fn probe_all(probes: &[(String, SocketAddr)]) -> Vec<Value> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (_, addr)) in probes.iter().enumerate() {
        let addr = *addr;
        tasks.spawn(async move {
            let answer = rk3s_common::serving::probe(addr, "/healthz", PROBE_TIMEOUT)
                .await
                .map_err(|e| e.to_string());
            (i, answer)
        });
    }
    let mut answers: Vec<Option<Result<(u16, String), String>>> = vec![None; probes.len()];
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, answer)) = done {
            answers[i] = Some(answer);
        }
    }
    let mut out: Vec<(String, Value)> = probes
        .iter()
        .zip(answers)
        .map(|((name, _), answer)| {
            let answer = answer.unwrap_or_else(|| Err("probe failed".into()));
            (name.clone(), probed(name, answer))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

/// The health of the components running beside the apiserver, by name (`scheduler`,
/// `controller-manager`), as their supervisor last reported it: `Ok` while the component
/// runs, `Err(reason)` while it is failed or restarting. Cloning shares the state.
#[derive(Debug, Clone, Default)]
pub struct ComponentHealth {
    components: Arc<RwLock<BTreeMap<String, Result<(), String>>>>,
}

impl ComponentHealth {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the state of `component` (listed from now on).
    pub fn report(&self, component: &str, health: Result<(), String>) {
        let mut components = match self.components.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        components.insert(component.to_string(), health);
    }

    fn snapshot(&self) -> Vec<(String, Result<(), String>)> {
        let components = match self.components.read() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        components
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// One ComponentStatus object, as upstream writes it (no uid, resourceVersion or timestamp:
/// nothing is stored).
fn object(name: &str, health: &Result<(), String>) -> Value {
    let condition = match health {
        Ok(()) => json!({"type": "Healthy", "status": "True", "message": "ok"}),
        Err(e) => json!({"type": "Healthy", "status": "False", "error": e}),
    };
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": name},
        "conditions": [condition],
    })
}

/// Every component's status: the reported or probed ones, then the datastore.
async fn statuses(state: &AppState) -> Vec<Value> {
    let mut out: Vec<Value> = match &state.components {
        Components::Reported(health) => health
            .snapshot()
            .iter()
            .map(|(name, health)| object(name, health))
            .collect(),
        Components::Probed(probes) => probe_all(probes).await,
    };
    let datastore = state
        .store
        .current_revision()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    out.push(object(DATASTORE, &datastore));
    out
}

/// GET of the collection or of one component; anything else is not allowed, as upstream.
pub(crate) async fn serve(
    state: &AppState,
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    q: &Query,
) -> Result<Response, ApiError> {
    if *method != Method::GET || target.watch_path || super::flag(q, "watch") {
        return Err(ApiError::method_not_allowed());
    }
    if target.subresource.is_some() {
        return Err(ApiError::no_route());
    }
    let info = target.info.as_ref();
    let all = statuses(state).await;
    let body = match target.name.as_deref() {
        Some(name) => {
            let obj = all
                .into_iter()
                .find(|o| o["metadata"]["name"] == name)
                .ok_or_else(|| ApiError::not_found(info, name))?;
            if super::table::wants_table(headers) {
                super::table::to_table(info, std::slice::from_ref(&obj), "", q)
            } else {
                obj
            }
        }
        None => {
            let selectors = Selectors::from_query(info, q)?;
            let items: Vec<Value> = all.into_iter().filter(|o| selectors.matches(o)).collect();
            if super::table::wants_table(headers) {
                super::table::to_table(info, &items, "", q)
            } else {
                json!({
                    "kind": "ComponentStatusList",
                    "apiVersion": "v1",
                    "metadata": {},
                    "items": items,
                })
            }
        }
    };
    let mut response = super::json_response(StatusCode::OK, &body);
    let warning = format!("299 - {}", Value::String(DEPRECATED.into()));
    if let Ok(v) = HeaderValue::from_str(&warning) {
        response.headers_mut().append(header::WARNING, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers_become_upstreams_conditions() {
        let condition = |answer| probed("scheduler", answer)["conditions"][0].clone();
        assert_eq!(
            condition(Ok((200, "ok".into()))),
            json!({"type": "Healthy", "status": "True", "message": "ok"})
        );
        assert_eq!(
            condition(Ok((500, "[-]leaderElection failed".into()))),
            json!({"type": "Healthy", "status": "False",
                "message": "HTTP probe failed with statuscode: 500"})
        );
        assert_eq!(
            condition(Err("Get \"https://127.0.0.1:1/healthz\": refused".into())),
            json!({"type": "Healthy", "status": "False",
                "message": "Get \"https://127.0.0.1:1/healthz\": refused"})
        );
    }

    #[test]
    fn reports_become_conditions() {
        let health = ComponentHealth::new();
        health.report("scheduler", Ok(()));
        health.report("controller-manager", Err("failed: lost the API".into()));
        health.report("scheduler", Ok(()));
        let objects: Vec<Value> = health
            .snapshot()
            .iter()
            .map(|(n, h)| object(n, h))
            .collect();
        assert_eq!(
            objects,
            [
                json!({"kind": "ComponentStatus", "apiVersion": "v1",
                    "metadata": {"name": "controller-manager"},
                    "conditions": [{"type": "Healthy", "status": "False",
                        "error": "failed: lost the API"}]}),
                json!({"kind": "ComponentStatus", "apiVersion": "v1",
                    "metadata": {"name": "scheduler"},
                    "conditions": [{"type": "Healthy", "status": "True", "message": "ok"}]}),
            ]
        );
    }
}
