//! The control plane at scale: 10k Services × 10 endpoints (each a ClusterIP on one TCP port,
//! with an EndpointSlice), from decoded objects to the tables the workers run on (validation,
//! compile, apply with Maglev tables of 16381 slots). Reports the full apply in seconds, the
//! process's peak memory, and one endpoint change at that scale against rebuilding every
//! table for it (compiled whole into a fresh applier: a control plane without the diff).
//! Writes `target/bench-report/control.json`.

use std::{path::PathBuf, time::Instant};

use serde_json::json;
use skiff_api::{Kind, Rejection, Source};
use skiff_control::{
    apply::Applier,
    compile::{Compiler, NodeContext},
    controller::{Controller, Event, Recorder},
    objects::{Object, decode},
    policy::Enforcement,
    store::Changes,
    validate::Limits,
};
use skiff_perf::{Figure, Record, write_report};

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;
const ROUNDS: usize = 5;

fn service(i: usize) -> serde_json::Value {
    let (hi, lo) = (i / 250, i % 250 + 1);
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
           "spec": {"clusterIP": format!("198.19.{hi}.{lo}"), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn slice(i: usize, shift: usize) -> serde_json::Value {
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|e| {
            let n = i * ENDPOINTS + e + shift;
            json!({"addresses": [format!("198.18.{}.{}", 128 + n / 256 % 64, n % 256)], "nodeName": "node1",
                   "conditions": {"ready": true}, "hostname": format!("p{}", n % 256)})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench", "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints})
}

fn decoded(value: serde_json::Value) -> (String, Result<Object, Rejection>) {
    ("bench".into(), decode(value, "bench"))
}

/// The process's peak resident memory (VmHWM), in bytes.
fn peak_rss() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok());
    kb.unwrap_or(0.0) * 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ctx = NodeContext {
        name: "node1".into(),
        addresses: vec!["198.18.0.1".parse().unwrap()],
        maglev_table_size: 16381,
        pod_cidrs: Vec::new(),
        policy_enforcement: Enforcement::Default,
        ..NodeContext::default()
    };
    let objects: Vec<_> = (0..SERVICES).flat_map(|i| [decoded(service(i)), decoded(slice(i, 0))]).collect();
    let rss_before = peak_rss();

    // The full apply: validate and store every object, compile, build every table, publish.
    let recorder = Recorder::default();
    let mut controller = Controller::new(
        ctx.clone(),
        Limits::default(),
        Box::new(recorder.clone()),
        Source::StateDir { path: "bench".into() },
    );
    let started = Instant::now();
    assert!(controller.handle(Event::Resync { kinds: Kind::ALL.to_vec(), objects }).is_empty());
    let report = controller.reconcile().unwrap().expect("published");
    let full = started.elapsed().as_secs_f64();
    assert_eq!(report.added, SERVICES);
    let frontends = recorder.0.read().unwrap().1.services.len();
    assert_eq!(frontends, SERVICES);
    let peak = peak_rss();
    println!(
        "full apply: {SERVICES} services × {ENDPOINTS} endpoints in {full:.2} s; peak RSS {:.0} MiB (+{:.0} MiB)",
        peak / 1048576.0,
        (peak - rss_before) / 1048576.0
    );

    // One endpoint change, through the controller (store, compile, diff, one pool rebuilt).
    let mut changes = Vec::new();
    for round in 0..ROUNDS {
        let change = decoded(slice(SERVICES / 2, round + 1));
        let started = Instant::now();
        controller.handle(Event::Upsert { origin: change.0, object: change.1 });
        let r = controller.reconcile().unwrap().expect("published");
        changes.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!((r.changed, r.pools_built), (1, 1), "one frontend, one pool");
    }
    // The same change with every table rebuilt (a fresh applier, as without the diff).
    let mut rebuilds = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut compiler = Compiler::default();
        let (_, r) = Applier::default().apply(compiler.update(controller.store(), &Changes::all(), &ctx));
        rebuilds.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.pools_built, SERVICES);
    }
    let (change, rebuild) = (Figure::rounds(changes), Figure::rounds(rebuilds));
    println!("one endpoint change: {:.1} ms (every table rebuilt: {:.1} ms)", change.value, rebuild.value);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(
        &dir,
        "control",
        &[
            Record::new("full_apply_10k_services_x_10_endpoints", "s", Figure::one(full)),
            Record::new("peak_memory_vmhwm", "bytes", Figure::one(peak)),
            Record::new("one_endpoint_change_at_10k_services", "ms", change)
                .against("every table rebuilt (no diff, a fresh applier)", rebuild),
        ],
    )
    .unwrap();
}
