//! Service cluster IPs and node ports: cluster IPs from the service CIDR (K3s default
//! 10.43.0.0/16), node ports from 30000-32767, with no duplicates. Each allocation is a key
//! written in the same transaction as its Service and removed in the same transaction as the
//! Service's deletion, so two Services can never hold one IP or port, whatever the number of
//! apiservers. A cluster IP's record is an `IPAddress` object at `/registry/ipaddresses/<ip>`
//! (networking.k8s.io/v1, upstream's KEP-1880 allocator: name = the IP, labels
//! `ipaddress.kubernetes.io/ip-family` and `ipaddress.kubernetes.io/managed-by:
//! ipallocator.k8s.io`, `spec.parentRef` naming the Service), served like any stored object;
//! an `IPAddress` a user creates reserves its IP the same way. A node port's record is the bare
//! key `/registry/rk3s/nodeports/<port>` (upstream keeps a bitmap). [`migrate_legacy_ips`]
//! moves the bare IP keys older rk3s wrote (`/registry/rk3s/serviceips/<ip>`) to `IPAddress`
//! objects at start.
//!
//! Cluster IPs are drawn from the union of the ServiceCIDRs ([`service_ranges`]: upstream's
//! MultiCIDR allocator, the default `kubernetes` ServiceCIDR first — created by
//! [`crate::bootstrap`] from `--service-cidr` —, then the others by name; a range is used up
//! before the next is tried); a requested IP must lie in one of them. `cidr_controller` is
//! upstream's ServiceCIDR controller (finalizer, `Ready` condition, deletion blocked while
//! IPs would be orphaned).
//!
//! Not as upstream: IPv4 only (IPv6 CIDRs are served and validated but never drawn from); with
//! no usable ServiceCIDR left, the `--service-cidr` range is used (upstream's default
//! ServiceCIDR controller would re-create `kubernetes`); within each range, the network,
//! broadcast and first addresses are never drawn (upstream reserves the first only for the
//! `kubernetes` Service's range); no repair loop re-creates an `IPAddress` a user deletes from
//! under its Service.

use std::net::Ipv4Addr;

use rk3s_datastore::{
    Compare, CompareOp, CompareTarget, DeleteRequest, PutRequest, RangeRequest, TxnOp,
    TxnOpResponse, TxnRequest, WriteOutcome,
};
use serde_json::{Value, json};

use crate::registry::ResourceInfo;
use crate::rest::object_meta_str as meta_str;
use crate::server::AppState;
use crate::status::{ApiError, Cause};

mod cidr_controller;
mod validation;

pub(crate) use cidr_controller::spawn as spawn_cidr_controller;

use validation::{needs_health_check, strings_of};

/// Where allocated IPs are recorded: `IPAddress` objects (upstream's storage prefix).
const IP_PREFIX: &str = "/registry/ipaddresses/";
/// Where rk3s recorded allocated IPs before `IPAddress` objects (value `<namespace>/<name>`).
const LEGACY_IP_PREFIX: &str = "/registry/rk3s/serviceips/";
/// The `IPAddress` label naming the IP family (upstream's `LabelIPAddressFamily`).
const FAMILY_LABEL: &str = "ipaddress.kubernetes.io/ip-family";
/// The `IPAddress` label naming the allocator (upstream's `LabelManagedBy`).
const MANAGED_BY_LABEL: &str = "ipaddress.kubernetes.io/managed-by";
/// The cluster IP allocator's name (upstream's `ipallocator.ControllerName`).
const ALLOCATOR_NAME: &str = "ipallocator.k8s.io";
/// Where allocated node ports are recorded.
const PORT_PREFIX: &str = "/registry/rk3s/nodeports/";
/// The node port range, as upstream's default `--service-node-port-range`.
const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

fn port_key(port: i64) -> Vec<u8> {
    format!("{PORT_PREFIX}{port}").into_bytes()
}

/// Whether a service type gets node ports.
fn has_node_ports(obj: &Value) -> bool {
    matches!(
        obj.get("spec")
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str),
        Some("NodePort") | Some("LoadBalancer")
    )
}

/// Whether ports without a node port get one (upstream's `shouldAllocateNodePorts`:
/// `NodePort`, and `LoadBalancer` unless `allocateLoadBalancerNodePorts` is false).
fn allocates_node_ports(obj: &Value) -> bool {
    let spec = obj.get("spec");
    match spec.and_then(|s| s.get("type")).and_then(Value::as_str) {
        Some("NodePort") => true,
        Some("LoadBalancer") => {
            spec.and_then(|s| s.get("allocateLoadBalancerNodePorts"))
                .and_then(Value::as_bool)
                != Some(false)
        }
        _ => false,
    }
}

fn ports_of(obj: &Value) -> &[Value] {
    obj.get("spec")
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn node_port_of(p: &Value) -> Option<i64> {
    p.get("nodePort")
        .and_then(Value::as_i64)
        .filter(|n| *n != 0)
}

/// The node ports a service asks for (`Some`) or needs allocated (`None`), per port index;
/// ports that get none are left out.
fn wanted_ports(obj: &Value) -> Vec<(usize, Option<i64>)> {
    if !has_node_ports(obj) {
        return Vec::new();
    }
    let allocate = allocates_node_ports(obj);
    ports_of(obj)
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match node_port_of(p) {
            Some(n) => Some((i, Some(n))),
            None if allocate => Some((i, None)),
            None => None,
        })
        .collect()
}

/// A `LoadBalancer` service's health-check node port (`externalTrafficPolicy: Local`).
fn health_check_port(obj: &Value) -> Option<i64> {
    needs_health_check(obj)
        .then(|| {
            obj.pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_i64)
        })
        .flatten()
        .filter(|p| *p != 0)
}

/// The node ports a stored service holds (each once: TCP and UDP may share one), its
/// health-check node port included.
fn held_ports(obj: &Value) -> Vec<i64> {
    let mut held: Vec<i64> = wanted_ports(obj)
        .into_iter()
        .filter_map(|(_, p)| p)
        .chain(health_check_port(obj))
        .collect();
    held.sort_unstable();
    held.dedup();
    held
}

/// The 500 upstream answers when the health-check node port asked for cannot be had (its
/// allocator's error, wrapped as an internal error).
fn health_check_error(port: i64, why: &str) -> ApiError {
    let message = format!("failed to allocate requested HealthCheck NodePort {port}: {why}");
    ApiError {
        details: Some(json!({ "causes": [{ "message": message }] })),
        ..ApiError::internal(&message)
    }
}

