//! Discovery: `/api`, `/apis`, `/apis/<group>`, the per-group-version `APIResourceList`s, and
//! aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) on `/api` and
//! `/apis`, which kubectl 1.32 asks for first.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::crd::Snapshot;
use crate::registry::{GroupVersion, REGISTRY, ResourceInfo, SCALE_VERBS, STATUS_VERBS};
use crate::rest::json_response;
use crate::server::AppState;
use crate::status::ApiError;

/// The create-only subresources of core resources: (resource, name, group of the kind,
/// kind), all at v1.
const CREATE_SUBRESOURCES: &[(&str, &str, &str, &str)] = &[
    ("pods", "binding", "", "Binding"),
    ("pods", "eviction", "policy", "Eviction"),
    (
        "serviceaccounts",
        "token",
        "authentication.k8s.io",
        "TokenRequest",
    ),
];

/// The verbs of upstream's proxy subresources.
const PROXY_VERBS: &[&str] = &["create", "delete", "get", "patch", "update"];

/// The subresources served by proxying to a kubelet or a pod (`rest/proxy.rs`,
/// `rest/pod_proxy.rs`): (resource, subresource, kind, verbs), as upstream lists them.
const KUBELET_SUBRESOURCES: &[(&str, &str, &str, &[&str])] = &[
    ("pods", "proxy", "PodProxyOptions", PROXY_VERBS),
    ("services", "proxy", "ServiceProxyOptions", PROXY_VERBS),
    ("pods", "attach", "PodAttachOptions", &["create", "get"]),
    ("pods", "exec", "PodExecOptions", &["create", "get"]),
    ("pods", "log", "Pod", &["get"]),
    (
        "pods",
        "portforward",
        "PodPortForwardOptions",
        &["create", "get"],
    ),
    ("nodes", "proxy", "NodeProxyOptions", PROXY_VERBS),
];

/// The aggregated discovery version a client accepts (`v2` or `v2beta1`), if any.
fn aggregated_version(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    for entry in accept.split(',') {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        if params.contains(&"g=apidiscovery.k8s.io") && params.contains(&"as=APIGroupDiscoveryList")
        {
            if params.contains(&"v=v2") {
                return Some("v2");
            }
            if params.contains(&"v=v2beta1") {
                return Some("v2beta1");
            }
        }
    }
    None
}

fn aggregated_response(version: &str, groups: Vec<Value>) -> Response {
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": groups,
    });
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ct),
            (header::VARY, "Accept".to_string()),
        ],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response()
}

fn with_vary(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::VARY, header::HeaderValue::from_static("Accept"));
    r
}

/// `/api`.
pub(crate) fn api_versions(state: &AppState, headers: &HeaderMap) -> Response {
    if let Some(v) = aggregated_version(headers) {
        let core: Vec<&GroupVersion> = REGISTRY
            .groups
            .iter()
            .filter(|g| g.group.is_empty())
            .collect();
        return aggregated_response(v, vec![aggregated_group(&core)]);
    }
    with_vary(json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                { "clientCIDR": "0.0.0.0/0", "serverAddress": state.server_address },
            ],
        }),
    ))
}

fn group_versions(g: &GroupVersion) -> Value {
    json!({ "groupVersion": g.group_version(), "version": g.version })
}

/// The served group versions of `group`, preferred first: the built-in ones, or those of
/// custom resources (a CRD never adds versions to a built-in group).
fn versions_of<'a>(snapshot: &'a Snapshot, group: &str) -> Vec<&'a GroupVersion> {
    let builtin: Vec<&GroupVersion> = REGISTRY
        .groups
        .iter()
        .filter(|g| g.group == group)
        .collect();
    if !builtin.is_empty() {
        return builtin;
    }
    snapshot
        .groups
        .iter()
        .filter(|g| g.group == group)
        .collect()
}

/// The named groups in discovery order: built-ins, then custom resource groups by name.
fn all_named_groups(snapshot: &Snapshot) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for g in REGISTRY.named_groups().chain(snapshot.groups.iter()) {
        if !names.contains(&g.group) {
            names.push(g.group);
        }
    }
    names
}

