//! Network policy, compiled from NetworkPolicy, CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy into the workers' tables ([`skiff_engine::policy`]): which
//! identity every address has (the ipcache) and, for each endpoint of this node, the peers
//! and ports each direction allows or denies, numbered rule by rule for `skiff policy get`
//! and `trace`.
//!
//! Semantics are upstream's: a policy isolates the endpoints it selects in each direction it
//! has rules for (`enableDefaultDeny: false` opts out), deny rules win over allows, a
//! namespaced policy's peers stay in its namespace unless they name one, CIDR rules match
//! only addresses outside the cluster (pods and nodes have their own identities), `world`
//! covers every CIDR, `cluster` every pod and reserved identity but the world's, and the node
//! may always reach its pods (Cilium's `allow-localhost`). What skiff cannot enforce (L7
//! rules, FQDNs, services, groups, authentication) is never widened: an allow rule with it
//! allows nothing, a deny rule with it denies every peer on its ports, and the rule is
//! reported. Host policies (`nodeSelector`) are listed and reported, not enforced.

pub mod identity;
pub mod selector;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};
use skiff_api::{Kind, ObjectKey, Protocol, RuleView, TraceView, VerdictView};
use skiff_common::{identity::Identity, proto::ip};
use skiff_engine::policy::{EndpointPolicy, Entry, Policy, PortRange, RuleId, Rules, Verdict};

use self::selector::{Index, RESERVED, Selector};
use crate::{
    compile::PodInfo,
    crd::{CidrRule, Entity, IcmpFamily, L4Proto, PolicySpec, Rule},
    labels::{Labels, NAMESPACE},
    objects::Object,
    store::Store,
};

/// How endpoints come under policy (Cilium's `policyEnforcementMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Enforcement {
    /// An endpoint is isolated in a direction once a policy selects it for that direction.
    #[default]
    Default,
    /// Every endpoint denies what no rule allows, also with no policy.
    Always,
    /// No policy is enforced.
    Never,
}

impl Enforcement {
    pub fn name(self) -> &'static str {
        match self {
            Enforcement::Default => "default",
            Enforcement::Always => "always",
            Enforcement::Never => "never",
        }
    }
}

/// An endpoint of this node.
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    pub addresses: Vec<IpAddr>,
    pub identity: Identity,
    /// Its Pod's identity labels; `None` while the Pod is not known (selected by nothing).
    pub labels: Option<Labels>,
    /// Its containers' named ports (name, protocol, number), for rules that name them.
    pub named_ports: Vec<(String, u8, u16)>,
}

/// What policy is compiled from besides the policies.
pub struct Cluster<'a> {
    pub store: &'a Store,
    /// Every pod (labels, addresses, named ports), by (namespace, name).
    pub pods: &'a HashMap<(String, String), PodInfo>,
    /// Every pod label set's identity.
    pub identities: &'a hashbrown::HashMap<Labels, Identity>,
    pub local: &'a [Local],
    /// The node's own addresses (the pods' gateways too): the `host` identity.
    pub host_addresses: &'a [IpAddr],
    pub node_name: &'a str,
    pub enforcement: Enforcement,
}

/// Compiled policy: the workers' table, the rules by id, and what is not enforced.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub policy: Arc<Policy>,
    /// The policies (specs) compiled, by name.
    pub sources: Vec<String>,
    pub rules: Arc<Vec<RuleView>>,
    /// One line per rule (or host policy) not enforced as written, with its object.
    pub not_enforced: Vec<(ObjectKey, String)>,
    /// Endpoints under policy: (ingress, egress) by address.
    pub enforced: HashMap<IpAddr, (bool, bool)>,
    /// How many endpoints have ingress policy, and egress policy.
    pub counts: (usize, usize),
}

/// The first identity of CIDR prefixes (Cilium's local scope).
const FIRST_CIDR_IDENTITY: u32 = 1 << 24;
const INGRESS: usize = 0;
const EGRESS: usize = 1;

/// A peer as written, before it is resolved to identities.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Peer {
    /// Any peer at all, inside the cluster or not.
    Any,
    Pods(Selector),
    Reserved(Vec<Identity>),
    /// Every pod and reserved identity but the world's (`cluster`).
    Cluster,
    /// The world's identities and every CIDR identity (`world`).
    World,
    Cidr {
        net: IpNet,
        except: Vec<IpNet>,
    },
}

/// Ports as written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ports {
    Range(PortRange),
    Named { name: String, protocol: u8 },
}

/// One rule of one policy, normalised.
struct SpecRule {
    /// Its number, once rules are numbered.
    id: RuleId,
    direction: usize,
    deny: bool,
    at: String,
    peers: Vec<Peer>,
    ports: Vec<Ports>,
    /// Why it is not enforced as written, if it is not.
    not_enforced: Option<String>,
}

/// One policy (one spec of a Cilium policy), normalised.
struct Spec {
    key: ObjectKey,
    /// `Kind namespace/name`, and `specs[i]` for one of several.
    source: String,
    /// `None`: a host policy.
    subject: Option<Selector>,
    isolates: [bool; 2],
    rules: Vec<SpecRule>,
}

/// Compiles the policies, keeping what it built for the next compile: one that follows only
/// new identities (a pod's labels changed, a pod came) adds them to the rules it built,
/// instead of building every endpoint's rules again.
#[derive(Default)]
pub struct PolicyCompiler {
    last: Option<Built>,
}

