//! The Endpoints and EndpointSlice controllers: for every Service with a selector, the
//! addresses of the pods it selects, with target ports resolved (named ports from the pods'
//! container ports), as upstream's `endpoint` and `endpointslice` controllers.
//!
//! Endpoints: ready pods in `addresses`, not-ready ones in `notReadyAddresses`, terminating
//! pods left out (all of them in `addresses` with `publishNotReadyAddresses`), grouped into
//! subsets by port set; label `endpoints.kubernetes.io/managed-by: endpoint-controller`.
//! EndpointSlices: one per address type and port set (at most 100 endpoints each), every
//! endpoint with `ready`/`serving`/`terminating` conditions, terminating pods included;
//! labels `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`, owned by
//! the Service; an empty placeholder slice when nothing is selected.
//!
//! Pods come from a watch cache (a reflector) whose events also trigger the syncs, so the
//! cache is current when a sync runs; Endpoints and slices are read live before writing.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt as _};
use tokio::sync::watch;

use crate::ReconcileError;
use crate::util::{self, Backoff, Shared};

const ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
const ENDPOINTS_CONTROLLER: &str = "endpoint-controller";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
const HEADLESS: &str = "service.kubernetes.io/headless";
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// A port set: (service port name, resolved number, protocol), sorted.
type PortSet = Vec<(String, i32, String)>;

struct Ctx {
    shared: Arc<Shared>,
    pods: Store<Pod>,
    backoff: Backoff,
}

/// Which of the two controllers.
#[derive(Clone, Copy, Debug)]
enum Flavor {
    Endpoints,
    Slices,
}

pub(crate) async fn run_endpoints(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    // Endpoints of deleted Services go too: a second loop over Endpoints objects.
    let cleanup = cleanup_endpoints(shared.clone(), stop.clone());
    let main = run_flavor(Flavor::Endpoints, shared, stop);
    futures::future::join(main, cleanup).await;
}

pub(crate) async fn run_slices(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    run_flavor(Flavor::Slices, shared, stop).await;
}

async fn run_flavor(flavor: Flavor, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let (pods, writer) = reflector::store::<Pod>();
    let pod_events = reflector::reflector(
        writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    // A pod event syncs every selecting Service of its namespace (and, since the old labels
    // are unknown here, every Service of the namespace that the pod's endpoints may be in).
    let controller = controller.watches_stream(pod_events, move |pod: Pod| {
        let ns = pod.namespace().unwrap_or_default();
        services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
            .filter(|s| selector_of(s).is_some())
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect::<Vec<_>>()
    });
    let controller = match flavor {
        Flavor::Endpoints => controller.watches(
            Api::<Endpoints>::all(client),
            watcher::Config::default(),
            |ep: Endpoints| {
                Some(
                    ObjectRef::<Service>::new(&ep.name_any())
                        .within(&ep.namespace().unwrap_or_default()),
                )
            },
        ),
        Flavor::Slices => controller.owns(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        ),
    };
    let controller = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        pods,
        backoff: Backoff::default(),
    });
    let name = match flavor {
        Flavor::Endpoints => "endpoints",
        Flavor::Slices => "endpointslice",
    };
    util::drain(
        name,
        abandon,
        controller.run(
            move |svc, ctx| async move {
                let key = util::key_of(svc.meta());
                // Never wait inside a reconcile for the pod cache: the cache's stream is
                // polled by this same controller, so a waiting reconcile could hold it up.
                if !matches!(
                    futures::FutureExt::now_or_never(ctx.pods.wait_until_ready()),
                    Some(Ok(()))
                ) {
                    return Ok(Action::requeue(std::time::Duration::from_millis(200)));
                }
                let r = match flavor {
                    Flavor::Endpoints => sync_endpoints(&svc, &ctx).await,
                    Flavor::Slices => sync_slices(&svc, &ctx).await,
                };
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |svc, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(svc.meta())),
            ctx,
        ),
    )
    .await;
}