const PORT_TAKEN: &str = "provided port is already allocated";
const PORT_OUT_OF_RANGE: &str =
    "provided port is not in the valid range. The range of valid ports is 30000-32767";

fn out_of_range(info: &ResourceInfo, name: &str, i: usize, port: i64) -> ApiError {
    invalid_port(info, name, i, port, PORT_OUT_OF_RANGE)
}

fn invalid_port(info: &ResourceInfo, name: &str, i: usize, port: i64, why: &str) -> ApiError {
    ApiError::invalid(
        info,
        name,
        vec![Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {port}: {why}"),
            field: format!("spec.ports[{i}].nodePort"),
        }],
    )
}

/// An IPv4 service CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    base: u32,
    prefix: u8,
}

impl Default for ServiceCidr {
    fn default() -> Self {
        ServiceCidr {
            base: u32::from(Ipv4Addr::new(10, 43, 0, 0)),
            prefix: 16,
        }
    }
}

impl std::str::FromStr for ServiceCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("service CIDR {s:?} is not of the form a.b.c.d/n"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("service CIDR {s:?}: {ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("service CIDR {s:?}: the prefix must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(ServiceCidr {
            base: u32::from(ip) & mask,
            prefix,
        })
    }
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl ServiceCidr {
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// Whether `other` lies wholly inside this range.
    fn covers(&self, other: &ServiceCidr) -> bool {
        other.prefix >= self.prefix && self.contains(Ipv4Addr::from(other.base))
    }

    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == self.base
    }

    /// The first usable address: the `kubernetes` Service's.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// A random address, leaving out the network and broadcast addresses and the first one.
    fn random(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 2 + rand::random_range(0..self.size() - 3))
    }

    /// The addresses [`Self::random`] draws from, in order.
    fn usable(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        (self.base + 2..self.base + self.size() - 1).map(Ipv4Addr::from)
    }
}

fn ip_key(ip: Ipv4Addr) -> Vec<u8> {
    format!("{IP_PREFIX}{ip}").into_bytes()
}

/// The `IPAddress` object recording that the Service `namespace/name` holds `ip`, as upstream's
/// allocator creates it (`createIPAddress`), encoded for the store.
fn ip_record(ip: Ipv4Addr, namespace: &str, name: &str) -> Result<Vec<u8>, ApiError> {
    let obj = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IPAddress",
        "metadata": {
            "name": ip.to_string(),
            "uid": crate::rest::new_uid(),
            "creationTimestamp": crate::time::now_rfc3339(),
            "labels": { FAMILY_LABEL: "IPv4", MANAGED_BY_LABEL: ALLOCATOR_NAME },
        },
        "spec": {
            "parentRef": { "group": "", "resource": "services", "namespace": namespace, "name": name },
        },
    });
    crate::rest::encode_for_store(&obj)
}

/// Moves the bare IP records of older rk3s (`/registry/rk3s/serviceips/<ip>`, value
/// `<namespace>/<name>`) to `IPAddress` objects, each in one transaction (the object created
/// unless one exists, the old key deleted), so that an upgraded cluster keeps its allocations.
/// Idempotent: a second run finds nothing to move.
pub(crate) async fn migrate_legacy_ips(state: &AppState) -> Result<usize, ApiError> {
    let listed = state
        .store
        .list(
            LEGACY_IP_PREFIX.as_bytes(),
            rk3s_datastore::ListOptions::default(),
        )
        .await?;
    let mut moved = 0;
    for kv in listed.kvs {
        let key = String::from_utf8_lossy(&kv.key).to_string();
        let Some(ip) = key
            .strip_prefix(LEGACY_IP_PREFIX)
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            tracing::warn!(key, "leaving an unreadable legacy service IP record");
            continue;
        };
        let owner = String::from_utf8_lossy(&kv.value).to_string();
        let (namespace, name) = owner.split_once('/').unwrap_or(("", owner.as_str()));
        let new_key = ip_key(ip);
        state
            .store
            .txn(TxnRequest {
                compare: vec![Compare::new(
                    new_key.clone(),
                    CompareOp::Equal,
                    CompareTarget::ModRevision(0),
                )],
                success: vec![
                    TxnOp::Put(PutRequest {
                        key: new_key,
                        value: ip_record(ip, namespace, name)?,
                        ..PutRequest::default()
                    }),
                    TxnOp::Delete(DeleteRequest {
                        key: kv.key.clone(),
                        ..DeleteRequest::default()
                    }),
                ],
                failure: vec![TxnOp::Delete(DeleteRequest {
                    key: kv.key.clone(),
                    ..DeleteRequest::default()
                })],
            })
            .await?;
        moved += 1;
    }
    if moved > 0 {
        tracing::info!(
            moved,
            "moved legacy service IP records to IPAddress objects"
        );
    }
    Ok(moved)
}

/// Whether a service type has a cluster IP field at all (upstream's `needsClusterIP`:
/// every type but `ExternalName`; a headless service's is `None`).
fn needs_cluster_ip(obj: &Value) -> bool {
    obj.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName")
}

/// The cluster IP a stored service holds (has recorded under [`IP_PREFIX`]).
fn held_ip(obj: &Value) -> Option<Ipv4Addr> {
    if !needs_cluster_ip(obj) {
        return None;
    }
    obj.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse().ok())
}

/// Sets the allocated cluster IP, and the IPv4 family fields that go with it where
/// [`init_ip_families`] has not set them.
fn set_cluster_ip(spec: &mut serde_json::Map<String, Value>, ip: Ipv4Addr) {
    spec.insert("clusterIP".into(), json!(ip.to_string()));
    spec.insert("clusterIPs".into(), json!([ip.to_string()]));
    if spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        spec.insert("ipFamilies".into(), json!(["IPv4"]));
    }
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
    }
}

/// Upstream's `normalizeClusterIPs` on create: a `clusterIP` without `clusterIPs` (an old
/// client) fills `clusterIPs` in.
fn normalize_cluster_ips_create(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ips_empty = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if !ip.is_empty() && ips_empty {
        spec.insert("clusterIPs".into(), json!([ip]));
    }
}

