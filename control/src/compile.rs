//! From objects to the desired datapath state: service frontends with their backends and
//! settings, this node's addresses and the cluster's prefixes, security identities from pod
//! labels, and the other nodes' pod CIDRs (the overlay in tunnel routing). Pure: the same objects give the
//! same state, whatever their order.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use k8s_openapi::api::{core::v1, discovery::v1::EndpointSlice};
use skiff_api::{Kind, NodeView, ObjectKey, Protocol, ServicePort, Tunnel};
use skiff_common::lb::{Algorithm, FrontendKind, TrafficPolicy};
use skiff_engine::{
    tables::{LocalNode, ServiceConfig},
    tunnel::Overlay,
};

use crate::{
    labels::{self, Labels},
    objects::Object,
    overlay::{self, Routing},
    policy::{self, Enforcement},
    store::{Changes, Store},
    validate::LB_ALGORITHM,
};

/// A Service's backend choice, as Cilium's `bpf-lb-algorithm` and its annotation name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LbAlgorithm {
    /// Maglev consistent hashing: every node and restart picks the same backend for a flow.
    #[default]
    Maglev,
    /// A uniformly random backend per new flow.
    Random,
}

/// What the compiler needs to know about the node it runs on.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    /// The Node object's name (`--node-name`).
    pub name: String,
    /// Addresses NodePorts listen on besides the Node object's (`--node-address`).
    pub addresses: Vec<IpAddr>,
    /// Maglev table size for every service (a prime, `--maglev-table-size`).
    pub maglev_table_size: u32,
    /// How a Service without the `service.cilium.io/lb-algorithm` annotation chooses its
    /// backends (`--bpf-lb-algorithm`).
    pub lb_algorithm: LbAlgorithm,
    /// This node's pod CIDRs given to the agent (cluster-pool IPAM), besides its Node's.
    pub pod_cidrs: Vec<IpNet>,
    /// How endpoints come under network policy (`--policy-enforcement`).
    pub policy_enforcement: Enforcement,
    /// How pods on different nodes reach each other (`--routing-mode`, …).
    pub routing: Routing,
    /// Which pods' traffic leaves the cluster with the node's address.
    pub masquerade: Masquerade,
    /// The underlay's MTU (the first device's; Ethernet's 1500 when unknown).
    pub underlay_mtu: Option<u16>,
}

impl Masquerade {
    /// How `skiff status` names it: `IPv4`, `IPv4, IPv6`, `off`.
    pub fn describe(&self) -> String {
        let families: Vec<&str> = [(self.v4, "IPv4"), (self.v6, "IPv6")]
            .into_iter()
            .filter_map(|(on, family)| on.then_some(family))
            .collect();
        if families.is_empty() { "off".into() } else { families.join(", ") }
    }
}

/// Masquerading of pods' traffic to the world (Cilium's `enable-ipv4-masquerade`,
/// `enable-ipv6-masquerade` and `ipv4-native-routing-cidr`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Masquerade {
    pub v4: bool,
    pub v6: bool,
    /// Destinations the network routes for pods as they are: never masqueraded.
    pub native_routing_cidrs: Vec<IpNet>,
}

/// A pod as policy needs it, kept per pod and computed again only when the pod (or its
/// namespace) changes.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    /// Its identity labels (namespace included).
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    pub host_network: bool,
    /// Its containers' named ports (name, protocol, number).
    pub named_ports: Vec<(String, u8, u16)>,
}