/// What a compile built that the next may reuse.
struct Built {
    /// The controller's count of policy changes it was built for.
    generation: u64,
    enforcement: Enforcement,
    named_ports: NamedPorts,
    specs: Arc<Vec<Spec>>,
    cidrs: Arc<BTreeMap<IpNet, Identity>>,
    /// `Compiled`'s sources, rules and what is not enforced.
    template: Compiled,
    added: [RuleId; 2],
    /// The highest identity the rules were built over: newer ones are to add.
    max_identity: Identity,
    shared: SharedRules,
    /// The specs selecting each local endpoint's identity.
    selecting: HashMap<Identity, Vec<usize>>,
}

/// Every pod's named ports, by (name, protocol): egress rules resolve a name against the
/// peers'.
type NamedPorts = BTreeMap<(String, u8), BTreeSet<u16>>;

impl PolicyCompiler {
    /// Compiles every policy in `cluster.store` for this node. `generation` changes whenever a
    /// policy did: rules built for the same generation are reused.
    pub fn compile(&mut self, cluster: &Cluster, generation: u64) -> Compiled {
        let named_ports = named_ports(cluster.pods);
        let mut selecting = HashMap::new();
        let reusable = self.last.take().filter(|b| {
            b.generation == generation && b.enforcement == cluster.enforcement && b.named_ports == named_ports
        });
        let (built_specs, cidrs, mut out, added, mut shared, since) = match reusable {
            Some(b) => {
                selecting = b.selecting;
                (b.specs, b.cidrs, b.template, b.added, b.shared, Some(b.max_identity))
            }
            None => {
                let (specs, out, added) = normalise(cluster.store);
                let cidrs = Arc::new(cidr_identities(&specs));
                (Arc::new(specs), cidrs, out, added, SharedRules::new(), None)
            }
        };
        if let Some(since) = since {
            let new: Vec<(&Labels, Identity)> =
                cluster.identities.iter().filter(|&(_, &id)| id > since).map(|(l, &id)| (l, id)).collect();
            if !new.is_empty() {
                for (key, rules) in &mut shared {
                    add_identities(key, rules, &built_specs, &new, &named_ports);
                }
            }
        }
        let template = Compiled {
            sources: out.sources.clone(),
            rules: out.rules.clone(),
            not_enforced: out.not_enforced.clone(),
            ..Compiled::default()
        };
        let reserved = reserved_labels();
        let mut builder = Builder {
            cluster,
            reserved: &reserved,
            cidrs: &cidrs,
            named_ports: &named_ports,
            resolver: None,
            specs: &built_specs,
            enforcement: cluster.enforcement,
            added,
            shared,
            used: BTreeSet::new(),
            selecting,
        };
        let mut policy = Policy { ipcache: ipcache(cluster, &cidrs), endpoints: hashbrown::HashMap::new() };
        for local in cluster.local {
            let [ingress, egress] = [INGRESS, EGRESS].map(|direction| builder.rules(local, direction));
            out.counts.0 += usize::from(ingress.is_some());
            out.counts.1 += usize::from(egress.is_some());
            for &addr in &local.addresses {
                out.enforced.insert(addr, (ingress.is_some(), egress.is_some()));
            }
            let endpoint = Arc::new(EndpointPolicy { identity: local.identity, ingress, egress });
            for &addr in &local.addresses {
                policy.endpoints.insert(addr, endpoint.clone());
            }
        }
        out.policy = Arc::new(policy);
        let Builder { mut shared, used, selecting, .. } = builder;
        // Rules no endpoint uses any more go.
        shared.retain(|key, _| used.contains(key));
        self.last = Some(Built {
            generation,
            enforcement: cluster.enforcement,
            named_ports,
            specs: built_specs,
            cidrs,
            template,
            added,
            max_identity: cluster.identities.values().max().copied().unwrap_or_default(),
            shared,
            selecting,
        });
        out
    }
}

/// Every policy of `store` normalised and numbered, the lists of `Compiled` filled (its
/// sources, rules, what is not enforced), and the agent's own two rules' numbers.
fn normalise(store: &Store) -> (Vec<Spec>, Compiled, [RuleId; 2]) {
    let mut specs = specs(store);
    let mut views = Vec::new();
    let mut not_enforced = Vec::new();
    number(&mut specs, &mut views, &mut not_enforced);
    let added = [
        agent_rule(
            &mut views,
            "allow-localhost",
            INGRESS,
            "the node reaches its pods (Cilium's allow-localhost=always)",
        ),
        agent_rule(
            &mut views,
            "node-traffic",
            EGRESS,
            "traffic to the node's own addresses goes to the kernel, not to a worker: not judged",
        ),
    ];
    let out = Compiled {
        sources: specs.iter().map(|s| s.source.clone()).collect(),
        rules: Arc::new(views),
        not_enforced,
        ..Compiled::default()
    };
    (specs, out, added)
}

/// Adds identities that appeared since `rules` were built to them, where a rule's peer
/// selects them.
fn add_identities(
    (direction, selecting, own_ports): &RulesKey,
    rules: &mut Arc<Rules>,
    specs: &[Spec],
    new: &[(&Labels, Identity)],
    named_ports: &NamedPorts,
) {
    for rule in selecting.iter().flat_map(|&i| &specs[i].rules).filter(|r| r.direction == *direction) {
        if rule.not_enforced.is_some() {
            // Its entries are for any peer, or none: new identities change nothing.
            continue;
        }
        let ranges = port_ranges(rule, own_ports, named_ports);
        for &(labels, identity) in new {
            let selects = rule.peers.iter().any(|peer| match peer {
                Peer::Pods(selector) => selector.matches(labels),
                Peer::Cluster => true,
                _ => false,
            });
            if selects {
                let rules = Arc::make_mut(rules);
                for &ports in &ranges {
                    rules.insert(identity, Entry { ports, deny: rule.deny, rule: rule.id });
                }
            }
        }
    }
}

