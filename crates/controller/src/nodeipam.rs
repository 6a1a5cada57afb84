//! The node IPAM controller (upstream's `nodeipam` with the range allocator): every node gets
//! `spec.podCIDR`/`spec.podCIDRs`, one subnet of each configured cluster CIDR (IPv4, IPv6 or
//! both), never one another node holds.
//!
//! The allocation state lives in memory and is rebuilt from the nodes on every (re)list of
//! the node watch: the CIDRs nodes already carry are marked used first, then nodes without one
//! get the next free subnet after the last one handed out (wrapping), as upstream's
//! `CidrSet` does. A deleted node's subnets are released. A patch that fails releases its
//! subnets and is retried with the node's backoff.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::util::{Backoff, Shared};

/// One cluster CIDR cut into node subnets of `mask` bits.
#[derive(Debug, Clone)]
struct CidrSet {
    /// Network address as a number (IPv4 in the low 32 bits).
    base: u128,
    v6: bool,
    prefix: u8,
    mask: u8,
    used: Vec<bool>,
    /// Index after the last one handed out.
    next: usize,
}

impl CidrSet {
    fn bits(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    fn count(&self) -> usize {
        1usize << (self.mask - self.prefix)
    }

    fn subnet(&self, i: usize) -> String {
        let shift = u32::from(self.bits() - self.mask);
        let addr = self.base | ((i as u128) << shift);
        let ip: IpAddr = if self.v6 {
            Ipv6Addr::from(addr).into()
        } else {
            Ipv4Addr::from(addr as u32).into()
        };
        format!("{ip}/{}", self.mask)
    }

    /// The index of `cidr` if it is one of this set's subnets.
    fn index_of(&self, cidr: &str) -> Option<usize> {
        let (ip, len) = parse_cidr(cidr).ok()?;
        let (addr, v6) = ip_bits(ip);
        if v6 != self.v6 || len != self.mask {
            return None;
        }
        let host_bits = u32::from(self.bits() - self.prefix);
        let net_mask = if host_bits >= 128 {
            0
        } else {
            !((1u128 << host_bits) - 1) & width_mask(self.v6)
        };
        if addr & net_mask != self.base {
            return None;
        }
        let shift = u32::from(self.bits() - self.mask);
        usize::try_from((addr & !net_mask & width_mask(self.v6)) >> shift).ok()
    }

    fn allocate(&mut self) -> Option<usize> {
        let n = self.count();
        for k in 0..n {
            let i = (self.next + k) % n;
            if !self.used[i] {
                self.used[i] = true;
                self.next = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }
}

fn width_mask(v6: bool) -> u128 {
    if v6 { u128::MAX } else { u128::from(u32::MAX) }
}

fn ip_bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
    let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not a CIDR"))?;
    let len: u8 = len.parse().map_err(|_| format!("{s:?} is not a CIDR"))?;
    let max = if ip.is_ipv6() { 128 } else { 32 };
    if len > max {
        return Err(format!("{s:?}: prefix length over {max}"));
    }
    Ok((ip, len))
}

/// The cluster CIDRs (one per IP family) and what is allocated in them.
#[derive(Debug, Clone)]
pub(crate) struct ClusterCidrs {
    sets: Vec<CidrSet>,
}

impl ClusterCidrs {
    /// Parses `cluster-cidr` (`10.42.0.0/16` or `10.42.0.0/16,fd00:42::/56`) with the node
    /// mask sizes. As upstream, a node subnet may not split a cluster CIDR into more than 2^16.
    pub(crate) fn parse(cluster_cidr: &str, mask_v4: u8, mask_v6: u8) -> Result<Self, String> {
        let mut sets: Vec<CidrSet> = Vec::new();
        for part in cluster_cidr.split(',').filter(|p| !p.trim().is_empty()) {
            let (ip, prefix) = parse_cidr(part).map_err(|e| format!("cluster-cidr: {e}"))?;
            let (addr, v6) = ip_bits(ip);
            if sets.iter().any(|s| s.v6 == v6) {
                return Err(format!(
                    "cluster-cidr {cluster_cidr:?}: at most one CIDR per IP family"
                ));
            }
            let (mask, bits, flag) = if v6 {
                (mask_v6, 128u8, "node-cidr-mask-size-ipv6")
            } else {
                (mask_v4, 32u8, "node-cidr-mask-size-ipv4")
            };
            if mask < prefix || mask > bits {
                return Err(format!(
                    "{flag} {mask} does not fit in cluster-cidr {}",
                    part.trim()
                ));
            }
            if mask - prefix > 16 {
                return Err(format!(
                    "{flag} {mask} splits cluster-cidr {} into more than 65536 subnets",
                    part.trim()
                ));
            }
            let host_bits = u32::from(bits - prefix);
            let net_mask = if host_bits >= 128 {
                0
            } else {
                !((1u128 << host_bits) - 1) & width_mask(v6)
            };
            let mut set = CidrSet {
                base: addr & net_mask,
                v6,
                prefix,
                mask,
                used: Vec::new(),
                next: 0,
            };
            set.used = vec![false; set.count()];
            sets.push(set);
        }
        if sets.is_empty() {
            return Err("cluster-cidr is empty".into());
        }
        Ok(ClusterCidrs { sets })
    }

    fn reset(&mut self) {
        for s in &mut self.sets {
            s.used.iter_mut().for_each(|u| *u = false);
            s.next = 0;
        }
    }

    /// Marks the subnets of `cidrs` that belong to the cluster CIDRs as used.
    fn occupy(&mut self, cidrs: &[String]) {
        for c in cidrs {
            for s in &mut self.sets {
                if let Some(i) = s.index_of(c) {
                    s.used[i] = true;
                }
            }
        }
    }

    fn release(&mut self, cidrs: &[String]) {
        for c in cidrs {
            for s in &mut self.sets {
                if let Some(i) = s.index_of(c) {
                    s.used[i] = false;
                }
            }
        }
    }

    /// One free subnet of each family, or `None` (and nothing taken) if one family is full.
    fn allocate(&mut self) -> Option<Vec<String>> {
        let mut got: Vec<(usize, usize)> = Vec::new();
        for (k, s) in self.sets.iter_mut().enumerate() {
            match s.allocate() {
                Some(i) => got.push((k, i)),
                None => {
                    for (k, i) in got {
                        self.sets[k].used[i] = false;
                    }
                    return None;
                }
            }
        }
        Some(
            got.into_iter()
                .map(|(k, i)| self.sets[k].subnet(i))
                .collect(),
        )
    }
}

/// The pod CIDRs a node carries.
fn node_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    match (&spec.pod_cidrs, &spec.pod_cidr) {
        (Some(list), _) if !list.is_empty() => list.clone(),
        (_, Some(one)) if !one.is_empty() => vec![one.clone()],
        _ => Vec::new(),
    }
}

struct State {
    cidrs: ClusterCidrs,
    /// What each node holds (as last seen or given).
    held: HashMap<String, Vec<String>>,
}

pub(crate) async fn run(shared: Arc<Shared>, config: NodeConfig, stop: watch::Receiver<bool>) {
    let cidrs = match ClusterCidrs::parse(
        &config.cluster_cidr,
        config.node_cidr_mask_size_ipv4,
        config.node_cidr_mask_size_ipv6,
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "node IPAM: invalid cluster CIDR; not allocating");
            return;
        }
    };
    let api: Api<Node> = Api::all(shared.client.clone());
    let mut state = State {
        cidrs,
        held: HashMap::new(),
    };
    let backoff = Backoff::default();
    // Nodes whose patch failed, with when to try again.
    let mut retry: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let mut initial: Vec<Node> = Vec::new();
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let stopped = crate::stopped(stop);
    tokio::pin!(stopped);
    loop {
        let next_retry = retry.values().min().copied();
        let sleep = async {
            match next_retry {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let ev = tokio::select! {
            _ = &mut stopped => return,
            ev = events.next() => ev,
            _ = sleep => {
                let now = tokio::time::Instant::now();
                let due: Vec<String> = retry
                    .iter()
                    .filter(|(_, t)| **t <= now)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in due {
                    retry.remove(&name);
                    match api.get_opt(&name).await {
                        Ok(Some(node)) => {
                            handle(&api, &mut state, &node, &backoff, &mut retry).await
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(node = %name, error = %e, "node IPAM: cannot read node");
                            retry.insert(name.clone(), now + backoff.failure(&name));
                        }
                    }
                }
                continue;
            }
        };
        match ev {
            None => return,
            Some(Err(e)) => tracing::warn!(error = %e, "node IPAM: watch failed; retrying"),
            Some(Ok(watcher::Event::Init)) => initial.clear(),
            Some(Ok(watcher::Event::InitApply(n))) => initial.push(n),
            Some(Ok(watcher::Event::InitDone)) => {
                // Rebuild from what the nodes carry, then allocate for those without.
                state.cidrs.reset();
                state.held.clear();
                for n in &initial {
                    let c = node_cidrs(n);
                    state.cidrs.occupy(&c);
                    if !c.is_empty() {
                        state.held.insert(n.name_any(), c);
                    }
                }
                for n in std::mem::take(&mut initial) {
                    handle(&api, &mut state, &n, &backoff, &mut retry).await;
                }
            }
            Some(Ok(watcher::Event::Apply(n))) => {
                handle(&api, &mut state, &n, &backoff, &mut retry).await
            }
            Some(Ok(watcher::Event::Delete(n))) => {
                let name = n.name_any();
                retry.remove(&name);
                backoff.success(&name);
                let mut gone = node_cidrs(&n);
                if let Some(h) = state.held.remove(&name) {
                    gone.extend(h);
                }
                // Release only what no other node holds.
                gone.retain(|c| !state.held.values().any(|h| h.contains(c)));
                state.cidrs.release(&gone);
                tracing::info!(node = %name, cidrs = ?gone, "node IPAM: released pod CIDRs");
            }
        }
    }
}

/// Records a node's CIDRs, or gives it some.
async fn handle(
    api: &Api<Node>,
    state: &mut State,
    node: &Node,
    backoff: &Backoff,
    retry: &mut BTreeMap<String, tokio::time::Instant>,
) {
    let name = node.name_any();
    if node.metadata.deletion_timestamp.is_some() {
        return;
    }
    let have = node_cidrs(node);
    if !have.is_empty() {
        state.cidrs.occupy(&have);
        state.held.insert(name, have);
        return;
    }
    if state.held.contains_key(&name) {
        // Given already; the watch has not shown the patch yet.
        return;
    }
    let Some(cidrs) = state.cidrs.allocate() else {
        tracing::warn!(node = %name, "node IPAM: no pod CIDR left (CIDRNotAvailable)");
        retry.insert(
            name.clone(),
            tokio::time::Instant::now() + backoff.failure(&name).max(Duration::from_secs(1)),
        );
        return;
    };
    let patch = json!({"spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {
            tracing::info!(node = %name, cidrs = ?cidrs, "node IPAM: allocated pod CIDRs");
            backoff.success(&name);
            state.held.insert(name, cidrs);
        }
        Err(e) => {
            state.cidrs.release(&cidrs);
            if matches!(&e, kube::Error::Api(s) if s.code == 404) {
                return;
            }
            tracing::warn!(node = %name, error = %e, "node IPAM: cannot set pod CIDRs; retrying");
            retry.insert(
                name.clone(),
                tokio::time::Instant::now() + backoff.failure(&name),
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_subnets_in_order_and_reuses_released_ones_later() {
        let mut c = ClusterCidrs::parse("10.42.0.0/16", 24, 64).unwrap();
        assert_eq!(c.allocate().unwrap(), ["10.42.0.0/24"]);
        assert_eq!(c.allocate().unwrap(), ["10.42.1.0/24"]);
        c.occupy(&["10.42.2.0/24".into(), "10.99.0.0/24".into()]);
        assert_eq!(c.allocate().unwrap(), ["10.42.3.0/24"]);
        c.release(&["10.42.0.0/24".into()]);
        // Next after the last handed out, not the lowest free.
        assert_eq!(c.allocate().unwrap(), ["10.42.4.0/24"]);
    }

    #[test]
    fn a_full_range_allocates_nothing_and_wraps_after_release() {
        let mut c = ClusterCidrs::parse("10.0.0.0/30", 31, 64).unwrap();
        assert_eq!(c.allocate().unwrap(), ["10.0.0.0/31"]);
        assert_eq!(c.allocate().unwrap(), ["10.0.0.2/31"]);
        assert!(c.allocate().is_none());
        c.release(&["10.0.0.0/31".into()]);
        assert_eq!(c.allocate().unwrap(), ["10.0.0.0/31"]);
    }

    #[test]
    fn dual_stack_gives_one_of_each() {
        let mut c = ClusterCidrs::parse("10.42.0.0/16,fd00:42::/56", 24, 64).unwrap();
        assert_eq!(c.allocate().unwrap(), ["10.42.0.0/24", "fd00:42::/64"]);
        assert_eq!(c.allocate().unwrap(), ["10.42.1.0/24", "fd00:42:0:1::/64"]);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(ClusterCidrs::parse("10.42.0.0/16", 8, 64).is_err());
        assert!(ClusterCidrs::parse("10.0.0.0/8", 28, 64).is_err());
        assert!(ClusterCidrs::parse("10.0.0.0/8,10.1.0.0/16", 24, 64).is_err());
        assert!(ClusterCidrs::parse("nonsense", 24, 64).is_err());
    }
}
