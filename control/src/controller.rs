//! The control loop's state: events from a source go into the store; a reconcile compiles
//! what changed, applies it and publishes the tables to the datapath (a [`Sink`]), then
//! refreshes the snapshot the local API serves.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use ipnet::IpNet;
use skiff_api::{
    Answer, ApiError, ApplyReport, AttachMode, Datapath, ErrorCode, Health, Kind, LastApply, NodeView,
    ObjectKey, PodRef, PolicyView, Problem, Rejection, Request, Source, Status, TraceEnd, observe,
};
use skiff_common::{identity::Identity, lb::FrontendKind};
use skiff_engine::{
    policy::Policy,
    prefix::PrefixMap,
    tables::{LocalNode, Tables},
    tunnel::Overlay,
};

use crate::{
    api::{LiveFlows, LiveMaps, LiveStats, Snapshot},
    apply::Applier,
    compile::{Compiler, Desired, NodeContext},
    endpoints::Endpoints,
    metrics::ControlMetrics,
    objects::{Documents, Object},
    observer::{self, Observer},
    policy::{
        self, Cluster, Compiled, Enforcement, Local, PolicyCompiler,
        identity::{Allocator, ClusterIdentities, Identities},
    },
    prefilter::Prefilter,
    store::Store,
    validate::Limits,
};

/// What a source reports.
#[derive(Debug)]
pub enum Event {
    /// A complete listing of `kinds` (a folder read, a watcher's initial list or relist):
    /// what it leaves out is gone.
    Resync {
        kinds: Vec<Kind>,
        objects: Documents,
    },
    Upsert {
        origin: String,
        object: Result<Object, Rejection>,
    },
    Delete(ObjectKey),
    /// The source became reachable, or stopped being so (the tables stay as they are).
    Connected(bool),
    /// The source does not serve this kind (its CRD is missing): it has no objects, and the
    /// other kinds need not wait for its first list.
    NotServed(Kind),
    /// Documents of kinds skiff does not read, in the source now (a folder's Deployments).
    Ignored(Vec<String>),
}

/// Where the tables go: the running datapath, or a recorder in tests.
pub trait Sink: Send {
    fn publish(&mut self, tables: Tables) -> Result<()>;
    /// What the sink derives from outside the objects changed (the kernel's next hops):
    /// derive it again; `Ok(true)` if it republished.
    fn refresh(&mut self) -> Result<bool> {
        Ok(false)
    }
    fn describe(&self) -> Datapath;
    fn next_hops(&self) -> usize {
        0
    }
    /// Whether the datapath has a next hop towards `addr` (`None`: no datapath to ask).
    fn reaches(&self, _addr: IpAddr) -> Option<bool> {
        None
    }
    /// A live view of the workers' counters, read at each status request.
    fn stats(&self) -> Option<LiveStats> {
        None
    }
    /// A live view of the tracked flows, read at each `ct list`.
    fn flows(&self) -> Option<LiveFlows> {
        None
    }
    /// A live view of the pinned maps, read at each `map list`.
    fn maps(&self) -> Option<LiveMaps> {
        None
    }
    /// Serves an interface made while running (a pod's veth, whose pod may send only from
    /// `sources`); how it does.
    fn attach(&mut self, _iface: &str, _sources: &[IpAddr]) -> Result<AttachMode> {
        Ok(AttachMode::None)
    }
    /// Stops serving an interface `attach` served (it may be gone already).
    fn detach(&mut self, _iface: &str) -> Result<()> {
        Ok(())
    }
    /// Readies the node to forward for its pods, whose gateways are `gateways`.
    fn prepare_node(&mut self, _gateways: &[IpAddr]) -> Result<()> {
        Ok(())
    }
    /// Makes the kernel's routes to other nodes' pod CIDRs exactly `routes` (pod CIDR via
    /// the node's address), for native routing with auto-direct-node-routes.
    fn set_node_routes(&mut self, _routes: &[(IpNet, IpAddr)]) -> Result<()> {
        Ok(())
    }
}

/// A sink that keeps what was published (tests, benchmarks, `--no-datapath`).
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<RwLock<(u64, Tables)>>);

impl Sink for Recorder {
    fn publish(&mut self, tables: Tables) -> Result<()> {
        let mut slot = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = (slot.0 + 1, tables);
        Ok(())
    }

    fn describe(&self) -> Datapath {
        Datapath::default()
    }
}

