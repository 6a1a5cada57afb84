//! Service cluster IPs and node ports: cluster IPs from the service CIDR (K3s default
//! 10.43.0.0/16), node ports from 30000-32767, with no duplicates. Each allocation is a key
//! (`/registry/rk3s/serviceips/<ip>`, `/registry/rk3s/nodeports/<port>`) written in the same
//! transaction as its Service and removed in the same transaction as the Service's deletion, so
//! two Services can never hold one IP or port, whatever the number of apiservers.

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

/// Where allocated IPs are recorded.
const IP_PREFIX: &str = "/registry/rk3s/serviceips/";
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

/// The node ports a stored service holds (each once: TCP and UDP may share one).
fn held_ports(obj: &Value) -> Vec<i64> {
    let mut held: Vec<i64> = wanted_ports(obj)
        .into_iter()
        .filter_map(|(_, p)| p)
        .collect();
    held.sort_unstable();
    held.dedup();
    held
}

/// Upstream's node port validation: none on a `ClusterIP` service, within the range, no
/// node port twice for one protocol.
fn check_node_ports(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    let name = meta_str(obj, "name");
    let cluster_ip_type = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .is_none_or(|t| t == "ClusterIP");
    let mut causes = Vec::new();
    let mut seen: Vec<(String, i64)> = Vec::new();
    for (i, p) in ports_of(obj).iter().enumerate() {
        let Some(port) = node_port_of(p) else {
            continue;
        };
        let field = format!("spec.ports[{i}].nodePort");
        if cluster_ip_type {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: may not be used when `type` is 'ClusterIP'".into(),
                field,
            });
            continue;
        }
        let protocol = p
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_string();
        if seen.contains(&(protocol.clone(), port)) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                message: format!("Duplicate value: {port}"),
                field,
            });
        } else {
            seen.push((protocol, port));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(info, name, causes))
    }
}