/// Upstream's `normalizeClusterIPs` on update: `clusterIPs` left out by an old client that
/// kept `clusterIP` are taken from the stored service; a changed `clusterIP` with unchanged
/// `clusterIPs` replaces them (for validation to refuse), a cleared one clears them.
fn normalize_cluster_ips_update(old: &Value, new: &mut Value) {
    let old_spec = old.get("spec").cloned().unwrap_or_default();
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let ip_of = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let (old_ip, new_ip) = (
        ip_of(old_spec.get("clusterIP")),
        ip_of(spec.get("clusterIP")),
    );
    let old_ips = strings_of(&old_spec, "clusterIPs").unwrap_or_default();
    let new_ips = strings_of(&Value::Object(spec.clone()), "clusterIPs").unwrap_or_default();
    if !old_ips.is_empty() && new_ips.is_empty() && old_ip == new_ip {
        spec.insert("clusterIPs".into(), json!(old_ips));
    }
    let same_ips =
        strings_of(&Value::Object(spec.clone()), "clusterIPs").unwrap_or_default() == old_ips;
    if old_ip != new_ip && same_ips {
        if !old_ip.is_empty() && new_ip.is_empty() {
            spec.remove("clusterIPs");
        } else {
            spec.insert("clusterIPs".into(), json!([new_ip]));
        }
    }
}

/// Upstream's `initIPFamilyFields` for rk3s' single-stack IPv4 service CIDR: the policy
/// inferred when left out (`RequireDualStack` for two IPs or families, else `SingleStack`),
/// the IP fields checked (`ValidateServiceClusterIPsRelatedFields`), families inferred from
/// the IPs asked for (`IPv6 is not configured on this cluster`), dual-stack and IPv6 refused
/// (`this cluster is not configured for dual-stack services`, `not configured on this
/// cluster`; headless services without a selector excepted, as upstream), `IPv4` by default.
fn init_ip_families(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    if validation::type_of(obj) == "ExternalName" {
        return Ok(());
    }
    let name = meta_str(obj, "name").to_string();
    let headless_selectorless = validation::is_headless(obj)
        && obj
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .is_none_or(|m| m.is_empty());
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let ips = strings_of(&Value::Object(spec.clone()), "clusterIPs").unwrap_or_default();
    let mut families = strings_of(&Value::Object(spec.clone()), "ipFamilies").unwrap_or_default();
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        let policy = if ips.len() == 2 || families.len() == 2 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        spec.insert("ipFamilyPolicy".into(), json!(policy));
    }
    let causes = validation::cluster_ips_related(&json!({ "spec": spec.clone() }));
    if !causes.is_empty() {
        return Err(ApiError::invalid(info, &name, causes));
    }
    let mut causes = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" {
            break;
        }
        let family = validation::family_of(ip);
        if i >= families.len() {
            if family == "IPv6" {
                causes.push(crate::validation::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &validation::go_list("string", Some(&ips)),
                    "IPv6 is not configured on this cluster",
                ));
            } else {
                families.push(family.to_string());
            }
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(info, &name, causes));
    }
    if !headless_selectorless {
        if spec.get("ipFamilyPolicy").and_then(Value::as_str) == Some("RequireDualStack") {
            causes.push(crate::validation::invalid(
                "spec.ipFamilyPolicy",
                &crate::validation::q("RequireDualStack"),
                "this cluster is not configured for dual-stack services",
            ));
        }
        for (i, family) in families.iter().enumerate() {
            if family != "IPv4" {
                causes.push(crate::validation::invalid(
                    format!("spec.ipFamilies[{i}]"),
                    &crate::validation::q(family),
                    "not configured on this cluster",
                ));
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(info, &name, causes));
        }
    }
    if families.is_empty() {
        families.push("IPv4".into());
    }
    spec.insert("ipFamilies".into(), json!(families));
    Ok(())
}

/// What a new Service goes through before it is written (also on dry runs), in upstream's
/// order — the generic store's `BeginCreate` (the service REST's allocation) before the
/// strategy's validation, so that a request failing both gets the allocation's error: IP
/// fields normalized and their families initialized, then the cluster IP, node ports and
/// health-check node port asked for checked as their allocation would (in range, not held by
/// another Service: the same errors), then core's `ValidateObjectMeta` and upstream's
/// `ValidateService` (a health-check node port still to be drawn counts as given). Nothing is
/// taken here: the write takes everything in one transaction ([`create`]), which checks again.
/// A dry run gets what a real create would draw (free when looked at), as upstream's dry-run
/// allocators fill them in.
pub(crate) async fn prepare_create(
    state: &AppState,
    info: &ResourceInfo,
    obj: &mut Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    normalize_cluster_ips_create(obj);
    init_ip_families(info, obj)?;
    check_create_allocations(state, info, obj, dry_run).await?;
    let mut checked = obj.clone();
    if needs_health_check(&checked) && health_check_port(&checked).is_none() {
        checked["spec"]["healthCheckNodePort"] = json!(*NODE_PORTS.start());
    }
    let mut causes = crate::validation::object_meta(&checked, None);
    causes.extend(validation::validate(&checked));
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(info, meta_str(obj, "name"), causes))
    }
}

/// Whether an allocation record (`ip_key`, `port_key`) is held.
async fn is_held(state: &AppState, key: &[u8]) -> Result<bool, ApiError> {
    Ok(state.store.get(key, 0).await?.1.is_some())
}

/// A random node port neither in `exclude` nor held, as upstream's `AllocateNext`.
async fn free_port(state: &AppState, exclude: &[i64]) -> Result<i64, ApiError> {
    for _ in 0..64 {
        let n = rand::random_range(NODE_PORTS);
        if !exclude.contains(&n) && !is_held(state, &port_key(n)).await? {
            return Ok(n);
        }
    }
    Err(ApiError::internal(
        "failed to allocate a nodePort: range is full",
    ))
}