pub struct Controller {
    store: Store,
    ctx: NodeContext,
    applier: Applier,
    sink: Box<dyn Sink>,
    snapshot: Arc<RwLock<Snapshot>>,
    source: Source,
    connected: bool,
    applied_generation: Option<u64>,
    applies: u64,
    listings: u64,
    last_apply: Option<LastApply>,
    /// When the oldest change not yet applied arrived.
    pending_since: Option<Instant>,
    compiler: Compiler,
    /// Why the last publish failed, until one succeeds.
    failure: Option<String>,
    /// The node and overlay of the last published tables (their changes publish too).
    published_node: Option<(LocalNode, Option<Arc<Overlay>>)>,
    /// The routes to other nodes' pod CIDRs last installed (native routing).
    installed_routes: Option<Vec<(IpNet, IpAddr)>>,
    /// Frontends other than NodePorts on this node's own addresses (warned about once).
    on_node_addresses: Vec<String>,
    /// The policy of the last published tables.
    published_policy: Option<Arc<Policy>>,
    /// The security identities of the cluster's pod label sets.
    identities: Identities,
    /// The policies as last compiled.
    policy: Compiled,
    policy_compiler: PolicyCompiler,
    /// Counts the reconciles that saw a policy change: rules built for the same count hold.
    policy_generation: u64,
    /// Rules newly not enforced as written, until the control loop posts them as Events.
    notices: Vec<(ObjectKey, String)>,
    prefilter: Prefilter,
    /// The prefilter of the last published tables.
    published_prefilter: Option<Arc<PrefixMap<u32>>>,
    /// Kinds whose first full list has not arrived: nothing is published before all have,
    /// so the datapath never runs a partial cluster (services without their endpoints, pods
    /// without their policies).
    unlisted: Vec<Kind>,
    /// Kinds the source does not serve (CRDs not installed).
    not_served: Vec<Kind>,
    /// Documents of kinds skiff does not read, as the source last reported them.
    ignored: Vec<String>,
    /// The pods `skiff-cni` gave a network, when the agent serves the CNI.
    endpoints: Option<Endpoints>,
    /// Names what the datapath observes, with what this state knows.
    observer: Option<Arc<Observer>>,
    metrics: ControlMetrics,
    /// How long a CiliumIdentity no pod has stays.
    identity_gc_grace: Duration,
}

impl Controller {
    pub fn new(ctx: NodeContext, limits: Limits, sink: Box<dyn Sink>, source: Source) -> Controller {
        let controller = Controller {
            store: Store::new(limits),
            ctx,
            applier: Applier::default(),
            sink,
            snapshot: Arc::new(RwLock::new(Snapshot::new(Status::new(source.clone(), Datapath::default())))),
            source,
            connected: false,
            applied_generation: None,
            applies: 0,
            listings: 0,
            last_apply: None,
            pending_since: None,
            compiler: Compiler::default(),
            published_node: None,
            installed_routes: None,
            on_node_addresses: Vec::new(),
            published_policy: None,
            identities: Identities::default(),
            policy: Compiled::default(),
            policy_compiler: PolicyCompiler::default(),
            policy_generation: 0,
            notices: Vec::new(),
            prefilter: Prefilter::default(),
            published_prefilter: None,
            failure: None,
            unlisted: Kind::ALL.to_vec(),
            not_served: Vec::new(),
            ignored: Vec::new(),
            endpoints: None,
            observer: None,
            metrics: ControlMetrics::default(),
            identity_gc_grace: Duration::MAX,
        };
        controller.refresh_snapshot();
        controller
    }

    /// Serves `skiff-cni` with `endpoints`: the saved ones are attached again now. The
    /// identities are kept in their folder from now on.
    pub fn with_endpoints(mut self, mut endpoints: Endpoints) -> Result<Controller> {
        self.identities = Identities::open(&endpoints.dir().join("identities.json"))?;
        self.prefilter = Prefilter::open(&endpoints.dir().join("prefilter.json"))?;
        endpoints.restore(&mut *self.sink)?;
        self.endpoints = Some(endpoints);
        self.label_endpoints();
        self.refresh_snapshot();
        Ok(self)
    }