/// The port ranges of `rule`: named ports resolved against the endpoint's own (ingress) or
/// every pod's (egress).
fn port_ranges(rule: &SpecRule, own_ports: &[(String, u8, u16)], named_ports: &NamedPorts) -> Vec<PortRange> {
    let mut ranges = Vec::new();
    for ports in &rule.ports {
        match ports {
            Ports::Range(r) => ranges.push(*r),
            Ports::Named { name, protocol } if rule.direction == INGRESS => ranges.extend(
                own_ports
                    .iter()
                    .filter(|(n, p, _)| n == name && p == protocol)
                    .map(|&(_, p, port)| PortRange { protocol: p, first: port, last: port }),
            ),
            Ports::Named { name, protocol } => ranges.extend(
                named_ports.get(&(name.clone(), *protocol)).into_iter().flatten().map(|&port| PortRange {
                    protocol: *protocol,
                    first: port,
                    last: port,
                }),
            ),
        }
    }
    ranges
}

fn named_ports(pods: &HashMap<(String, String), PodInfo>) -> NamedPorts {
    let mut named: NamedPorts = BTreeMap::new();
    for (name, protocol, port) in pods.values().flat_map(|p| &p.named_ports) {
        named.entry((name.clone(), *protocol)).or_default().insert(*port);
    }
    named
}

/// An identity for every prefix the rules name (their CIDRs and exceptions; /0 is the
/// world's), numbered in Cilium's local scope.
fn cidr_identities(specs: &[Spec]) -> BTreeMap<IpNet, Identity> {
    let mut prefixes = BTreeSet::new();
    for rule in specs.iter().flat_map(|s| &s.rules) {
        for peer in &rule.peers {
            if let Peer::Cidr { net, except } = peer {
                prefixes.extend(std::iter::once(net).chain(except).filter(|n| n.prefix_len() > 0).copied());
            }
        }
    }
    prefixes.into_iter().zip(FIRST_CIDR_IDENTITY..).map(|(n, i)| (n, Identity(i))).collect()
}

/// Numbers every rule, lists it, and notes what is not enforced as written.
fn number(specs: &mut [Spec], views: &mut Vec<RuleView>, not_enforced: &mut Vec<(ObjectKey, String)>) {
    for spec in specs.iter_mut() {
        if spec.subject.is_none() {
            not_enforced.push((
                spec.key.clone(),
                format!(
                    "{}: a host policy (nodeSelector) is not enforced yet; the node's own traffic is not filtered",
                    spec.source
                ),
            ));
        }
        for i in 0..spec.rules.len() {
            let id = RuleId::try_from(views.len()).unwrap_or(RuleId::MAX);
            spec.rules[i].id = id;
            let rule = &spec.rules[i];
            if let Some(why) = &rule.not_enforced {
                not_enforced.push((spec.key.clone(), format!("{} {}: {why}", spec.source, rule.at)));
            }
            views.push(rule_view(id, spec, rule));
        }
    }
}

/// Which rules: a direction, the policies (specs) selecting the endpoint, and for ingress its
/// named ports.
type RulesKey = (usize, Vec<usize>, Vec<(String, u8, u16)>);

/// The rules of one direction for the endpoints selected by the same policies (and, for
/// ingress, with the same named ports): built once, shared.
type SharedRules = HashMap<RulesKey, Arc<Rules>>;

/// The reserved identities with their one label (`reserved:host`), for selectors naming them.
fn reserved_labels() -> Vec<(Labels, Identity)> {
    let ids = (1..Identity::FIRST_ALLOCATED.0).map(Identity);
    ids.filter_map(|id| Some(([(format!("{RESERVED}{}", id.reserved_name()?), String::new())].into(), id)))
        .collect()
}

/// Builds each endpoint's rules.
struct Builder<'a> {
    cluster: &'a Cluster<'a>,
    reserved: &'a [(Labels, Identity)],
    cidrs: &'a BTreeMap<IpNet, Identity>,
    named_ports: &'a NamedPorts,
    /// Made when rules are to be built from scratch (indexing every identity's labels).
    resolver: Option<Resolver<'a>>,
    specs: &'a [Spec],
    enforcement: Enforcement,
    /// The agent's own rules, by direction: allow-localhost, traffic to the node.
    added: [RuleId; 2],
    shared: SharedRules,
    /// The keys of the rules the endpoints use.
    used: BTreeSet<RulesKey>,
    /// The specs selecting each endpoint identity (its labels are the identity's).
    selecting: HashMap<Identity, Vec<usize>>,
}