fn api_group_json(snapshot: &Snapshot, group: &str) -> Option<Value> {
    let versions = versions_of(snapshot, group);
    let preferred = versions.first()?;
    Some(json!({
        "name": group,
        "versions": versions.iter().map(|g| group_versions(g)).collect::<Vec<_>>(),
        "preferredVersion": group_versions(preferred),
    }))
}

/// `/apis`.
pub(crate) fn api_groups(state: &AppState, headers: &HeaderMap) -> Response {
    let snapshot = state.crds.snapshot();
    let names = all_named_groups(&snapshot);
    if let Some(v) = aggregated_version(headers) {
        let items = names
            .iter()
            .map(|g| aggregated_group(&versions_of(&snapshot, g)))
            .collect();
        return aggregated_response(v, items);
    }
    let groups: Vec<Value> = names
        .iter()
        .filter_map(|g| api_group_json(&snapshot, g))
        .collect();
    with_vary(json_response(
        StatusCode::OK,
        &json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }),
    ))
}

/// `/apis/<group>`.
pub(crate) fn api_group(state: &AppState, group: &str) -> Response {
    match api_group_json(&state.crds.snapshot(), group) {
        Some(mut g) => {
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            json_response(StatusCode::OK, &g)
        }
        None => ApiError::no_route().into_response(),
    }
}

fn resource_entry(r: &ResourceInfo) -> Value {
    let mut e = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    e
}

/// Subresources that replace one part of their object: a namespace's `finalize`, a CSR's
/// `approval` (served by `rest::handlers`), with upstream's verbs.
fn part_subresources(r: &ResourceInfo) -> &'static [(&'static str, &'static [&'static str])] {
    match (r.group, r.kind) {
        ("", "Namespace") => &[("finalize", &["update"])],
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            &[("approval", &["get", "patch", "update"])]
        }
        _ => &[],
    }
}

/// `/api/v1`, `/apis/<group>/<version>`.
pub(crate) fn resource_list(state: &AppState, group: &str, version: &str) -> Response {
    let snapshot = state.crds.snapshot();
    let Some(gv) = REGISTRY
        .group_version(group, version)
        .or_else(|| snapshot.group_version(group, version))
    else {
        return ApiError::no_route().into_response();
    };
    let mut resources = Vec::new();
    for r in &gv.resources {
        resources.push(resource_entry(r));
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": STATUS_VERBS,
            }));
        }
        if r.group.is_empty() {
            for (plural, sub, kind, verbs) in KUBELET_SUBRESOURCES {
                if *plural == r.plural {
                    resources.push(json!({
                        "name": format!("{plural}/{sub}"),
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": kind,
                        "verbs": verbs,
                    }));
                }
            }
        }
        for (sub, verbs) in part_subresources(r) {
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": verbs,
            }));
        }
        for (plural, sub, group, kind) in CREATE_SUBRESOURCES {
            if r.group.is_empty() && *plural == r.plural {
                let mut e = json!({
                    "name": format!("{plural}/{sub}"),
                    "singularName": "",
                    "namespaced": true,
                    "kind": kind,
                    "verbs": ["create"],
                });
                if !group.is_empty() {
                    e["group"] = json!(group);
                    e["version"] = json!("v1");
                }
                resources.push(e);
            }
        }
        if r.scale_subresource {
            resources.push(json!({
                "name": format!("{}/scale", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": SCALE_VERBS,
            }));
        }
    }
    let mut body = json!({
        "kind": "APIResourceList",
        "groupVersion": gv.group_version(),
        "resources": resources,
    });
    if !group.is_empty() {
        body["apiVersion"] = json!("v1");
    }
    json_response(StatusCode::OK, &body)
}

/// One `APIGroupDiscovery`: the group with its versions (preferred first) and their resources.
fn aggregated_group(versions: &[&GroupVersion]) -> Value {
    let items: Vec<Value> = versions
        .iter()
        .map(|g| aggregated_version_entry(g))
        .collect();
    let mut meta = json!({ "creationTimestamp": null });
    if let Some(g) = versions.first().filter(|g| !g.group.is_empty()) {
        meta["name"] = json!(g.group);
    }
    json!({ "metadata": meta, "versions": items })
}

