//! The node's pod addresses: one pool per family, from the Node's `spec.podCIDRs`
//! (`kubernetes` mode) or from the CIDRs given to the agent (`cluster-pool` mode). An address
//! goes to one attachment until it is released; every change is written to disk (a new file
//! renamed over the old) before it is answered, so an agent that restarts or crashes never
//! hands an address out twice.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use skiff_api::{Attachment, IpamView, PoolView};

use super::{read_json, write_atomically};

/// Where the pools come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpamMode {
    /// The Node object's `spec.podCIDRs`, as Kubernetes' node IPAM assigns them.
    Kubernetes,
    /// Pod CIDRs given to the agent (`--pod-cidr`).
    ClusterPool(Vec<IpNet>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("no pod CIDR yet: the Node {0} has no spec.podCIDRs (kubernetes IPAM); try again later")]
    NoPool(String),
    #[error("the pod CIDR {0} has no address left ({1} in use)")]
    Exhausted(IpNet, usize),
    #[error("writing the allocations to {0}: {1}")]
    Persist(PathBuf, String),
}

/// One family's pool.
#[derive(Clone, Debug)]
struct Pool {
    cidr: IpNet,
    /// The node's router address: the first host address.
    gateway: IpAddr,
    used: BTreeMap<IpAddr, Attachment>,
    /// Where the search for a free address resumes: addresses are not reused at once.
    cursor: u128,
}

/// What is written to disk.
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    allocations: Vec<(Attachment, Vec<IpAddr>)>,
}

pub struct Ipam {
    mode: IpamMode,
    path: PathBuf,
    pools: Vec<Pool>,
    allocations: BTreeMap<Attachment, Vec<IpAddr>>,
}

impl Ipam {
    /// The allocations saved in `path` (none if it does not exist yet), and the pools of
    /// `mode` (cluster-pool); kubernetes mode's come with the Node ([`Ipam::set_node_cidrs`]).
    pub fn open(path: &Path, mode: IpamMode) -> anyhow::Result<Ipam> {
        let saved: Saved = read_json(path)?.unwrap_or_default();
        let mut ipam = Ipam {
            mode: mode.clone(),
            path: path.to_owned(),
            pools: Vec::new(),
            allocations: saved.allocations.into_iter().collect(),
        };
        if let IpamMode::ClusterPool(cidrs) = mode {
            ipam.set_pools(&cidrs);
        }
        Ok(ipam)
    }

    /// The Node's pod CIDRs changed (kubernetes mode; ignored in cluster-pool mode).
    pub fn set_node_cidrs(&mut self, cidrs: &[IpNet]) {
        if self.mode == IpamMode::Kubernetes {
            self.set_pools(cidrs);
        }
    }

    /// The first CIDR of each family becomes its pool; the allocations inside it are its used
    /// addresses (those outside stay recorded until released).
    fn set_pools(&mut self, cidrs: &[IpNet]) {
        let mut pools: Vec<Pool> = Vec::new();
        for cidr in cidrs.iter().map(IpNet::trunc) {
            if pools.iter().any(|p| p.cidr.addr().is_ipv4() == cidr.addr().is_ipv4()) {
                continue;
            }
            let gateway = nth(&cidr, 1);
            let cursor = self.pools.iter().find(|p| p.cidr == cidr).map_or(2, |p| p.cursor);
            pools.push(Pool { cidr, gateway, used: BTreeMap::new(), cursor });
        }
        for (attachment, addresses) in &self.allocations {
            for a in addresses {
                if let Some(pool) = pools.iter_mut().find(|p| p.cidr.contains(a)) {
                    pool.used.insert(*a, attachment.clone());
                }
            }
        }
        self.pools = pools;
    }

