//! Between nodes: three skiff nodes on one switch make one pod network. Each node runs
//! skiff-agent (AF_XDP) on the same objects, its pods made by skiff-cni; every pod reaches
//! every other over TCP and UDP, IPv4 and IPv6, through VXLAN or Geneve; a ClusterIP with a
//! backend on each node answers every node's pods from all three; a Node deleted from the
//! objects takes its tunnels with it.

mod privileged {
    use std::{collections::BTreeMap, path::Path, time::Duration};

    use skiff_api::{Kind, NodeView, Status};
    use skiff_common::DropReason;
    use skiff_lab::{
        Host, Lab, Netns, Topology,
        cni::CniAgent,
        probe::{self, Probe, Proto, Servers},
    };

    const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");
    const NODES: usize = 3;
    const PODS_PER_NODE: usize = 2;
    /// The Service whose backends are the first pod of each node.
    const CLUSTER_IP: &str = "198.19.0.10";

    /// The lab, an agent per node, and the pods each node made.
    struct Cluster {
        agents: Vec<CniAgent>,
        /// (node index, pod).
        pods: Vec<(usize, Host)>,
        lab: Lab,
    }

    fn node_yaml(k: usize, lab: &Lab) -> String {
        let node = &lab.nodes()[k];
        let net = node.pod_net;
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n\
             spec: {{podCIDRs: [198.18.{net}.0/24, 'fd00:0:0:{net}::/64']}}\n\
             status: {{addresses: [{{type: InternalIP, address: {v4}}}, {{type: Hostname, address: {name}}}]}}\n",
            name = node.name,
            v4 = node.ipv4,
        )
    }

    fn pod_yaml(k: usize, host: &Host) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n\
             spec: {{nodeName: node{node}, containers: [{{name: serve, image: skiff/probe}}]}}\n\
             status: {{podIP: {v4}, podIPs: [{{ip: {v4}}}, {{ip: '{v6}'}}]}}\n",
            name = host.name,
            app = if host.name.ends_with("-0") { "web" } else { "client" },
            node = k + 1,
            v4 = host.ipv4,
            v6 = host.ipv6,
        )
    }

    /// A ClusterIP (TCP 80 → 8080) whose backends are the first pod of each node.
    fn web_yaml(pods: &[(usize, Host)]) -> String {
        let endpoints: String = pods
            .iter()
            .filter(|(_, p)| p.name.ends_with("-0"))
            .map(|(k, p)| format!("  - {{addresses: ['{}'], nodeName: node{}}}\n", p.ipv4, k + 1))
            .collect();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
             spec: {{clusterIP: {CLUSTER_IP}, ports: [{{port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{endpoints}"
        )
    }

    impl Cluster {
        /// Three nodes running skiff-agent with `routing` options, two pods on each.
        fn start(tag: &str, routing: &[&str]) -> Cluster {
            let lab = Topology::new().cluster(NODES).cni_pods(NODES * PODS_PER_NODE).build().unwrap();
            let nodes: String = (0..NODES).map(|k| node_yaml(k, &lab)).collect();
            let agents: Vec<CniAgent> = (0..NODES)
                .map(|k| {
                    let name = format!("overlay-{tag}-{}-{k}", lab.id());
                    let node = &lab.nodes()[k];
                    let node_name = node.name.clone();
                    CniAgent::start(
                        &node.netns,
                        Path::new(AGENT),
                        &name,
                        &node_name,
                        "uplink",
                        "afxdp",
                        routing,
                        &nodes,
                    )
                })
                .collect();
            let mut pods = Vec::new();
            for (i, netns) in lab.cni_pods().iter().enumerate() {
                let (k, j) = (i / PODS_PER_NODE, i % PODS_PER_NODE);
                let name = format!("pod-{}-{j}", k + 1);
                pods.push((k, agents[k].pod(&name, netns, "default", &name)));
            }
            let mut cluster = Cluster { agents, pods, lab };
            cluster.set_objects(true);
            cluster
        }

        /// Every node's objects: the Nodes (all, or the first two), the pods and the Service.
        fn set_objects(&mut self, all_nodes: bool) {
            let nodes = if all_nodes { NODES } else { NODES - 1 };
            let mut objects: String = (0..nodes).map(|k| node_yaml(k, &self.lab)).collect();
            objects += &self.pods.iter().map(|(k, p)| pod_yaml(*k, p)).collect::<String>();
            objects += &web_yaml(&self.pods);
            for a in &self.agents {
                a.set_objects(&objects);
            }
            let tunnels = 2 * (nodes - 1);
            let pods = self.pods.len();
            for (k, a) in self.agents.iter_mut().enumerate().take(nodes) {
                let done = |s: &Status| {
                    s.objects.get(&Kind::Pod) == Some(&pods)
                        && s.objects.get(&Kind::Node) == Some(&nodes)
                        && s.tunnels.len() == tunnels
                        && s.frontends >= 1
                };
                a.agent
                    .wait_until(&format!("node{} to apply the objects", k + 1), |a| {
                        a.status().is_some_and(|s| done(&s))
                    })
                    .unwrap();
            }
        }

        fn netns(&self, pod: &str) -> &Netns {
            &self.pods.iter().find(|(_, p)| p.name == pod).expect("a pod").1.netns
        }
    }

    /// Every pod to every other, TCP and UDP, IPv4 and IPv6: the probes that failed.
    fn unreachable(c: &Cluster) -> Vec<String> {
        let mut probes = Vec::new();
        let mut names = Vec::new();
        for (_, from) in &c.pods {
            for (_, to) in c.pods.iter().filter(|(_, t)| t.name != from.name) {
                for (addr, proto) in [
                    (to.ipv4.into(), Proto::Tcp),
                    (to.ipv4.into(), Proto::Udp),
                    (to.ipv6.into(), Proto::Tcp),
                    (to.ipv6.into(), Proto::Udp),
                ] {
                    probes.push(Probe { from: from.netns.clone(), to: addr, proto, port: 80 });
                    names.push(format!("{} → {} {addr} {proto:?}", from.name, to.name));
                }
            }
        }
        let results = probe::run(&probes, Duration::from_secs(3)).unwrap();
        println!(
            "{} of {} probes between pods got through",
            results.iter().filter(|r| **r).count(),
            results.len()
        );
        names.into_iter().zip(results).filter(|(_, ok)| !ok).map(|(n, _)| n).collect()
    }

    fn every_pod_reaches_every_other(tag: &str, routing: &[&str], encapsulation: &str) {
        let mut c = Cluster::start(tag, routing);
        let hosts: Vec<&Netns> = c.pods.iter().map(|(_, p)| &p.netns).collect();
        let servers = Servers::start(&hosts, &[80]).unwrap();
        let failed = unreachable(&c);
        assert!(failed.is_empty(), "unreachable over {encapsulation}: {failed:#?}");
        drop(servers);

        // The workers carried it, and dropped nothing of the tunnels'.
        for (k, a) in c.agents.iter().enumerate() {
            let s = a.agent.status().unwrap();
            let w = s.workers.clone().unwrap();
            println!("node{}: routing {}; workers {w:?}", k + 1, s.routing);
            assert!(s.routing.contains(encapsulation), "{}", s.routing);
            assert!(w.forwarded > 0, "node{} forwarded nothing", k + 1);
            let tunnel_drops: Vec<_> = w.drops.iter().filter(|(r, _)| tunnel_reason(r)).collect();
            assert!(tunnel_drops.is_empty(), "node{}: {tunnel_drops:?}", k + 1);
            let nodes = a.agent.client().nodes().unwrap();
            let expected: BTreeMap<String, String> = (0..NODES)
                .map(|n| (format!("node{}", n + 1), if n == k { "local" } else { "reachable" }.to_owned()))
                .collect();
            assert_eq!(health(&nodes), expected, "skiff node list on node{}", k + 1);
        }

        // A ClusterIP with a backend on each node: every node's client pod reaches all three.
        for (_, web) in c.pods.clone().iter().filter(|(_, p)| p.name.ends_with("-0")) {
            c.lab.serve_http(web, 8080).unwrap();
        }
        for k in 1..=NODES {
            let from = c.netns(&format!("pod-{k}-1")).clone();
            let answers = from.http_get(&format!("http://{CLUSTER_IP}/"), 60, 3).unwrap();
            println!("pod-{k}-1 → ClusterIP: {:?} {}", answers.by_host, answers.errors);
            assert_eq!(answers.answered(), 60, "every request answered: {}", answers.errors);
            for backend in 1..=NODES {
                let share = answers.by_host.get(&format!("pod-{backend}-0")).copied().unwrap_or(0);
                // Maglev over 60 flows: each of 3 backends takes its share (20 expected;
                // below 6 is far outside chance).
                assert!(share >= 6, "pod-{backend}-0 took {share} of 60 from pod-{k}-1");
            }
        }

        // A Node deleted from the objects: its tunnels go, its pods become unreachable.
        c.set_objects(false);
        let to_node3 = c.pods.iter().find(|(k, _)| *k == 2).expect("a pod on node3").1.clone();
        let probe =
            Probe { from: c.netns("pod-1-1").clone(), to: to_node3.ipv4.into(), proto: Proto::Tcp, port: 80 };
        let servers = Servers::start(&[&to_node3.netns], &[80]).unwrap();
        assert_eq!(
            probe::run(&[probe], Duration::from_secs(2)).unwrap(),
            [false],
            "node3's pod after node3 went"
        );
        drop(servers);
    }

    fn health(nodes: &[NodeView]) -> BTreeMap<String, String> {
        nodes.iter().map(|n| (n.name.clone(), n.health.clone())).collect()
    }

    fn tunnel_reason(r: &DropReason) -> bool {
        (40..50).contains(&r.code()) || *r == DropReason::TunnelNested || *r == DropReason::Unroutable
    }

    #[test]
    fn pods_on_three_nodes_reach_each_other_through_vxlan() {
        every_pod_reaches_every_other("vxlan", &[], "vxlan");
    }

    #[test]
    fn pods_on_three_nodes_reach_each_other_through_geneve() {
        every_pod_reaches_every_other("geneve", &["--tunnel-protocol", "geneve"], "geneve");
    }
}
