//! Between nodes: three skiff nodes on one switch make one pod network. Each node runs
//! skiff-agent (AF_XDP) on the same objects, its pods made by skiff-cni; every pod reaches
//! every other over TCP and UDP, IPv4 and IPv6, through VXLAN or Geneve; a ClusterIP with a
//! backend on each node answers every node's pods from all three; a Node deleted from the
//! objects takes its tunnels with it. The lab's client is a fourth node skiff does not run
//! on (Node `kernel`): with VXLAN its kernel's own vxlan device (collect_md, as Cilium's)
//! exchanges pod traffic with skiff's pods both ways; with Geneve (this kernel has no Geneve
//! module) scapy's independent encoder sends to a skiff pod and tshark dissects the answer.

mod privileged {
    use std::{
        collections::{BTreeMap, BTreeSet},
        io::{BufRead, BufReader, Write},
        net::{IpAddr, SocketAddr, TcpListener, TcpStream},
        path::Path,
        time::{Duration, Instant},
    };

    use skiff_api::{
        Answer, Kind, NodeView, Status,
        observe::{EventKind, FlowFilter},
    };
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
    /// The pod of Node `kernel` (the lab's client), on the client's `lo`.
    const KERNEL_POD: &str = "198.18.20.10";

    /// The lab, an agent per node, and the pods each node made.
    struct Cluster {
        agents: Vec<CniAgent>,
        /// (node index, pod).
        pods: Vec<(usize, Host)>,
        /// Whether the client is Node `kernel` (else it is the world).
        kernel: bool,
        /// More objects (policies).
        extra: String,
        lab: Lab,
    }