    /// The gateways of the pools (the addresses the node answers pods on).
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.pools.iter().map(|p| p.gateway).collect()
    }

    /// An address of each pool for `attachment`: the ones it has, or new ones (saved before
    /// they are returned).
    pub fn allocate(&mut self, attachment: &Attachment, node: &str) -> Result<Vec<IpNet>, IpamError> {
        if let Some(addresses) = self.allocations.get(attachment) {
            return Ok(addresses.iter().map(|a| IpNet::from(*a)).collect());
        }
        if self.pools.is_empty() {
            return Err(IpamError::NoPool(node.to_owned()));
        }
        let mut chosen = Vec::new();
        for pool in &mut self.pools {
            let address = pool.next_free().ok_or(IpamError::Exhausted(pool.cidr, pool.used.len()))?;
            chosen.push((pool.cidr, address));
        }
        for (cidr, address) in &chosen {
            if let Some(pool) = self.pools.iter_mut().find(|p| p.cidr == *cidr) {
                pool.used.insert(*address, attachment.clone());
            }
        }
        let addresses: Vec<IpAddr> = chosen.iter().map(|(_, a)| *a).collect();
        self.allocations.insert(attachment.clone(), addresses.clone());
        if let Err(e) = self.save() {
            self.forget(attachment);
            return Err(e);
        }
        Ok(addresses.into_iter().map(IpNet::from).collect())
    }

    /// The addresses `attachment` holds.
    pub fn addresses_of(&self, attachment: &Attachment) -> Vec<IpAddr> {
        self.allocations.get(attachment).cloned().unwrap_or_default()
    }

    /// Gives `attachment`'s addresses back; whether it had any.
    pub fn release(&mut self, attachment: &Attachment) -> Result<bool, IpamError> {
        if !self.forget(attachment) {
            return Ok(false);
        }
        self.save()?;
        Ok(true)
    }

    /// Releases every attachment `valid` refuses (CNI GC); how many went.
    pub fn retain(&mut self, valid: impl Fn(&Attachment) -> bool) -> Result<usize, IpamError> {
        let stale: Vec<Attachment> = self.allocations.keys().filter(|a| !valid(a)).cloned().collect();
        for attachment in &stale {
            self.forget(attachment);
        }
        if !stale.is_empty() {
            self.save()?;
        }
        Ok(stale.len())
    }

    fn forget(&mut self, attachment: &Attachment) -> bool {
        let Some(addresses) = self.allocations.remove(attachment) else { return false };
        for pool in &mut self.pools {
            for a in &addresses {
                pool.used.remove(a);
            }
        }
        true
    }

    fn save(&self) -> Result<(), IpamError> {
        let saved =
            Saved { allocations: self.allocations.iter().map(|(k, v)| (k.clone(), v.clone())).collect() };
        let bytes = serde_json::to_vec_pretty(&saved)
            .map_err(|e| IpamError::Persist(self.path.clone(), e.to_string()))?;
        write_atomically(&self.path, &bytes).map_err(|e| IpamError::Persist(self.path.clone(), e.to_string()))
    }

    pub fn view(&self) -> IpamView {
        let mode = match self.mode {
            IpamMode::Kubernetes => "kubernetes",
            IpamMode::ClusterPool(_) => "cluster-pool",
        };
        IpamView {
            mode: mode.into(),
            pools: self
                .pools
                .iter()
                .map(|p| PoolView {
                    cidr: p.cidr,
                    gateway: p.gateway,
                    capacity: p.capacity(),
                    allocated: p.used.clone(),
                })
                .collect(),
        }
    }
}

impl Pool {
    /// Host addresses pods can get: all but the network address, the gateway and (IPv4) the
    /// broadcast address.
    fn capacity(&self) -> u128 {
        let size = self.size();
        let reserved = if self.cidr.addr().is_ipv4() { 3 } else { 2 };
        size.saturating_sub(reserved)
    }

    fn size(&self) -> u128 {
        let bits = if self.cidr.addr().is_ipv4() { 32 } else { 128 };
        1u128.checked_shl(u32::from(bits - self.cidr.prefix_len())).unwrap_or(u128::MAX)
    }