fn selector_of(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// What the controllers need to know about one selected pod.
struct Member<'a> {
    pod: &'a Pod,
    ip: String,
    ready: bool,
    terminating: bool,
    /// (service port, resolved port number) for the ports this pod serves.
    ports: Vec<(&'a ServicePort, i32)>,
}

/// The pods of a Service that get endpoints, with their resolved ports.
fn members<'a>(svc: &'a Service, pods: &'a [Arc<Pod>]) -> Vec<Member<'a>> {
    let Some(selector) = selector_of(svc) else {
        return Vec::new();
    };
    let ns = svc.namespace().unwrap_or_default();
    let service_ports: &[ServicePort] = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    let mut out = Vec::new();
    for pod in pods {
        let pod: &Pod = pod;
        if pod.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        if matches!(util::pod_phase(pod), "Succeeded" | "Failed") {
            continue;
        }
        let ports = service_ports
            .iter()
            .filter_map(|sp| resolve_port(sp, pod).map(|n| (sp, n)))
            .collect();
        out.push(Member {
            pod,
            ip,
            ready: util::pod_ready(pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            ports,
        });
    }
    out.sort_by(|a, b| {
        a.ip.cmp(&b.ip)
            .then_with(|| a.pod.name_any().cmp(&b.pod.name_any()))
    });
    out
}

/// A Service port's target on `pod`: a number, or a named container port (same protocol).
fn resolve_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.uid(),
        ..ObjectReference::default()
    }
}

fn service_labels(svc: &Service, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc.labels().clone();
    for (k, v) in extra {
        labels.insert((*k).into(), (*v).into());
    }
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS.into(), String::new());
    } else {
        labels.remove(HEADLESS);
    }
    labels
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// The Endpoints subsets of a Service: addresses grouped by their port set (upstream's
/// `RepackSubsets`), sorted.
fn subsets(svc: &Service, members: &[Member<'_>]) -> Vec<EndpointSubset> {
    let publish = publish_not_ready(svc);
    let svc_name = svc.name_any();
    let mut groups: BTreeMap<PortSet, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for m in members {
        if m.terminating && !publish {
            continue;
        }
        if m.ports.is_empty() {
            continue;
        }
        let spec = m.pod.spec.as_ref();
        let hostname = spec
            .and_then(|s| s.hostname.clone())
            .filter(|_| spec.and_then(|s| s.subdomain.as_deref()) == Some(svc_name.as_str()));
        let addr = EndpointAddress {
            ip: m.ip.clone(),
            hostname,
            node_name: spec.and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(m.pod)),
        };
        let mut key: PortSet = m
            .ports
            .iter()
            .map(|(sp, n)| {
                (
                    sp.name.clone().unwrap_or_default(),
                    *n,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            })
            .collect();
        key.sort();
        let entry = groups.entry(key).or_default();
        if m.ready || publish {
            entry.0.push(addr);
        } else {
            entry.1.push(addr);
        }
    }
    let app_protocol = |name: &str| {
        svc.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| ps.iter().find(|p| p.name.as_deref().unwrap_or("") == name))
            .and_then(|p| p.app_protocol.clone())
    };
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        app_protocol: app_protocol(&name),
                        name: (!name.is_empty()).then_some(name),
                        port,
                        protocol: Some(protocol),
                    })
                    .collect(),
            ),
        })
        .collect()
}

#[tracing::instrument(skip_all, fields(service = %util::key_of(svc.meta())))]
async fn sync_endpoints(svc: &Service, ctx: &Ctx) -> Result<Action, ReconcileError> {
    if selector_of(svc).is_none() || svc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let pods = ctx.pods.state();
    let members = members(svc, &pods);
    let subsets = subsets(svc, &members);
    let labels = service_labels(svc, &[(ENDPOINTS_MANAGED_BY, ENDPOINTS_CONTROLLER)]);
    let api: Api<Endpoints> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let subsets = (!subsets.is_empty()).then_some(subsets);
    match api.get_opt(&name).await? {
        Some(mut current) => {
            if current.subsets == subsets && current.metadata.labels.as_ref() == Some(&labels) {
                return Ok(Action::await_change());
            }
            current.subsets = subsets;
            current.metadata.labels = Some(labels);
            api.replace(&name, &PostParams::default(), &current).await?;
            tracing::debug!("updated endpoints");
        }
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                subsets,
            };
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => tracing::debug!("created endpoints"),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Action::requeue(std::time::Duration::from_millis(100)));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