/// A cluster IP not held, as upstream's MultiCIDR `AllocateNext`: the ranges in order (see
/// [`service_ranges`]), in each a few random picks, then a scan of the range for the first
/// free address (what tells a full range from an unlucky draw).
async fn free_ip(state: &AppState, ranges: &[ServiceCidr]) -> Result<Ipv4Addr, ApiError> {
    let mut held: Option<std::collections::BTreeSet<Ipv4Addr>> = None;
    for range in ranges {
        for _ in 0..16 {
            let ip = range.random();
            if !is_held(state, &ip_key(ip)).await? {
                return Ok(ip);
            }
        }
        if held.is_none() {
            held = Some(held_ips(state).await?);
        }
        if let Some(ip) = range
            .usable()
            .find(|ip| !held.as_ref().is_some_and(|h| h.contains(ip)))
        {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(
        "failed to allocate a serviceIP: range is full",
    ))
}

/// Every IPv4 address recorded by an `IPAddress` object.
async fn held_ips(state: &AppState) -> Result<std::collections::BTreeSet<Ipv4Addr>, ApiError> {
    let listed = state
        .store
        .list(
            IP_PREFIX.as_bytes(),
            rk3s_datastore::ListOptions {
                keys_only: true,
                ..rk3s_datastore::ListOptions::default()
            },
        )
        .await?;
    Ok(listed
        .kvs
        .iter()
        .filter_map(|kv| {
            std::str::from_utf8(&kv.key)
                .ok()?
                .strip_prefix(IP_PREFIX)?
                .parse()
                .ok()
        })
        .collect())
}

/// The IPv4 ranges cluster IPs come from (upstream's MultiCIDR allocator): the CIDRs of the
/// ServiceCIDRs that are not being deleted and are Ready (no Ready condition counts as Ready,
/// as upstream's allocator assumes when no controller has looked at them yet), the default
/// `kubernetes` one first, then by name. CIDRs rk3s cannot allocate from (IPv6, prefixes
/// outside 8–30) are left out. With none left, the `--service-cidr` range.
pub(crate) async fn service_ranges(state: &AppState) -> Result<Vec<ServiceCidr>, ApiError> {
    let listed = state
        .store
        .list(
            b"/registry/servicecidrs/",
            rk3s_datastore::ListOptions::default(),
        )
        .await?;
    let mut ranges: Vec<(bool, String, ServiceCidr)> = Vec::new();
    for kv in &listed.kvs {
        let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        if obj
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
        {
            continue;
        }
        let ready =
            crate::validation::items(obj.get("status").unwrap_or(&Value::Null), "conditions")
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                .and_then(|c| c.get("status").and_then(Value::as_str))
                .is_none_or(|s| s == "True");
        if !ready {
            continue;
        }
        let name = meta_str(&obj, "name").to_string();
        for cidr in crate::validation::items(obj.get("spec").unwrap_or(&Value::Null), "cidrs") {
            if let Some(c) = cidr.as_str().and_then(|c| c.parse::<ServiceCidr>().ok()) {
                ranges.push((
                    name != crate::bootstrap::DEFAULT_SERVICE_CIDR,
                    name.clone(),
                    c,
                ));
            }
        }
    }
    ranges.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut out: Vec<ServiceCidr> = ranges.into_iter().map(|(_, _, c)| c).collect();
    out.dedup();
    if out.is_empty() {
        out.push(state.service_cidr);
    }
    Ok(out)
}

/// The allocation checks of a create (upstream's `allocateCreate` after the IP families): the
/// cluster IP, then node ports in port order, then the health-check node port. A dry run has
/// the values to draw filled in.
async fn check_create_allocations(
    state: &AppState,
    info: &ResourceInfo,
    obj: &mut Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let name = meta_str(obj, "name").to_string();
    let ip = match wanted(obj) {
        Some(Some(ip)) => {
            let ranges = service_ranges(state).await?;
            let ip = check_requested_ip(info, &ranges, &name, &ip)?;
            if is_held(state, &ip_key(ip)).await? {
                return Err(ip_taken(info, &name, ip));
            }
            None
        }
        Some(None) if dry_run => Some(free_ip(state, &service_ranges(state).await?).await?),
        _ => None,
    };
    let requested = wanted_ports(obj);
    let mut taken: Vec<i64> = Vec::new();
    for (i, p) in &requested {
        if let Some(p) = p {
            if !NODE_PORTS.contains(p) {
                return Err(out_of_range(info, &name, *i, *p));
            }
            if is_held(state, &port_key(*p)).await? {
                return Err(invalid_port(info, &name, *i, *p, PORT_TAKEN));
            }
            taken.push(*p);
        }
    }
    let mut drawn = Vec::new();
    if dry_run {
        for (i, p) in &requested {
            if p.is_none() {
                let n = free_port(state, &taken).await?;
                taken.push(n);
                drawn.push((*i, n));
            }
        }
    }
    let mut health_check = None;
    if needs_health_check(obj) {
        match health_check_port(obj) {
            Some(p) => {
                if !NODE_PORTS.contains(&p) {
                    return Err(health_check_error(p, PORT_OUT_OF_RANGE));
                }
                if taken.contains(&p) || is_held(state, &port_key(p)).await? {
                    return Err(health_check_error(p, PORT_TAKEN));
                }
            }
            None if dry_run => health_check = Some(free_port(state, &taken).await?),
            None => {}
        }
    }
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if let Some(ip) = ip {
        set_cluster_ip(spec, ip);
    }
    if let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for (i, n) in drawn {
            if let Some(p) = list.get_mut(i) {
                p["nodePort"] = json!(n);
            }
        }
    }
    if let Some(hc) = health_check {
        spec.insert("healthCheckNodePort".into(), json!(hc));
    }
    Ok(())
}

/// A requested cluster IP, checked: an IPv4 address in one of the service ranges.
fn check_requested_ip(
    info: &ResourceInfo,
    ranges: &[ServiceCidr],
    name: &str,
    ip: &str,
) -> Result<Ipv4Addr, ApiError> {
    let parsed: Ipv4Addr = ip
        .parse()
        .map_err(|_| invalid_ip(info, name, ip, "must be a valid IP address"))?;
    if !ranges.iter().any(|c| c.contains(parsed)) {
        return Err(invalid_ip(
            info,
            name,
            ip,
            "failed to allocate IP: the provided IP is not in the valid range",
        ));
    }
    Ok(parsed)
}

/// Whether a service gets a cluster IP: `None` for headless and ExternalName services,
/// `Some(None)` to allocate one, `Some(Some(ip))` for the one asked for.
fn wanted(obj: &Value) -> Option<Option<String>> {
    let spec = obj.get("spec")?;
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        return None;
    }
    match spec.get("clusterIP").and_then(Value::as_str).unwrap_or("") {
        "None" => None,
        "" => Some(None),
        ip => Some(Some(ip.to_string())),
    }
}

fn invalid_ip(info: &ResourceInfo, name: &str, ip: &str, why: &str) -> ApiError {
    ApiError::invalid(
        info,
        name,
        vec![Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: []string{{\"{ip}\"}}: {why}"),
            field: "spec.clusterIPs".into(),
        }],
    )
}