impl Builder<'_> {
    /// `local`'s rules in `direction`; `None` when nothing applies (all allowed).
    fn rules(&mut self, local: &Local, direction: usize) -> Option<Arc<Rules>> {
        let specs = self.specs;
        let selecting = match &local.labels {
            Some(labels) => self
                .selecting
                .entry(local.identity)
                .or_insert_with(|| {
                    (0..specs.len())
                        .filter(|&i| specs[i].subject.as_ref().is_some_and(|s| s.matches(labels)))
                        .collect()
                })
                .clone(),
            None => Vec::new(),
        };
        let isolated = match self.enforcement {
            Enforcement::Never => return None,
            Enforcement::Always => true,
            Enforcement::Default => selecting.iter().any(|&i| specs[i].isolates[direction]),
        };
        // Policies that do not isolate still deny what their deny rules deny.
        let has_rules = selecting.iter().any(|&i| specs[i].rules.iter().any(|r| r.direction == direction));
        if !isolated && !has_rules {
            return None;
        }
        // Ingress rules may name the endpoint's own ports; egress rules name the peers'.
        let own_ports = if direction == INGRESS { local.named_ports.clone() } else { Vec::new() };
        let key = (direction, selecting, own_ports);
        self.used.insert(key.clone());
        if let Some(rules) = self.shared.get(&key) {
            return Some(rules.clone());
        }
        let mut rules = Rules::default();
        rules.default_allow = !isolated;
        let (cluster, reserved, cidrs, named_ports) =
            (self.cluster, self.reserved, self.cidrs, self.named_ports);
        let resolver =
            self.resolver.get_or_insert_with(|| Resolver::new(cluster, reserved, cidrs, named_ports));
        for rule in key.1.iter().flat_map(|&i| &specs[i].rules).filter(|r| r.direction == direction) {
            resolver.add(&mut rules, rule, &local.named_ports);
        }
        let added = Entry { ports: PortRange::ANY, deny: false, rule: self.added[direction] };
        rules.insert(Identity::HOST, added);
        let rules = Arc::new(rules);
        self.shared.insert(key, rules.clone());
        Some(rules)
    }
}

/// The verdict on a new flow from `src` to `dst`, from the compiled tables, as a worker
/// would decide it, with the rules that decided.
pub fn trace(
    policy: &Policy,
    rules: &[RuleView],
    src: IpAddr,
    dst: IpAddr,
    protocol: Protocol,
    port: u16,
) -> TraceView {
    let t = policy.trace(src, dst, protocol.number(), port);
    let rule = |id: RuleId| rules.get(usize::try_from(id).unwrap_or(usize::MAX)).cloned();
    let view = |v: Verdict| match v {
        Verdict::Allowed(id) => VerdictView { verdict: "allowed".into(), rule: id.and_then(rule) },
        Verdict::DeniedByRule(id) => VerdictView { verdict: "denied-by-rule".into(), rule: rule(id) },
        Verdict::Denied => VerdictView { verdict: "denied".into(), rule: None },
    };
    let verdict = match t.verdict() {
        Verdict::Allowed(_) => "allowed".into(),
        Verdict::DeniedByRule(_) => "denied by a deny rule".into(),
        Verdict::Denied => "denied: no rule allows it".into(),
    };
    TraceView {
        src,
        dst,
        src_identity: t.src_identity.0,
        dst_identity: t.dst_identity.0,
        protocol,
        port,
        egress: t.egress.map(view),
        ingress: t.ingress.map(view),
        verdict,
    }
}

/// A rule the agent adds to every isolated endpoint.
fn agent_rule(rules: &mut Vec<RuleView>, name: &str, direction: usize, why: &str) -> RuleId {
    let id = RuleId::try_from(rules.len()).unwrap_or(RuleId::MAX);
    rules.push(RuleView {
        id,
        source: format!("skiff-agent {name}"),
        at: String::new(),
        direction: direction_name(direction).into(),
        deny: false,
        subject: "every endpoint under policy".into(),
        peers: vec!["reserved:host".into()],
        ports: vec!["any".into()],
        not_enforced: (direction == EGRESS).then(|| why.to_owned()),
    });
    id
}

fn direction_name(direction: usize) -> &'static str {
    if direction == INGRESS { "ingress" } else { "egress" }
}

fn rule_view(id: RuleId, spec: &Spec, rule: &SpecRule) -> RuleView {
    RuleView {
        id,
        source: spec.source.clone(),
        at: rule.at.clone(),
        direction: direction_name(rule.direction).into(),
        deny: rule.deny,
        subject: spec.subject.as_ref().map_or_else(|| "(host policy)".into(), Selector::describe),
        peers: rule.peers.iter().map(describe_peer).collect(),
        ports: rule.ports.iter().map(describe_ports).collect(),
        not_enforced: rule.not_enforced.clone(),
    }
}

fn describe_peer(peer: &Peer) -> String {
    match peer {
        Peer::Any => "any".into(),
        Peer::Pods(s) => s.describe(),
        Peer::Reserved(ids) => {
            let names: Vec<&str> = ids.iter().filter_map(|i| i.reserved_name()).collect();
            format!("reserved:{}", names.join(","))
        }
        Peer::Cluster => "entity:cluster".into(),
        Peer::World => "entity:world".into(),
        Peer::Cidr { net, except } if except.is_empty() => format!("cidr:{net}"),
        Peer::Cidr { net, except } => {
            let except: Vec<String> = except.iter().map(ToString::to_string).collect();
            format!("cidr:{net} except {}", except.join(","))
        }
    }
}

