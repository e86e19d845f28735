//! From objects to tables: what each kind of Kubernetes state becomes, and the applier's
//! reuse of what did not change.

use std::net::IpAddr;

use skiff_api::{Kind, ObjectKey, Protocol};
use skiff_common::lb::{Algorithm, FrontendKind, TrafficPolicy};
use skiff_control::{
    apply::Applier,
    compile::{BackendSpec, Desired, LbAlgorithm, NodeContext, compile},
    objects::{Object, decode_yaml},
    policy::Enforcement,
};

const DEMO: &[&str] = &[
    include_str!("../../examples/demo/node.yaml"),
    include_str!("../../examples/demo/web.yaml"),
    include_str!("../../examples/demo/pods.yaml"),
];

fn objects(texts: &[&str]) -> Vec<Object> {
    texts
        .iter()
        .flat_map(|t| decode_yaml(t, "test").expect("YAML").documents)
        .map(|(_, o)| o.expect("valid"))
        .collect()
}

fn ctx() -> NodeContext {
    NodeContext {
        name: "node1".into(),
        addresses: Vec::new(),
        maglev_table_size: 251,
        pod_cidrs: Vec::new(),
        policy_enforcement: Enforcement::Default,
        ..NodeContext::default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn desired(texts: &[&str]) -> Desired {
    compile(&objects(texts), &ctx())
}

#[test]
fn the_demo_becomes_a_cluster_ip_and_a_node_port_on_three_local_pods() {
    let d = desired(DEMO);
    let keys: Vec<_> = d.frontends.keys().copied().collect();
    assert_eq!(keys, [(ip("198.18.0.1"), 30080, Protocol::Tcp), (ip("198.19.0.10"), 80, Protocol::Tcp)]);
    let cluster_ip = &d.frontends[&(ip("198.19.0.10"), 80, Protocol::Tcp)];
    assert_eq!(cluster_ip.config.kind, FrontendKind::ClusterIp);
    assert_eq!(d.frontends[&(ip("198.18.0.1"), 30080, Protocol::Tcp)].config.kind, FrontendKind::NodePort);
    let pods = ["198.18.128.10", "198.18.128.11", "198.18.128.12"];
    let want: Vec<BackendSpec> =
        pods.iter().map(|a| BackendSpec { addr: ip(a), port: 8080, weight: 1, local: true }).collect();
    assert_eq!(cluster_ip.backends, want);
    assert_eq!(d.node.masquerade_v4, Some(ip("198.18.0.1")));
    assert!(
        d.node.cluster_prefixes.contains(&"198.18.128.0/24".parse().unwrap()),
        "the pod CIDR is the cluster's"
    );
    assert_eq!(d.label_sets.len(), 2, "web pods and the client pod");
}

/// `--bpf-lb-algorithm` is the default; a Service's annotation chooses for itself.
#[test]
fn the_node_default_algorithm_yields_to_the_annotation() {
    let annotated = "apiVersion: v1
kind: Service
metadata: {name: pinned, namespace: demo, annotations: {service.cilium.io/lb-algorithm: maglev}}
spec: {clusterIP: 198.19.0.30, ports: [{port: 80}]}
";
    let random = NodeContext { lb_algorithm: LbAlgorithm::Random, ..ctx() };
    for (ctx, web) in [(ctx(), Algorithm::Maglev { table_size: 251 }), (random, Algorithm::Random)] {
        let d = compile(&objects(&[DEMO[0], DEMO[1], annotated]), &ctx);
        let algorithm = |vip: &str| {
            d.frontends.iter().find(|(k, _)| k.0 == ip(vip)).map(|(_, f)| f.config.algorithm).unwrap()
        };
        assert_eq!(algorithm("198.19.0.10"), web, "the default ({:?})", ctx.lb_algorithm);
        assert_eq!(algorithm("198.19.0.30"), Algorithm::Maglev { table_size: 251 }, "the annotation");
    }
}

#[test]
fn load_balancer_external_ips_local_policy_and_affinity() {
    let svc = "apiVersion: v1
kind: Service
metadata: {name: lb, namespace: demo, annotations: {service.cilium.io/lb-algorithm: random}}
spec:
  type: LoadBalancer
  clusterIP: 198.19.0.20
  externalIPs: [198.19.1.1]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{name: dns, protocol: UDP, port: 53, nodePort: 30053}]
status: {loadBalancer: {ingress: [{ip: 198.19.2.2}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: demo, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: dns, protocol: UDP, port: 5353}]
endpoints:
- {addresses: [198.18.128.10], nodeName: node1}
- {addresses: [198.18.129.10], nodeName: node2}
";
    let d = desired(&[DEMO[0], svc]);
    let kinds: Vec<_> = d.frontends.iter().map(|(k, f)| (k.0.to_string(), k.1, f.config.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("198.18.0.1".into(), 30053, FrontendKind::NodePort),
            ("198.19.0.20".into(), 53, FrontendKind::ClusterIp),
            ("198.19.1.1".into(), 53, FrontendKind::ExternalIp),
            ("198.19.2.2".into(), 53, FrontendKind::LoadBalancer),
        ]
    );
    for f in d.frontends.values() {
        assert_eq!(f.config.algorithm, Algorithm::Random);
        assert_eq!(f.config.affinity_timeout, Some(60));
        assert_eq!(f.config.traffic_policy, TrafficPolicy::Local);
        let local: Vec<bool> = f.backends.iter().map(|b| b.local).collect();
        assert_eq!(local, [true, false], "only node1's endpoint is local");
    }
}

#[test]
fn terminating_endpoints_keep_their_flows_and_serve_when_nothing_is_ready() {
    let slice = |a: &str, b: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-abcde, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- {{addresses: [198.18.128.10], conditions: {a}}}
- {{addresses: [198.18.128.11], conditions: {b}}}
- {{addresses: [198.18.128.12], conditions: {{ready: false, serving: false, terminating: true}}}}
"
        )
    };
    let terminating = "{ready: false, serving: true, terminating: true}";
    let weights = |text: &str| -> Vec<(String, u16)> {
        let d = desired(&[DEMO[0], DEMO[1].split("---").next().unwrap(), text]);
        d.frontends[&(ip("198.19.0.10"), 80, Protocol::Tcp)]
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.weight))
            .collect()
    };
    assert_eq!(
        weights(&slice("{ready: true}", terminating)),
        [("198.18.128.10".into(), 1), ("198.18.128.11".into(), 0)],
        "a ready endpoint takes new flows, the terminating one only keeps its own, the dead one is gone"
    );
    assert_eq!(
        weights(&slice(terminating, terminating)),
        [("198.18.128.10".into(), 1), ("198.18.128.11".into(), 1)],
        "with nothing ready, serving terminating endpoints take new flows"
    );
}