/// A frontend's identity in the desired state: address, port, protocol (sortable).
pub type FrontendKey = (IpAddr, u16, Protocol);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendSpec {
    pub addr: IpAddr,
    pub port: u16,
    /// 0: terminating, kept for the flows it has.
    pub weight: u16,
    pub local: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FrontendSpec {
    pub service: ServicePort,
    pub config: ServiceConfig,
    pub backends: Vec<BackendSpec>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub frontends: BTreeMap<FrontendKey, FrontendSpec>,
    pub node: LocalNode,
    /// This node's addresses (its Node's and `--node-address`).
    pub node_addresses: Vec<IpAddr>,
    /// Each pod as policy needs it, by (namespace, name).
    pub pods: HashMap<(String, String), PodInfo>,
    /// Distinct label sets of pods, the unit Cilium gives an identity, with how many pods
    /// have each.
    pub label_sets: BTreeMap<Labels, usize>,
    /// Every Node, as `skiff node list` shows it (the controller adds their health).
    pub nodes: Vec<NodeView>,
    /// The other nodes' pod CIDRs with their InternalIPs (tunnel endpoints or next hops).
    pub tunnels: Vec<Tunnel>,
    /// In tunnel routing, the overlay the workers encapsulate by.
    pub overlay: Option<Arc<Overlay>>,
    /// In native routing with auto-direct-node-routes, a route to each other node's pod
    /// CIDRs via its InternalIP of the family.
    pub node_routes: Vec<(IpNet, IpAddr)>,
    /// This node's pod CIDRs from its Node object (`spec.podCIDRs`), for kubernetes IPAM.
    pub pod_cidrs: Vec<IpNet>,
    /// Policies in effect (NetworkPolicy and Cilium's); the controller compiles them with the
    /// identities it numbers (`crate::policy`).
    pub policies: usize,
}

/// The desired state of a set of objects, compiled whole (for tests).
pub fn compile<'a>(objects: impl IntoIterator<Item = &'a Object>, ctx: &NodeContext) -> Desired {
    let mut store = Store::default();
    for object in objects {
        store.upsert("compile", Ok(object.clone()));
    }
    let mut compiler = Compiler::default();
    compiler.update(&store, &Changes::all(), ctx);
    compiler.desired
}

/// Keeps the desired state of a store up to date, recompiling only what changed: a service
/// when it or one of its EndpointSlices changed, every service when a Node did (their
/// NodePorts and locality follow the node), the identities when pods did.
#[derive(Default)]
pub struct Compiler {
    desired: Desired,
    /// The frontends each service (namespace, name) produced.
    produced: HashMap<(String, String), Vec<FrontendKey>>,
    /// Label sets that appeared since the last [`Compiler::take_new_label_sets`].
    new_label_sets: Vec<Labels>,
    started: bool,
}