/// Creates a Service at `key` (checked by [`prepare_create`]), allocating its cluster IP,
/// node ports and health-check node port in the same transaction.
pub(crate) async fn create(
    state: &AppState,
    info: &ResourceInfo,
    key: &[u8],
    obj: &mut Value,
) -> Result<WriteOutcome, ApiError> {
    let name = meta_str(obj, "name").to_string();
    let ranges = service_ranges(state).await?;
    let requested_ip = match wanted(obj) {
        Some(Some(ip)) => Some(Some(check_requested_ip(info, &ranges, &name, &ip)?)),
        Some(None) => Some(None),
        None => None,
    };
    let requested_ports = wanted_ports(obj);
    for (i, p) in &requested_ports {
        if let Some(p) = p
            && !NODE_PORTS.contains(p)
        {
            return Err(out_of_range(info, &name, *i, *p));
        }
    }
    // The health-check node port: `Some(None)` to draw, `Some(Some(p))` asked for.
    let requested_hc = needs_health_check(obj).then(|| health_check_port(obj));
    if let Some(Some(p)) = requested_hc {
        if !NODE_PORTS.contains(&p) {
            return Err(health_check_error(p, PORT_OUT_OF_RANGE));
        }
        if requested_ports.iter().any(|(_, q)| *q == Some(p)) {
            return Err(health_check_error(p, PORT_TAKEN));
        }
    }
    let all_requested = requested_ip.is_none_or(|ip| ip.is_some())
        && requested_ports.iter().all(|(_, p)| p.is_some())
        && requested_hc.is_none_or(|p| p.is_some());
    let attempts = if all_requested { 1 } else { 64 };
    for _ in 0..attempts {
        let ip = match requested_ip {
            Some(Some(ip)) => Some(ip),
            Some(None) => Some(free_ip(state, &ranges).await?),
            None => None,
        };
        let mut asked: Vec<i64> = requested_ports.iter().filter_map(|(_, p)| *p).collect();
        asked.extend(requested_hc.flatten());
        let drawn: Vec<(usize, i64)> = requested_ports
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(i, _)| (*i, rand::random_range(NODE_PORTS)))
            .collect();
        let drawn_hc = matches!(requested_hc, Some(None)).then(|| rand::random_range(NODE_PORTS));
        let mut distinct: Vec<i64> = drawn.iter().map(|(_, p)| *p).chain(drawn_hc).collect();
        let count = distinct.len();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != count || distinct.iter().any(|p| asked.contains(p)) {
            continue; // a random pick collided with another port of this service
        }
        let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
        if let Some(spec) = spec {
            if let Some(ip) = ip {
                set_cluster_ip(spec, ip);
            }
            if let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for (i, port) in &drawn {
                    if let Some(p) = list.get_mut(*i) {
                        p["nodePort"] = json!(port);
                    }
                }
            }
            if let Some(hc) = drawn_hc {
                spec.insert("healthCheckNodePort".into(), json!(hc));
            }
        }
        let namespace = meta_str(obj, "namespace").to_string();
        let owner = format!("{namespace}/{name}").into_bytes();
        let mut reserved: Vec<(Vec<u8>, Vec<u8>)> = held_ports(obj)
            .into_iter()
            .map(|p| (port_key(p), owner.clone()))
            .collect();
        if let Some(ip) = ip {
            reserved.push((ip_key(ip), ip_record(ip, &namespace, &name)?));
        }
        let mut compare = vec![Compare::new(
            key,
            CompareOp::Equal,
            CompareTarget::ModRevision(0),
        )];
        let mut success = vec![TxnOp::Put(PutRequest {
            key: key.to_vec(),
            value: crate::rest::encode_for_store(obj)?,
            ..PutRequest::default()
        })];
        for (k, value) in reserved {
            compare.push(Compare::new(
                k.clone(),
                CompareOp::Equal,
                CompareTarget::ModRevision(0),
            ));
            success.push(TxnOp::Put(PutRequest {
                key: k,
                value,
                ..PutRequest::default()
            }));
        }
        let resp = state
            .store
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![TxnOp::Range(RangeRequest {
                    key: key.to_vec(),
                    ..RangeRequest::default()
                })],
            })
            .await?;
        if resp.succeeded {
            return Ok(WriteOutcome::Written {
                revision: resp.revision,
            });
        }
        if let Some(TxnOpResponse::Range(r)) = resp.responses.first()
            && let Some(current) = r.kvs.first()
        {
            return Ok(WriteOutcome::Conflict {
                current: Some(current.clone()),
            });
        }
        // Something asked for is taken: say which; a random pick is drawn again.
        if let Some(Some(ip)) = requested_ip
            && state.store.get(&ip_key(ip), 0).await?.1.is_some()
        {
            return Err(ip_taken(info, &name, ip));
        }
        for (i, p) in &requested_ports {
            if let Some(p) = p
                && state.store.get(&port_key(*p), 0).await?.1.is_some()
            {
                return Err(invalid_port(info, &name, *i, *p, PORT_TAKEN));
            }
        }
        if let Some(Some(p)) = requested_hc
            && state.store.get(&port_key(p), 0).await?.1.is_some()
        {
            return Err(health_check_error(p, PORT_TAKEN));
        }
    }
    Err(ApiError::internal(
        "no free service cluster IP or node port found",
    ))
}

/// Deletes a Service guarded by its mod revision, releasing its cluster IP and node ports in
/// the same transaction. Every deletion of a Service goes through here: the delete handlers,
/// and the update that removes the last finalizer of a Service being deleted.
pub(crate) async fn delete(
    state: &AppState,
    key: &[u8],
    mod_revision: i64,
    obj: &Value,
) -> Result<WriteOutcome, ApiError> {
    let ip = held_ip(obj);
    let mut success = vec![TxnOp::Delete(DeleteRequest {
        key: key.to_vec(),
        ..DeleteRequest::default()
    })];
    if let Some(ip) = ip {
        success.push(TxnOp::Delete(DeleteRequest {
            key: ip_key(ip),
            ..DeleteRequest::default()
        }));
    }
    for port in held_ports(obj) {
        success.push(TxnOp::Delete(DeleteRequest {
            key: port_key(port),
            ..DeleteRequest::default()
        }));
    }
    let resp = state
        .store
        .txn(TxnRequest {
            compare: vec![Compare::new(
                key,
                CompareOp::Equal,
                CompareTarget::ModRevision(mod_revision),
            )],
            success,
            failure: vec![],
        })
        .await?;
    Ok(if resp.succeeded {
        WriteOutcome::Written {
            revision: resp.revision,
        }
    } else {
        WriteOutcome::Conflict { current: None }
    })
}

/// What [`prepare_update`] picked at random (drawn again if the write finds it taken).
#[derive(Debug, Default)]
pub(crate) struct Drawn {
    /// The indexes of the ports given a random node port.
    pub(crate) ports: Vec<usize>,
    /// Whether the cluster IP was drawn.
    pub(crate) ip: bool,
    /// Whether the health-check node port was drawn.
    pub(crate) health_check: bool,
}