fn describe_ports(ports: &Ports) -> String {
    let protocol = |p: u8| match p {
        0 => "ANY",
        ip::TCP => "TCP",
        ip::UDP => "UDP",
        ip::SCTP => "SCTP",
        ip::ICMP => "ICMP",
        ip::ICMPV6 => "ICMPv6",
        _ => "?",
    };
    match ports {
        Ports::Range(r) if *r == PortRange::ANY => "any".into(),
        Ports::Range(r) if matches!(r.protocol, ip::ICMP | ip::ICMPV6) => {
            format!("{} type {}", protocol(r.protocol), r.first)
        }
        Ports::Range(r) if r.first == 0 && r.last == u16::MAX => format!("any/{}", protocol(r.protocol)),
        Ports::Range(r) if r.first == r.last => format!("{}/{}", r.first, protocol(r.protocol)),
        Ports::Range(r) => format!("{}-{}/{}", r.first, r.last, protocol(r.protocol)),
        Ports::Named { name, protocol: p } => format!("{name}/{}", protocol(*p)),
    }
}

/// Turns peers into identities, caching what rules share.
struct Resolver<'a> {
    pods: Index<'a, Identity>,
    /// Identities of every pod label set, for `cluster`.
    pod_identities: Vec<Identity>,
    /// CIDR prefixes of the rules with their identities, by prefix.
    cidrs: &'a BTreeMap<IpNet, Identity>,
    named_ports: &'a NamedPorts,
    selected: HashMap<Peer, Arc<Vec<Identity>>>,
}

impl<'a> Resolver<'a> {
    fn new(
        cluster: &Cluster<'a>,
        reserved: &'a [(Labels, Identity)],
        cidrs: &'a BTreeMap<IpNet, Identity>,
        named_ports: &'a NamedPorts,
    ) -> Resolver<'a> {
        let mut pods = Index::default();
        for (labels, &id) in cluster.identities.iter().chain(reserved.iter().map(|(l, id)| (l, id))) {
            pods.insert(labels, id);
        }
        Resolver {
            pods,
            pod_identities: cluster.identities.values().copied().collect(),
            cidrs,
            named_ports,
            selected: HashMap::new(),
        }
    }

    /// The identities `peer` stands for (`Identity::UNKNOWN` alone: any).
    fn identities(&mut self, peer: &Peer) -> Arc<Vec<Identity>> {
        if let Some(found) = self.selected.get(peer) {
            return found.clone();
        }
        let world = || [Identity::WORLD, Identity::WORLD_IPV4, Identity::WORLD_IPV6];
        let ids: Vec<Identity> = match peer {
            Peer::Any => vec![Identity::UNKNOWN],
            Peer::Pods(selector) => self.pods.select(selector).collect(),
            Peer::Reserved(ids) => ids.clone(),
            Peer::Cluster => {
                let reserved = (1..Identity::FIRST_ALLOCATED.0)
                    .map(Identity)
                    .filter(|i| i.reserved_name().is_some() && !world().contains(i));
                reserved.chain(self.pod_identities.iter().copied()).collect()
            }
            Peer::World => world().into_iter().chain(self.cidrs.values().copied()).collect(),
            Peer::Cidr { net, except } => {
                let inside = self
                    .cidrs
                    .iter()
                    .filter(|(p, _)| net.contains(*p) && !except.iter().any(|e| e.contains(*p)));
                let mut ids: Vec<Identity> = inside.map(|(_, &id)| id).collect();
                if net.prefix_len() == 0 {
                    // 0.0.0.0/0 and ::/0 are the world's (Cilium allocates no identity for them).
                    ids.extend(world());
                }
                ids
            }
        };
        let ids = Arc::new(ids);
        self.selected.insert(peer.clone(), ids.clone());
        ids
    }

    /// Adds `rule` to `rules`; `own_ports` are the endpoint's named ports.
    fn add(&mut self, rules: &mut Rules, rule: &SpecRule, own_ports: &[(String, u8, u16)]) {
        let not_enforced = rule.not_enforced.is_some();
        if not_enforced && !rule.deny {
            // Fail closed: an allow skiff cannot enforce as written allows nothing.
            return;
        }
        let peers: Vec<Peer> = if not_enforced { vec![Peer::Any] } else { rule.peers.clone() };
        let ranges = port_ranges(rule, own_ports, self.named_ports);
        for peer in &peers {
            let ids = self.identities(peer);
            for &identity in ids.iter() {
                for &ports in &ranges {
                    rules.insert(identity, Entry { ports, deny: rule.deny, rule: rule.id });
                }
            }
        }
    }
}

/// Every address's identity: pods, this node, the other nodes, the API server, the rules'
/// CIDRs.
fn ipcache(cluster: &Cluster, cidrs: &BTreeMap<IpNet, Identity>) -> skiff_engine::policy::Ipcache {
    let mut cache = skiff_engine::policy::Ipcache::default();
    for (&net, &id) in cidrs {
        cache.insert(net, id);
    }
    for node in
        cluster.store.of_kind(Kind::Node).filter_map(|o| if let Object::Node(n) = o { Some(n) } else { None })
    {
        let ours = node.metadata.name.as_deref() == Some(cluster.node_name);
        let id = if ours { Identity::HOST } else { Identity::REMOTE_NODE };
        for a in node.status.iter().flat_map(|s| s.addresses.iter().flatten()) {
            if let ("InternalIP" | "ExternalIP", Ok(addr)) = (a.type_.as_str(), a.address.parse::<IpAddr>()) {
                cache.insert(addr.into(), id);
            }
        }
    }
    for slice in cluster.store.slices_of("default", "kubernetes") {
        let Object::EndpointSlice(slice) = slice else { continue };
        for addr in slice.endpoints.iter().flat_map(|e| &e.addresses).filter_map(|a| a.parse::<IpAddr>().ok())
        {
            cache.insert(addr.into(), Identity::KUBE_APISERVER);
        }
    }
    for pod in cluster.pods.values().filter(|p| !p.host_network) {
        let Some(&id) = cluster.identities.get(&pod.labels) else { continue };
        for &addr in &pod.ips {
            cache.insert(addr.into(), id);
        }
    }
    for local in cluster.local {
        for &addr in &local.addresses {
            cache.insert(addr.into(), local.identity);
        }
    }
    for &addr in cluster.host_addresses {
        cache.insert(addr.into(), Identity::HOST);
    }
    cache
}

