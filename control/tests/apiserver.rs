//! skiff-agent against a real kube-apiserver (v1.20.2 with etcd, on loopback; built by
//! `cargo xtask setup`): objects created, changed and deleted through the API reach the
//! applied tables; the CRDs install and the API server itself rejects a bad policy; skiff's
//! own rejections show in status and as Kubernetes Events while the last good version runs;
//! the API server killed and restarted: the tables stay, then converge. Also reports the
//! write → apply latency over 200 updates. Without Cilium's CRDs, Services are applied and
//! status says which kinds are not served; the agent installs the CRDs, and policies written
//! for Cilium reach it whole. Two agents number identities alike through CiliumIdentity
//! objects, whatever order they saw the pods in. skiff's manifests (`docker/`) pass the API
//! server's validation and kubectl applies them; the agent, with only the rights their
//! ClusterRole grants and its ConfigMap as its config folder, does all of the above. An API
//! server that does not answer keeps the agent unready, saying why.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        networking::v1::NetworkPolicy,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use skiff_api::{ServiceView, Status};
use skiff_control::crd::CiliumNetworkPolicy;
use skiff_lab::apiserver::ApiServer;

/// skiff-agent with `--io none` (tables recorded, no datapath), killed if the test fails;
/// its log is printed then.
struct Agent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// `name`: unique among the tests, which run at once.
    fn start(kubeconfig: &Path, name: &str, extra: &[&str]) -> Agent {
        let work = std::env::temp_dir().join(format!("skiff-test-{name}-{}", std::process::id()));
        let socket = work.join("skiff.sock");
        std::fs::create_dir_all(&work).unwrap();
        let log = work.join("agent.log");
        // In the machine's own namespace: no CNI installed, no pods (the node stays as it is).
        let node = if extra.contains(&"--node-name") { &[][..] } else { &["--node-name", "node1"][..] };
        let child = Command::new(env!("CARGO_BIN_EXE_skiff-agent"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(node)
            .args(["--io", "none", "--cni-install", "false", "--data-dir"])
            .arg(work.join("data"))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("skiff-agent starts");
        Agent { child, socket, log }
    }

    /// What it logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> Option<Status> {
        skiff_api::Client::new(&self.socket).status().ok()
    }

    fn services(&self) -> Vec<ServiceView> {
        skiff_api::Client::new(&self.socket).services().unwrap_or_default()
    }

    fn backends(&self, frontend: &str) -> Option<usize> {
        self.services().iter().find(|s| s.frontend() == frontend).map(|s| s.backends.len())
    }

    fn terminate(mut self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "skiff-agent exits cleanly on SIGTERM: {status}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("skiff-agent's log ({}):\n{}", self.log.display(), self.log());
        }
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    skiff_lab::poll(what, Duration::from_secs(60), done).unwrap();
}

fn object<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).unwrap()
}

fn slice(addresses: &[&str]) -> DynamicObject {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}, "topology": {"kubernetes.io/hostname": "node1"}}))
        .collect();
    object(json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abcde", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints,
    }))
}

const CLUSTER_IP: &str = "198.19.0.10:80/TCP";
const NODE_PORT: &str = "198.18.0.1:30080/TCP";

