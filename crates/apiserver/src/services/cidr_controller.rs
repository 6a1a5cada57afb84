//! Upstream's `service-cidr-controller` (kube-controller-manager's
//! `pkg/controller/servicecidrs`), run by the apiserver as one of its own tasks (next to the CRD
//! controller, started by `server`): every ServiceCIDR not being deleted gets the finalizer
//! `networking.k8s.io/service-cidr-finalizer` and, unless it has a `Ready=True` condition,
//! `Ready=True` with the message `Kubernetes Service CIDR is ready`; a ServiceCIDR being
//! deleted keeps its finalizer, with `Ready=False`, reason `Terminating`, while an `IPAddress`
//! of the allocator (labels `ipaddress.kubernetes.io/managed-by: ipallocator.k8s.io`) falls in
//! it and in no other ServiceCIDR (none containing a whole CIDR of it either); once nothing
//! would be orphaned and upstream's grace period (10 s after the deletion timestamp, for the
//! allocators to stop drawing from it) has passed, the finalizer is removed and the
//! ServiceCIDR goes.
//!
//! It follows store watches of `/registry/servicecidrs/` and `/registry/ipaddresses/` and looks
//! again every few seconds (for the grace period; upstream requeues instead). Every apiserver
//! runs it: its writes are compare-and-swap updates that converge. IPv4 only (as the
//! allocator); an IPv6 CIDR never blocks. No Events are recorded.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ALLOCATOR_NAME, IP_PREFIX, MANAGED_BY_LABEL, ServiceCidr};
use crate::registry::{REGISTRY, ResourceInfo};
use crate::server::AppState;
use crate::status::ApiError;

/// Upstream's `ServiceCIDRProtectionFinalizer`.
pub(crate) const FINALIZER: &str = "networking.k8s.io/service-cidr-finalizer";
/// Upstream's `deletionGracePeriod`.
const GRACE: Duration = Duration::from_secs(10);
/// How often everything is looked at again without an event.
const RESYNC: Duration = Duration::from_secs(5);
const TERMINATING_MESSAGE: &str = "There are still IPAddresses referencing the ServiceCIDR, please remove them or create a new ServiceCIDR";

/// Starts the controller; it ends with the server.
pub(crate) fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                r = run_once(&state) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e.message, "ServiceCIDR controller: restarting");
                    }
                }
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::time::sleep(RESYNC).await;
        }
    });
}

/// Reconciles on every change of a ServiceCIDR or IPAddress, and every [`RESYNC`].
#[tracing::instrument(name = "servicecidr_controller", skip_all)]
async fn run_once(state: &AppState) -> Result<(), ApiError> {
    let mut cidrs = state
        .store
        .watch_prefix(b"/registry/servicecidrs/", 0, false)
        .await?;
    let mut ips = state
        .store
        .watch_prefix(IP_PREFIX.as_bytes(), 0, false)
        .await?;
    loop {
        reconcile_all(state).await?;
        let event = tokio::select! {
            e = cidrs.next() => e,
            e = ips.next() => e,
            _ = tokio::time::sleep(RESYNC) => continue,
        };
        match event {
            None => return Ok(()),
            Some(Err(e)) => return Err(ApiError::internal(e)),
            Some(Ok(_)) => {}
        }
    }
}

fn info() -> Result<&'static ResourceInfo, ApiError> {
    REGISTRY
        .find("networking.k8s.io", "v1", "servicecidrs")
        .ok_or_else(|| ApiError::internal("servicecidrs are not registered"))
}

fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