    /// Counts an object received (a rejected one by the kind its key names, if any).
    fn count_event(&self, object: &Result<Object, Rejection>, action: &str) {
        let kind = object.as_ref().map_or_else(|r| r.key.as_ref().map(|k| k.kind), |o| Some(o.kind()));
        if let Some(kind) = kind {
            self.metrics.event(kind, action, object.is_ok());
        }
    }

    /// What the control loop records for Prometheus.
    pub fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// Keeps `observer`'s names of pods, identities, services and rules up to date.
    pub fn with_observer(mut self, observer: Arc<Observer>) -> Controller {
        self.observer = Some(observer);
        self.refresh_snapshot();
        self
    }

    /// What the observer names flows by, from the state now.
    fn observer_context(&self) -> observer::Context {
        let desired = self.compiler.desired();
        let objects = desired.pods.iter().flat_map(|((namespace, name), pod)| {
            pod.ips.iter().map(move |ip| (*ip, (namespace.clone(), name.clone())))
        });
        // The pods this agent gave a network, named as the runtime named them (before their
        // Pod objects report the addresses, or without objects at all).
        let served = self.endpoints.iter().flat_map(Endpoints::views).flat_map(|e| {
            let pod = e.pod.map(|p| (p.namespace, p.name));
            e.addresses.into_iter().filter_map(move |a| Some((a, pod.clone()?)))
        });
        let pods = objects.chain(served).collect();
        let services = self
            .applier
            .applied()
            .iter()
            .map(|(&(addr, port, protocol), spec)| {
                let s = &spec.service;
                (
                    (addr, port, protocol.number()),
                    observe::Service { name: s.name.clone(), namespace: s.namespace.clone() },
                )
            })
            .collect();
        observer::Context {
            node: self.ctx.name.clone(),
            pods,
            policy: self.policy.policy.clone(),
            labels: self.identities.views().into_iter().map(|v| (v.id, v.labels)).collect(),
            services,
            rules: self.policy.rules.iter().map(|r| (r.id, r.clone())).collect(),
            tunnels: if desired.overlay.is_some() { desired.tunnels.clone() } else { Vec::new() },
        }
    }

    /// Whether `skiff-cni` can be served: endpoints kept and a pod CIDR to address them from.
    pub fn cni_ready(&self) -> bool {
        self.endpoints.as_ref().is_some_and(Endpoints::ready)
    }

    /// The nodes with their health: whether the datapath reaches their InternalIP.
    fn node_views(&self) -> Vec<NodeView> {
        let mut nodes = self.compiler.desired().nodes.clone();
        for n in &mut nodes {
            n.health = match (n.local, n.tunnel_endpoint) {
                (true, _) => "local".into(),
                (false, None) => "no InternalIP".into(),
                (false, Some(endpoint)) => match self.sink.reaches(endpoint) {
                    Some(true) => "reachable".into(),
                    Some(false) => "no next hop".into(),
                    None => "unknown".into(),
                },
            };
        }
        nodes
    }