/// One API server for the whole story: starting one takes seconds, and each step builds on
/// the state the last one left.
#[test]
#[allow(clippy::too_many_lines)]
fn kubernetes_objects_reach_the_tables_and_survive_an_api_server_restart() {
    let mut server = ApiServer::start().expect("etcd and kube-apiserver start");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = client_of(&server, &rt);
    let pp = PostParams::default();
    let slices =
        ApiResource::from_gvk(&GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice"));
    let slice_api = Api::<DynamicObject>::namespaced_with(client.clone(), "demo", &slices);
    let services = Api::<Service>::namespaced(client.clone(), "demo");

    // The CRDs install, and the API server itself rejects a policy on port 65536.
    rt.block_on(async {
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        for doc in skiff_control::crd::crds_yaml().split("---\n").filter(|d| !d.trim().is_empty()) {
            crds.create(&pp, &serde_saphyr::from_str(doc).unwrap()).await.expect("the CRD installs");
        }
        Api::<Namespace>::all(client.clone())
            .create(&pp, &object(json!({"metadata": {"name": "demo"}})))
            .await
            .unwrap();
    });
    let cnp = |port: &str| -> CiliumNetworkPolicy {
        object(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "web-l4", "namespace": "demo"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"toPorts": [{"ports": [{"port": port, "protocol": "TCP"}]}]}]}
        }))
    };
    let cnps = Api::<CiliumNetworkPolicy>::namespaced(client.clone(), "demo");
    wait_until("the CRDs to be served", || rt.block_on(cnps.list(&Default::default())).is_ok());
    let refused = rt.block_on(cnps.create(&pp, &cnp("65536"))).expect_err("port 65536 is refused");
    println!("the API server refuses the policy: {refused}");
    assert!(matches!(&refused, kube::Error::Api(e) if e.code == 422), "422 Invalid: {refused}");
    assert!(refused.to_string().contains("port"), "names the field: {refused}");

    // The cluster: a node, a NodePort service on 3 endpoints, pods, two policies.
    rt.block_on(async {
        Api::<Node>::all(client.clone())
            .create(
                &pp,
                &object(json!({"metadata": {"name": "node1"}, "spec": {"podCIDR": "198.18.128.0/24"},
                                "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}})),
            )
            .await
            .unwrap();
        let service = json!({"metadata": {"name": "web", "namespace": "demo"},
            "spec": {"type": "NodePort", "clusterIP": "198.19.0.10", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}});
        services.create(&pp, &object(service)).await.unwrap();
        slice_api.create(&pp, &slice(&["198.18.128.10", "198.18.128.11", "198.18.128.12"])).await.unwrap();
        for i in 0..3 {
            let pod = json!({"metadata": {"name": format!("web-{i}"), "namespace": "demo", "labels": {"app": "web"}},
                             "spec": {"nodeName": "node1", "containers": [{"name": "http", "image": "skiff/http"}]}});
            Api::<Pod>::namespaced(client.clone(), "demo").create(&pp, &object(pod)).await.unwrap();
        }
        let policy = json!({"metadata": {"name": "allow-web", "namespace": "demo"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 8080}]}]}});
        Api::<NetworkPolicy>::namespaced(client.clone(), "demo").create(&pp, &object(policy)).await.unwrap();
        cnps.create(&pp, &cnp("8080")).await.unwrap();
    });

    let agent = Agent::start(&server.kubeconfig(), "restart", &[]);
    wait_until("the service on 3 backends", || {
        agent.backends(CLUSTER_IP) == Some(3) && agent.backends(NODE_PORT) == Some(3)
    });
    wait_until("every object", || agent.status().is_some_and(|s| s.policies == 2 && s.identities == 1));
    let status = agent.status().unwrap();
    assert!(status.connected && status.rejections.is_empty(), "{status:?}");
    assert_eq!(status.health, skiff_api::Health::Ok, "both policies are enforceable as written");
    assert_eq!(status.policy_enforcement, "default");
    println!("objects seen by the agent: {:?}", status.objects);

    // An object the API server takes but skiff refuses: rejected in status and as an Event;
    // the last good version keeps running.
    let annotate = |algorithm: Option<&str>| {
        let patch = json!({"metadata": {"annotations": {"service.cilium.io/lb-algorithm": algorithm}}});
        rt.block_on(services.patch("web", &Default::default(), &kube::api::Patch::Merge(patch))).unwrap();
    };
    annotate(Some("round-robin"));
    let names_web =
        |r: &skiff_api::Rejection| r.key.as_ref().is_some_and(|k| k.to_string() == "Service demo/web");
    wait_until("the rejection", || agent.status().is_some_and(|s| s.rejections.iter().any(names_web)));
    let rejection = agent.status().unwrap().rejections[0].clone();
    println!("skiff rejects: {rejection}");
    let web = || {
        agent
            .services()
            .into_iter()
            .filter(|s| s.service.to_string().starts_with("demo/web"))
            .collect::<Vec<_>>()
    };
    let maglev = |s: &ServiceView| matches!(s.algorithm, skiff_common::lb::Algorithm::Maglev { .. });
    assert!(web().iter().all(|s| maglev(s) && s.backends.len() == 3), "the last good version runs");
    wait_for_event(&client, &rt, "Rejected", "web", "round-robin");
    annotate(Some("random"));
    wait_until("the good version", || {
        agent.status().is_some_and(|s| s.rejections.is_empty())
            && web().iter().all(|s| s.algorithm == skiff_common::lb::Algorithm::Random)
    });

    // The node's address moves: so do its NodePorts. A policy goes away.
    let nodes = Api::<Node>::all(client.clone());
    let moved = json!({"status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.9"}]}});
    rt.block_on(nodes.patch_status("node1", &Default::default(), &kube::api::Patch::Merge(moved))).unwrap();
    wait_until("the NodePort to follow the node", || agent.backends("198.18.0.9:30080/TCP") == Some(3));
    assert_eq!(agent.backends(NODE_PORT), None, "nothing listens on the old address");
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), "demo");
    rt.block_on(policies.delete("allow-web", &DeleteParams::default())).unwrap();
    wait_until("the policy delete", || agent.status().is_some_and(|s| s.policies == 1));

    // Endpoint changes, and the write → apply latency over 200 of them.
    let replace = |addresses: &[&str]| {
        let mut s = rt.block_on(slice_api.get("web-abcde")).unwrap();
        s.data = slice(addresses).data;
        rt.block_on(slice_api.replace("web-abcde", &pp, &s)).unwrap();
    };
    let mut latencies = Vec::new();
    for i in 0..200 {
        let (addresses, want) = if i % 2 == 0 {
            (&["198.18.128.10", "198.18.128.11"][..], 2)
        } else {
            (&["198.18.128.10", "198.18.128.11", "198.18.128.12"][..], 3)
        };
        let started = Instant::now();
        replace(addresses);
        wait_until("the endpoint change", || agent.backends(CLUSTER_IP) == Some(want));
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "write → apply over {} updates: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() * 99 / 100]),
        ms(latencies[latencies.len() - 1])
    );

    // The API server dies: the tables stay. It comes back: the agent relists, finds nothing
    // new (no publish), and follows what changes after.
    let before = agent.status().unwrap();
    server.kill();
    wait_until("the agent to notice", || agent.status().is_some_and(|s| !s.connected));
    assert_eq!(agent.backends(CLUSTER_IP), Some(3), "the tables outlive the API server");
    server.restart().expect("kube-apiserver restarts");
    // A watcher whose resource version the restarted server no longer serves relists; the
    // agent takes the listing (its objects unchanged) before the status says it did.
    wait_until("a relist", || agent.status().is_some_and(|s| s.connected && s.listings > before.listings));
    let after = agent.status().unwrap();
    println!("listings taken after the restart: {}", after.listings - before.listings);
    assert_eq!(after.applies, before.applies, "the relist converged without a new publish");
    rt.block_on(services.delete("web", &DeleteParams::default())).unwrap();
    wait_until("the delete", || web().is_empty());
    let _ = rt.block_on(slice_api.delete("web-abcde", &DeleteParams::default()));
    agent.terminate();
}