pub fn pod_ips(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> =
        status.iter().flat_map(|s| s.pod_ips.iter().flatten()).filter_map(|p| p.ip.parse().ok()).collect();
    if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

/// A pod's named container ports: (name, protocol, number).
pub fn container_ports(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<(String, u8, u16)> {
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone()?;
            let protocol = protocol_number(p.protocol.as_deref().unwrap_or("TCP"))?;
            Some((name, protocol, u16::try_from(p.container_port).ok()?))
        })
        .collect()
}

fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(ip::TCP),
        "UDP" => Some(ip::UDP),
        "SCTP" => Some(ip::SCTP),
        _ => None,
    }
}

/// Every policy of the store, normalised, in a stable order (kind, namespace, name).
fn specs(store: &Store) -> Vec<Spec> {
    let mut out = Vec::new();
    for kind in [Kind::NetworkPolicy, Kind::CiliumNetworkPolicy, Kind::CiliumClusterwideNetworkPolicy] {
        let mut objects: Vec<&Object> = store.of_kind(kind).collect();
        objects.sort_by_key(|o| o.key());
        for object in objects {
            let key = object.key();
            let source = if key.namespace.is_empty() {
                format!("{} {}", kind.name(), key.name)
            } else {
                format!("{} {}/{}", kind.name(), key.namespace, key.name)
            };
            let (specs, namespace) = match object {
                Object::NetworkPolicy(p) => {
                    out.extend(network_policy(p, &key, source));
                    continue;
                }
                Object::CiliumNetworkPolicy(p) => (&p.spec, Some(key.namespace.as_str())),
                Object::CiliumClusterwideNetworkPolicy(p) => (&p.spec.policy, None),
                _ => continue,
            };
            for (i, spec) in std::iter::once(specs).chain(&specs.more).enumerate() {
                // A policy's name, with the spec's number when it has several.
                let source =
                    if specs.more.is_empty() { source.clone() } else { format!("{source} specs[{i}]") };
                out.push(cilium_spec(spec, &key, source, namespace));
            }
        }
    }
    out
}

fn network_policy(p: &NetworkPolicy, key: &ObjectKey, source: String) -> Option<Spec> {
    let namespace = key.namespace.as_str();
    let spec = p.spec.as_ref()?;
    let subject = spec
        .pod_selector
        .as_ref()
        .map_or_else(Selector::default, |s| Selector::of_kubernetes(s, ""))
        .with(NAMESPACE, namespace);
    let egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let types: Vec<&str> = match &spec.policy_types {
        Some(types) => types.iter().map(String::as_str).collect(),
        None if egress_rules => vec!["Ingress", "Egress"],
        None => vec!["Ingress"],
    };
    let mut rules = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        rules.push(SpecRule {
            id: 0,
            direction: INGRESS,
            deny: false,
            at: format!("spec.ingress[{i}]"),
            peers: k8s_peers(r.from.as_deref(), namespace),
            ports: k8s_ports(r.ports.as_deref()),
            not_enforced: None,
        });
    }
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        rules.push(SpecRule {
            id: 0,
            direction: EGRESS,
            deny: false,
            at: format!("spec.egress[{i}]"),
            peers: k8s_peers(r.to.as_deref(), namespace),
            ports: k8s_ports(r.ports.as_deref()),
            not_enforced: None,
        });
    }
    // Rules of a direction the policy types leave out do not apply.
    rules.retain(|r| types.contains(&if r.direction == INGRESS { "Ingress" } else { "Egress" }));
    Some(Spec {
        key: key.clone(),
        source,
        subject: Some(subject),
        isolates: [types.contains(&"Ingress"), types.contains(&"Egress")],
        rules,
    })
}

/// A NetworkPolicy rule's peers: none listed is anyone.
fn k8s_peers(peers: Option<&[NetworkPolicyPeer]>, namespace: &str) -> Vec<Peer> {
    let peers = peers.unwrap_or_default();
    if peers.is_empty() {
        return vec![Peer::Any];
    }
    peers
        .iter()
        .filter_map(|p| {
            if let Some(block) = &p.ip_block {
                let net = block.cidr.parse::<IpNet>().ok()?.trunc();
                let except =
                    block.except.iter().flatten().filter_map(|e| e.parse::<IpNet>().ok()).map(|e| e.trunc());
                return Some(Peer::Cidr { net, except: except.collect() });
            }
            let pods = p.pod_selector.as_ref().map(|s| Selector::of_kubernetes(s, ""));
            let namespaces = p
                .namespace_selector
                .as_ref()
                .map(|s| Selector::of_kubernetes(s, &format!("{}.", crate::labels::NAMESPACE_LABELS)));
            Some(Peer::Pods(match (pods, namespaces) {
                (Some(pods), None) => pods.with(NAMESPACE, namespace),
                (pods, Some(namespaces)) => {
                    Selector(pods.unwrap_or_default().0.into_iter().chain(namespaces.0).collect())
                        .with_key(NAMESPACE)
                }
                (None, None) => return None,
            }))
        })
        .collect()
}