    fn node_yaml(k: usize, lab: &Lab) -> String {
        let node = &lab.nodes()[k];
        let net = node.pod_net;
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n\
             spec: {{podCIDRs: [198.18.{net}.0/24, 'fd00:0:0:{net}::/64']}}\n\
             status: {{addresses: [{{type: InternalIP, address: {v4}}}, {{type: InternalIP, address: '{v6}'}}, {{type: Hostname, address: {name}}}]}}\n",
            name = node.name,
            v4 = node.ipv4,
            v6 = node.ipv6,
        )
    }

    /// The client as a node skiff does not run on, with its one pod.
    fn kernel_node_yaml(lab: &Lab) -> String {
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: kernel}}\nspec: {{podCIDRs: [198.18.20.0/24]}}\n\
             status: {{addresses: [{{type: InternalIP, address: {client}}}]}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: kernel-pod, namespace: default, labels: {{app: kernel}}}}\n\
             spec: {{nodeName: kernel, containers: [{{name: serve, image: skiff/probe}}]}}\n\
             status: {{podIP: {KERNEL_POD}, podIPs: [{{ip: {KERNEL_POD}}}]}}\n",
            client = lab.client().ipv4,
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

    /// A ClusterIP (TCP 80 → 8080, NodePort 30080) whose backends are the first pod of each
    /// node.
    fn web_yaml(pods: &[(usize, Host)]) -> String {
        let endpoints: String = pods
            .iter()
            .filter(|(_, p)| p.name.ends_with("-0"))
            .map(|(k, p)| format!("  - {{addresses: ['{}'], nodeName: node{}}}\n", p.ipv4, k + 1))
            .collect();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
             spec: {{type: NodePort, clusterIP: {CLUSTER_IP}, ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{endpoints}"
        )
    }

    impl Cluster {
        /// Three nodes running skiff-agent with `options`, two pods on each; the client is
        /// Node `kernel` or, without `kernel`, outside the cluster.
        fn start(tag: &str, options: &[&str], kernel: bool) -> Cluster {
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
                        options,
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
            let mut cluster = Cluster { agents, pods, kernel, extra: String::new(), lab };
            cluster.set_objects(true);
            cluster
        }

        /// Every node's objects: the Nodes (all, or the first two), the pods and the Service.
        fn set_objects(&mut self, all_nodes: bool) {
            let nodes = if all_nodes { NODES } else { NODES - 1 };
            let mut objects: String = (0..nodes).map(|k| node_yaml(k, &self.lab)).collect();
            if self.kernel {
                objects += &kernel_node_yaml(&self.lab);
            }
            objects += &self.pods.iter().map(|(k, p)| pod_yaml(*k, p)).collect::<String>();
            objects += &web_yaml(&self.pods);
            objects += &self.extra;
            for a in &self.agents {
                a.set_objects(&objects);
            }
            // Two pod CIDRs of each other skiff node, the kernel node's one.
            let kernel = usize::from(self.kernel);
            let tunnels = 2 * (nodes - 1) + kernel;
            let (skiff_nodes, nodes, pods) = (nodes, nodes + kernel, self.pods.len() + kernel);
            for (k, a) in self.agents.iter_mut().enumerate().take(skiff_nodes) {
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
            &self.pod(pod).netns
        }

        fn pod(&self, name: &str) -> &Host {
            &self.pods.iter().find(|(_, p)| p.name == name).expect("a pod").1
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

    /// node1 resolves the other nodes' MACs itself (ARP, asked by skiff-agent), with no static
    /// neighbour entry for them.
    /// `skiff observe` on both ends of the tunnel: pod-1-1's new flows to backends on node2
    /// leave node1 encapsulated, and arrive at node2 decapsulated.
    fn observed_through_the_tunnel(c: &Cluster) {
        let started = |k: usize| {
            let filter = FlowFilter {
                from_pod: Some("default/pod-1-1".into()),
                event_type: Some(EventKind::Trace),
                ..FlowFilter::default()
            };
            let mut flows = Vec::new();
            c.agents[k]
                .agent
                .client()
                .observe(filter, None, false, |a| {
                    if let Answer::Flow(f) = a {
                        flows.push(f.summary);
                    }
                    true
                })
                .unwrap();
            flows
        };
        let (node1, node2) = (started(0), started(1));
        assert!(node1.iter().any(|s| s.contains("encapsulated to node2")), "node1: {node1:#?}");
        assert!(node2.iter().any(|s| s.contains("decapsulated from node1")), "node2: {node2:#?}");
    }

    fn node1_resolves_the_other_nodes(c: &mut Cluster) {
        let node1 = &c.lab.nodes()[0];
        for other in &c.lab.nodes()[1..] {
            node1.netns.exec("ip", &["neigh", "del", &other.ipv4.to_string(), "dev", "uplink"]).unwrap();
        }
        let others: Vec<String> = c.lab.nodes()[1..].iter().map(|n| n.ipv4.to_string()).collect();
        let netns = node1.netns.clone();
        let learned = move || {
            let out = netns.exec("ip", &["neigh", "show", "dev", "uplink"]).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let resolved = others.iter().all(|o| {
                text.lines().any(|l| {
                    l.starts_with(&format!("{o} ")) && l.contains("lladdr") && !l.contains("PERMANENT")
                })
            });
            resolved.then_some(text)
        };
        c.agents[0]
            .agent
            .wait_until("node1 to resolve the other nodes", |a| {
                learned().is_some()
                    && a.client().nodes().is_ok_and(|nodes| nodes.iter().all(|n| n.health != "no next hop"))
            })
            .unwrap();
        println!("node1's neighbours, resolved:\n{}", learned().unwrap_or_default().trim());
    }

    /// `mode`: `vxlan`, `geneve` or `native`.
    fn every_pod_reaches_every_other(routing: &[&str], mode: &str) {
        let mut c = Cluster::start(mode, routing, true);
        if mode == "vxlan" {
            node1_resolves_the_other_nodes(&mut c);
        }
        let hosts: Vec<&Netns> = c.pods.iter().map(|(_, p)| &p.netns).collect();
        let servers = Servers::start(&hosts, &[80]).unwrap();
        let failed = unreachable(&c);
        assert!(failed.is_empty(), "unreachable over {mode}: {failed:#?}");
        drop(servers);

        // In tunnel mode the workers carried it; natively the kernel did, by skiff's routes.
        // No tunnel drops either way.
        for (k, a) in c.agents.iter().enumerate() {
            let s = a.agent.status().unwrap();
            let w = s.workers.clone().unwrap();
            println!("node{}: routing {}; workers {w:?}", k + 1, s.routing);
            assert!(s.routing.contains(mode), "{}", s.routing);
            if mode == "native" {
                let routes = skiff_routes(&c.lab.nodes()[k].netns);
                println!("node{} routes: {routes:?}", k + 1);
                // Two pod CIDRs of each other skiff node, the kernel node's one.
                assert_eq!(routes.len(), 2 * (NODES - 1) + 1, "{routes:?}");
            } else {
                assert!(w.forwarded > 0, "node{} forwarded nothing", k + 1);
            }
            let tunnel_drops: Vec<_> = w.drops.iter().filter(|(r, _)| tunnel_reason(r)).collect();
            assert!(tunnel_drops.is_empty(), "node{}: {tunnel_drops:?}", k + 1);
            let nodes = a.agent.client().nodes().unwrap();
            let mut expected: BTreeMap<String, String> = (0..NODES)
                .map(|n| (format!("node{}", n + 1), if n == k { "local" } else { "reachable" }.to_owned()))
                .collect();
            expected.insert("kernel".into(), "reachable".into());
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
        if mode != "native" {
            observed_through_the_tunnel(&c);
        }

        match mode {
            "vxlan" => {
                kernel_vxlan_exchanges_with_skiff_pods(&mut c);
                a_pods_tunnel_frame_is_dropped_at_its_veth(&c);
            }
            "geneve" => scapy_geneve_is_answered_in_geneve(&c),
            _ => {}
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
        if mode == "native" {
            let routes = skiff_routes(&c.lab.nodes()[0].netns);
            assert_eq!(routes.len(), 2 * (NODES - 2) + 1, "node3's routes removed from node1: {routes:?}");
        }
    }

    /// VXLAN a pod sends to its node's tunnel address arrives on the pod's veth, not an
    /// uplink: the XDP program drops it with its own reason, never decapsulates it.
    fn a_pods_tunnel_frame_is_dropped_at_its_veth(c: &Cluster) {
        let (node1, pod) = (&c.lab.nodes()[0], c.pod("pod-1-1"));
        // The agent's pins live in its own bpffs (its mount namespace): its status reads them.
        let count = || {
            let status = c.agents[0].agent.status().unwrap();
            status.workers.unwrap().xdp_drops.get(&DropReason::TunnelOnPodInterface).copied().unwrap_or(0)
        };
        let before = count();
        // The VXLAN header (VNI 256) and an inner Ethernet frame.
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 1, 0, 0];
        vxlan.extend([0x02; 12].iter().chain(&[0x08, 0x00]).chain(&[0; 46]));
        pod.netns
            .run(|| {
                let socket = std::net::UdpSocket::bind((pod.ipv4, 0)).unwrap();
                for _ in 0..3 {
                    socket.send_to(&vxlan, (node1.ipv4, 8472)).unwrap();
                }
            })
            .unwrap();
        let dropped = count() - before;
        println!("VXLAN from a pod to its node: {dropped} dropped as tunnel-on-pod-interface");
        assert_eq!(dropped, 3, "each dropped at the pod's veth");
    }

    /// The identity of a label (`k8s:app=kernel`) as node1 numbers it.
    fn identity_of(c: &Cluster, label: &str) -> u32 {
        let identities = c.agents[0].agent.client().identities().unwrap();
        identities.iter().find(|i| i.labels.iter().any(|l| l == label)).expect("the label's identity").id
    }

    /// The client's kernel as a node: a collect_md vxlan device (VNI per route, port 8472, as
    /// Cilium's), a route with the kernel pod's identity as VNI to each skiff node's pod CIDR,
    /// its MAC the client's own (skiff addresses the inner frame as the outer one).
    fn kernel_vxlan_exchanges_with_skiff_pods(c: &mut Cluster) {
        let identity = identity_of(c, "k8s:app=kernel");
        let client = c.lab.client().clone();
        let mac: Vec<String> = client.mac.iter().map(|b| format!("{b:02x}")).collect();
        let mut commands = vec![
            format!("ip addr add {KERNEL_POD}/32 dev lo"),
            format!("ip link add vx0 address {} type vxlan external dstport 8472 dev eth0", mac.join(":")),
            "ip link set vx0 up".to_owned(),
        ];
        for node in c.lab.nodes() {
            let net = node.pod_net;
            commands.push(format!(
                "ip route add 198.18.{net}.0/24 via 198.18.{net}.1 dev vx0 onlink encap ip id {identity} dst {}",
                node.ipv4
            ));
            commands
                .push(format!("ip neigh add 198.18.{net}.1 lladdr 02:00:00:00:00:99 dev vx0 nud permanent"));
        }
        for command in &commands {
            let argv: Vec<&str> = command.split_whitespace().collect();
            client.netns.exec(argv[0], &argv[1..]).unwrap();
        }
        // The kernel's pod reaches each node's web pod, and each node's client pod it.
        for k in 1..=NODES {
            let web = &c.pods.iter().find(|(_, p)| p.name == format!("pod-{k}-0")).unwrap().1;
            let out = client
                .netns
                .command("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "3",
                    "--interface",
                    KERNEL_POD,
                    &format!("http://{}:8080/", web.ipv4),
                ])
                .output()
                .unwrap();
            let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            println!(
                "kernel vxlan {KERNEL_POD} → {}: {answer:?} {}",
                web.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            assert_eq!(answer, web.name, "from the kernel's vxlan to {}", web.name);
        }
        let kernel_pod = Host { name: "kernel-pod".into(), ipv4: KERNEL_POD.parse().unwrap(), ..client };
        c.lab.serve_http(&kernel_pod, 8080).unwrap();
        for k in 1..=NODES {
            let answers =
                c.netns(&format!("pod-{k}-1")).http_get(&format!("http://{KERNEL_POD}:8080/"), 5, 3).unwrap();
            println!("pod-{k}-1 → kernel vxlan: {:?} {}", answers.by_host, answers.errors);
            assert_eq!(
                answers.by_host.get("kernel-pod"),
                Some(&5),
                "pod-{k}-1 to the kernel's pod: {}",
                answers.errors
            );
        }
    }

    /// scapy (an encoder of its own) sends a Geneve frame with skiff's identity option from
    /// the kernel node to a skiff pod's UDP echo; the echo comes back in Geneve, which tshark
    /// dissects: the pod's identity as VNI and in the option, the inner datagram intact.
    fn scapy_geneve_is_answered_in_geneve(c: &Cluster) {
        let identity = identity_of(c, "k8s:app=kernel");
        let (node1, client, web) = (&c.lab.nodes()[0], c.lab.client(), c.pod("pod-1-0"));
        let web_identity = identity_of(c, "k8s:app=web");
        let fields = [
            "geneve.vni",
            "geneve.option.class",
            "geneve.option.type",
            "ip.src",
            "ip.dst",
            "udp.dstport",
            "data.data",
        ];
        let answers = scapy_probe(c, Encap::Geneve, identity, 40000, &fields);
        println!("tshark on skiff's Geneve answers:\n{}", answers.join("\n"));
        let expected = format!(
            // tshark prints the VNI and the option type in hex.
            "{web_identity:#08x}|0xfff0|0x01|{node},{pod}|{client},{KERNEL_POD}|6081,40000|70726f6265",
            node = node1.ipv4,
            pod = web.ipv4,
            client = client.ipv4,
        );
        assert_eq!(answers.first(), Some(&expected), "VNI, option, outer and inner addresses, payload");
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Encap {
        Vxlan,
        Geneve,
    }

    /// Three frames built by scapy, from the kernel node's pod (on the client's `lo`, port
    /// `sport`: a flow of its own) to pod-1-0's UDP echo on port 80, through `encap` with `vni`
    /// (Geneve with skiff's identity option too); what tshark dissects (`fields`, one line
    /// each) of the answers node1 sent back through the tunnel.
    fn scapy_probe(c: &Cluster, encap: Encap, vni: u32, sport: u16, fields: &[&str]) -> Vec<String> {
        let (node1, client, web) = (&c.lab.nodes()[0], c.lab.client(), c.pod("pod-1-0"));
        client.netns.exec("ip", &["addr", "replace", &format!("{KERNEL_POD}/32"), "dev", "lo"]).unwrap();
        let servers = Servers::start(&[&web.netns], &[80]).unwrap();
        let (port, tunnel) = match encap {
            Encap::Vxlan => (8472, format!("VXLAN(vni={vni}, flags=0x08)")),
            Encap::Geneve => (
                6081,
                format!(
                    "GENEVE(vni={vni}, proto=0x6558, options=[GeneveOptions(classid=0xfff0, type=1, data=struct.pack('>I', {vni}))])"
                ),
            ),
        };
        let pcap = std::env::temp_dir().join(format!("skiff-overlay-{}-{port}.pcap", c.lab.id()));
        let mut capture = client
            .netns
            .command("tcpdump")
            .args(["-i", "eth0", "-U", "-w", pcap.to_str().unwrap()])
            .arg(format!("udp port {port} and src host {}", node1.ipv4))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let script = format!(
            "from scapy.all import *\nfrom scapy.layers.vxlan import VXLAN\n\
             from scapy.contrib.geneve import GENEVE, GeneveOptions\nimport struct\n\
             p = Ether(src='{cmac}', dst='{nmac}')/IP(src='{client}', dst='{node}')/UDP(sport=50000, dport={port})/\
             {tunnel}/Ether(src='{cmac}', dst='{nmac}')/\
             IP(src='{KERNEL_POD}', dst='{pod}')/UDP(sport={sport}, dport=80)/Raw(b'probe')\n\
             sendp(p, iface='eth0', count=3, verbose=False)\n",
            cmac = mac(client.mac),
            nmac = mac(client.node_mac),
            client = client.ipv4,
            node = node1.ipv4,
            pod = web.ipv4,
        );
        let sent = client.netns.command("/usr/bin/python3").args(["-c", &script]).output().unwrap();
        assert!(sent.status.success(), "scapy: {}", String::from_utf8_lossy(&sent.stderr));
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: SIGTERM to the tcpdump this test started.
        unsafe { libc::kill(i32::try_from(capture.id()).unwrap(), libc::SIGTERM) };
        capture.wait().unwrap();
        drop(servers);
        let filter = if encap == Encap::Vxlan { "vxlan" } else { "geneve" };
        let mut args = vec!["-r", pcap.to_str().unwrap(), "-d", "udp.port==8472,vxlan", "-Y", filter];
        args.extend(["-T", "fields", "-E", "separator=|"]);
        for f in fields {
            args.extend(["-e", f]);
        }
        let dissected = std::process::Command::new("tshark").args(&args).output().unwrap();
        let _ = std::fs::remove_file(&pcap);
        String::from_utf8_lossy(&dissected.stdout).lines().map(str::to_owned).collect()
    }

    /// Policy across nodes: web pods admit only client pods on port 80, wherever they run. A
    /// tunnel frame's identity must be the one this node gives its source: VXLAN from the
    /// kernel node's pod with its own identity as VNI is judged (and denied), the same frame
    /// claiming the client pods' identity is dropped before any verdict.
    #[test]
    fn policy_across_nodes_and_the_tunnels_identity() {
        let mut c = Cluster::start("policy", &[], true);
        c.extra = WEB_FROM_CLIENTS.to_owned();
        c.set_objects(true);
        for (k, a) in c.agents.iter_mut().enumerate() {
            a.agent
                .wait_until(&format!("node{} to enforce the policy", k + 1), |a| {
                    a.status().is_some_and(|s| s.policies == 1 && s.enforced.0 == 1)
                })
                .unwrap();
        }
        let hosts: Vec<&Netns> = c.pods.iter().map(|(_, p)| &p.netns).collect();
        let servers = Servers::start(&hosts, &[80]).unwrap();
        let (mut probes, mut expected, mut names) = (Vec::new(), Vec::new(), Vec::new());
        for (_, from) in &c.pods {
            for (_, to) in c.pods.iter().filter(|(_, t)| t.name != from.name) {
                // A web pod admits the client pods only; the client pods are not isolated.
                let allowed = from.name.ends_with("-1") || to.name.ends_with("-1");
                probes.push(Probe {
                    from: from.netns.clone(),
                    to: to.ipv4.into(),
                    proto: Proto::Tcp,
                    port: 80,
                });
                expected.push(allowed);
                names.push(format!("{} → {}", from.name, to.name));
            }
        }
        let got = probe::run(&probes, Duration::from_secs(2)).unwrap();
        drop(servers);
        let wrong: Vec<_> =
            names.iter().zip(got.iter().zip(&expected)).filter(|(_, (g, e))| g != e).collect();
        println!(
            "{} probes between pods on three nodes under policy, {} as expected",
            got.len(),
            got.len() - wrong.len()
        );
        assert!(wrong.is_empty(), "(probe, (got, expected)): {wrong:#?}");
        let (client, kernel) = (identity_of(&c, "k8s:app=client"), identity_of(&c, "k8s:app=kernel"));
        let as_itself = scapy_probe(&c, Encap::Vxlan, kernel, 40001, &["vxlan.vni"]);
        let as_client = scapy_probe(&c, Encap::Vxlan, client, 40002, &["vxlan.vni"]);
        let workers = c.agents[0].agent.status().unwrap().workers.unwrap();
        println!(
            "VNI {kernel} (its own): {} answers; VNI {client} (the client pods'): {}; node1's workers \
             dropped {:?}, its XDP program {:?}",
            as_itself.len(),
            as_client.len(),
            workers.drops,
            workers.xdp_drops
        );
        assert!(as_itself.is_empty() && as_client.is_empty(), "{as_itself:?} {as_client:?}");
        let dropped = |drops: &BTreeMap<DropReason, u64>, r| drops.get(&r).copied().unwrap_or(0);
        assert!(dropped(&workers.drops, DropReason::PolicyDenied) >= 3, "its own identity is judged: denied");
        // Refused at the NIC, from the ipcache the XDP program reads, before any worker.
        assert!(
            dropped(&workers.xdp_drops, DropReason::TunnelIdentityMismatch) >= 3,
            "a claimed identity is refused"
        );
    }

    /// Web pods admit client pods (any node's) on TCP and UDP port 80.
    const WEB_FROM_CLIENTS: &str = "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
        metadata: {name: web-from-clients, namespace: default}\n\
        spec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n\
        \x20   - fromEndpoints: [{matchLabels: {app: client}}]\n\
        \x20     toPorts: [{ports: [{port: '80', protocol: ANY}]}]\n";

    fn health(nodes: &[NodeView]) -> BTreeMap<String, String> {
        nodes.iter().map(|n| (n.name.clone(), n.health.clone())).collect()
    }

    fn tunnel_reason(r: &DropReason) -> bool {
        (40..50).contains(&r.code()) || *r == DropReason::TunnelNested || *r == DropReason::Unroutable
    }

    /// With masquerading, pods' connections to a host outside the cluster (the client) come
    /// from their node's address: 500 at once from a pod on each of two nodes, every one
    /// answered, each (address, port) distinct; over IPv6 too (50 from one pod). And the
    /// world reaches a NodePort whose backends are on every node.
    #[test]
    fn pods_leave_the_cluster_with_their_nodes_address() {
        const EACH: usize = 500;
        const EACH_V6: usize = 50;
        let options = ["--enable-ipv4-masquerade", "true", "--enable-ipv6-masquerade", "true"];
        let mut c = Cluster::start("masquerade", &options, false);
        let client = c.lab.client().clone();
        let (v4, v6) = (SocketAddr::from((client.ipv4, 9000)), SocketAddr::from((client.ipv6, 9001)));
        let (server4, server6) = (world(&client.netns, v4, 2 * EACH), world(&client.netns, v6, EACH_V6));
        let (a, b, a6) = (
            connect(c.netns("pod-1-1"), v4, EACH),
            connect(c.netns("pod-2-1"), v4, EACH),
            connect(c.netns("pod-1-1"), v6, EACH_V6),
        );
        let (from_1, from_2, from_1_v6) = (a.join().unwrap(), b.join().unwrap(), a6.join().unwrap());
        let (seen, seen_v6) = (server4.join().unwrap(), server6.join().unwrap());
        let distinct: BTreeSet<SocketAddr> = seen.iter().copied().collect();
        let sources: BTreeSet<IpAddr> = seen.iter().chain(&seen_v6).map(SocketAddr::ip).collect();
        println!(
            "{} and {} connections answered ({} over IPv6); the world saw {} connections, {} distinct (address, port), from {sources:?}",
            from_1.len(),
            from_2.len(),
            from_1_v6.len(),
            seen.len() + seen_v6.len(),
            distinct.len() + seen_v6.iter().collect::<BTreeSet<_>>().len()
        );
        assert_eq!(
            (from_1.len(), from_2.len(), from_1_v6.len()),
            (EACH, EACH, EACH_V6),
            "every connection answered"
        );
        assert_eq!(distinct.len(), 2 * EACH, "each connection its own (address, port)");
        let (node1, node2) = (&c.lab.nodes()[0], &c.lab.nodes()[1]);
        let nodes = BTreeSet::from([IpAddr::V4(node1.ipv4), IpAddr::V4(node2.ipv4), IpAddr::V6(node1.ipv6)]);
        assert_eq!(sources, nodes, "only the nodes' addresses");
        assert!(from_1.iter().all(|a| a.ip() == IpAddr::V4(node1.ipv4)), "pod-1-1 behind node1");

        // The world reaches the NodePort on node1: backends on the other nodes through the
        // tunnel, masqueraded as node1.
        let node_port = format!("http://{}:30080/", node1.ipv4);
        for (_, web) in c.pods.clone().iter().filter(|(_, p)| p.name.ends_with("-0")) {
            c.lab.serve_http(web, 8080).unwrap();
        }
        let answers = client.netns.http_get(&node_port, 60, 3).unwrap();
        println!("the world → node1's NodePort: {:?} {}", answers.by_host, answers.errors);
        assert_eq!(answers.answered(), 60, "every request answered: {}", answers.errors);
        assert_eq!(answers.by_host.len(), NODES, "a backend on each node answered: {:?}", answers.by_host);
    }

    /// A host outside the cluster listening on `at` in `netns`: writes each connection's
    /// source back to it and keeps it open; the sources of the first `n`.
    fn world(netns: &Netns, at: SocketAddr, n: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
        let listener = netns.run(|| TcpListener::bind(at)).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let (mut seen, mut open) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(30);
            while seen.len() < n && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.write_all(format!("{peer}\n").as_bytes());
                        seen.push(peer);
                        open.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            seen
        })
    }

    /// `n` connections at once from `netns` to `to`: the sources the far end saw, for those
    /// answered.
    fn connect(netns: &Netns, to: SocketAddr, n: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
        let netns = netns.clone();
        std::thread::spawn(move || {
            netns
                .run(|| {
                    let streams: Vec<TcpStream> = (0..n)
                        .filter_map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(3)).ok())
                        .collect();
                    streams
                        .into_iter()
                        .filter_map(|s| {
                            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                            let mut line = String::new();
                            BufReader::new(s).read_line(&mut line).ok()?;
                            line.trim().parse::<SocketAddr>().ok()
                        })
                        .collect()
                })
                .unwrap()
        })
    }

    /// A 1 MB body, over HTTP on port 8081, IPv4 and IPv6.
    const BIG_BODY_SERVER: &str = r#"
import socket, threading
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 8081))
s.listen(16)
body = b"x" * 1048576
def serve(c):
    c.recv(4096)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,)).start()