/// Waits for an Event in `demo` with `reason` about the object `name`, its note saying `text`.
fn wait_for_event(client: &Client, rt: &tokio::runtime::Runtime, reason: &str, name: &str, text: &str) {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "demo");
    wait_until(&format!("the {reason} Event about {name}"), || {
        rt.block_on(events.list(&Default::default())).is_ok_and(|list| {
            list.items.iter().any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.note.as_deref().is_some_and(|n| n.contains(text))
            })
        })
    });
}

fn client_of(server: &ApiServer, rt: &tokio::runtime::Runtime) -> Client {
    rt.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        Client::try_from(config).unwrap()
    })
}

/// The namespace `demo` with the Service `web` (ClusterIP 198.19.0.10) on three endpoints.
fn create_web(client: &Client, rt: &tokio::runtime::Runtime) {
    let pp = PostParams::default();
    let slices =
        ApiResource::from_gvk(&GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice"));
    rt.block_on(async {
        Api::<Namespace>::all(client.clone())
            .create(&pp, &object(json!({"metadata": {"name": "demo"}})))
            .await
            .unwrap();
        let service = json!({"metadata": {"name": "web", "namespace": "demo"},
            "spec": {"clusterIP": "198.19.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
        Api::<Service>::namespaced(client.clone(), "demo").create(&pp, &object(service)).await.unwrap();
        Api::<DynamicObject>::namespaced_with(client.clone(), "demo", &slices)
            .create(&pp, &slice(&["198.18.128.10", "198.18.128.11", "198.18.128.12"]))
            .await
            .unwrap();
    });
}

/// Policies as users write them for Cilium, with fields skiff does not model: L7 rules, a host
/// policy with entities and default deny, a `specs` list.
fn written_for_cilium() -> [Value; 3] {
    let l7 = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "l7-get-public", "namespace": "demo"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "frontend"}}],
                              "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                           "rules": {"http": [{"method": "GET", "path": "/public"}]}}]}]}
    });
    let host = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "host-ssh"},
        "spec": {"nodeSelector": {"matchLabels": {"node-role": "worker"}},
                 "enableDefaultDeny": {"ingress": true},
                 "ingress": [{"fromEntities": ["cluster", "world"],
                              "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]}
    });
    let specs = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "two-specs", "namespace": "demo"},
        "specs": [{"endpointSelector": {"matchLabels": {"app": "a"}}, "egress": [{"toEntities": ["world"]}]},
                  {"endpointSelector": {"matchLabels": {"app": "b"}}, "ingressDeny": [{"fromEntities": ["world"]}]}]
    });
    [l7, host, specs]
}