/// A NetworkPolicy rule's ports: none listed is every port of every protocol.
fn k8s_ports(ports: Option<&[NetworkPolicyPort]>) -> Vec<Ports> {
    let ports = ports.unwrap_or_default();
    if ports.is_empty() {
        return vec![Ports::Range(PortRange::ANY)];
    }
    ports
        .iter()
        .filter_map(|p| {
            let protocol = protocol_number(p.protocol.as_deref().unwrap_or("TCP"))?;
            Some(match &p.port {
                None => Ports::Range(PortRange { protocol, first: 0, last: u16::MAX }),
                Some(IntOrString::Int(n)) => {
                    let first = u16::try_from(*n).ok()?;
                    let last = p.end_port.and_then(|e| u16::try_from(e).ok()).unwrap_or(first);
                    Ports::Range(PortRange { protocol, first, last })
                }
                Some(IntOrString::String(name)) => Ports::Named { name: name.clone(), protocol },
            })
        })
        .collect()
}

fn cilium_spec(spec: &PolicySpec, key: &ObjectKey, source: String, namespace: Option<&str>) -> Spec {
    let subject = spec.endpoint_selector.as_ref().map(|s| {
        let s = Selector::of_cilium(s);
        match namespace {
            Some(ns) => s.with(NAMESPACE, ns),
            None => s,
        }
    });
    let default_deny = spec.enable_default_deny.unwrap_or_default();
    let isolates = [
        default_deny.ingress.unwrap_or(true) && !(spec.ingress.is_empty() && spec.ingress_deny.is_empty()),
        default_deny.egress.unwrap_or(true) && !(spec.egress.is_empty() && spec.egress_deny.is_empty()),
    ];
    let mut rules = Vec::new();
    for (direction, deny, field, list) in [
        (INGRESS, false, "ingress", &spec.ingress),
        (INGRESS, true, "ingressDeny", &spec.ingress_deny),
        (EGRESS, false, "egress", &spec.egress),
        (EGRESS, true, "egressDeny", &spec.egress_deny),
    ] {
        for (i, rule) in list.iter().enumerate() {
            rules.push(cilium_rule(rule, direction, deny, format!("spec.{field}[{i}]"), namespace));
        }
    }
    Spec { key: key.clone(), source, subject, isolates, rules }
}

fn cilium_rule(rule: &Rule, direction: usize, deny: bool, at: String, namespace: Option<&str>) -> SpecRule {
    let (endpoints, cidrs, cidr_sets, entities) = if direction == INGRESS {
        (&rule.from_endpoints, &rule.from_cidr, &rule.from_cidr_set, &rule.from_entities)
    } else {
        (&rule.to_endpoints, &rule.to_cidr, &rule.to_cidr_set, &rule.to_entities)
    };
    let mut missing: Vec<String> = rule.unmodelled.keys().cloned().collect();
    let mut peers: Vec<Peer> = endpoints
        .iter()
        .map(|s| {
            let selector = Selector::of_cilium(s);
            Peer::Pods(match namespace {
                Some(ns) => selector.in_namespace(ns),
                // A cluster-wide `{}` is every pod (Cilium's managed endpoints), not the world.
                None if selector.0.is_empty() => selector.with_key(NAMESPACE),
                None => selector,
            })
        })
        .collect();
    peers.extend(
        cidrs
            .iter()
            .filter_map(|c| c.parse::<IpNet>().ok())
            .map(|net| Peer::Cidr { net: net.trunc(), except: Vec::new() }),
    );
    for set in cidr_sets {
        match cidr_set(set) {
            Some(peer) => peers.push(peer),
            None => missing.extend(set.unmodelled.keys().map(|k| format!("CIDRSet.{k}"))),
        }
    }
    peers.extend(entities.iter().map(|&e| entity(e)));
    let ports = cilium_ports(rule, &mut missing);
    let has_peer_fields =
        !(endpoints.is_empty() && cidrs.is_empty() && cidr_sets.is_empty() && entities.is_empty());
    if !has_peer_fields && (!rule.to_ports.is_empty() || !rule.icmps.is_empty()) && missing.is_empty() {
        // Ports without peers: from (or to) anyone.
        peers.push(Peer::Any);
    }
    let not_enforced = (!missing.is_empty()).then(|| {
        let what = if deny { "denies every peer on its ports instead" } else { "allows nothing instead" };
        format!(
            "{} not enforced yet (needs the L7/DNS proxy or is not modelled); the rule {what}",
            missing.join(", ")
        )
    });
    SpecRule { id: 0, direction, deny, at, peers, ports, not_enforced }
}