"#;

    /// Two pods whose MTU ignores the tunnel's (1500 on a 1500-byte underlay) exchange full-size
    /// frames with DF: the worker answers the sender with "fragmentation needed" (IPv4) or
    /// "packet too big" (IPv6) carrying the path's MTU, the sender's kernel learns it, and a
    /// 1 MB download over TCP completes.
    #[test]
    fn a_pod_ignoring_the_tunnels_mtu_learns_the_path_mtu_and_its_transfers_complete() {
        let c = Cluster::start("pmtu", &[], false);
        let (server, client) = (c.pod("pod-2-0"), c.pod("pod-1-1"));
        for (k, pod) in [(1, server), (0, client)] {
            pod.netns.exec("ip", &["link", "set", "eth0", "mtu", "1500"]).unwrap();
            c.lab.nodes()[k].netns.exec("ip", &["link", "set", &pod.node_iface, "mtu", "1500"]).unwrap();
        }
        let mut big = server.netns.command("python3").args(["-c", BIG_BODY_SERVER]).spawn().unwrap();
        let download = |url: String| {
            let out = client
                .netns
                .command("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "10",
                    "--retry",
                    "5",
                    "--retry-connrefused",
                    "--retry-delay",
                    "1",
                ])
                .args(["-o", "/dev/null", "-w", "%{size_download}", &url])
                .output()
                .unwrap();
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let v4 = download(format!("http://{}:8081/", server.ipv4));
        let v6 = download(format!("http://[{}]:8081/", server.ipv6));
        let _ = big.kill();
        let _ = big.wait();
        let learned = |family: &str, to: String| {
            let out = server.netns.exec("ip", &[family, "route", "get", &to]).unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let (route4, route6) =
            (learned("-4", client.ipv4.to_string()), learned("-6", client.ipv6.to_string()));
        let replied = c.agents[1].agent.status().unwrap().workers.unwrap().replied;
        println!(
            "1 MB over IPv4: {v4:?}; over IPv6: {v6:?}\nthe server's routes: {route4} | {route6}\nnode2 answered {replied} packets too big"
        );
        assert_eq!(v4.0, "1048576", "the IPv4 download completes: {}", v4.1);
        assert_eq!(v6.0, "1048576", "the IPv6 download completes: {}", v6.1);
        assert!(route4.contains("mtu 1450"), "IPv4 path MTU learned: {route4}");
        assert!(route6.contains("mtu 1450"), "IPv6 path MTU learned: {route6}");
        assert!(replied >= 2, "node2's worker answered the big packets: {replied}");
    }

    /// The routes skiff added in a node (`proto 83`), both families.
    fn skiff_routes(node: &Netns) -> Vec<String> {
        let mut routes = Vec::new();
        for family in ["-4", "-6"] {
            let out = node.exec("ip", &[family, "route", "show", "proto", "83"]).unwrap();
            routes.extend(String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()));
        }
        routes
    }

    #[test]
    fn pods_on_three_nodes_reach_each_other_through_vxlan() {
        every_pod_reaches_every_other(&[], "vxlan");
    }

    #[test]
    fn pods_on_three_nodes_reach_each_other_through_geneve() {
        every_pod_reaches_every_other(&["--tunnel-protocol", "geneve"], "geneve");
    }

    #[test]
    fn pods_on_three_nodes_reach_each_other_natively() {
        every_pod_reaches_every_other(&["--routing-mode", "native", "--auto-direct-node-routes"], "native");
    }
}