    /// The first free address from the cursor on, wrapping once.
    fn next_free(&mut self) -> Option<IpAddr> {
        let size = self.size();
        let last = if self.cidr.addr().is_ipv4() { size.checked_sub(1)? } else { size };
        let (first, span) = (2u128, last.checked_sub(2)?);
        // At most one lap; a pool with every address used is exhausted.
        for k in 0..span.min(self.used.len() as u128 + 1) {
            let n = first + (self.cursor.saturating_sub(first) + k) % span;
            let address = nth(&self.cidr, n);
            if !self.used.contains_key(&address) {
                self.cursor = n + 1;
                return Some(address);
            }
        }
        None
    }
}

/// The `n`th address of `cidr`.
fn nth(cidr: &IpNet, n: u128) -> IpAddr {
    match cidr {
        IpNet::V4(net) => {
            let offset = u32::try_from(n).expect("an offset inside an IPv4 CIDR fits 32 bits");
            IpAddr::V4(Ipv4Addr::from(u32::from(net.network()).wrapping_add(offset)))
        }
        IpNet::V6(net) => IpAddr::V6(Ipv6Addr::from(u128::from(net.network()).wrapping_add(n))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(i: usize) -> Attachment {
        Attachment { container_id: format!("c{i}"), ifname: "eth0".into() }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-ipam-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("ipam.json")
    }

    fn pool(cidrs: &[&str]) -> IpamMode {
        IpamMode::ClusterPool(cidrs.iter().map(|c| c.parse().unwrap()).collect())
    }

    #[test]
    fn one_address_of_each_family_and_the_same_again_for_the_same_attachment() {
        let path = temp("families");
        let mut ipam = Ipam::open(&path, pool(&["198.18.128.0/24", "fd00:0:0:128::/64"])).unwrap();
        let got = ipam.allocate(&attachment(1), "node1").unwrap();
        assert_eq!(
            got,
            ["198.18.128.2/32".parse::<IpNet>().unwrap(), "fd00:0:0:128::2/128".parse().unwrap()]
        );
        assert_eq!(ipam.allocate(&attachment(1), "node1").unwrap(), got, "idempotent");
        assert_eq!(
            ipam.gateways(),
            ["198.18.128.1".parse::<IpAddr>().unwrap(), "fd00:0:0:128::1".parse().unwrap()]
        );
        assert_ne!(ipam.allocate(&attachment(2), "node1").unwrap(), got);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_restarted_agent_never_hands_an_address_out_twice() {
        let path = temp("restart");
        let mode = pool(&["198.18.128.0/29"]);
        let mut ipam = Ipam::open(&path, mode.clone()).unwrap();
        let first: Vec<_> = (0..3).map(|i| ipam.allocate(&attachment(i), "n").unwrap()).collect();
        drop(ipam);
        let mut again = Ipam::open(&path, mode).unwrap();
        let later: Vec<_> = (3..5).map(|i| again.allocate(&attachment(i), "n").unwrap()).collect();
        let mut all: Vec<_> = first.iter().chain(&later).flatten().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5, "five distinct addresses in a /29 (.2 to .6)");
        assert_eq!(
            again.allocate(&attachment(9), "n"),
            Err(IpamError::Exhausted("198.18.128.0/29".parse().unwrap(), 5))
        );
        assert!(again.release(&attachment(0)).unwrap());
        assert!(!again.release(&attachment(0)).unwrap(), "released once");
        assert_eq!(again.allocate(&attachment(9), "n").unwrap(), first[0], "the freed address comes back");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn kubernetes_mode_waits_for_the_node_and_gc_releases_the_stale() {
        let path = temp("kubernetes");
        let mut ipam = Ipam::open(&path, IpamMode::Kubernetes).unwrap();
        assert_eq!(ipam.allocate(&attachment(1), "node1"), Err(IpamError::NoPool("node1".into())));
        ipam.set_node_cidrs(&["198.18.128.0/24".parse().unwrap()]);
        for i in 0..4 {
            ipam.allocate(&attachment(i), "node1").unwrap();
        }
        assert_eq!(ipam.retain(|a| a.container_id == "c2").unwrap(), 3);
        assert_eq!(ipam.view().pools[0].allocated.len(), 1);
        assert_eq!(ipam.view().pools[0].capacity, 253);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
