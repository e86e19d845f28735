//! Network policy in the control plane at scale: 10 000 pods in 100 namespaces (110 of them
//! on this node) under 1000 policies (NetworkPolicies and CiliumNetworkPolicies: pod and
//! namespace selectors, CIDRs with exceptions, entities, port ranges, deny rules), from
//! decoded objects to the workers' tables (identities, ipcache, each local endpoint's rules).
//! Reports the full apply against the same cluster with no policy, and one pod's label change
//! (a new identity, every policy that selects it) against the full apply. Writes
//! `target/bench-report/policy.json`.

use std::{path::PathBuf, time::Instant};

use serde_json::{Value, json};
use skiff_api::{Answer, Kind, Request, Source};
use skiff_control::{
    compile::NodeContext,
    controller::{Controller, Event, Recorder},
    objects::decode,
    policy::Enforcement,
    validate::Limits,
};
use skiff_perf::{Figure, Record, write_report};

const PODS: usize = 10_000;
const NAMESPACES: usize = 100;
const LOCAL: usize = 110;
const POLICIES: usize = 1000;
const ROUNDS: usize = 5;

fn namespace(n: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("t{}", n % 10)}}})
}

/// Pod `k`: in namespace `k / 100`, labelled `app` (200 apps, so 10 000 label sets: one
/// identity each) and `tier`; every 91st (`LOCAL` of them, across the namespaces) on this
/// node.
fn pod(k: usize, app: usize) -> Value {
    let ip = format!("198.18.{}.{}", 128 + k / 256, k % 256);
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("p-{k}"), "namespace": format!("ns-{}", k / 100),
                        "labels": {"app": format!("a{app}"), "tier": if k.is_multiple_of(2) { "web" } else { "db" }}},
           "spec": {"nodeName": if local(k) { "node1" } else { "node2" },
                    "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
           "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn local(k: usize) -> bool {
    k.is_multiple_of(91)
}

/// Policy `p`: a NetworkPolicy for even `p` (on the web tier of its namespace), a
/// CiliumNetworkPolicy for odd (on one app).
fn policy(p: usize) -> Value {
    let ns = format!("ns-{}", p / 2 % NAMESPACES);
    let (app, peer) = (format!("a{}", p % 200), format!("a{}", (p + 7) % 200));
    if p.is_multiple_of(2) {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": format!("np-{p}"), "namespace": ns},
               "spec": {"podSelector": {"matchLabels": {"tier": "web"}}, "policyTypes": ["Ingress", "Egress"],
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}},
                                              {"namespaceSelector": {"matchLabels": {"team": format!("t{}", p % 10)}}}],
                                     "ports": [{"port": 8000, "endPort": 8100}, {"port": "http"}]}],
                        "egress": [{"to": [{"ipBlock": {"cidr": format!("10.{}.0.0/16", p % 250),
                                                        "except": [format!("10.{}.1.0/24", p % 250)]}}]}]}})
    } else {
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
               "metadata": {"name": format!("cnp-{p}"), "namespace": ns},
               "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                        "ingress": [{"fromEndpoints": [{"matchLabels": {"tier": "web"}},
                                                       {"matchExpressions": [{"key": "app", "operator": "In", "values": [peer]}]}],
                                     "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
                                    {"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "80", "protocol": "ANY"}]}]}],
                        "egressDeny": [{"toCIDR": [format!("198.51.{}.0/24", p % 250)]}],
                        "egress": [{"toEntities": ["cluster"]}]}})
    }
}

fn controller() -> (Controller, Recorder) {
    let ctx = NodeContext {
        name: "node1".into(),
        addresses: vec!["198.18.0.1".parse().unwrap()],
        maglev_table_size: 251,
        pod_cidrs: Vec::new(),
        policy_enforcement: Enforcement::Default,
        ..NodeContext::default()
    };
    let recorder = Recorder::default();
    let source = Source::StateDir { path: "bench".into() };
    (Controller::new(ctx, Limits::default(), Box::new(recorder.clone()), source), recorder)
}

/// Applies the cluster (with `policies` policies) whole; its time in seconds.
fn full_apply(policies: usize) -> (f64, Controller, Recorder) {
    let mut values: Vec<Value> = (0..NAMESPACES).map(namespace).collect();
    values.extend((0..PODS).map(|k| pod(k, k % 200)));
    values.extend((0..policies).map(policy));
    let objects = values.into_iter().map(|v| ("bench".to_owned(), decode(v, "bench"))).collect();
    let (mut controller, recorder) = controller();
    let started = Instant::now();
    let rejected = controller.handle(Event::Resync { kinds: Kind::ALL.to_vec(), objects });
    assert!(rejected.is_empty(), "{rejected:?}");
    controller.reconcile().unwrap();
    (started.elapsed().as_secs_f64(), controller, recorder)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut kept = None;
    for _ in 0..ROUNDS {
        without.push(full_apply(0).0);
        let (seconds, controller, recorder) = full_apply(POLICIES);
        with.push(seconds);
        kept = Some((controller, recorder));
    }
    let (mut controller, recorder) = kept.expect("a round");
    let status = controller.snapshot().read().unwrap().status.clone();
    let enforced = recorder.0.read().unwrap().1.policy.endpoints.values().filter(|e| e.enforced()).count();
    assert_eq!((status.policies, status.identities), (POLICIES, PODS));
    assert_eq!((0..PODS).filter(|&k| local(k)).count(), LOCAL);
    assert!(enforced >= LOCAL / 2, "the web tier's local endpoints are under policy: {enforced}");
    let Answer::Policy(view) = controller.request(&Request::PolicyGet) else { panic!("the policy") };
    println!(
        "{POLICIES} policies over {PODS} pods: {enforced} local endpoints under policy, {} rules",
        view.rules.len()
    );

    // One local pod's labels change: a new label set, so a new identity, and the policies
    // selecting it (as subject or peer) change.
    let mut changes = Vec::new();
    for round in 0..ROUNDS {
        let object = decode(pod(91, 1000 + round), "bench");
        let started = Instant::now();
        controller.handle(Event::Upsert { origin: "bench".into(), object });
        controller.reconcile().unwrap().expect("published");
        changes.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (with, without, change) = (Figure::rounds(with), Figure::rounds(without), Figure::rounds(changes));
    println!(
        "full apply: {:.2} s with {POLICIES} policies, {:.2} s without; one pod's label change {:.1} ms",
        with.value, without.value, change.value
    );
    let full_ms = Figure { value: with.value * 1000.0, rounds: Vec::new(), spread: None };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(
        &dir,
        "policy",
        &[
            Record::new("full_apply_1000_policies_over_10k_pods", "s", with)
                .against("the same cluster with no policy", without),
            Record::new("one_pod_label_change_1000_policies_10k_pods", "ms", change)
                .against("the full apply with the policies", full_ms),
        ],
    )
    .unwrap();
}