#[test]
fn endpoint_slices_of_kubernetes_1_20_are_read_as_v1() {
    let beta = "apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: web-abcde, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.128.10], topology: {kubernetes.io/hostname: node1}}
- {addresses: [198.18.129.10], topology: {kubernetes.io/hostname: node2}}
";
    let d = desired(&[DEMO[0], DEMO[1].split("---").next().unwrap(), beta]);
    let backends = &d.frontends[&(ip("198.19.0.10"), 80, Protocol::Tcp)].backends;
    let local: Vec<_> = backends.iter().map(|b| (b.addr.to_string(), b.local)).collect();
    assert_eq!(local, [("198.18.128.10".into(), true), ("198.18.129.10".into(), false)]);
}

#[test]
fn other_nodes_become_tunnel_endpoints() {
    let node2 = "apiVersion: v1
kind: Node
metadata: {name: node2}
spec: {podCIDRs: [198.18.129.0/24, 'fd00:0:0:129::/64']}
status: {addresses: [{type: InternalIP, address: 198.18.2.2}]}
";
    let d = desired(&[DEMO[0], node2]);
    let tunnels: Vec<_> =
        d.tunnels.iter().map(|t| (t.node.as_str(), t.pod_cidr.to_string(), t.endpoint)).collect();
    assert_eq!(
        tunnels,
        [
            ("node2", "198.18.129.0/24".into(), ip("198.18.2.2")),
            ("node2", "fd00:0:0:129::/64".into(), ip("198.18.2.2"))
        ]
    );
}

#[test]
fn applying_the_same_state_changes_nothing_and_one_endpoint_rebuilds_one_pool() {
    let mut applier = Applier::default();
    let (tables, first) = applier.apply(&desired(DEMO));
    assert_eq!((first.added, first.pools_built), (2, 1), "two frontends share one pool");
    assert_eq!(tables.services.len(), 2);
    let (_, again) = applier.apply(&desired(DEMO));
    assert!(again.is_noop() && again.pools_built == 0, "idempotent: {again:?}");
    let id = applier.backend_id(ip("198.18.128.11"), 8080);

    let fewer = DEMO[1].replace("  - addresses: [198.18.128.12]", "  - addresses: [198.18.128.13]");
    let (tables, changed) = applier.apply(&desired(&[DEMO[0], &fewer, DEMO[2]]));
    assert_eq!((changed.changed, changed.unchanged, changed.pools_built), (2, 0, 1));
    assert_eq!(applier.backend_id(ip("198.18.128.11"), 8080), id, "a backend keeps its id");
    assert_eq!(applier.backend_id(ip("198.18.128.12"), 8080), None, "a removed backend's id is released");
    let service = tables.services.values().next().unwrap();
    let mut addrs: Vec<String> = service.backends().map(|b| b.addr.to_string()).collect();
    addrs.sort();
    assert_eq!(addrs, ["198.18.128.10", "198.18.128.11", "198.18.128.13"]);
}