/// Cilium's CRDs missing: the Service is applied all the same and status says which kinds are
/// not served. The agent then installs the CRDs itself, and policies written for Cilium (L7
/// rules, a host policy with entities and default deny, a `specs` list) are stored whole by
/// the API server and reach skiff, which says what it does not enforce as written; no watcher
/// stalls.
#[test]
fn missing_crds_stall_nothing_and_cilium_policies_arrive_whole() {
    let server = ApiServer::start().expect("etcd and kube-apiserver start");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = client_of(&server, &rt);
    let pp = PostParams::default();
    create_web(&client, &rt);
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let cnp_crd = "ciliumnetworkpolicies.cilium.io";

    let agent = Agent::start(&server.kubeconfig(), "crds-skipped", &["--skip-crd-creation"]);
    wait_until("the service, without Cilium's CRDs", || agent.backends(CLUSTER_IP) == Some(3));
    let health = agent.status().unwrap().health.to_string();
    println!("without the CRDs: {health}");
    assert!(
        health.contains(
            "does not serve CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, CiliumIdentity (CRD not installed)"
        ),
        "status names the kinds not served: {health}"
    );
    assert!(rt.block_on(crds.get_opt(cnp_crd)).unwrap().is_none(), "--skip-crd-creation installs nothing");
    agent.terminate();

    let agent = Agent::start(&server.kubeconfig(), "crds-installed", &[]);
    wait_until("the CRDs installed and listed", || {
        agent.status().is_some_and(|s| s.health == skiff_api::Health::Ok && s.connected)
    });
    let installed = rt.block_on(crds.get(cnp_crd)).unwrap();
    let labels = installed.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("skiff-agent"));
    assert_eq!(agent.backends(CLUSTER_IP), Some(3), "the service stays");

    let resource = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cilium.io", "v2", kind), plural)
    };
    let cnps = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "demo",
        &resource("CiliumNetworkPolicy", "ciliumnetworkpolicies"),
    );
    let ccnps = Api::<DynamicObject>::all_with(
        client.clone(),
        &resource("CiliumClusterwideNetworkPolicy", "ciliumclusterwidenetworkpolicies"),
    );
    let [l7, host, specs] = written_for_cilium().map(object::<DynamicObject>);
    rt.block_on(async {
        cnps.create(&pp, &l7).await.expect("an L7 policy is taken as written");
        ccnps.create(&pp, &host).await.expect("a host policy with entities is taken as written");
        cnps.create(&pp, &specs).await.expect("a specs list is taken as written");
    });
    let stored = rt.block_on(cnps.get("l7-get-public")).unwrap().data;
    assert_eq!(
        stored.pointer("/spec/ingress/0/toPorts/0/rules/http/0/path"),
        Some(&json!("/public")),
        "the API server keeps the L7 rules: {stored}"
    );
    let stored = rt.block_on(ccnps.get("host-ssh")).unwrap().data;
    assert_eq!(stored.pointer("/spec/ingress/0/fromEntities/1"), Some(&json!("world")), "{stored}");
    assert_eq!(
        stored.pointer("/spec/nodeSelector/matchLabels/node-role"),
        Some(&json!("worker")),
        "{stored}"
    );
    let stored = rt.block_on(cnps.get("two-specs")).unwrap().data;
    assert_eq!(stored.pointer("/specs/1/ingressDeny/0/fromEntities/0"), Some(&json!("world")), "{stored}");

    wait_until("the policies in skiff", || agent.status().is_some_and(|s| s.policies == 3));
    let status = agent.status().unwrap();
    assert!(status.rejections.is_empty(), "{:?}", status.rejections);
    let health = status.health.to_string();
    println!("skiff: {health}");
    for said in [
        "CiliumNetworkPolicy demo/l7-get-public spec.ingress[0]: toPorts.rules not enforced yet",
        "the rule allows nothing instead",
        "CiliumClusterwideNetworkPolicy host-ssh: a host policy (nodeSelector) is not enforced yet",
    ] {
        assert!(health.contains(said), "status says {said:?}: {health}");
    }
    wait_for_event(&client, &rt, "NotEnforced", "l7-get-public", "toPorts.rules");
    assert_eq!(agent.backends(CLUSTER_IP), Some(3), "the service stays");
    agent.terminate();
}

