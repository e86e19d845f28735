//! From the desired state to the tables the workers run on. Diffed against what was applied:
//! a service port whose backends did not change keeps its backend pool (and Maglev table),
//! so one endpoint change rebuilds one pool, and applying the same state twice changes
//! nothing. Backend ids are stable while a backend exists, so existing flows and session
//! affinity keep pointing at the right backend across updates.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use skiff_api::{ApplyReport, ServicePort};
use skiff_common::lb::{Algorithm, BackendId};
use skiff_engine::{
    lb::Backend,
    tables::{Frontend, Service, Tables},
};

use crate::compile::{BackendSpec, Desired, FrontendKey, FrontendSpec};

/// One service port's backends of one address family: its frontends share them.
type PoolKey = (ServicePort, bool);

/// A pool as last built; its `service` lends the pool to every frontend.
struct Pool {
    backends: Vec<BackendSpec>,
    algorithm: Algorithm,
    service: Service,
}

impl Pool {
    fn serves(&self, spec: &FrontendSpec) -> bool {
        self.backends == spec.backends && self.algorithm == spec.config.algorithm
    }
}

#[derive(Default)]
pub struct Applier {
    applied: Arc<BTreeMap<FrontendKey, FrontendSpec>>,
    pools: HashMap<PoolKey, Pool>,
    ids: HashMap<(IpAddr, u16), BackendId>,
    next_id: u32,
    services: hashbrown::HashMap<Frontend, Service>,
}

impl Applier {
    /// Builds the tables for `desired`, reusing what did not change since the last apply.
    pub fn apply(&mut self, desired: &Desired) -> (Tables, ApplyReport) {
        let mut report = ApplyReport::default();
        for key in self.applied.keys() {
            if !desired.frontends.contains_key(key) {
                report.removed += 1;
                self.services.remove(&frontend(key));
            }
        }
        // The pools this state needs: kept where their backends did not change, built (on
        // every core: a Maglev table is ~0.3 ms) where they did.
        let mut pools: HashMap<PoolKey, Pool> = HashMap::new();
        let mut jobs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (key, spec) in &desired.frontends {
            let pool_key = (spec.service.clone(), key.0.is_ipv4());
            if !seen.insert(pool_key.clone()) {
                continue;
            }
            match self.pools.remove(&pool_key).filter(|p| p.serves(spec)) {
                Some(kept) => {
                    pools.insert(pool_key, kept);
                }
                None => jobs.push(Job { key: pool_key, backends: self.backends(spec), spec: spec.clone() }),
            }
        }
        report.pools_built = jobs.len();
        pools.extend(build_all(jobs));
        for (key, spec) in &desired.frontends {
            let before = self.applied.get(key);
            match before {
                None => report.added += 1,
                Some(b) if b == spec => {
                    report.unchanged += 1;
                    continue;
                }
                Some(_) => report.changed += 1,
            }
            let pool = &pools[&(spec.service.clone(), key.0.is_ipv4())];
            let service = if pool.serves(spec) {
                pool.service.sharing(spec.config)
            } else {
                Service::new(self.backends(spec), spec.config)
            };
            self.services.insert(frontend(key), service.expect("the table size was checked at start"));
        }
        self.pools = pools;
        self.applied = Arc::new(desired.frontends.clone());
        self.release_ids();
        let mut node_addresses: Vec<IpAddr> = desired
            .nodes
            .iter()
            .flat_map(|n| n.addresses.iter().copied())
            .chain(desired.node_addresses.iter().copied())
            .collect();
        node_addresses.sort_unstable();
        node_addresses.dedup();
        let tables = Tables {
            services: self.services.clone(),
            node: desired.node.clone(),
            overlay: desired.overlay.clone(),
            node_addresses,
            ..Tables::default()
        };
        (tables, report)
    }

    /// The frontend's backends with their ids (a new backend gets the next one).
    fn backends(&mut self, spec: &FrontendSpec) -> Vec<Backend> {
        spec.backends
            .iter()
            .map(|b| {
                let id = *self.ids.entry((b.addr, b.port)).or_insert_with(|| {
                    self.next_id += 1;
                    BackendId(self.next_id)
                });
                Backend { id, addr: b.addr, port: b.port, weight: b.weight, local: b.local }
            })
            .collect()
    }

    /// Forgets the ids of backends no frontend uses any more.
    fn release_ids(&mut self) {
        let used: std::collections::HashSet<(IpAddr, u16)> =
            self.applied.values().flat_map(|f| f.backends.iter().map(|b| (b.addr, b.port))).collect();
        self.ids.retain(|k, _| used.contains(k));
    }

    pub fn applied(&self) -> &Arc<BTreeMap<FrontendKey, FrontendSpec>> {
        &self.applied
    }

    /// The published frontends.
    pub fn services(&self) -> &hashbrown::HashMap<Frontend, Service> {
        &self.services
    }

    /// Distinct backends in use.
    pub fn backend_count(&self) -> usize {
        self.ids.len()
    }

    /// The backend id a backend has in the applied tables.
    pub fn backend_id(&self, addr: IpAddr, port: u16) -> Option<BackendId> {
        self.ids.get(&(addr, port)).copied()
    }
}

/// A pool to build: its key, its backends with their ids, and a frontend that uses it.
struct Job {
    key: PoolKey,
    backends: Vec<Backend>,
    spec: FrontendSpec,
}

fn build(job: Job) -> (PoolKey, Pool) {
    let service = Service::new(job.backends, job.spec.config).expect("the table size was checked at start");
    (job.key, Pool { backends: job.spec.backends, algorithm: job.spec.config.algorithm, service })
}

/// Builds the pools on every core, in chunks of at least 64.
fn build_all(mut jobs: Vec<Job>) -> Vec<(PoolKey, Pool)> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads = cores.min(jobs.len() / 64).max(1);
    if threads == 1 {
        return jobs.into_iter().map(build).collect();
    }
    let chunk = jobs.len().div_ceil(threads);
    let mut chunks = Vec::new();
    while !jobs.is_empty() {
        chunks.push(jobs.split_off(jobs.len().saturating_sub(chunk)));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| scope.spawn(move || c.into_iter().map(build).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a pool build does not panic")).collect()
    })
}

fn frontend(&(addr, port, protocol): &FrontendKey) -> Frontend {
    Frontend { addr, port, protocol: protocol.number() }
}