/// The cluster IP on update, as upstream's service REST: a service that stops needing one
/// (→ `ExternalName`) loses the IP and IP family fields it kept unchanged
/// (`dropTypeDependentFields`; the IP is released by [`update`]) and may not set others; a
/// service that starts needing one (`ExternalName` →) gets the one it asks for or a random
/// one, taken by [`update`]. Returns whether the IP was drawn.
fn prepare_cluster_ip(
    info: &ResourceInfo,
    ranges: &[ServiceCidr],
    old: &Value,
    new: &mut Value,
) -> Result<bool, ApiError> {
    let (needed, needs) = (needs_cluster_ip(old), needs_cluster_ip(new));
    let name = meta_str(new, "name").to_string();
    if !needs {
        let old_spec = old.get("spec").cloned().unwrap_or_default();
        let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(false);
        };
        if needed {
            let same = |f: &str| spec.get(f) == old_spec.get(f);
            let same_ips = same("clusterIP") && same("clusterIPs");
            let (same_families, same_policy) = (same("ipFamilies"), same("ipFamilyPolicy"));
            if same_ips {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            if same_families {
                spec.remove("ipFamilies");
            }
            if same_policy {
                spec.remove("ipFamilyPolicy");
            }
        }
        // Any other IP is refused by the validation (`may not be set for ExternalName
        // services`).
        return Ok(false);
    }
    if needed {
        return Ok(false);
    }
    let (ip, drawn) = match wanted(new) {
        None => return Ok(false),
        Some(Some(ip)) => (check_requested_ip(info, ranges, &name, &ip)?, false),
        Some(None) => match ranges.first() {
            Some(range) => (range.random(), true),
            None => return Ok(false),
        },
    };
    if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
        set_cluster_ip(spec, ip);
    }
    Ok(drawn)
}

/// A Service's allocations on update, as upstream's service REST: the cluster IP (see
/// [`prepare_cluster_ip`]), then node ports: values the request leaves out are
/// taken from the stored service by port name (`patchAllocatedValues`), a service that stops
/// needing node ports loses the ones it kept unchanged (`dropTypeDependentFields`); ports still
/// without one get a random pick. Returns what was drawn at random (drawn again if the write
/// finds it taken).
///
/// Before that the IP fields are normalized and their families initialized (see
/// [`init_ip_families`]), and the type-dependent fields the service no longer uses and kept
/// unchanged are dropped; after, the health-check node port (see [`prepare_health_check`]),
/// then what the update takes is checked as its allocation would (upstream's `BeginUpdate`,
/// before the validation: held by another Service → the allocation's error, a random pick
/// held → drawn again), then core's `ValidateObjectMetaUpdate` and upstream's
/// `ValidateServiceUpdate`. Runs on every update of the main resource, dry runs included;
/// nothing is taken here ([`update`] does, in the write's transaction).
pub(crate) async fn prepare_update(
    state: &AppState,
    info: &ResourceInfo,
    old: &Value,
    new: &mut Value,
) -> Result<Drawn, ApiError> {
    normalize_cluster_ips_update(old, new);
    let ranges = if needs_cluster_ip(new) && !needs_cluster_ip(old) {
        service_ranges(state).await?
    } else {
        Vec::new()
    };
    let ip = prepare_cluster_ip(info, &ranges, old, new)?;
    if needs_cluster_ip(new) {
        init_ip_families(info, new)?;
    }
    drop_type_dependent_fields(old, new);
    let ports = prepare_node_ports(info, old, new)?;
    let health_check = prepare_health_check(old, new)?;
    let drawn = Drawn {
        ports,
        ip,
        health_check,
    };
    check_update_allocations(state, info, old, new, &drawn).await?;
    let mut causes = crate::validation::object_meta(new, Some(old));
    causes.extend(validation::validate_update(old, new));
    if !causes.is_empty() {
        return Err(ApiError::invalid(info, meta_str(new, "name"), causes));
    }
    Ok(drawn)
}

/// What an update takes that its stored Service does not hold, checked against the records
/// as upstream's `allocateUpdate` allocates: the cluster IP, node ports in port order, the
/// health-check node port. One asked for and held by another Service is the allocation's
/// error; a random pick held is drawn again.
async fn check_update_allocations(
    state: &AppState,
    info: &ResourceInfo,
    old: &Value,
    new: &mut Value,
    drawn: &Drawn,
) -> Result<(), ApiError> {
    let name = meta_str(new, "name").to_string();
    let ip_before = held_ip(old);
    if let Some(ip) = held_ip(new).filter(|ip| ip_before != Some(*ip))
        && is_held(state, &ip_key(ip)).await?
    {
        if !drawn.ip {
            return Err(ip_taken(info, &name, ip));
        }
        let fresh = free_ip(state, &service_ranges(state).await?).await?;
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("clusterIP".into(), json!(fresh.to_string()));
            spec.insert("clusterIPs".into(), json!([fresh.to_string()]));
        }
    }
    let before = held_ports(old);
    let mut own = held_ports(new);
    let mut seen = Vec::new();
    for (i, port) in wanted_ports(new) {
        let Some(n) = port.filter(|n| !before.contains(n) && !seen.contains(n)) else {
            continue;
        };
        seen.push(n);
        if !is_held(state, &port_key(n)).await? {
            continue;
        }
        if !drawn.ports.contains(&i) {
            return Err(port_taken(info, &name, i, n));
        }
        let fresh = free_port(state, &own).await?;
        own.push(fresh);
        if let Some(p) = new
            .get_mut("spec")
            .and_then(|s| s.get_mut("ports"))
            .and_then(|l| l.get_mut(i))
        {
            p["nodePort"] = json!(fresh);
        }
    }
    if let Some(hc) = health_check_port(new).filter(|p| !before.contains(p))
        && is_held(state, &port_key(hc)).await?
    {
        if !drawn.health_check {
            return Err(health_check_taken(hc));
        }
        let fresh = free_port(state, &own).await?;
        new["spec"]["healthCheckNodePort"] = json!(fresh);
    }
    Ok(())
}

/// Upstream's `dropTypeDependentFields` beyond IPs and node ports: `allocateLoadBalancerNodePorts`
/// and `loadBalancerClass` of a service that stops being a `LoadBalancer`, and the
/// `externalTrafficPolicy` of one that stops being externally accessible, when the update
/// kept them unchanged; `status.loadBalancer` of any service that is not a `LoadBalancer`.
fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let was_lb = validation::type_of(old) == "LoadBalancer";
    let is_lb = validation::type_of(new) == "LoadBalancer";
    let was_external = validation::externally_accessible(old);
    let is_external = validation::externally_accessible(new);
    let old_spec = old.get("spec").cloned().unwrap_or_default();
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let mut drop_same = |field: &str| {
        if spec
            .get(field)
            .is_some_and(|v| Some(v) == old_spec.get(field))
        {
            spec.remove(field);
        }
    };
    if was_lb && !is_lb {
        drop_same("allocateLoadBalancerNodePorts");
        drop_same("loadBalancerClass");
    }
    if was_external && !is_external {
        drop_same("externalTrafficPolicy");
    }
    // Only a load balancer has a load balancer status.
    if !is_lb && let Some(status) = new.get_mut("status").and_then(Value::as_object_mut) {
        status.insert("loadBalancer".into(), json!({}));
    }
}