/// Node 1's agent sees pod `zeta` before pod `alpha` and numbers their label sets as they
/// come; node 2's agent starts after both exist, and (numbering on its own) would number them
/// in label order, `alpha` first. Through the CiliumIdentity objects node 1 created, node 2
/// takes node 1's numbers: one object per label set, and both agents list the same.
/// The CiliumIdentity objects in the API server: number and `app` label.
fn stored_identities(rt: &tokio::runtime::Runtime, client: &kube::Client) -> Vec<(u32, String)> {
    let identities = Api::<DynamicObject>::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cilium.io", "v2", "CiliumIdentity"),
            "ciliumidentities",
        ),
    );
    let objects = rt.block_on(identities.list(&Default::default())).unwrap();
    let mut stored: Vec<(u32, String)> = objects
        .items
        .iter()
        .map(|o| {
            let id = o.metadata.name.as_deref().unwrap_or_default().parse().unwrap_or(0);
            (id, o.data["security-labels"]["k8s:app"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    stored.sort_unstable();
    stored
}

#[test]
fn two_agents_number_identities_alike_through_cilium_identities() {
    let server = ApiServer::start().expect("etcd and kube-apiserver start");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = client_of(&server, &rt);
    let pp = PostParams::default();
    let pods = Api::<Pod>::namespaced(client.clone(), "ids");
    let pod = |name: &str, node: &str, ip: &str| -> Pod {
        object(json!({"metadata": {"name": name, "namespace": "ids", "labels": {"app": name}},
                      "spec": {"nodeName": node, "containers": [{"name": "c", "image": "skiff/probe"}]},
                      "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}))
    };
    rt.block_on(async {
        Api::<Namespace>::all(client.clone())
            .create(&pp, &object(json!({"metadata": {"name": "ids"}})))
            .await
            .unwrap();
        for (node, cidr, address) in
            [("node1", "198.18.10.0/24", "198.18.0.1"), ("node2", "198.18.11.0/24", "198.18.0.3")]
        {
            let node = json!({"metadata": {"name": node}, "spec": {"podCIDR": cidr},
                              "status": {"addresses": [{"type": "InternalIP", "address": address}]}});
            Api::<Node>::all(client.clone()).create(&pp, &object(node)).await.unwrap();
        }
    });
    let ids = |agent: &Agent| -> Vec<(u32, Vec<String>)> {
        let views = skiff_api::Client::new(&agent.socket).identities().unwrap_or_default();
        views.into_iter().filter(|v| v.id >= 256).map(|v| (v.id, v.labels)).collect()
    };
    let number_of = |ids: &[(u32, Vec<String>)], app: &str| {
        ids.iter().find(|(_, labels)| labels.contains(&format!("k8s:app={app}"))).map(|(id, _)| *id)
    };
    // Identities no pod has are deleted after 2 s here (30 min by default, as Cilium's).
    let gc = ["--identity-heartbeat-timeout", "2s"];
    let one = Agent::start(&server.kubeconfig(), "ids-node1", &[&["--node-name", "node1"][..], &gc].concat());
    wait_until("node 1's agent", || one.status().is_some_and(|s| s.connected));
    rt.block_on(pods.create(&pp, &pod("zeta", "node1", "198.18.10.5"))).unwrap();
    wait_until("zeta numbered", || number_of(&ids(&one), "zeta").is_some());
    rt.block_on(pods.create(&pp, &pod("alpha", "node2", "198.18.11.5"))).unwrap();
    wait_until("alpha numbered", || number_of(&ids(&one), "alpha").is_some());
    let two = Agent::start(&server.kubeconfig(), "ids-node2", &[&["--node-name", "node2"][..], &gc].concat());
    wait_until("node 2 numbers both", || {
        let theirs = ids(&two);
        number_of(&theirs, "zeta").is_some() && number_of(&theirs, "alpha").is_some()
    });
    let (mine, theirs) = (ids(&one), ids(&two));
    println!("node 1: {mine:?}\nnode 2: {theirs:?}");
    assert_eq!(mine, theirs, "both agents number every label set alike");
    for agent in [&one, &two] {
        let allocation = agent.status().unwrap().identity_allocation;
        assert_eq!(allocation, "agreed through CiliumIdentity objects");
    }
    assert!(
        number_of(&mine, "zeta") < number_of(&mine, "alpha"),
        "in the order node 1 saw them, not label order"
    );
    let stored = || stored_identities(&rt, &client);
    let (zeta, alpha) = (
        (number_of(&mine, "zeta").unwrap(), "zeta".to_owned()),
        (number_of(&mine, "alpha").unwrap(), "alpha".to_owned()),
    );
    assert_eq!(
        stored(),
        [zeta.clone(), alpha.clone()],
        "one CiliumIdentity per label set, as the agents number them"
    );
    // zeta's pod goes: once its grace has passed, its identity goes too, everywhere; alpha's
    // stays.
    // At once: no kubelet here confirms a graceful deletion.
    let now = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    rt.block_on(pods.delete("zeta", &now)).unwrap();
    let deleted = Instant::now();
    wait_until("zeta's CiliumIdentity deleted", || stored() == [alpha.clone()]);
    assert!(deleted.elapsed() >= Duration::from_secs(2), "not before its grace: {:?}", deleted.elapsed());
    wait_until("both agents forget zeta", || {
        [&one, &two].iter().all(|a| number_of(&ids(a), "zeta").is_none())
    });
    assert_eq!(number_of(&ids(&two), "alpha"), Some(alpha.0));
    one.terminate();
    two.terminate();
}

/// `kubectl` (1.20, built beside kube-apiserver) as the admin: its output, or its error.
fn kubectl(server: &ApiServer, args: &[&str]) -> Result<String, String> {
    let out = Command::new(skiff_lab::apiserver::KUBECTL)
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(args)
        .output()
        .expect("kubectl runs (`cargo xtask setup` builds it)");
    let said = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() { Ok(said(&out.stdout)) } else { Err(said(&out.stdout) + &said(&out.stderr)) }
}

/// skiff's ConfigMap, as applied, laid out in `dir` as the kubelet projects it into a volume:
/// the files in a timestamped folder, `..data` pointing at it, and one link per key.
fn project_config_map(server: &ApiServer, dir: &Path) {
    let config =
        kubectl(server, &["get", "configmap", "skiff-config", "-n", "kube-system", "-o", "json"]).unwrap();
    let config: Value = serde_json::from_str(&config).unwrap();
    let files = dir.join("..2026_12_02_12_00_00.000000001");
    std::fs::create_dir_all(&files).unwrap();
    std::os::unix::fs::symlink(files.file_name().unwrap(), dir.join("..data")).unwrap();
    for (key, value) in config["data"].as_object().unwrap() {
        std::fs::write(files.join(key), value.as_str().unwrap()).unwrap();
        std::os::unix::fs::symlink(Path::new("..data").join(key), dir.join(key)).unwrap();
    }
}

/// `docker/`'s manifests, validated by the API server (a server-side dry run), then applied
/// but for the CRDs, which are left to the agent, as cilium-agent installs its own.
fn apply_manifests(server: &ApiServer) {
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker");
    let (crds, skiff) = (docker.join("crds.yaml"), docker.join("skiff.yaml"));
    let (crds, skiff) = (crds.to_str().unwrap(), skiff.to_str().unwrap());
    let dry = kubectl(server, &["apply", "--dry-run=server", "-f", crds, "-f", skiff]).unwrap();
    print!("kubectl apply --dry-run=server:\n{dry}");
    let validated = dry.lines().filter(|l| l.ends_with("(server dry run)")).count();
    assert_eq!(validated, 3 + 5, "three CRDs and five objects pass the API server's validation");
    print!("{}", kubectl(server, &["apply", "-f", skiff]).unwrap());
}

/// The ClusterRole lets the agent do what it does, and not more.
fn assert_granted_only_what_it_uses(server: &ApiServer) {
    let can = |verb: &str, resource: &str| {
        kubectl(server, &["auth", "can-i", verb, resource, "--as", skiff_lab::apiserver::AGENT_USER]).is_ok()
    };
    for (verb, resource) in [
        ("watch", "pods"),
        ("list", "endpointslices.discovery.k8s.io"),
        ("watch", "ciliumnetworkpolicies.cilium.io"),
        ("create", "ciliumidentities.cilium.io"),
        ("delete", "ciliumidentities.cilium.io"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("update", "customresourcedefinitions.apiextensions.k8s.io/ciliumidentities.cilium.io"),
        ("create", "events.events.k8s.io"),
    ] {
        assert!(can(verb, resource), "the agent may {verb} {resource}");
    }
    for (verb, resource) in [
        ("update", "pods"),
        ("delete", "services"),
        ("get", "secrets"),
        ("update", "ciliumnetworkpolicies.cilium.io"),
        ("update", "customresourcedefinitions.apiextensions.k8s.io/widgets.example.com"),
        ("patch", "nodes"),
    ] {
        assert!(!can(verb, resource), "the agent may not {verb} {resource}");
    }
}

/// skiff's manifests as an operator applies them: the API server's own validation takes
/// every object (server-side dry run), then kubectl applies them; the ClusterRole grants the
/// agent what it uses and nothing more. The agent, run as its ServiceAccount under RBAC with
/// the ConfigMap projected as the kubelet does, installs its CRDs, programs Services, numbers
/// identities and deletes those no pod has, posts Events, and is refused nothing.
#[test]
fn the_manifests_apply_and_the_agent_needs_no_right_they_do_not_grant() {
    let server = ApiServer::start().expect("etcd and kube-apiserver start");
    apply_manifests(&server);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = client_of(&server, &rt);
    let pp = PostParams::default();
    create_web(&client, &rt);
    let pods = Api::<Pod>::namespaced(client.clone(), "demo");
    let pod = |name: &str, ip: &str| -> Pod {
        object(json!({"metadata": {"name": name, "namespace": "demo", "labels": {"app": name}},
                      "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "skiff/probe"}]},
                      "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}))
    };
    for (name, ip) in [("frontend", "198.18.10.5"), ("backend", "198.18.10.6")] {
        rt.block_on(pods.create(&pp, &pod(name, ip))).unwrap();
    }
    let work = std::env::temp_dir().join(format!("skiff-test-manifests-{}", std::process::id()));
    let config_dir = work.join("config");
    project_config_map(&server, &config_dir);
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let agent = Agent::start(
        &server.agent_kubeconfig(),
        "manifests",
        &[
            "--config-dir",
            config_dir.to_str().unwrap(),
            // Loopback only here, and GC within the test.
            "--prometheus-serve-addr",
            &metrics,
            "--identity-heartbeat-timeout",
            "2s",
        ],
    );
    wait_until("the service, as the ServiceAccount", || agent.backends(CLUSTER_IP) == Some(3));
    wait_until("identities created", || stored_identities(&rt, &client).len() == 2);
    let status = agent.status().unwrap();
    println!(
        "the agent as {}: health {}; policy enforcement {}; masquerading {}; identities {}",
        skiff_lab::apiserver::AGENT_USER,
        status.health,
        status.policy_enforcement,
        status.masquerading,
        status.identity_allocation
    );
    assert_eq!(status.identity_allocation, "agreed through CiliumIdentity objects");
    assert!(
        status.masquerading.contains("IPv4"),
        "the ConfigMap's enable-ipv4-masquerade: {}",
        status.masquerading
    );
    let crd = kubectl(&server, &["get", "crd", "ciliumidentities.cilium.io", "-o", "name"]);
    assert!(crd.is_ok(), "the agent installed its CRDs: {crd:?}");
    // What the ClusterRole grants, asked of the API server (the CRDs are served now).
    assert_granted_only_what_it_uses(&server);
    let healthz = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{metrics}/healthz"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&healthz.stdout), "200", "the probes' endpoint answers");
    // An L7 rule is not enforced yet: the agent says so on the object, as an Event.
    let [l7, _, _] = written_for_cilium().map(object::<DynamicObject>);
    let cnps = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "demo",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cilium.io", "v2", "CiliumNetworkPolicy"),
            "ciliumnetworkpolicies",
        ),
    );
    rt.block_on(cnps.create(&pp, &l7)).unwrap();
    wait_for_event(&client, &rt, "NotEnforced", "l7-get-public", "toPorts.rules");
    let now = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    rt.block_on(pods.delete("frontend", &now)).unwrap();
    wait_until("frontend's identity deleted", || stored_identities(&rt, &client).len() == 1);
    let log = agent.log();
    agent.terminate();
    let refused: Vec<&str> = log.lines().filter(|l| l.to_lowercase().contains("forbidden")).collect();
    assert!(refused.is_empty(), "the agent was refused: {refused:#?}");
    let _ = std::fs::remove_dir_all(&work);
}

/// An API server that does not answer at start: the agent waits for it, never reports ready
/// (a DaemonSet's probes keep it out of service) and says why.
#[test]
fn an_unreachable_api_server_keeps_the_agent_unready_and_says_why() {
    let work = std::env::temp_dir().join(format!("skiff-test-unreachable-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster: {{server: 'https://127.0.0.1:{port}'}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c\n  context: {{cluster: gone, user: u}}\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let agent = Agent::start(&kubeconfig, "unreachable", &["--prometheus-serve-addr", &metrics]);
    wait_until("the agent's API", || agent.status().is_some());
    std::thread::sleep(Duration::from_secs(3));
    let status = agent.status().unwrap();
    let health = status.health.to_string();
    println!("API server unreachable: {health}");
    assert!(!status.connected && status.applies == 0, "{status:?}");
    assert!(
        health.contains("the source is not reachable; waiting for the first list of Service"),
        "{health}"
    );
    let healthz = Command::new("curl")
        .args(["-s", "-w", " %{http_code}"])
        .arg(format!("http://{metrics}/healthz"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&healthz.stdout);
    println!("/healthz: {said}");
    assert!(said.ends_with(" 503") && said.starts_with("not ready"), "{said}");
    agent.terminate();
    let _ = std::fs::remove_dir_all(&work);
}