/// Deletes Endpoints whose Service is gone (upstream deletes them on the Service's deletion
/// and, at start, every leftover one except leader-election records).
async fn cleanup_endpoints(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let controller = Controller::new(
        Api::<Endpoints>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Service>::all(client),
        watcher::Config::default(),
        |svc: Service| {
            Some(
                ObjectRef::<Endpoints>::new(&svc.name_any())
                    .within(&svc.namespace().unwrap_or_default()),
            )
        },
    )
    .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let backoff = Arc::new(Backoff::default());
    util::drain(
        "endpoints-cleanup",
        abandon,
        controller.run(
            |ep, shared| async move {
                if ep.annotations().contains_key(LEADER_ANNOTATION) {
                    return Ok(Action::await_change());
                }
                let ns = ep.namespace().unwrap_or_default();
                let svcs: Api<Service> = Api::namespaced(shared.client.clone(), &ns);
                if svcs.get_opt(&ep.name_any()).await?.is_none() {
                    let eps: Api<Endpoints> = Api::namespaced(shared.client.clone(), &ns);
                    match eps.delete(&ep.name_any(), &DeleteParams::default()).await {
                        Ok(_) | Err(kube::Error::Api(_)) => {}
                        Err(e) => return Err(ReconcileError::from(e)),
                    }
                }
                Ok::<_, ReconcileError>(Action::await_change())
            },
            move |ep, _e, _| util::error_action(&backoff, &util::key_of(ep.meta())),
            shared,
        ),
    )
    .await;
}

/// Desired slices: (address type, ports, endpoints), at most 100 endpoints each.
fn desired_slices(
    svc: &Service,
    members: &[Member<'_>],
) -> Vec<(String, Vec<SlicePort>, Vec<Endpoint>)> {
    let publish = publish_not_ready(svc);
    let mut groups: BTreeMap<(String, PortSet), Vec<Endpoint>> = BTreeMap::new();
    let mut app_protocols: BTreeMap<String, Option<String>> = BTreeMap::new();
    for m in members {
        let family = if m.ip.contains(':') { "IPv6" } else { "IPv4" };
        let mut ports: PortSet = m
            .ports
            .iter()
            .map(|(sp, n)| {
                let name = sp.name.clone().unwrap_or_default();
                app_protocols.insert(name.clone(), sp.app_protocol.clone());
                (
                    name,
                    *n,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            })
            .collect();
        ports.sort();
        let spec = m.pod.spec.as_ref();
        let svc_name = svc.name_any();
        let hostname = spec
            .and_then(|s| s.hostname.clone())
            .filter(|_| spec.and_then(|s| s.subdomain.as_deref()) == Some(svc_name.as_str()));
        groups
            .entry((family.into(), ports))
            .or_default()
            .push(Endpoint {
                addresses: vec![m.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(publish || (m.ready && !m.terminating)),
                    serving: Some(publish || m.ready),
                    terminating: Some(m.terminating),
                }),
                hostname,
                node_name: spec.and_then(|s| s.node_name.clone()),
                target_ref: Some(target_ref(m.pod)),
                ..Endpoint::default()
            });
    }
    let mut out = Vec::new();
    for ((family, ports), endpoints) in groups {
        let ports: Vec<SlicePort> = ports
            .into_iter()
            .map(|(name, port, protocol)| SlicePort {
                app_protocol: app_protocols.get(&name).cloned().flatten(),
                name: Some(name),
                port: Some(port),
                protocol: Some(protocol),
            })
            .collect();
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push((family.clone(), ports.clone(), chunk.to_vec()));
        }
    }
    out
}