/// The health-check node port on update, as upstream's service REST: kept from the stored
/// service when left out (`patchAllocatedValues`), dropped when no longer needed and unchanged
/// (`dropTypeDependentFields`; released by [`update`]), and, for a service that starts
/// needing one, the one asked for (in range, not one of its own node ports) or a random one,
/// taken by [`update`]. Returns whether it was drawn.
fn prepare_health_check(old: &Value, new: &mut Value) -> Result<bool, ApiError> {
    let (needed, needs) = (needs_health_check(old), needs_health_check(new));
    let port_of = |v: &Value| {
        v.pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let (old_port, new_port) = (port_of(old), port_of(new));
    let own: Vec<i64> = ports_of(new).iter().filter_map(node_port_of).collect();
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(false);
    };
    if needed && needs && new_port == 0 && old_port != 0 {
        spec.insert("healthCheckNodePort".into(), json!(old_port));
    }
    if needed && !needs && new_port == old_port {
        spec.remove("healthCheckNodePort");
    }
    if needed || !needs {
        return Ok(false);
    }
    if new_port == 0 {
        let pick = loop {
            let n = rand::random_range(NODE_PORTS);
            if !own.contains(&n) {
                break n;
            }
        };
        spec.insert("healthCheckNodePort".into(), json!(pick));
        return Ok(true);
    }
    if !NODE_PORTS.contains(&new_port) {
        return Err(health_check_error(new_port, PORT_OUT_OF_RANGE));
    }
    if own.contains(&new_port) {
        return Err(health_check_error(new_port, PORT_TAKEN));
    }
    Ok(false)
}

/// Node ports on update (see [`prepare_update`]); the indexes of the ports given a random one.
fn prepare_node_ports(
    info: &ResourceInfo,
    old: &Value,
    new: &mut Value,
) -> Result<Vec<usize>, ApiError> {
    let (needed, needs) = (has_node_ports(old), has_node_ports(new));
    let old_ports: Vec<Value> = ports_of(old).to_vec();
    let old_numbers: Vec<i64> = old_ports.iter().filter_map(node_port_of).collect();
    let allocate = allocates_node_ports(new);
    let same = {
        let new_ports = ports_of(new);
        new_ports.len() == old_ports.len()
            && new_ports
                .iter()
                .zip(&old_ports)
                .all(|(a, b)| node_port_of(a) == node_port_of(b))
    };
    let Some(list) = new
        .get_mut("spec")
        .and_then(|s| s.get_mut("ports"))
        .and_then(Value::as_array_mut)
    else {
        return Ok(Vec::new());
    };
    if needed && needs {
        let kept: Vec<i64> = list
            .iter()
            .filter_map(node_port_of)
            .filter(|n| old_numbers.contains(n))
            .collect();
        for p in list.iter_mut() {
            if node_port_of(p).is_some() {
                continue;
            }
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
            let previous = old_ports
                .iter()
                .filter(|o| o.get("name").and_then(Value::as_str).unwrap_or_default() == name)
                .find_map(node_port_of);
            if let Some(n) = previous.filter(|n| !kept.contains(n)) {
                p["nodePort"] = json!(n);
            }
        }
    }
    if needed && !needs && same {
        for p in list.iter_mut() {
            if let Some(o) = p.as_object_mut() {
                o.remove("nodePort");
            }
        }
    }
    let mut drawn = Vec::new();
    if needs && allocate {
        let mut taken: Vec<i64> = list.iter().filter_map(node_port_of).collect();
        for (i, p) in list.iter_mut().enumerate() {
            if node_port_of(p).is_none() {
                let pick = loop {
                    let n = rand::random_range(NODE_PORTS);
                    if !taken.contains(&n) {
                        break n;
                    }
                };
                taken.push(pick);
                p["nodePort"] = json!(pick);
                drawn.push(i);
            }
        }
    }
    let name = meta_str(new, "name").to_string();
    for (i, p) in wanted_ports(new) {
        if let Some(p) = p.filter(|p| !old_numbers.contains(p) && !NODE_PORTS.contains(p)) {
            return Err(out_of_range(info, &name, i, p));
        }
    }
    Ok(drawn)
}

/// What writing an updated Service found.
#[derive(Debug)]
pub(crate) enum UpdateOutcome {
    Written {
        revision: i64,
    },
    /// The Service changed since it was read.
    Conflict,
    /// A node port the update takes is held by another Service: (port index, port).
    PortTaken(usize, i64),
    /// The cluster IP the update takes is held by another Service.
    IpTaken(Ipv4Addr),
    /// The health-check node port the update takes is held by another Service.
    HealthCheckTaken(i64),
}