impl Compiler {
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Only the pods that changed, or whose namespace did, get their labels again (all of
    /// them on the `first` update).
    fn update_pods(&mut self, store: &Store, changes: &Changes, first: bool) {
        let pods: Vec<(String, String)> = if first {
            store.of_kind(Kind::Pod).map(|o| (o.key().namespace, o.key().name)).collect()
        } else {
            let in_changed_namespaces = self
                .desired
                .pods
                .keys()
                .filter(|(namespace, _)| changes.namespaces.contains(namespace))
                .cloned();
            let mut pods: BTreeSet<(String, String)> = in_changed_namespaces.collect();
            pods.extend(changes.pods.iter().cloned());
            pods.into_iter().collect()
        };
        for key in pods {
            if let Some(old) = self.desired.pods.remove(&key)
                && let Some(count) = self.desired.label_sets.get_mut(&old.labels)
            {
                *count -= 1;
                if *count == 0 {
                    self.desired.label_sets.remove(&old.labels);
                }
            }
            let object = ObjectKey { kind: Kind::Pod, namespace: key.0.clone(), name: key.1.clone() };
            let Some(Object::Pod(pod)) = store.get(&object) else { continue };
            let labels = labels::of_pod(pod, store);
            let count = self.desired.label_sets.entry(labels.clone()).or_insert(0);
            if *count == 0 {
                self.new_label_sets.push(labels.clone());
            }
            *count += 1;
            let spec = pod.spec.as_ref();
            let info = PodInfo {
                labels,
                ips: policy::pod_ips(pod),
                node: spec.and_then(|s| s.node_name.clone()),
                host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
                named_ports: policy::container_ports(pod),
            };
            self.desired.pods.insert(key, info);
        }
    }

    /// The label sets that appeared since the last call (for identities to number).
    pub fn take_new_label_sets(&mut self) -> Vec<Labels> {
        std::mem::take(&mut self.new_label_sets)
    }

    pub fn update(&mut self, store: &Store, changes: &Changes, ctx: &NodeContext) -> &Desired {
        let first = !std::mem::replace(&mut self.started, true);
        let d = &mut self.desired;
        if changes.nodes || first {
            let nodes: Vec<&v1::Node> = store
                .of_kind(Kind::Node)
                .filter_map(|o| if let Object::Node(n) = o { Some(&**n) } else { None })
                .collect();
            d.node_addresses = node_addresses(&nodes, ctx);
            let mut prefixes = cluster_prefixes(&nodes);
            // The native routing CIDRs are the cluster's too: never masqueraded.
            for cidr in ctx.pod_cidrs.iter().chain(&ctx.masquerade.native_routing_cidrs).map(IpNet::trunc) {
                if !prefixes.contains(&cidr) {
                    prefixes.push(cidr);
                }
            }
            let ours = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(&ctx.name));
            d.pod_cidrs = ours.map(|n| pod_cidrs_of(n)).unwrap_or_default();
            d.node = LocalNode {
                addresses: d.node_addresses.clone(),
                masquerade_v4: d.node_addresses.iter().copied().find(IpAddr::is_ipv4),
                masquerade_v6: d.node_addresses.iter().copied().find(IpAddr::is_ipv6),
                cluster_prefixes: prefixes,
                pod_cidrs: d.pod_cidrs.iter().chain(&ctx.pod_cidrs).copied().collect(),
                egress_masquerade_v4: ctx.masquerade.v4,
                egress_masquerade_v6: ctx.masquerade.v6,
            };
            d.tunnels = tunnels(&nodes, ctx);
            d.nodes = nodes.iter().map(|n| node_view(n, ctx)).collect();
            // The underlay address other nodes tunnel to is this node's InternalIP.
            let underlay: Vec<IpAddr> =
                ours.iter().flat_map(|n| internal_ips(n)).chain(d.node_addresses.iter().copied()).collect();
            let mtu = ctx.underlay_mtu.unwrap_or(1500);
            d.overlay = overlay::overlay(ctx.routing, &d.tunnels, &underlay, mtu);
            d.node_routes = match ctx.routing {
                Routing::Native { auto_direct_node_routes: true } => node_routes(&nodes, ctx),
                _ => Vec::new(),
            };
        }
        let services: BTreeSet<(String, String)> = if changes.nodes || first {
            let mut all: BTreeSet<_> = self.produced.keys().cloned().collect();
            all.extend(store.of_kind(Kind::Service).map(|o| {
                let key = o.key();
                (key.namespace, key.name)
            }));
            all
        } else {
            changes.services.clone()
        };
        for (namespace, name) in services {
            for key in self.produced.remove(&(namespace.clone(), name.clone())).unwrap_or_default() {
                d.frontends.remove(&key);
            }
            let key = ObjectKey { kind: Kind::Service, namespace, name };
            let Some(Object::Service(service)) = store.get(&key) else { continue };
            let slices: Vec<&EndpointSlice> = store
                .slices_of(&key.namespace, &key.name)
                .filter_map(|o| if let Object::EndpointSlice(s) = o { Some(&**s) } else { None })
                .collect();
            let produced = frontends(&mut d.frontends, service, &slices, &d.node_addresses, ctx);
            self.produced.insert((key.namespace, key.name), produced);
        }
        if changes.policies || first {
            let kinds =
                [Kind::NetworkPolicy, Kind::CiliumNetworkPolicy, Kind::CiliumClusterwideNetworkPolicy];
            d.policies = kinds.into_iter().map(|k| store.of_kind(k).count()).sum();
        }
        self.update_pods(store, changes, first);
        &self.desired
    }
}

/// A Node's pod CIDRs (`spec.podCIDRs`, or the older `spec.podCIDR`), each once.
pub(crate) fn pod_cidrs_of(node: &v1::Node) -> Vec<IpNet> {
    let spec = node.spec.as_ref();
    let cidrs = spec
        .and_then(|s| s.pod_cidr.as_ref())
        .into_iter()
        .chain(spec.iter().flat_map(|s| s.pod_cidrs.iter().flatten()));
    let mut out: Vec<IpNet> = Vec::new();
    for cidr in cidrs.filter_map(|c| c.parse::<IpNet>().ok()).map(|c| c.trunc()) {
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    out
}

fn node_addresses(nodes: &[&v1::Node], ctx: &NodeContext) -> Vec<IpAddr> {
    let ours = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(&ctx.name));
    let mut addresses = ctx.addresses.clone();
    for a in ours.iter().flat_map(|n| n.status.iter().flat_map(|s| s.addresses.iter().flatten())) {
        if let ("InternalIP" | "ExternalIP", Ok(ip)) = (a.type_.as_str(), a.address.parse())
            && !addresses.contains(&ip)
        {
            addresses.push(ip);
        }
    }
    addresses
}