/// One version of an `APIGroupDiscovery`.
fn aggregated_version_entry(g: &GroupVersion) -> Value {
    let resources: Vec<Value> = g
        .resources
        .iter()
        .map(|r| {
            let kind = json!({ "group": r.group, "version": r.version, "kind": r.kind });
            let mut e = json!({
                "resource": r.plural,
                "responseKind": kind,
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                e["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                e["categories"] = json!(r.categories);
            }
            let mut subs = Vec::new();
            if r.status_subresource {
                subs.push(json!({
                    "subresource": "status",
                    "responseKind": kind,
                    "verbs": STATUS_VERBS,
                }));
            }
            if r.scale_subresource {
                subs.push(json!({
                    "subresource": "scale",
                    "responseKind": { "group": "autoscaling", "version": "v1", "kind": "Scale" },
                    "verbs": SCALE_VERBS,
                }));
            }
            if r.group.is_empty() {
                for (plural, sub, kind, verbs) in KUBELET_SUBRESOURCES {
                    if *plural == r.plural {
                        subs.push(json!({
                            "subresource": sub,
                            "responseKind": { "group": "", "version": "v1", "kind": kind },
                            "verbs": verbs,
                        }));
                    }
                }
            }
            for (sub, verbs) in part_subresources(r) {
                subs.push(json!({
                    "subresource": sub,
                    "responseKind": kind,
                    "verbs": verbs,
                }));
            }
            for (plural, sub, group, kind) in CREATE_SUBRESOURCES {
                if r.group.is_empty() && *plural == r.plural {
                    subs.push(json!({
                        "subresource": sub,
                        "responseKind": { "group": group, "version": "v1", "kind": kind },
                        "verbs": ["create"],
                    }));
                }
            }
            if !subs.is_empty() {
                e["subresources"] = json!(subs);
            }
            e
        })
        .collect();
    json!({ "version": g.version, "resources": resources, "freshness": "Current" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn picks_aggregated_version_from_kubectl_accept() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json",
        ));
        assert_eq!(aggregated_version(&h), Some("v2"));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*"),
        );
        assert_eq!(aggregated_version(&h), None);
    }

    #[test]
    fn aggregated_groups_carry_resources() {
        let apps = REGISTRY.group_version("apps", "v1").expect("apps/v1");
        let g = aggregated_group(&[apps]);
        assert_eq!(g["metadata"]["name"], "apps");
        let deploy = &g["versions"][0]["resources"][0];
        assert_eq!(deploy["resource"], "deployments");
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["shortNames"][0], "deploy");
        assert_eq!(deploy["subresources"][0]["subresource"], "status");
    }

    #[test]
    fn core_subresources_are_listed_as_upstream() {
        let core = REGISTRY.group_version("", "v1").expect("v1");
        let g = aggregated_group(&[core]);
        let subs = |resource: &str| -> Vec<Value> {
            g["versions"][0]["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["resource"] == resource)
                .and_then(|r| r["subresources"].as_array().cloned())
                .unwrap_or_default()
        };
        let find = |resource: &str, sub: &str| {
            subs(resource)
                .into_iter()
                .find(|s| s["subresource"] == sub)
                .unwrap_or_else(|| panic!("{resource}/{sub} listed"))
        };
        let token = find("serviceaccounts", "token");
        assert_eq!(
            token["responseKind"],
            json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"})
        );
        assert_eq!(token["verbs"], json!(["create"]));
        for (resource, kind) in [
            ("pods", "PodProxyOptions"),
            ("services", "ServiceProxyOptions"),
            ("nodes", "NodeProxyOptions"),
        ] {
            let proxy = find(resource, "proxy");
            assert_eq!(proxy["responseKind"]["kind"], kind);
            assert_eq!(proxy["verbs"], json!(PROXY_VERBS));
        }
    }
}