/// Writes the updated Service guarded by `mod_revision`, taking the cluster IP and node ports
/// it adds and releasing the ones it drops in the same transaction.
pub(crate) async fn update(
    state: &AppState,
    key: &[u8],
    mod_revision: i64,
    value: Vec<u8>,
    old: &Value,
    new: &Value,
) -> Result<UpdateOutcome, ApiError> {
    let before = held_ports(old);
    let after = held_ports(new);
    let added: Vec<i64> = after
        .iter()
        .copied()
        .filter(|p| !before.contains(p))
        .collect();
    let owner = format!("{}/{}", meta_str(new, "namespace"), meta_str(new, "name")).into_bytes();
    let mut compare = vec![Compare::new(
        key,
        CompareOp::Equal,
        CompareTarget::ModRevision(mod_revision),
    )];
    let mut success = vec![TxnOp::Put(PutRequest {
        key: key.to_vec(),
        value,
        ..PutRequest::default()
    })];
    for p in &added {
        compare.push(Compare::new(
            port_key(*p),
            CompareOp::Equal,
            CompareTarget::ModRevision(0),
        ));
        success.push(TxnOp::Put(PutRequest {
            key: port_key(*p),
            value: owner.clone(),
            ..PutRequest::default()
        }));
    }
    for p in before.iter().filter(|p| !after.contains(p)) {
        success.push(TxnOp::Delete(DeleteRequest {
            key: port_key(*p),
            ..DeleteRequest::default()
        }));
    }
    let (ip_before, ip_after) = (held_ip(old), held_ip(new));
    let added_ip = ip_after.filter(|ip| ip_before != Some(*ip));
    if let Some(ip) = added_ip {
        compare.push(Compare::new(
            ip_key(ip),
            CompareOp::Equal,
            CompareTarget::ModRevision(0),
        ));
        success.push(TxnOp::Put(PutRequest {
            key: ip_key(ip),
            value: ip_record(ip, meta_str(new, "namespace"), meta_str(new, "name"))?,
            ..PutRequest::default()
        }));
    }
    if let Some(ip) = ip_before.filter(|ip| ip_after != Some(*ip)) {
        success.push(TxnOp::Delete(DeleteRequest {
            key: ip_key(ip),
            ..DeleteRequest::default()
        }));
    }
    let resp = state
        .store
        .txn(TxnRequest {
            compare,
            success,
            failure: vec![TxnOp::Range(RangeRequest {
                key: key.to_vec(),
                ..RangeRequest::default()
            })],
        })
        .await?;
    if resp.succeeded {
        return Ok(UpdateOutcome::Written {
            revision: resp.revision,
        });
    }
    let current = match resp.responses.first() {
        Some(TxnOpResponse::Range(r)) => r.kvs.first().map(|kv| kv.mod_revision),
        _ => None,
    };
    if current != Some(mod_revision) {
        return Ok(UpdateOutcome::Conflict);
    }
    if let Some(ip) = added_ip
        && state.store.get(&ip_key(ip), 0).await?.1.is_some()
    {
        return Ok(UpdateOutcome::IpTaken(ip));
    }
    for p in &added {
        if state.store.get(&port_key(*p), 0).await?.1.is_some() {
            if health_check_port(new) == Some(*p) {
                return Ok(UpdateOutcome::HealthCheckTaken(*p));
            }
            let index = ports_of(new)
                .iter()
                .position(|q| node_port_of(q) == Some(*p))
                .unwrap_or_default();
            return Ok(UpdateOutcome::PortTaken(index, *p));
        }
    }
    Ok(UpdateOutcome::Conflict)
}

/// The 422 for a node port another Service holds.
pub(crate) fn port_taken(info: &ResourceInfo, name: &str, index: usize, port: i64) -> ApiError {
    invalid_port(info, name, index, port, PORT_TAKEN)
}

/// The 500 for a health-check node port another Service holds (upstream's).
pub(crate) fn health_check_taken(port: i64) -> ApiError {
    health_check_error(port, PORT_TAKEN)
}

/// The 422 for a cluster IP another Service holds.
pub(crate) fn ip_taken(info: &ResourceInfo, name: &str, ip: Ipv4Addr) -> ApiError {
    invalid_ip(
        info,
        name,
        &ip.to_string(),
        &format!("failed to allocate IP {ip}: provided IP is already allocated"),
    )
}

/// On update of a service that keeps needing a cluster IP, the cluster IP fields are kept
/// when the request leaves the cluster IP out (upstream's `patchAllocatedValues`); a changed
/// one is refused by the validation ([`prepare_update`]: `may not change once set`).
pub(crate) fn keep_cluster_ip(old: &Value, new: &mut Value) {
    if !needs_cluster_ip(old) || !needs_cluster_ip(new) {
        return;
    }
    let Some(old_spec) = old.get("spec") else {
        return;
    };
    if old_spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        return;
    }
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if let Some(v) = old_spec.get(f) {
                spec.insert(f.into(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_ranges() {
        let c: ServiceCidr = "10.43.0.0/16".parse().expect("cidr");
        assert_eq!(c, ServiceCidr::default());
        assert_eq!(c.first(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 43, 255, 254)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        for _ in 0..1000 {
            let ip = c.random();
            assert!(c.contains(ip) && ip != c.first() && ip != Ipv4Addr::new(10, 43, 255, 255));
        }
        assert!("10.43.0.0".parse::<ServiceCidr>().is_err());
        assert!("10.43.0.0/31".parse::<ServiceCidr>().is_err());
        assert!("x/16".parse::<ServiceCidr>().is_err());
    }

    #[test]
    fn ranges_and_ip_records() {
        let c: ServiceCidr = "10.0.0.0/29".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.0.0.0/29");
        let usable: Vec<String> = c.usable().map(|ip| ip.to_string()).collect();
        assert_eq!(
            usable,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let wide: ServiceCidr = "10.0.0.0/24".parse().expect("cidr");
        assert!(wide.covers(&c) && !c.covers(&wide));
        let record: Value = serde_json::from_slice(
            &ip_record(Ipv4Addr::new(10, 0, 0, 2), "ns", "web").expect("record"),
        )
        .expect("json");
        assert_eq!(record["kind"], "IPAddress");
        assert_eq!(record["metadata"]["name"], "10.0.0.2");
        assert_eq!(
            record["metadata"]["labels"],
            json!({"ipaddress.kubernetes.io/ip-family": "IPv4",
                   "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io"})
        );
        assert_eq!(
            record["spec"]["parentRef"],
            json!({"group": "", "resource": "services", "namespace": "ns", "name": "web"})
        );
        assert!(record["metadata"].get("resourceVersion").is_none());
        assert!(
            record["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty())
        );
    }

    #[test]
    fn which_services_get_node_ports() {
        assert!(wanted_ports(&json!({"spec": {"ports": [{"port": 80}]}})).is_empty());
        assert_eq!(
            wanted_ports(&json!({"spec": {"type": "NodePort",
                "ports": [{"port": 80}, {"port": 81, "nodePort": 30081}]}})),
            vec![(0, None), (1, Some(30081))]
        );
        assert_eq!(
            wanted_ports(&json!({"spec": {"type": "LoadBalancer",
                "allocateLoadBalancerNodePorts": false,
                "ports": [{"port": 80}, {"port": 81, "nodePort": 30081}]}})),
            vec![(1, Some(30081))]
        );
    }

    #[test]
    fn which_services_get_an_ip() {
        assert_eq!(wanted(&json!({"spec": {}})), Some(None));
        assert_eq!(wanted(&json!({"spec": {"clusterIP": "None"}})), None);
        assert_eq!(wanted(&json!({"spec": {"type": "ExternalName"}})), None);
        assert_eq!(
            wanted(&json!({"spec": {"clusterIP": "10.43.0.9"}})),
            Some(Some("10.43.0.9".into()))
        );
    }
}