#[test]
fn the_shipped_crds_are_the_types() {
    let shipped = include_str!("../../docker/crds.yaml");
    assert_eq!(
        shipped,
        skiff_control::crd::crds_yaml(),
        "docker/crds.yaml is stale: regenerate it with `skiff-agent crds > docker/crds.yaml`"
    );
}

#[test]
fn the_incremental_compiler_agrees_with_a_whole_compile_after_every_change() {
    use skiff_control::{compile::Compiler, store::Store};
    let mut store = Store::default();
    let mut compiler = Compiler::default();
    let moved_node = DEMO[0].replace("address: 198.18.0.1", "address: 198.18.0.9");
    let second_service = DEMO[1]
        .replace("name: web\n", "name: api\n")
        .replace("198.19.0.10", "198.19.0.11")
        .replace("nodePort: 30080", "nodePort: 30081")
        .replace("name: web-abcde", "name: api-abcde")
        .replace("service-name: web", "service-name: api");
    let fewer = DEMO[1].replace("  - addresses: [198.18.128.12]", "  - addresses: [198.18.128.13]");
    let steps: [&[&str]; 6] = [DEMO, &[&second_service], &[&fewer], &[&moved_node], &[DEMO[2]], &[DEMO[0]]];
    for (i, step) in steps.iter().enumerate() {
        for (origin, object) in step.iter().flat_map(|t| decode_yaml(t, "step").expect("YAML").documents) {
            store.upsert(&origin, object);
        }
        if i == 4 {
            let key =
                |name: &str| ObjectKey { kind: Kind::Service, namespace: "demo".into(), name: name.into() };
            store.delete(&key("web"));
        }
        let changes = store.take_changes();
        let incremental = compiler.update(&store, &changes, &ctx()).clone();
        assert_eq!(incremental, compile(store.objects(), &ctx()), "step {i}: {changes:?}");
    }
    assert_eq!(compiler.desired().frontends.len(), 2, "api's ClusterIP and NodePort remain");
}

/// The demo's web pods under `examples/policy/web-from-client.yaml`, traced by the
/// controller: a client pod that appears afterwards (a new label set, so a new identity) is
/// added to the rules already built, and a pod that is no client is not.
#[test]
fn a_new_identity_joins_the_rules_already_built() {
    use skiff_api::{Answer, Request, Source, TraceEnd};
    use skiff_control::{
        controller::{Controller, Event, Recorder},
        validate::Limits,
    };
    let policy = include_str!("../../examples/policy/web-from-client.yaml");
    let mut texts = DEMO.to_vec();
    texts.push(policy);
    let source = Source::StateDir { path: "test".into() };
    let mut c = Controller::new(ctx(), Limits::default(), Box::new(Recorder::default()), source);
    let listed = objects(&texts).into_iter().map(|o| ("test".to_owned(), Ok(o))).collect();
    assert!(c.handle(Event::Resync { kinds: Kind::ALL.to_vec(), objects: listed }).is_empty());
    c.reconcile().unwrap();
    let verdict = |c: &mut Controller, from: &str| {
        let request = Request::PolicyTrace {
            src: TraceEnd::Ip(ip(from)),
            dst: TraceEnd::Ip(ip("198.18.128.10")),
            port: 8080,
            protocol: Protocol::Tcp,
        };
        match c.request(&request) {
            Answer::Trace(t) => t.verdict,
            other => panic!("a trace: {other:?}"),
        }
    };
    assert_eq!(verdict(&mut c, "198.18.128.13"), "allowed", "the demo's client pod");
    let pod = |name: &str, labels: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {labels}}}\n\
             spec: {{nodeName: node2, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        )
    };
    for (name, labels, address, want) in [
        ("client-2", "{app: client, tier: new}", "198.18.129.20", "allowed"),
        ("batch", "{app: batch}", "198.18.129.21", "denied: no rule allows it"),
    ] {
        let text = pod(name, labels, address);
        let object = objects(&[&text]).remove(0);
        assert!(c.handle(Event::Upsert { origin: "test".into(), object: Ok(object) }).is_empty());
        c.reconcile().unwrap();
        assert_eq!(verdict(&mut c, address), want, "{name}");
    }
}