/// Pod CIDRs and node addresses: clients inside are the cluster's own.
fn cluster_prefixes(nodes: &[&v1::Node]) -> Vec<IpNet> {
    let mut prefixes = BTreeSet::new();
    for n in nodes {
        prefixes.extend(pod_cidrs_of(n));
        for a in n.status.iter().flat_map(|s| s.addresses.iter().flatten()) {
            if let ("InternalIP", Ok(ip)) = (a.type_.as_str(), a.address.parse::<IpAddr>()) {
                prefixes.insert(IpNet::from(ip));
            }
        }
    }
    prefixes.into_iter().collect()
}

fn node_view(n: &v1::Node, ctx: &NodeContext) -> NodeView {
    let name = n.metadata.name.clone().unwrap_or_default();
    let local = name == ctx.name;
    let addresses = n.status.iter().flat_map(|s| s.addresses.iter().flatten());
    NodeView {
        addresses: addresses
            .filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP"))
            .filter_map(|a| a.address.parse().ok())
            .collect(),
        pod_cidrs: pod_cidrs_of(n),
        tunnel_endpoint: if local { None } else { internal_ips(n).next() },
        health: String::new(),
        local,
        name,
    }
}

/// A Node's InternalIPs, in its order.
fn internal_ips(node: &v1::Node) -> impl Iterator<Item = IpAddr> + '_ {
    let addresses = node.status.iter().flat_map(|s| s.addresses.iter().flatten());
    addresses.filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok())
}

/// Each other node's pod CIDRs via its InternalIP of the CIDR's family (none without one).
fn node_routes(nodes: &[&v1::Node], ctx: &NodeContext) -> Vec<(IpNet, IpAddr)> {
    let mut routes = Vec::new();
    for n in nodes.iter().filter(|n| n.metadata.name.as_deref() != Some(&ctx.name)) {
        for cidr in pod_cidrs_of(n) {
            if let Some(via) = internal_ips(n).find(|a| a.is_ipv4() == cidr.addr().is_ipv4()) {
                routes.push((cidr, via));
            }
        }
    }
    routes.sort();
    routes
}

fn tunnels(nodes: &[&v1::Node], ctx: &NodeContext) -> Vec<Tunnel> {
    let mut tunnels = Vec::new();
    for n in nodes.iter().filter(|n| n.metadata.name.as_deref() != Some(&ctx.name)) {
        let Some(endpoint) = internal_ips(n).next() else { continue };
        for pod_cidr in pod_cidrs_of(n) {
            tunnels.push(Tunnel { node: n.metadata.name.clone().unwrap_or_default(), pod_cidr, endpoint });
        }
    }
    tunnels.sort();
    tunnels
}

/// A port's protocol as validation left it (TCP when unset).
fn protocol_of(name: Option<&str>) -> Protocol {
    name.and_then(Protocol::from_name).unwrap_or_default()
}

