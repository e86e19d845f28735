//! What the control plane gives the workers: the service frontends with their backend pools,
//! this node's masquerading addresses and cluster prefixes, the next hops, policy and the
//! overlay. Published
//! whole as a snapshot and never edited in place.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use hashbrown::HashMap;
use ipnet::IpNet;
use skiff_common::lb::{Algorithm, BackendId, FrontendKind, TrafficPolicy};

use crate::{
    lb::{Backend, Selector, maglev::MaglevError},
    policy::Policy,
    prefix::PrefixMap,
    tunnel::Overlay,
};

/// A service frontend: address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: u8,
}

/// How a frontend balances its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceConfig {
    pub kind: FrontendKind,
    pub algorithm: Algorithm,
    /// The policy of this frontend's kind: internal for a ClusterIP, external otherwise.
    pub traffic_policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP`: new flows from a client go to its last backend for this
    /// many seconds after its last new flow (Kubernetes' default is 10800).
    pub affinity_timeout: Option<u64>,
}

/// A frontend: its configuration and its backends' pool.
#[derive(Clone, Debug)]
pub struct Service {
    pub(crate) config: ServiceConfig,
    pub(crate) pool: Arc<Pool>,
}

/// Backends and their selectors, shared by every frontend of one service port (its ClusterIP,
/// NodePorts, load-balancer IPs): one Maglev table each, not one per frontend, and a table
/// publish that keeps a service reuses it instead of rebuilding.
#[derive(Debug)]
pub(crate) struct Pool {
    algorithm: Algorithm,
    pub(crate) backends: HashMap<BackendId, Backend>,
    /// Over every backend.
    pub(crate) all: Selector,
    /// Over this node's backends, when a `Local` policy needs it.
    pub(crate) local: Option<Selector>,
}

impl Service {
    pub fn new(backends: Vec<Backend>, config: ServiceConfig) -> Result<Service, MaglevError> {
        let all = Selector::build(&backends, config.algorithm)?;
        let local = (config.traffic_policy == TrafficPolicy::Local)
            .then(|| Selector::build(backends.iter().filter(|b| b.local), config.algorithm))
            .transpose()?;
        let backends = backends.into_iter().map(|b| (b.id, b)).collect();
        Ok(Service { config, pool: Arc::new(Pool { algorithm: config.algorithm, backends, all, local }) })
    }

    /// Another frontend of the same backends: shares this one's selectors when `config` can
    /// use them (same algorithm, and the local selector when its policy is `Local`).
    pub fn sharing(&self, config: ServiceConfig) -> Result<Service, MaglevError> {
        let pool = &self.pool;
        if pool.algorithm == config.algorithm
            && (config.traffic_policy == TrafficPolicy::Cluster || pool.local.is_some())
        {
            return Ok(Service { config, pool: pool.clone() });
        }
        Service::new(pool.backends.values().copied().collect(), config)
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.pool.backends.values()
    }

    /// The backends a new connection from inside the cluster (the node, a pod) may take:
    /// those taking new flows, within the internal traffic policy. Socket-LB picks among them
    /// at connect time.
    pub fn internal_backends(&self) -> impl Iterator<Item = &Backend> {
        let local_only = self.local_only(true);
        self.backends().filter(move |b| b.weight > 0 && (b.local || !local_only))
    }

    /// Whether a new flow from this client is bound to this node's backends.
    pub(crate) fn local_only(&self, internal_client: bool) -> bool {
        self.config.traffic_policy == TrafficPolicy::Local
            && (self.config.kind == FrontendKind::ClusterIp || !internal_client)
    }
}

/// This node as the engine needs to know it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalNode {
    /// This node's addresses (its Node's and `--node-address`).
    pub addresses: Vec<IpAddr>,
    /// The source addresses of masqueraded flows.
    pub masquerade_v4: Option<IpAddr>,
    pub masquerade_v6: Option<IpAddr>,
    /// The cluster's addresses (pod CIDRs, node addresses, native routing CIDRs): clients
    /// inside them are internal, and pods' traffic to them is never masqueraded.
    pub cluster_prefixes: Vec<IpNet>,
    /// This node's pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// Whether this node's pods' traffic out of the cluster leaves with the node's address,
    /// by family (`--enable-ipv4-masquerade`, `--enable-ipv6-masquerade`).
    pub egress_masquerade_v4: bool,
    pub egress_masquerade_v6: bool,
}

impl LocalNode {
    pub(crate) fn masquerade(&self, like: IpAddr) -> Option<IpAddr> {
        if like.is_ipv4() { self.masquerade_v4 } else { self.masquerade_v6 }
    }

    /// Whether `addr` is in this node's pod CIDRs.
    #[inline]
    pub(crate) fn hosts_pod(&self, addr: IpAddr) -> bool {
        self.pod_cidrs.iter().any(|c| c.contains(&addr))
    }

    /// The address a new flow from `src` to `dst` leaves with, when it is a pod's flow out of
    /// the cluster that this node masquerades.
    #[inline]
    pub(crate) fn egress_masquerade(&self, src: IpAddr, dst: IpAddr) -> Option<IpAddr> {
        let on = if dst.is_ipv4() { self.egress_masquerade_v4 } else { self.egress_masquerade_v6 };
        let pods_out = on && self.hosts_pod(src) && !self.is_internal(dst);
        pods_out.then(|| self.masquerade(dst)).flatten()
    }

    pub(crate) fn is_internal(&self, addr: IpAddr) -> bool {
        self.cluster_prefixes.iter().any(|prefix| prefix.contains(&addr))
    }
}

/// How to reach an address: out of which port (the interface's index in the worker's ports,
/// which is its index in the datapath's interfaces), with which MACs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub port: usize,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// What the control plane gives the workers: swapped whole, never edited in place.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub services: HashMap<Frontend, Service>,
    pub node: LocalNode,
    /// Where translated packets go, by destination address; the unspecified address of a
    /// family is its default route.
    pub next_hops: HashMap<IpAddr, Neighbor>,
    /// Network policy: identities and this node's endpoints' rules (shared between publishes
    /// that do not change it).
    pub policy: Arc<Policy>,
    /// Sources dropped on arrival, by prefix (`skiff prefilter`), with their rule numbers; the
    /// XDP program drops them first, the workers when they see frames the kernel also sees.
    pub prefilter: Arc<PrefixMap<u32>>,
    /// The tunnels to the other nodes, in tunnel routing mode.
    pub overlay: Option<Arc<Overlay>>,
    /// Every node's addresses (this one's and the others'): NodePorts answer on each of them
    /// for this node's sockets (socket-LB).
    pub node_addresses: Vec<IpAddr>,
}

impl Tables {
    pub fn next_hop(&self, dst: IpAddr) -> Option<&Neighbor> {
        self.next_hops.get(&dst).or_else(|| {
            let any = match dst {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            self.next_hops.get(&any)
        })
    }

    /// Whether `addr` is the address of some frontend (any port).
    pub(crate) fn is_frontend_address(&self, addr: IpAddr) -> bool {
        self.services.keys().any(|f| f.addr == addr)
    }
}

/// The tables as the control plane publishes them: a new version replaces the old one
/// atomically (arc-swap), and workers pick it up between batches. No lock on the packet path,
/// and no packet ever sees a half-built table.
#[derive(Clone, Default)]
pub struct SharedTables(Arc<arc_swap::ArcSwap<Tables>>);

impl SharedTables {
    pub fn new(tables: Tables) -> SharedTables {
        SharedTables(Arc::new(arc_swap::ArcSwap::from_pointee(tables)))
    }

    /// Replaces the tables every worker sees from its next batch on.
    pub fn publish(&self, tables: Tables) {
        self.0.store(Arc::new(tables));
    }

    /// The current version.
    pub fn current(&self) -> Arc<Tables> {
        self.0.load_full()
    }

    /// Replaces `tables` with the current version if it changed (returns whether): one atomic
    /// load when it did not.
    pub fn refresh(&self, tables: &mut Arc<Tables>) -> bool {
        let current = self.0.load();
        if Arc::ptr_eq(&current, tables) {
            return false;
        }
        *tables = arc_swap::Guard::into_inner(current);
        true
    }
}