    /// Answers what the snapshot leaves to the control loop: `skiff-cni`'s requests, and
    /// those that read the identities, the compiled policy or every pod.
    pub fn request(&mut self, request: &Request) -> Answer {
        match request {
            Request::IdentityList => Answer::Identities(self.identities.views()),
            Request::NodeList => Answer::Nodes(self.node_views()),
            Request::PolicyGet => Answer::Policy(Box::new(PolicyView {
                enforcement: self.ctx.policy_enforcement.name().into(),
                policies: self.policy.sources.clone(),
                rules: self.policy.rules.to_vec(),
            })),
            Request::PolicyTrace { src, dst, port, protocol } => {
                match (self.trace_addresses(src), self.trace_addresses(dst)) {
                    (Ok(from), Ok(to)) => {
                        // The first pair of one family.
                        let same_family =
                            |&a: &IpAddr| to.iter().find(|b| b.is_ipv4() == a.is_ipv4()).map(|&b| (a, b));
                        match from.iter().find_map(same_family) {
                            Some((a, b)) => Answer::Trace(Box::new(policy::trace(
                                &self.policy.policy,
                                &self.policy.rules,
                                a,
                                b,
                                *protocol,
                                *port,
                            ))),
                            None => Answer::Error(ApiError::new(
                                ErrorCode::NotFound,
                                "the two ends share no address family",
                            )),
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => Answer::Error(e),
                }
            }
            Request::PrefilterList => Answer::Prefilter(self.prefilter.view()),
            Request::PrefilterUpdate { cidrs } | Request::PrefilterDelete { cidrs } => {
                let changed = if matches!(request, Request::PrefilterUpdate { .. }) {
                    self.prefilter.update(cidrs)
                } else {
                    self.prefilter.delete(cidrs)
                };
                if let Err(e) = changed {
                    return Answer::Error(ApiError::new(ErrorCode::BadRequest, format!("{e:#}")));
                }
                if self.unlisted.is_empty() {
                    let (tables, report) = self.applier.apply(self.compiler.desired());
                    if let Err(e) = self.publish(tables, report.is_noop()) {
                        return Answer::Error(ApiError::new(ErrorCode::Internal, format!("{e:#}")));
                    }
                }
                self.refresh_snapshot();
                Answer::Prefilter(self.prefilter.view())
            }
            _ => self.endpoint_request(request),
        }
    }

    /// The addresses of one end of a trace: a pod's (its endpoint's on this node, which are
    /// what the datapath knows it by; else the Pod's).
    fn trace_addresses(&self, end: &TraceEnd) -> Result<Vec<IpAddr>, ApiError> {
        let pod = match end {
            TraceEnd::Ip(a) => return Ok(vec![*a]),
            TraceEnd::Pod(pod) => pod,
        };
        let endpoints = self.endpoints.iter().flat_map(Endpoints::views);
        let mut addresses: Vec<IpAddr> =
            endpoints.filter(|e| e.pod.as_ref() == Some(pod)).flat_map(|e| e.addresses).collect();
        let key = ObjectKey { kind: Kind::Pod, namespace: pod.namespace.clone(), name: pod.name.clone() };
        if addresses.is_empty()
            && let Some(Object::Pod(p)) = self.store.get(&key)
        {
            addresses = policy::pod_ips(p);
        }
        if addresses.is_empty() {
            return Err(ApiError::new(ErrorCode::NotFound, format!("no pod {pod} with an address")));
        }
        Ok(addresses)
    }

    /// Answers a request of `skiff-cni` (addresses, endpoints).
    fn endpoint_request(&mut self, request: &Request) -> Answer {
        let Some(endpoints) = &mut self.endpoints else {
            return Answer::Error(skiff_api::ApiError::new(
                skiff_api::ErrorCode::NotReady,
                "this agent does not serve the CNI (it runs without endpoints)",
            ));
        };
        let answer = endpoints.answer(request, &mut *self.sink);
        self.label_endpoints();
        // A new endpoint is under its policy before its pod starts; a gone one leaves it.
        self.compile_policy();
        if self.unlisted.is_empty() {
            let (tables, report) = self.applier.apply(self.compiler.desired());
            if let Err(e) = self.publish(tables, report.is_noop()) {
                tracing::error!("publishing the endpoints' policy: {e:#}");
            }
        }
        self.refresh_snapshot();
        answer
    }

    /// Gives the endpoints their Pods' labels, and in kubernetes IPAM mode the Node's pod
    /// CIDRs.
    fn label_endpoints(&mut self) {
        let Some(endpoints) = &mut self.endpoints else { return };
        if let Err(e) = endpoints.set_node_cidrs(&self.compiler.desired().pod_cidrs, &mut *self.sink) {
            tracing::error!("the pods' gateways: {e:#}");
        }
        let (pods, identities) = (&self.compiler.desired().pods, &mut self.identities);
        let of_pod = |pod: &PodRef| {
            let Some(info) = pods.get(&(pod.namespace.clone(), pod.name.clone())) else { return Ok(None) };
            Ok(Some((info.labels.clone(), identities.of(&info.labels)?)))
        };
        if let Err(e) = endpoints.label(of_pod) {
            tracing::error!("endpoint identities: {e:#}");
        }
    }

    /// Compiles the policies for this node's endpoints: those skiff-cni made, and pods of
    /// this node on interfaces given to the agent (`--device`).
    fn compile_policy(&mut self) {
        let pods = &self.compiler.desired().pods;
        let mut local = Vec::new();
        // Pods skiff-cni serves: their endpoints' addresses are theirs, whatever the Pod says.
        let mut served_pods = Vec::new();
        for e in self.endpoints.iter().flat_map(Endpoints::views) {
            let key = e.pod.as_ref().map(|p| (p.namespace.clone(), p.name.clone()));
            let named_ports = key.as_ref().and_then(|k| pods.get(k)).map(|p| p.named_ports.clone());
            served_pods.extend(key);
            local.push(Local {
                addresses: e.addresses.clone(),
                identity: Identity(e.identity),
                labels: (e.identity != Identity::INIT.0).then(|| e.labels.clone()),
                named_ports: named_ports.unwrap_or_default(),
            });
        }
        let served: Vec<IpAddr> = local.iter().flat_map(|l| l.addresses.iter().copied()).collect();
        for (key, pod) in pods {
            if pod.node.as_deref() != Some(self.ctx.name.as_str())
                || pod.host_network
                || served_pods.contains(key)
            {
                continue;
            }
            let addresses: Vec<IpAddr> = pod.ips.iter().copied().filter(|a| !served.contains(a)).collect();
            let Some(&identity) = self.identities.all().get(&pod.labels) else { continue };
            if !addresses.is_empty() {
                let (labels, named_ports) = (Some(pod.labels.clone()), pod.named_ports.clone());
                local.push(Local { addresses, identity, labels, named_ports });
            }
        }
        let mut host_addresses = self.compiler.desired().node_addresses.clone();
        host_addresses.extend(self.endpoints.iter().flat_map(Endpoints::gateways));
        let cluster = Cluster {
            store: &self.store,
            pods,
            identities: self.identities.all(),
            local: &local,
            host_addresses: &host_addresses,
            node_name: &self.ctx.name,
            enforcement: self.ctx.policy_enforcement,
        };
        let compiled = self.policy_compiler.compile(&cluster, self.policy_generation);
        let known = &self.policy.not_enforced;
        self.notices.extend(compiled.not_enforced.iter().filter(|n| !known.contains(n)).cloned());
        self.policy = compiled;
    }

    /// What is newly not enforced as written since the last call, by object (for Events).
    pub fn take_notices(&mut self) -> Vec<(ObjectKey, String)> {
        std::mem::take(&mut self.notices)
    }

    /// Publishes `tables` with the compiled policy, unless nothing changed since the last
    /// publish (`unchanged`: the applier's report is a no-op). Whether it published.
    fn publish(&mut self, mut tables: Tables, unchanged: bool) -> Result<bool> {
        tables.policy = self.policy.policy.clone();
        tables.prefilter = self.prefilter.table().clone();
        let same_policy = self.published_policy.as_ref().is_some_and(|p| **p == *tables.policy);
        let same_prefilter =
            self.published_prefilter.as_ref().is_some_and(|p| Arc::ptr_eq(p, &tables.prefilter));
        let node = (tables.node.clone(), tables.overlay.clone());
        if unchanged && same_policy && same_prefilter && self.published_node.as_ref() == Some(&node) {
            return Ok(false);
        }
        let (policy, prefilter) = (tables.policy.clone(), tables.prefilter.clone());
        if let Err(e) = self.sink.publish(tables) {
            // Retried by the next reconcile or tick, with the whole tables again.
            self.failure = Some(format!("{e:#}"));
            self.published_node = None;
            self.published_policy = None;
            self.published_prefilter = None;
            self.refresh_snapshot();
            return Err(e);
        }
        self.failure = None;
        self.published_node = Some(node);
        self.published_policy = Some(policy);
        self.published_prefilter = Some(prefilter);
        Ok(true)
    }

    pub fn snapshot(&self) -> Arc<RwLock<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn desired(&self) -> &Desired {
        self.compiler.desired()
    }

    /// Takes a source's event; returns the rejections it caused (for Kubernetes Events).
    pub fn handle(&mut self, event: Event) -> Vec<Rejection> {
        self.pending_since.get_or_insert_with(Instant::now);
        match event {
            Event::Resync { kinds, objects } => {
                for (_, object) in &objects {
                    self.count_event(object, "resync");
                }
                self.listings += 1;
                self.unlisted.retain(|k| !kinds.contains(k));
                self.not_served.retain(|k| !kinds.contains(k));
                let before: Vec<Rejection> = self.store.rejections().cloned().collect();
                self.store.resync(&kinds, objects);
                return self.store.rejections().filter(|r| !before.contains(r)).cloned().collect();
            }
            Event::Upsert { origin, object } => {
                self.count_event(&object, "update");
                return self.store.upsert(&origin, object).cloned().into_iter().collect();
            }
            Event::Delete(key) => {
                self.metrics.event(key.kind, "delete", true);
                self.store.delete(&key);
            }
            Event::Connected(up) => self.connected = up,
            Event::Ignored(documents) => self.ignored = documents,
            Event::NotServed(kind) => {
                self.unlisted.retain(|&k| k != kind);
                if !self.not_served.contains(&kind) {
                    self.not_served.push(kind);
                    self.not_served.sort();
                }
                self.store.resync(&[kind], Vec::new());
            }
        }
        Vec::new()
    }

    /// Applies what changed since the last reconcile (nothing if nothing did, or before every
    /// kind's first list) and refreshes the snapshot. Returns the apply's report when the tables were published.
    pub fn reconcile(&mut self) -> Result<Option<ApplyReport>> {
        if !self.unlisted.is_empty() {
            self.refresh_snapshot();
            return Ok(None);
        }
        let started = self.pending_since.take();
        let mut report = None;
        if self.applied_generation != Some(self.store.generation()) {
            let changes = self.store.take_changes();
            self.policy_generation += u64::from(changes.policies);
            self.compiler.update(&self.store, &changes, &self.ctx);
            // The label sets change only here: not at every CNI call. New ones are numbered
            // in label order (nodes numbering on their own number the same objects alike);
            // all of them again when the cluster's CiliumIdentity objects renumbered some.
            let mut label_sets = self.compiler.take_new_label_sets();
            if changes.policies && self.identities.observe(self.cluster_identities()) {
                label_sets = self.compiler.desired().label_sets.keys().cloned().collect();
            }
            label_sets.sort_unstable();
            if let Err(e) = self.identities.allocate(&label_sets) {
                tracing::error!("identities: {e:#}");
            }
            self.label_endpoints();
            self.compile_policy();
            let (tables, r) = self.applier.apply(self.compiler.desired());
            if self.publish(tables, r.is_noop())? {
                self.applies += 1;
                let micros =
                    started.map_or(0, |t| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                let unix_seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                self.last_apply = Some(LastApply { report: r, micros, unix_seconds });
                self.metrics.apply_seconds.observe(micros as f64 / 1e6);
                report = Some(r);
            }
            self.install_routes()?;
            self.warn_on_node_addresses();
            self.applied_generation = Some(self.store.generation());
        }
        self.refresh_snapshot();
        Ok(report)
    }

    /// The CiliumIdentity objects of the source.
    fn cluster_identities(&self) -> ClusterIdentities {
        self.store
            .of_kind(Kind::CiliumIdentity)
            .filter_map(|o| {
                if let Object::CiliumIdentity(i) = o { Some((i.number()?, i.pod_labels())) } else { None }
            })
            .collect()
    }

    /// Numbers identities through `allocator` (the API server's CiliumIdentity objects), and
    /// deletes those whose label set no pod has had for `gc_grace`.
    pub fn with_identity_allocator(
        mut self,
        allocator: Box<dyn Allocator>,
        gc_grace: Duration,
    ) -> Controller {
        self.identities.set_allocator(allocator);
        self.identity_gc_grace = gc_grace;
        self
    }

    /// Installs the routes to other nodes' pod CIDRs when they changed.
    fn install_routes(&mut self) -> Result<()> {
        let routes = &self.compiler.desired().node_routes;
        if self.installed_routes.as_ref() == Some(routes) {
            return Ok(());
        }
        let routes = routes.clone();
        self.installed_routes = None;
        self.sink.set_node_routes(&routes)?;
        self.installed_routes = Some(routes);
        Ok(())
    }

    /// A Service whose cluster, external or load-balancer IP is this node's own address takes
    /// the node's own connects to that port too (as with kube-proxy's OUTPUT rules): said in
    /// the log when it appears, and in the status while it lasts.
    fn warn_on_node_addresses(&mut self) {
        let desired = self.compiler.desired();
        let found: Vec<String> = self
            .applier
            .applied()
            .iter()
            .filter(|((addr, _, _), spec)| {
                spec.config.kind != FrontendKind::NodePort && desired.node_addresses.contains(addr)
            })
            .map(|(&(addr, port, protocol), spec)| {
                let frontend = std::net::SocketAddr::new(addr, port);
                format!("{} {frontend}/{protocol} ({})", spec.service, spec.config.kind)
            })
            .collect();
        for f in found.iter().filter(|f| !self.on_node_addresses.contains(f)) {
            tracing::warn!(
                "{f} is an address of this node: its connects to that port go to the service's backends"
            );
        }
        self.on_node_addresses = found;
    }

    /// Retries a failed apply (periodically, until one succeeds).
    pub fn retry(&mut self) -> Result<()> {
        if self.failure.is_some() {
            self.reconcile()?;
        }
        self.collect_identities();
        Ok(())
    }

    /// Deletes the identities no pod has had for their grace (listed pods only: before its
    /// first list of pods, the agent knows of none).
    fn collect_identities(&mut self) {
        if self.unlisted.contains(&Kind::Pod) {
            return;
        }
        let in_use = &self.compiler.desired().label_sets;
        let grace = self.identity_gc_grace;
        let deleted = self.identities.collect_garbage(|l| in_use.contains_key(l), Instant::now(), grace);
        if !deleted.is_empty() {
            tracing::info!("deleted CiliumIdentity {deleted:?}: no pod has had their labels for {grace:?}");
            self.refresh_snapshot();
        }
    }

    /// Lets the sink derive again what it takes from outside the objects (the kernel changed).
    pub fn refresh(&mut self) -> Result<()> {
        if self.sink.refresh()? {
            self.refresh_snapshot();
        }
        Ok(())
    }

    fn refresh_snapshot(&self) {
        let mut objects = BTreeMap::new();
        for o in self.store.objects() {
            *objects.entry(o.kind()).or_insert(0) += 1;
        }
        let applied = self.applier.applied();
        let mut problems = Vec::new();
        if !self.connected {
            problems.push(Problem::SourceUnreachable);
        }
        if let Some(failure) = &self.failure {
            problems.push(Problem::ApplyFailed { error: failure.clone() });
        }
        if !self.unlisted.is_empty() {
            problems.push(Problem::WaitingForFirstList { kinds: self.unlisted.clone() });
        }
        if !self.not_served.is_empty() {
            problems.push(Problem::NotServed { kinds: self.not_served.clone() });
        }
        let policies = self.compiler.desired().policies;
        let enforcement = self.ctx.policy_enforcement;
        if enforcement == Enforcement::Never && policies > 0 {
            problems.push(Problem::PolicyEnforcementOff { policies });
        }
        if !self.policy.not_enforced.is_empty() {
            let rules = self.policy.not_enforced.iter().map(|(_, line)| line.clone()).collect();
            problems.push(Problem::RulesNotEnforced { rules });
        }
        let enforced = &self.policy.enforced;
        let mut endpoints = self.endpoints.as_ref().map(Endpoints::views).unwrap_or_default();
        for e in &mut endpoints {
            e.policy = e.addresses.iter().find_map(|a| enforced.get(a).copied()).unwrap_or_default();
        }
        let status = Status {
            version: env!("CARGO_PKG_VERSION").into(),
            health: if problems.is_empty() { Health::Ok } else { Health::Degraded { problems } },
            node: self.ctx.name.clone(),
            source: self.source.clone(),
            connected: self.connected,
            datapath: self.sink.describe(),
            objects,
            rejections: self.store.rejections().cloned().collect(),
            ignored: self.ignored.clone(),
            on_node_addresses: self.on_node_addresses.clone(),
            frontends: applied.len(),
            backends: self.applier.backend_count(),
            identities: self.compiler.desired().label_sets.len(),
            identity_allocation: self.identities.allocation().into(),
            routing: self.ctx.routing.describe(),
            masquerading: self.ctx.masquerade.describe(),
            tunnels: self.compiler.desired().tunnels.clone(),
            policies,
            policy_enforcement: enforcement.name().into(),
            enforced: self.policy.counts,
            prefilter: self.prefilter.len(),
            next_hops: self.sink.next_hops(),
            applies: self.applies,
            listings: self.listings,
            last_apply: self.last_apply.clone(),
            workers: None,
            flows: None,
        };
        if let Some(observer) = &self.observer {
            observer.set_context(self.observer_context());
        }
        let (live, flows) = (self.sink.stats(), self.sink.flows());
        *self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Snapshot {
            status,
            applied: applied.clone(),
            services: self.applier.services().clone(),
            endpoints,
            ipam: self.endpoints.as_ref().map(Endpoints::ipam_view),
            live,
            flows,
            observer: self.observer.clone(),
            maps: self.sink.maps(),
            local_addresses: self.compiler.desired().node_addresses.clone(),
        };
    }
}