fn finalizers(obj: &Value) -> Vec<String> {
    crate::validation::items(obj.get("metadata").unwrap_or(&Value::Null), "finalizers")
        .iter()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

fn cidrs_of(obj: &Value) -> Vec<ServiceCidr> {
    crate::validation::items(obj.get("spec").unwrap_or(&Value::Null), "cidrs")
        .iter()
        .filter_map(|c| c.as_str()?.parse().ok())
        .collect()
}

fn ready_condition(obj: &Value) -> Option<&Value> {
    crate::validation::items(obj.get("status").unwrap_or(&Value::Null), "conditions")
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

/// One pass over every ServiceCIDR.
async fn reconcile_all(state: &AppState) -> Result<(), ApiError> {
    let listed = state
        .store
        .list(
            b"/registry/servicecidrs/",
            rk3s_datastore::ListOptions::default(),
        )
        .await?;
    let all: Vec<Value> = listed
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    for obj in &all {
        let name = crate::rest::object_meta_str(obj, "name").to_string();
        if is_deleting(obj) {
            if !finalizers(obj).iter().any(|f| f == FINALIZER) {
                continue;
            }
            if can_delete(state, obj, &all).await? {
                if past_grace(obj) {
                    write(state, &name, |new| {
                        if let Some(list) = new
                            .pointer_mut("/metadata/finalizers")
                            .and_then(Value::as_array_mut)
                        {
                            list.retain(|f| f.as_str() != Some(FINALIZER));
                        }
                    })
                    .await?;
                }
            } else if ready_condition(obj)
                .is_none_or(|c| c.get("reason").and_then(Value::as_str) != Some("Terminating"))
            {
                write(state, &name, |new| {
                    set_ready(new, "False", "Terminating", TERMINATING_MESSAGE)
                })
                .await?;
            }
            continue;
        }
        let has_finalizer = finalizers(obj).iter().any(|f| f == FINALIZER);
        let ready = ready_condition(obj).and_then(|c| c.get("status").and_then(Value::as_str))
            == Some("True");
        if has_finalizer && ready {
            continue;
        }
        write(state, &name, |new| {
            if !finalizers(new).iter().any(|f| f == FINALIZER) {
                let meta = &mut new["metadata"];
                let mut list = meta
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                list.push(json!(FINALIZER));
                meta["finalizers"] = json!(list);
            }
            let ready = ready_condition(new).and_then(|c| c.get("status").and_then(Value::as_str))
                == Some("True");
            if !ready {
                set_ready(new, "True", "", "Kubernetes Service CIDR is ready");
            }
        })
        .await?;
    }
    Ok(())
}

/// Whether the deletion timestamp is [`GRACE`] old.
fn past_grace(obj: &Value) -> bool {
    let Some(ts) = obj
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
    else {
        return true;
    };
    let grace = k8s_openapi::jiff::SignedDuration::try_from(GRACE).unwrap_or_default();
    k8s_openapi::jiff::Timestamp::now().duration_since(ts) >= grace
}

/// Upstream's `canDeleteCIDR`: every CIDR of it contained in another ServiceCIDR, or no
/// allocator `IPAddress` that only it contains.
async fn can_delete(state: &AppState, obj: &Value, all: &[Value]) -> Result<bool, ApiError> {
    let name = crate::rest::object_meta_str(obj, "name");
    let mine = cidrs_of(obj);
    let others: Vec<ServiceCidr> = all
        .iter()
        .filter(|o| crate::rest::object_meta_str(o, "name") != name)
        .flat_map(cidrs_of)
        .collect();
    if mine.iter().all(|c| others.iter().any(|o| o.covers(c))) {
        return Ok(true);
    }
    let listed = state
        .store
        .list(IP_PREFIX.as_bytes(), rk3s_datastore::ListOptions::default())
        .await?;
    for kv in &listed.kvs {
        let Ok(ip_obj) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let managed = ip_obj
            .pointer("/metadata/labels")
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .and_then(Value::as_str)
            == Some(ALLOCATOR_NAME);
        let Some(ip) = crate::rest::object_meta_str(&ip_obj, "name")
            .parse::<Ipv4Addr>()
            .ok()
            .filter(|_| managed)
        else {
            continue;
        };
        if mine.iter().any(|c| c.contains(ip)) && !others.iter().any(|o| o.contains(ip)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sets the `Ready` condition (keeping the others).
fn set_ready(obj: &mut Value, status: &str, reason: &str, message: &str) {
    let mut conditions: Vec<Value> =
        crate::validation::items(obj.get("status").unwrap_or(&Value::Null), "conditions")
            .iter()
            .filter(|c| c.get("type").and_then(Value::as_str) != Some("Ready"))
            .cloned()
            .collect();
    conditions.push(json!({
        "type": "Ready", "status": status, "reason": reason, "message": message,
        "lastTransitionTime": crate::time::now_rfc3339(),
    }));
    obj["status"] = json!({ "conditions": conditions });
}

/// A compare-and-swap update of the ServiceCIDR `name` (gone: nothing to do).
async fn write(state: &AppState, name: &str, f: impl Fn(&mut Value)) -> Result<(), ApiError> {
    let info = info()?;
    let key = info.key(None, name);
    match crate::rest::guaranteed_update(state, info, &key, name, false, |old| {
        let mut new = old.clone();
        f(&mut new);
        Ok(new)
    })
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
