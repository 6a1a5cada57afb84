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

/// The node ports a service asks for (`Some`) or needs allocated (`None`), one per port.
fn wanted_ports(obj: &Value) -> Vec<Option<i64>> {
    if !has_node_ports(obj) {
        return Vec::new();
    }
    obj.get("spec")
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    p.get("nodePort")
                        .and_then(Value::as_i64)
                        .filter(|n| *n != 0)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The node ports a stored service holds.
fn held_ports(obj: &Value) -> Vec<i64> {
    wanted_ports(obj).into_iter().flatten().collect()
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
        Some(Some(ip)) => {
            let parsed: Ipv4Addr = ip
                .parse()
                .map_err(|_| invalid_ip(info, &name, &ip, "must be a valid IP address"))?;
            if !state.service_cidr.contains(parsed) {
                return Err(invalid_ip(
                    info,
                    &name,
                    &ip,
                    "failed to allocate IP: the provided IP is not in the valid range",
                ));
            }
            Some(Some(parsed))
        }
        Some(None) => Some(None),
        None => None,
    };
    let requested_ports = wanted_ports(obj);
    for (i, p) in requested_ports.iter().enumerate() {
        if let Some(p) = p
            && !NODE_PORTS.contains(p)
        {
            return Err(invalid_port(
                info,
                &name,
                i,
                *p,
                "provided port is not in the valid range. The range of valid ports is 30000-32767",
            ));
        }
    }
    let all_requested =
        requested_ip.is_none_or(|ip| ip.is_some()) && requested_ports.iter().all(Option::is_some);
    let attempts = if all_requested { 1 } else { 64 };
    for _ in 0..attempts {
        let ip = requested_ip.map(|r| r.unwrap_or_else(|| state.service_cidr.random()));
        let ports: Vec<i64> = requested_ports
            .iter()
            .map(|p| p.unwrap_or_else(|| rand::random_range(NODE_PORTS)))
            .collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != ports.len() {
            if requested_ports.iter().all(Option::is_some) {
                return Err(invalid_port(info, &name, 0, ports[0], "Duplicate value"));
            }
            continue;
        }
        let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
        if let Some(spec) = spec {
            if let Some(ip) = ip {
                spec.insert("clusterIP".into(), json!(ip.to_string()));
                spec.insert("clusterIPs".into(), json!([ip.to_string()]));
                spec.insert("ipFamilies".into(), json!(["IPv4"]));
                spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
            }
            if let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for (p, port) in list.iter_mut().zip(&ports) {
                    p["nodePort"] = json!(port);
                }
            }
        }
        let owner = format!("{}/{name}", meta_str(obj, "namespace")).into_bytes();
        let mut reserved: Vec<Vec<u8>> = ports.iter().map(|p| port_key(*p)).collect();
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
            return Err(invalid_ip(
                info,
                &name,
                &ip.to_string(),
                &format!("failed to allocate IP {ip}: provided IP is already allocated"),
            ));
        }
        for (i, p) in requested_ports.iter().enumerate() {
            if let Some(p) = p
                && state.store.get(&port_key(*p), 0).await?.1.is_some()
            {
                return Err(invalid_port(
                    info,
                    &name,
                    i,
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

/// Deletes a Service guarded by its mod revision, releasing its cluster IP in the same
/// transaction.
pub(crate) async fn delete(
    state: &AppState,
    key: &[u8],
    mod_revision: i64,
    obj: &Value,
) -> Result<WriteOutcome, ApiError> {
    let ip = obj
        .get("spec")
        .and_then(|s| s.get("clusterIP"))
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
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

/// On update, the cluster IP is kept when the request leaves it out, and may not change.
pub(crate) fn keep_cluster_ip(
    info: &ResourceInfo,
    old: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    let Some(old_spec) = old.get("spec") else {
        return Ok(());
    };
    // Node ports left out of an update keep their allocation (changing them is not supported
    // yet: it would need the allocation keys moved in the update's transaction).
    let old_ports = wanted_ports(old);
    if let Some(list) = new
        .get_mut("spec")
        .and_then(|s| s.get_mut("ports"))
        .and_then(Value::as_array_mut)
    {
        for (i, p) in list.iter_mut().enumerate() {
            let asked = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
            match old_ports.get(i).copied().flatten() {
                Some(held) if asked == 0 => p["nodePort"] = json!(held),
                Some(held) if asked != held => {
                    return Err(ApiError::invalid(
                        info,
                        meta_str(old, "name"),
                        vec![Cause {
                            reason: "FieldValueInvalid",
                            message: format!(
                                "Invalid value: {asked}: changing an allocated node port is not supported yet"
                            ),
                            field: format!("spec.ports[{i}].nodePort"),
                        }],
                    ));
                }
                _ => {}
            }
        }
    }
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
            vec![None, Some(30081)]
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
