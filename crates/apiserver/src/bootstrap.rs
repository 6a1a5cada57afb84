//! Objects every cluster has from its first start: the system namespaces, the `kubernetes`
//! Service in `default` (the first IP of the service CIDR) with Endpoints naming this server,
//! and the default `ServiceCIDR` `kubernetes` (the service CIDR) with its `Ready=True`
//! condition, as upstream's `kubernetes-service-cidr-controller` writes it (set only when the
//! ServiceCIDR has no Ready condition, or an `Unknown` one, and its CIDRs are this server's;
//! upstream also re-checks every 10 s and warns with an Event on a mismatch: rk3s checks at
//! start only). Before those, the cluster IP records of older rk3s are moved to `IPAddress`
//! objects ([`crate::services::migrate_legacy_ips`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::registry::REGISTRY;
use crate::rest::FieldValidation;
use crate::server::AppState;

/// The namespaces created on first start, as upstream.
pub(crate) const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates what is missing; existing objects are left alone, except the `kubernetes`
/// Endpoints, which always name the running server.
pub(crate) async fn run(state: &AppState, addr: SocketAddr) -> Result<()> {
    crate::services::migrate_legacy_ips(state)
        .await
        .map_err(|e| Error::Bootstrap(format!("service IP records: {}", e.message)))?;
    for name in SYSTEM_NAMESPACES {
        let obj = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
        ensure(state, "namespaces", None, obj).await?;
    }
    let labels = json!({ "component": "apiserver", "provider": "kubernetes" });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "kubernetes", "namespace": "default", "labels": labels },
        "spec": {
            "clusterIP": state.service_cidr.first().to_string(),
            "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port() }],
            "sessionAffinity": "None",
            "type": "ClusterIP",
        },
    });
    ensure(state, "services", Some("default"), service).await?;
    default_service_cidr(state).await?;
    // The two system priority classes, as upstream's apiserver creates them.
    for (name, value, description) in crate::admission::SYSTEM_PRIORITY_CLASSES {
        let class = json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": { "name": name }, "value": value, "description": description,
            "preemptionPolicy": "PreemptLowerPriority",
        });
        ensure(state, "priorityclasses", None, class).await?;
    }
    // Legacy token tracking (upstream's `legacytokentracking` controller): the date from
    // which the `kubernetes.io/legacy-token-last-used` labels are kept, for the controller
    // manager's legacy token cleaner.
    let tracking = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "kube-apiserver-legacy-service-account-token-tracking", "namespace": "kube-system" },
        "data": { "since": &crate::time::now_rfc3339()[..10] },
    });
    ensure(state, "configmaps", Some("kube-system"), tracking).await?;
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let subsets = json!([{
        "addresses": [{ "ip": ip.to_string() }],
        "ports": [{ "name": "https", "port": addr.port(), "protocol": "TCP" }],
    }]);
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": { "name": "kubernetes", "namespace": "default", "labels": { "endpointslice.kubernetes.io/skip-mirror": "true" } },
        "subsets": subsets,
    });
    if !ensure(state, "endpoints", Some("default"), endpoints).await? {
        let info = find("endpoints")?;
        let key = info.key(Some("default"), "kubernetes");
        crate::rest::guaranteed_update(state, info, &key, "kubernetes", false, |old| {
            let mut new = old.clone();
            new["subsets"] = subsets.clone();
            Ok(new)
        })
        .await
        .map_err(|e| Error::Bootstrap(format!("endpoints kubernetes: {}", e.message)))?;
    }
    Ok(())
}

/// The name of the default ServiceCIDR (upstream's `DefaultServiceCIDRName`).
pub(crate) const DEFAULT_SERVICE_CIDR: &str = "kubernetes";

/// The default ServiceCIDR: created when missing, then its `Ready` condition set as upstream's
/// default ServiceCIDR controller applies it (no reason; `lastTransitionTime` now).
async fn default_service_cidr(state: &AppState) -> Result<()> {
    let cidrs = json!([state.service_cidr.to_string()]);
    let cidr = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": { "name": DEFAULT_SERVICE_CIDR },
        "spec": { "cidrs": cidrs },
    });
    ensure(state, "servicecidrs", None, cidr).await?;
    let info = find("servicecidrs")?;
    let key = info.key(None, DEFAULT_SERVICE_CIDR);
    crate::rest::guaranteed_update(state, info, &key, DEFAULT_SERVICE_CIDR, false, |old| {
        let mut new = old.clone();
        let deleting = old
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null());
        let ready =
            crate::validation::items(old.get("status").unwrap_or(&Value::Null), "conditions")
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                .and_then(|c| c.get("status").and_then(Value::as_str))
                .map(str::to_string);
        let settable = matches!(ready.as_deref(), None | Some("Unknown"));
        if deleting || !settable || old.pointer("/spec/cidrs") != Some(&cidrs) {
            if ready.as_deref() != Some("True") || old.pointer("/spec/cidrs") != Some(&cidrs) {
                tracing::warn!(
                    ?ready,
                    "default ServiceCIDR is not Ready or not this server's"
                );
            }
            return Ok(new);
        }
        let mut conditions: Vec<Value> =
            crate::validation::items(old.get("status").unwrap_or(&Value::Null), "conditions")
                .iter()
                .filter(|c| c.get("type").and_then(Value::as_str) != Some("Ready"))
                .cloned()
                .collect();
        conditions.push(json!({
            "type": "Ready", "status": "True", "reason": "",
            "message": "Kubernetes default Service CIDR is ready",
            "lastTransitionTime": crate::time::now_rfc3339(),
        }));
        new["status"] = json!({ "conditions": conditions });
        Ok(new)
    })
    .await
    .map_err(|e| {
        Error::Bootstrap(format!(
            "servicecidrs {DEFAULT_SERVICE_CIDR}: {}",
            e.message
        ))
    })?;
    Ok(())
}

fn find(plural: &str) -> Result<&'static crate::registry::ResourceInfo> {
    let group = match plural {
        "priorityclasses" => "scheduling.k8s.io",
        "servicecidrs" => "networking.k8s.io",
        _ => "",
    };
    REGISTRY
        .find(group, "v1", plural)
        .ok_or_else(|| Error::Bootstrap(format!("{plural} are not registered")))
}

/// Creates `obj` unless it exists; returns whether it was created.
async fn ensure(state: &AppState, plural: &str, ns: Option<&str>, obj: Value) -> Result<bool> {
    let info = find(plural)?;
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    match crate::rest::create_object(state, info, ns, obj, false, FieldValidation::Strict).await {
        Ok(_) => {
            tracing::info!(resource = plural, name, "created bootstrap object");
            Ok(true)
        }
        Err(e) if e.reason == "AlreadyExists" => Ok(false),
        Err(e) => {
            // A Service that exists is refused by the allocation check of its cluster IP (held
            // by itself) before the write could say AlreadyExists, as upstream's.
            let key = info.key(ns, &name);
            if matches!(state.store.get(&key, 0).await, Ok((_, Some(_)))) {
                return Ok(false);
            }
            Err(Error::Bootstrap(format!("{plural} {name}: {}", e.message)))
        }
    }
}