fn out_of_range(info: &ResourceInfo, name: &str, i: usize, port: i64) -> ApiError {
    invalid_port(
        info,
        name,
        i,
        port,
        "provided port is not in the valid range. The range of valid ports is 30000-32767",
    )
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

impl ServiceCidr {
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
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
}

fn ip_key(ip: Ipv4Addr) -> Vec<u8> {
    format!("{IP_PREFIX}{ip}").into_bytes()
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

/// Sets the allocated cluster IP and the single-stack IPv4 fields that go with it.
fn set_cluster_ip(spec: &mut serde_json::Map<String, Value>, ip: Ipv4Addr) {
    spec.insert("clusterIP".into(), json!(ip.to_string()));
    spec.insert("clusterIPs".into(), json!([ip.to_string()]));
    spec.insert("ipFamilies".into(), json!(["IPv4"]));
    spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
}

/// A requested cluster IP, checked: an IPv4 address in the service CIDR.
fn check_requested_ip(
    info: &ResourceInfo,
    cidr: &ServiceCidr,
    name: &str,
    ip: &str,
) -> Result<Ipv4Addr, ApiError> {
    let parsed: Ipv4Addr = ip
        .parse()
        .map_err(|_| invalid_ip(info, name, ip, "must be a valid IP address"))?;
    if !cidr.contains(parsed) {
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

/// Creates a Service at `key`, allocating its cluster IP and node ports in the same
/// transaction.
pub(crate) async fn create(
    state: &AppState,
    info: &ResourceInfo,
    key: &[u8],
    obj: &mut Value,
) -> Result<WriteOutcome, ApiError> {
    let name = meta_str(obj, "name").to_string();
    let requested_ip = match wanted(obj) {
        Some(Some(ip)) => Some(Some(check_requested_ip(
            info,
            &state.service_cidr,
            &name,
            &ip,
        )?)),
        Some(None) => Some(None),
        None => None,
    };
    check_node_ports(info, obj)?;
    let requested_ports = wanted_ports(obj);
    for (i, p) in &requested_ports {
        if let Some(p) = p
            && !NODE_PORTS.contains(p)
        {
            return Err(out_of_range(info, &name, *i, *p));
        }
    }
    let all_requested = requested_ip.is_none_or(|ip| ip.is_some())
        && requested_ports.iter().all(|(_, p)| p.is_some());
    let attempts = if all_requested { 1 } else { 64 };
    for _ in 0..attempts {
        let ip = requested_ip.map(|r| r.unwrap_or_else(|| state.service_cidr.random()));
        let asked: Vec<i64> = requested_ports.iter().filter_map(|(_, p)| *p).collect();
        let drawn: Vec<(usize, i64)> = requested_ports
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(i, _)| (*i, rand::random_range(NODE_PORTS)))
            .collect();
        let mut distinct: Vec<i64> = drawn.iter().map(|(_, p)| *p).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != drawn.len() || distinct.iter().any(|p| asked.contains(p)) {
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
        }
        let owner = format!("{}/{name}", meta_str(obj, "namespace")).into_bytes();
        let mut reserved: Vec<Vec<u8>> = held_ports(obj).into_iter().map(port_key).collect();
        if let Some(ip) = ip {
            reserved.push(ip_key(ip));
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
        for k in &reserved {
            compare.push(Compare::new(
                k.clone(),
                CompareOp::Equal,
                CompareTarget::ModRevision(0),
            ));
            success.push(TxnOp::Put(PutRequest {
                key: k.clone(),
                value: owner.clone(),
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
                return Err(invalid_port(
                    info,
                    &name,
                    *i,
                    *p,
                    "provided port is already allocated",
                ));
            }
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
}

/// The cluster IP on update, as upstream's service REST: a service that stops needing one
/// (→ `ExternalName`) loses the IP and IP family fields it kept unchanged
/// (`dropTypeDependentFields`; the IP is released by [`update`]) and may not set others; a
/// service that starts needing one (`ExternalName` →) gets the one it asks for or a random
/// one, taken by [`update`]. Returns whether the IP was drawn.
fn prepare_cluster_ip(
    info: &ResourceInfo,
    cidr: &ServiceCidr,
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
        let set = |f: &str| {
            spec.get(f).is_some_and(|v| {
                !v.is_null() && v != "" && v.as_array().is_none_or(|a| !a.is_empty())
            })
        };
        if set("clusterIP") || set("clusterIPs") {
            return Err(ApiError::invalid(
                info,
                &name,
                vec![Cause {
                    reason: "FieldValueForbidden",
                    message: "Forbidden: may not be set for ExternalName services".into(),
                    field: "spec.clusterIPs".into(),
                }],
            ));
        }
        return Ok(false);
    }
    if needed {
        return Ok(false);
    }
    let (ip, drawn) = match wanted(new) {
        None => return Ok(false),
        Some(Some(ip)) => (check_requested_ip(info, cidr, &name, &ip)?, false),
        Some(None) => (cidr.random(), true),
    };
    if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
        set_cluster_ip(spec, ip);
    }
    Ok(drawn)
}

/// A Service's allocations on update, as upstream's service REST: the cluster IP (see
/// [`prepare_cluster_ip`]), then node ports: values the request leaves out are
/// taken from the stored service by port name (`patchAllocatedValues`), a service that stops
/// needing node ports loses the ones it kept unchanged (`dropTypeDependentFields`), then the
/// validation; ports still without one get a random pick. Returns what was drawn at random
/// (drawn again if the write finds it taken).
pub(crate) fn prepare_update(
    info: &ResourceInfo,
    cidr: &ServiceCidr,
    old: &Value,
    new: &mut Value,
) -> Result<Drawn, ApiError> {
    let ip = prepare_cluster_ip(info, cidr, old, new)?;
    let ports = prepare_node_ports(info, old, new)?;
    Ok(Drawn { ports, ip })
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
    check_node_ports(info, new)?;
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
            value: owner.clone(),
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
    invalid_port(
        info,
        name,
        index,
        port,
        "provided port is already allocated",
    )
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

/// On update of a service that keeps needing a cluster IP, the cluster IP is kept when the
/// request leaves it out (upstream's `patchAllocatedValues`), and may not change (changes
/// from or to `ExternalName` are [`prepare_update`]'s).
pub(crate) fn keep_cluster_ip(
    info: &ResourceInfo,
    old: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    if !needs_cluster_ip(old) || !needs_cluster_ip(new) {
        return Ok(());
    }
    let Some(old_spec) = old.get("spec") else {
        return Ok(());
    };
    let old_ip = old_spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("");
    if old_ip.is_empty() {
        return Ok(());
    }
    let name = meta_str(old, "name").to_string();
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    match spec.get("clusterIP").and_then(Value::as_str).unwrap_or("") {
        "" => {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if let Some(v) = old_spec.get(f) {
                    spec.insert(f.into(), v.clone());
                }
            }
            Ok(())
        }
        ip if ip == old_ip => Ok(()),
        ip => Err(ApiError::invalid(
            info,
            &name,
            vec![Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: \"{ip}\": field is immutable"),
                field: "spec.clusterIP".into(),
            }],
        )),
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
