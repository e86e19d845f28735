//! The control loop's state: events from a source go into the store; a reconcile compiles
//! what changed, applies it and publishes the tables to the datapath (a [`Sink`]), then
//! refreshes the snapshot the local API serves.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use skiff_api::{
    Answer, ApplyReport, AttachMode, Datapath, Health, Kind, LastApply, ObjectKey, PodRef, Problem,
    Rejection, Request, Source, Status,
};
use skiff_engine::tables::{LocalNode, Tables};

use crate::{
    api::{LiveStats, Snapshot},
    apply::Applier,
    compile::{Compiler, Desired, NodeContext},
    endpoints::Endpoints,
    objects::{Documents, Object},
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
    /// A live view of the workers' counters, read at each status request.
    fn stats(&self) -> Option<LiveStats> {
        None
    }
    /// Serves an interface made while running (a pod's veth); how it does.
    fn attach(&mut self, _iface: &str) -> Result<AttachMode> {
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
    /// The node part of the last published tables (its changes publish too).
    published_node: Option<LocalNode>,
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
            failure: None,
            unlisted: Kind::ALL.to_vec(),
            not_served: Vec::new(),
            ignored: Vec::new(),
            endpoints: None,
        };
        controller.refresh_snapshot();
        controller
    }

    /// Serves `skiff-cni` with `endpoints`: the saved ones are attached again now.
    pub fn with_endpoints(mut self, mut endpoints: Endpoints) -> Result<Controller> {
        endpoints.restore(&mut *self.sink)?;
        self.endpoints = Some(endpoints);
        self.label_endpoints();
        self.refresh_snapshot();
        Ok(self)
    }

    /// Whether `skiff-cni` can be served: endpoints kept and a pod CIDR to address them from.
    pub fn cni_ready(&self) -> bool {
        self.endpoints.as_ref().is_some_and(Endpoints::ready)
    }

    /// Answers a request of `skiff-cni` (addresses, endpoints).
    pub fn endpoint_request(&mut self, request: &Request) -> Answer {
        let Some(endpoints) = &mut self.endpoints else {
            return Answer::Error(skiff_api::ApiError::new(
                skiff_api::ErrorCode::NotReady,
                "this agent does not serve the CNI (it runs without endpoints)",
            ));
        };
        let answer = endpoints.answer(request, &mut *self.sink);
        self.label_endpoints();
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
        let store = &self.store;
        let labels = |pod: &PodRef| {
            let key = ObjectKey { kind: Kind::Pod, namespace: pod.namespace.clone(), name: pod.name.clone() };
            match store.get(&key) {
                Some(Object::Pod(p)) => Some(crate::labels::of_pod(p, store)),
                _ => None,
            }
        };
        if let Err(e) = endpoints.label(labels) {
            tracing::error!("endpoint identities: {e:#}");
        }
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
                self.listings += 1;
                self.unlisted.retain(|k| !kinds.contains(k));
                self.not_served.retain(|k| !kinds.contains(k));
                let before: Vec<Rejection> = self.store.rejections().cloned().collect();
                self.store.resync(&kinds, objects);
                return self.store.rejections().filter(|r| !before.contains(r)).cloned().collect();
            }
            Event::Upsert { origin, object } => {
                return self.store.upsert(&origin, object).cloned().into_iter().collect();
            }
            Event::Delete(key) => self.store.delete(&key),
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
            let desired = self.compiler.update(&self.store, &changes, &self.ctx);
            let (tables, r) = self.applier.apply(desired);
            if !r.is_noop() || self.published_node.as_ref() != Some(&tables.node) {
                if let Err(e) = self.sink.publish(tables) {
                    // Retried by the next reconcile or tick, with the whole tables again.
                    self.failure = Some(format!("{e:#}"));
                    self.published_node = None;
                    self.refresh_snapshot();
                    return Err(e);
                }
                self.failure = None;
                self.applies += 1;
                let micros =
                    started.map_or(0, |t| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                let unix_seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                self.last_apply = Some(LastApply { report: r, micros, unix_seconds });
                report = Some(r);
            }
            self.published_node = Some(self.compiler.desired().node.clone());
            self.applied_generation = Some(self.store.generation());
            // The label sets change only here: not at every CNI call.
            if let Some(endpoints) = &mut self.endpoints
                && let Err(e) = endpoints.allocate_identities(&self.compiler.desired().label_sets)
            {
                tracing::error!("identities: {e:#}");
            }
            self.label_endpoints();
        }
        self.refresh_snapshot();
        Ok(report)
    }

    /// Retries a failed apply (periodically, until one succeeds).
    pub fn retry(&mut self) -> Result<()> {
        if self.failure.is_some() {
            self.reconcile()?;
        }
        Ok(())
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
        if policies > 0 {
            problems.push(Problem::PoliciesNotEnforced { policies });
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
            frontends: applied.len(),
            backends: self.applier.backend_count(),
            identities: self.compiler.desired().label_sets.len(),
            tunnels: self.compiler.desired().tunnels.clone(),
            policies: self.compiler.desired().policies,
            next_hops: self.sink.next_hops(),
            applies: self.applies,
            listings: self.listings,
            last_apply: self.last_apply.clone(),
            workers: None,
        };
        let live = self.sink.stats();
        *self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Snapshot {
            status,
            applied: applied.clone(),
            services: self.applier.services().clone(),
            endpoints: self.endpoints.as_ref().map(Endpoints::views).unwrap_or_default(),
            ipam: self.endpoints.as_ref().map(Endpoints::ipam_view),
            identities: self.endpoints.as_ref().map(Endpoints::identity_views).unwrap_or_default(),
            live,
        };
    }
}