/// A Cilium rule's ports (`toPorts`, `icmps`; none: every protocol and port). What skiff
/// does not model (L7 rules, names it does not know) goes to `missing`.
fn cilium_ports(rule: &Rule, missing: &mut Vec<String>) -> Vec<Ports> {
    let mut ports = Vec::new();
    for port_rule in &rule.to_ports {
        if !port_rule.unmodelled.is_empty() {
            let l7: Vec<String> = port_rule.unmodelled.keys().map(|k| format!("toPorts.{k}")).collect();
            missing.extend(l7);
        }
        if port_rule.ports.is_empty() {
            ports.push(Ports::Range(PortRange::ANY));
        }
        for p in &port_rule.ports {
            let protocols: &[u8] = match p.protocol {
                L4Proto::TCP => &[ip::TCP],
                L4Proto::UDP => &[ip::UDP],
                L4Proto::SCTP => &[ip::SCTP],
                L4Proto::ICMP => &[ip::ICMP],
                L4Proto::ICMPv6 => &[ip::ICMPV6],
                L4Proto::ANY => &[ip::TCP, ip::UDP, ip::SCTP],
            };
            for &protocol in protocols {
                ports.push(match p.port.parse::<u16>() {
                    Ok(0) => Ports::Range(PortRange { protocol, first: 0, last: u16::MAX }),
                    Ok(first) => {
                        let last = p
                            .end_port
                            .and_then(|e| u16::try_from(e).ok())
                            .filter(|&e| e >= first)
                            .unwrap_or(first);
                        Ports::Range(PortRange { protocol, first, last })
                    }
                    Err(_) => Ports::Named { name: p.port.clone(), protocol },
                });
            }
        }
    }
    for field in rule.icmps.iter().flat_map(|i| &i.fields) {
        let family = field.family;
        match icmp_type(&field.type_, family) {
            Some(t) => {
                let protocol = if family == IcmpFamily::IPv4 { ip::ICMP } else { ip::ICMPV6 };
                ports.push(Ports::Range(PortRange { protocol, first: t.into(), last: t.into() }));
            }
            None => missing.push(format!("icmps type {:?}", field.type_)),
        }
    }
    if rule.to_ports.is_empty() && rule.icmps.is_empty() {
        // L3 only: every protocol, ICMP included.
        ports.push(Ports::Range(PortRange::ANY));
    }
    ports
}

fn cidr_set(set: &CidrRule) -> Option<Peer> {
    if !set.unmodelled.is_empty() {
        return None;
    }
    let net = set.cidr.as_ref()?.parse::<IpNet>().ok()?.trunc();
    let except = set.except.iter().filter_map(|e| e.parse::<IpNet>().ok()).map(|e| e.trunc()).collect();
    Some(Peer::Cidr { net, except })
}

fn entity(e: Entity) -> Peer {
    let reserved = |ids: &[Identity]| Peer::Reserved(ids.to_vec());
    match e {
        Entity::All => Peer::Any,
        Entity::World => Peer::World,
        Entity::WorldIpv4 => reserved(&[Identity::WORLD_IPV4, Identity::WORLD]),
        Entity::WorldIpv6 => reserved(&[Identity::WORLD_IPV6, Identity::WORLD]),
        Entity::Cluster => Peer::Cluster,
        Entity::Host => reserved(&[Identity::HOST]),
        Entity::RemoteNode => reserved(&[Identity::REMOTE_NODE]),
        Entity::KubeApiserver => reserved(&[Identity::KUBE_APISERVER]),
        Entity::Health => reserved(&[Identity::HEALTH]),
        Entity::Init => reserved(&[Identity::INIT]),
        Entity::Unmanaged => reserved(&[Identity::UNMANAGED]),
        Entity::Ingress => reserved(&[Identity::INGRESS]),
    }
}

/// An ICMP type by number or by Cilium's name for it.
pub fn icmp_type(t: &IntOrString, family: IcmpFamily) -> Option<u8> {
    let names: &[(&str, u8)] = match family {
        IcmpFamily::IPv4 => &[
            ("EchoReply", 0),
            ("DestinationUnreachable", 3),
            ("Redirect", 5),
            ("Echo", 8),
            ("EchoRequest", 8),
            ("RouterAdvertisement", 9),
            ("RouterSelection", 10),
            ("TimeExceeded", 11),
            ("ParameterProblem", 12),
            ("Timestamp", 13),
            ("TimestampReply", 14),
            ("Photuris", 40),
            ("ExtendedEchoRequest", 42),
            ("ExtendedEchoReply", 43),
        ],
        IcmpFamily::IPv6 => &[
            ("DestinationUnreachable", 1),
            ("PacketTooBig", 2),
            ("TimeExceeded", 3),
            ("ParameterProblem", 4),
            ("EchoRequest", 128),
            ("EchoReply", 129),
            ("MulticastListenerQuery", 130),
            ("MulticastListenerReport", 131),
            ("MulticastListenerDone", 132),
            ("RouterSolicitation", 133),
            ("RouterAdvertisement", 134),
            ("NeighborSolicitation", 135),
            ("NeighborAdvertisement", 136),
            ("RedirectMessage", 137),
            ("RouterRenumbering", 138),
            ("ICMPNodeInformationQuery", 139),
            ("ICMPNodeInformationResponse", 140),
            ("InverseNeighborDiscoverySolicitation", 141),
            ("InverseNeighborDiscoveryAdvertisement", 142),
            ("HomeAgentAddressDiscoveryRequest", 144),
            ("HomeAgentAddressDiscoveryReply", 145),
            ("MobilePrefixSolicitation", 146),
            ("MobilePrefixAdvertisement", 147),
            ("DuplicateAddressRequestCodeSuffix", 157),
            ("DuplicateAddressConfirmationCodeSuffix", 158),
            ("ExtendedEchoRequest", 160),
            ("ExtendedEchoReply", 161),
        ],
    };
    match t {
        IntOrString::Int(n) => u8::try_from(*n).ok(),
        IntOrString::String(s) => {
            s.parse().ok().or_else(|| names.iter().find(|(n, _)| n == s).map(|&(_, t)| t))
        }
    }
}