#[tracing::instrument(skip_all, fields(service = %util::key_of(svc.meta())))]
async fn sync_slices(svc: &Service, ctx: &Ctx) -> Result<Action, ReconcileError> {
    if selector_of(svc).is_none() || svc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let pods = ctx.pods.state();
    let members = members(svc, &pods);
    let mut desired = desired_slices(svc, &members);
    if desired.is_empty() {
        // Upstream keeps one empty placeholder slice for a Service that selects nothing.
        desired.push(("IPv4".into(), Vec::new(), Vec::new()));
    }
    let labels = service_labels(
        svc,
        &[(SERVICE_NAME, &name), (SLICE_MANAGED_BY, SLICE_CONTROLLER)],
    );
    let api: Api<EndpointSlice> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let mut existing = api
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME}={name},{SLICE_MANAGED_BY}={SLICE_CONTROLLER}"
        )))
        .await?
        .items;
    existing.retain(|s| s.metadata.deletion_timestamp.is_none());
    existing.sort_by_key(|s| s.name_any());
    let owner = util::controller_ref(svc);
    let mut reused = vec![false; existing.len()];
    for (family, ports, endpoints) in desired {
        let ports = (!ports.is_empty()).then_some(ports);
        // Prefer a slice of the same address type and ports; then any of the same type.
        let pick = existing
            .iter()
            .enumerate()
            .position(|(i, s)| !reused[i] && s.address_type == family && s.ports == ports)
            .or_else(|| {
                existing
                    .iter()
                    .enumerate()
                    .position(|(i, s)| !reused[i] && s.address_type == family)
            });
        if let Some(i) = pick {
            reused[i] = true;
            let cur = &existing[i];
            if cur.endpoints == endpoints
                && cur.ports == ports
                && cur.metadata.labels.as_ref() == Some(&labels)
            {
                continue;
            }
            let mut next = cur.clone();
            next.endpoints = endpoints;
            next.ports = ports;
            next.metadata.labels = Some(labels.clone());
            api.replace(&cur.name_any(), &PostParams::default(), &next)
                .await?;
        } else {
            let slice = EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                address_type: family,
                endpoints,
                ports,
            };
            api.create(&PostParams::default(), &slice).await?;
        }
    }
    for (i, s) in existing.iter().enumerate() {
        if !reused[i] {
            match api.delete(&s.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_ports_resolve_from_container_ports_and_group_by_port_set() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}
        }))
        .unwrap();
        let pod = |name: &str, ip: &str, port: i32, ready: bool| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}, "uid": name},
                    "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
                    "status": {"phase": "Running", "podIP": ip, "conditions": [
                        {"type": "Ready", "status": if ready {"True"} else {"False"}}]}
                }))
                .unwrap(),
            )
        };
        let pods = vec![
            pod("a", "10.0.0.1", 8080, true),
            pod("b", "10.0.0.2", 8080, false),
            pod("c", "10.0.0.3", 9090, true),
        ];
        let m = members(&svc, &pods);
        let subsets = subsets(&svc, &m);
        assert_eq!(subsets.len(), 2);
        let s8080 = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        assert_eq!(s8080.addresses.as_ref().unwrap()[0].ip, "10.0.0.1");
        assert_eq!(
            s8080.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.0.0.2"
        );
        let slices = desired_slices(&svc, &m);
        assert_eq!(slices.len(), 2);
        let (_, _, eps) = slices
            .iter()
            .find(|(_, p, _)| p[0].port == Some(8080))
            .unwrap();
        let not_ready = eps.iter().find(|e| e.addresses[0] == "10.0.0.2").unwrap();
        assert_eq!(not_ready.conditions.as_ref().unwrap().ready, Some(false));
    }
}
