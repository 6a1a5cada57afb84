//! Objects every cluster has from its first start: the system namespaces, and the `kubernetes`
//! Service in `default` (the first IP of the service CIDR) with Endpoints naming this server.

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

fn find(plural: &str) -> Result<&'static crate::registry::ResourceInfo> {
    let group = match plural {
        "priorityclasses" => "scheduling.k8s.io",
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
