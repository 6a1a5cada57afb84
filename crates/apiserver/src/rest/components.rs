//! `/api/v1/componentstatuses`: v1 `ComponentStatus`, deprecated upstream since v1.19 and
//! still served (read-only: get and list, with a deprecation warning), so that
//! `kubectl get componentstatuses` answers as on a K3s server.
//!
//! Upstream probes the scheduler's and controller manager's `/healthz` on their local ports
//! and each etcd server. rk3s runs those components in the process that embeds the apiserver
//! (`rk3s server`), which knows their state without a port: it reports it into a
//! [`ComponentHealth`] handed to [`crate::Apiserver::component_health`]. The datastore is
//! `etcd-0`, checked as `/readyz/etcd` checks it. A standalone apiserver, with no embedder
//! reporting, lists `etcd-0` only.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

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

/// Every component's status: the reported ones, then the datastore.
async fn statuses(state: &AppState) -> Vec<Value> {
    let mut out: Vec<Value> = state
        .components
        .snapshot()
        .iter()
        .map(|(name, health)| object(name, health))
        .collect();
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