/// Every frontend of a service: its cluster IPs, NodePorts on this node's addresses,
/// load-balancer ingress IPs and external IPs, for every port.
fn frontends(
    out: &mut BTreeMap<FrontendKey, FrontendSpec>,
    service: &v1::Service,
    slices: &[&EndpointSlice],
    node_addresses: &[IpAddr],
    ctx: &NodeContext,
) -> Vec<FrontendKey> {
    let mut produced = Vec::new();
    let Some(spec) = &service.spec else { return produced };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return produced;
    }
    let annotated = service.metadata.annotations.as_ref().and_then(|a| a.get(LB_ALGORITHM));
    let algorithm = match annotated.map(String::as_str) {
        Some("random") => LbAlgorithm::Random,
        Some("maglev") => LbAlgorithm::Maglev,
        _ => ctx.lb_algorithm,
    };
    let algorithm = match algorithm {
        LbAlgorithm::Random => Algorithm::Random,
        LbAlgorithm::Maglev => Algorithm::Maglev { table_size: ctx.maglev_table_size },
    };
    let policy = |p: &Option<String>| {
        if p.as_deref() == Some("Local") { TrafficPolicy::Local } else { TrafficPolicy::Cluster }
    };
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        timeout.map_or(10800, |t| u64::try_from(t).unwrap_or(10800))
    });
    let mut cluster_ips: Vec<IpAddr> =
        spec.cluster_ips.iter().flatten().filter_map(|ip| ip.parse().ok()).collect();
    if let Some(ip) = spec.cluster_ip.as_ref().and_then(|ip| ip.parse().ok())
        && !cluster_ips.contains(&ip)
    {
        cluster_ips.push(ip);
    }
    let lb_ips: Vec<IpAddr> = service
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_ref()?.parse().ok())
        .collect();
    let external_ips: Vec<IpAddr> =
        spec.external_ips.iter().flatten().filter_map(|ip| ip.parse().ok()).collect();
    for port in spec.ports.iter().flatten() {
        let protocol = protocol_of(port.protocol.as_deref());
        let name = port.name.clone().unwrap_or_default();
        let service_port = ServicePort {
            namespace: service.metadata.namespace.clone().unwrap_or_default(),
            name: service.metadata.name.clone().unwrap_or_default(),
            port: name.clone(),
            protocol,
        };
        let backends = backends(slices, &name, protocol, &ctx.name);
        let mut add = |addr: IpAddr, number: i32, kind: FrontendKind, traffic_policy| {
            let Ok(number) = u16::try_from(number) else { return };
            let config = ServiceConfig { kind, algorithm, traffic_policy, affinity_timeout };
            // An address family the backends do not have gets no frontend.
            let family: Vec<BackendSpec> =
                backends.iter().filter(|b| b.addr.is_ipv4() == addr.is_ipv4()).copied().collect();
            let spec = FrontendSpec { service: service_port.clone(), config, backends: family };
            out.insert((addr, number, protocol), spec);
            produced.push((addr, number, protocol));
        };
        let internal = policy(&spec.internal_traffic_policy);
        let external = policy(&spec.external_traffic_policy);
        for &ip in &cluster_ips {
            add(ip, port.port, FrontendKind::ClusterIp, internal);
        }
        if let (Some(node_port), "NodePort" | "LoadBalancer") = (port.node_port, kind) {
            for &ip in node_addresses {
                add(ip, node_port, FrontendKind::NodePort, external);
            }
        }
        for &ip in &lb_ips {
            add(ip, port.port, FrontendKind::LoadBalancer, external);
        }
        for &ip in &external_ips {
            add(ip, port.port, FrontendKind::ExternalIp, external);
        }
    }
    produced
}

/// A service port's backends from its EndpointSlices: ready endpoints take new flows;
/// terminating ones that still serve keep their flows (weight 0), or take new ones when no
/// endpoint is ready (as kube-proxy does).
fn backends(slices: &[&EndpointSlice], port_name: &str, protocol: Protocol, node: &str) -> Vec<BackendSpec> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices.iter().filter(|s| matches!(s.address_type.as_str(), "IPv4" | "IPv6")) {
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && protocol_of(p.protocol.as_deref()) == protocol
        });
        let Some(port) = port.and_then(|p| u16::try_from(p.port?).ok()) else { continue };
        for e in &slice.endpoints {
            let c = e.conditions.as_ref();
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let local = e.node_name.as_deref() == Some(node);
            for addr in e.addresses.iter().filter_map(|a| a.parse().ok()) {
                let backend = BackendSpec { addr, port, weight: 1, local };
                if is_ready {
                    ready.insert(backend);
                } else if serving {
                    terminating.insert(backend);
                }
            }
        }
    }
    let fallback = ready.is_empty();
    let terminating =
        terminating.difference(&ready).map(|&b| BackendSpec { weight: u16::from(fallback), ..b });
    let terminating: Vec<BackendSpec> = terminating.collect();
    ready.into_iter().chain(terminating).collect()
}
