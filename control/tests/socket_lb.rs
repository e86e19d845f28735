//! Socket-LB: skiff-agent attaches its cgroup socket programs to a cgroup of the lab's own,
//! and clients run inside it. From the node itself (curl) and from a host-network process
//! (python's sockets), a ClusterIP, the node's own NodePort (also on 127.0.0.1) and another
//! node's NodePort reach the backends with the service's spread, IPv4 and IPv6; a UDP
//! request's answer comes from the service address, and `getpeername` reports it. A service
//! without backends refuses the connect at once; a removed backend gets no new connection
//! while an existing one keeps working. A pod's connect reaches the backend from the pod's
//! own address and the worker sees it without DNAT, unless `--socket-lb-host-namespace-only`.

mod privileged {
    use std::{
        io::{BufRead, BufReader, Write},
        net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
        path::Path,
        process::{Child, Stdio},
        time::{Duration, Instant},
    };

    use serde_json::Value;
    use skiff_api::{SocketLb, Status};
    use skiff_common::sock::SockCounter;
    use skiff_lab::{Host, Lab, Netns, Topology, cni::CniAgent, probe::Servers};

    const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");
    const VIP4: &str = "198.19.0.10";
    const VIP6: &str = "fd00:0:0:19::10";
    /// A ClusterIP without backends.
    const EMPTY: &str = "198.19.0.11";
    const EMPTY6: &str = "fd00:0:0:19::11";
    /// One backend (web-0) on port 9090, for the pods' tests.
    const PEER: &str = "198.19.0.12";
    /// The web pods with `sessionAffinity: ClientIP`.
    const STICKY: &str = "198.19.0.14";
    const WEB: [&str; 3] = ["web-0", "web-1", "web-2"];
    /// An external IP a Service claims that is no node's (nothing answers there).
    const CLAIMED: &str = "198.18.0.200";

    /// A client as a test runs it inside the agent's cgroup: argv mode, host, port; prints
    /// one JSON line per answer. `keepalive` waits for a line on stdin between two GETs on one
    /// connection.
    const CLIENT: &str = r#"
import errno, http.client, json, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
def say(**answer):
    print(json.dumps(answer), flush=True)
if mode == "udp":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"query", (host, port))
    data, peer = s.recvfrom(512)
    say(data=data.decode(), peer=[peer[0], peer[1]])
elif mode == "udp-connected":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((host, port))
    s.send(b"query")
    data = s.recv(512)
    peer = s.getpeername()
    say(data=data.decode(), peer=[peer[0], peer[1]])
elif mode == "tcp":
    s = socket.create_connection((host, port), timeout=5)
    peer = s.getpeername()
    say(peer=[peer[0], peer[1]])
elif mode == "connect":
    start = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=3).close()
        say(error=0, ms=(time.monotonic() - start) * 1000)
    except OSError as e:
        say(error=e.errno or errno.ETIMEDOUT, ms=(time.monotonic() - start) * 1000)
elif mode == "keepalive":
    c = http.client.HTTPConnection(host, port, timeout=5)
    for _ in range(2):
        c.request("GET", "/")
        say(name=c.getresponse().read().decode().strip())
        sys.stdin.readline()
"#;

    struct Node {
        agent: CniAgent,
        /// web-0..2, then the client pod.
        pods: Vec<Host>,
        _servers: Servers,
        lab: Lab,
    }

    fn nodes_yaml(lab: &Lab) -> String {
        lab.nodes()
            .iter()
            .map(|node| {
                format!(
                    "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n\
                     spec: {{podCIDRs: [198.18.{net}.0/24, 'fd00:0:0:{net}::/64']}}\n\
                     status: {{addresses: [{{type: InternalIP, address: {v4}}}, {{type: InternalIP, address: '{v6}'}}]}}\n",
                    name = node.name,
                    net = node.pod_net,
                    v4 = node.ipv4,
                    v6 = node.ipv6,
                )
            })
            .collect()
    }

    fn pods_yaml(pods: &[Host]) -> String {
        pods.iter()
            .map(|p| {
                let app = if p.name.starts_with("web") { "web" } else { "client" };
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n\
                     spec: {{nodeName: node1, containers: [{{name: c, image: skiff/probe}}]}}\n\
                     status: {{podIP: {v4}, podIPs: [{{ip: {v4}}}, {{ip: '{v6}'}}]}}\n",
                    name = p.name,
                    v4 = p.ipv4,
                    v6 = p.ipv6,
                )
            })
            .collect()
    }

    /// Service `web` (dual-stack NodePort: HTTP 80 → 8080 on 30080, UDP 53 → 5353 on
    /// 30053) over `backends`; `empty` without backends; `peer` (TCP 90 → 9090) over web-0.
    fn services_yaml(pods: &[Host], backends: &[&str]) -> String {
        let slice = |v6: bool| -> String {
            let endpoints: String = pods
                .iter()
                .filter(|p| backends.contains(&p.name.as_str()))
                .map(|p| {
                    let ip = if v6 { p.ipv6.to_string() } else { p.ipv4.to_string() };
                    format!("  - {{addresses: ['{ip}'], nodeName: node1}}\n")
                })
                .collect();
            format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: web-{fam}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
                 addressType: {family}\nports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]\n\
                 endpoints:\n{endpoints}",
                fam = if v6 { "v6" } else { "v4" },
                family = if v6 { "IPv6" } else { "IPv4" },
            )
        };
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
             spec: {{type: NodePort, clusterIP: {VIP4}, clusterIPs: [{VIP4}, '{VIP6}'], ipFamilies: [IPv4, IPv6],\n\
             \x20 ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}, {{name: dns, port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}}]}}\n\
             {v4}{v6}\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: default}}\n\
             spec: {{clusterIP: {EMPTY}, clusterIPs: [{EMPTY}, '{EMPTY6}'], ipFamilies: [IPv4, IPv6], ports: [{{port: 80}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: sticky, namespace: default}}\n\
             spec: {{clusterIP: {STICKY}, sessionAffinity: ClientIP, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: sticky, namespace: default, labels: {{kubernetes.io/service-name: sticky}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{sticky}\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: peer, namespace: default}}\n\
             spec: {{clusterIP: {PEER}, ports: [{{port: 90, targetPort: 9090}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: peer, namespace: default, labels: {{kubernetes.io/service-name: peer}}}}\n\
             addressType: IPv4\nports: [{{port: 9090}}]\nendpoints: [{{addresses: ['{web0}'], nodeName: node1}}]\n",
            v4 = slice(false),
            v6 = slice(true),
            sticky = slice(false).split_once("endpoints:\n").map_or("", |(_, e)| e),
            web0 = pods[0].ipv4,
        )
    }

    impl Node {
        /// Two lab nodes on a switch; skiff-agent (AF_XDP, `options`) runs on node1 with three
        /// web pods (HTTP on 8080, UDP echo on 5353) and a client pod. node2 runs nothing:
        /// only its Node object says where its NodePorts answer.
        fn start(tag: &str, options: &[&str]) -> Node {
            let lab = Topology::new().cluster(2).cni_pods(4).build().unwrap();
            let name = format!("socklb-{tag}-{}", lab.id());
            let node = &lab.nodes()[0];
            let agent = CniAgent::start(
                &node.netns,
                Path::new(AGENT),
                &name,
                "node1",
                "uplink",
                "afxdp",
                options,
                &nodes_yaml(&lab),
            );
            let names = ["web-0", "web-1", "web-2", "client"];
            let pods: Vec<Host> = lab
                .cni_pods()
                .iter()
                .zip(names)
                .map(|(netns, n)| agent.pod(n, netns, "default", n))
                .collect();
            let namespaces: Vec<&Netns> = pods[..3].iter().map(|p| &p.netns).collect();
            let servers = Servers::start(&namespaces, &[5353]).unwrap();
            let mut node = Node { agent, pods, _servers: servers, lab };
            for i in 0..3 {
                let pod = node.pods[i].clone();
                node.lab.serve_http(&pod, 8080).unwrap();
            }
            node.set_objects(&WEB, "");
            node
        }

        fn set_objects(&mut self, backends: &[&str], extra: &str) {
            let objects = format!(
                "{}{}{}{extra}",
                nodes_yaml(&self.lab),
                pods_yaml(&self.pods),
                services_yaml(&self.pods, backends)
            );
            self.agent.set_objects(&objects);
            let want = backends.len();
            self.agent
                .agent
                .wait_until("the web service's backends", |a| {
                    a.client().services().is_ok_and(|s| {
                        s.iter().any(|v| {
                            v.service.name == "web"
                                && v.address.to_string() == VIP4
                                && v.backends.len() == want
                        }) && s.iter().any(|v| v.service.name == "peer")
                    })
                })
                .unwrap();
        }

        fn netns(&self) -> &Netns {
            &self.lab.nodes()[0].netns
        }

        fn status(&self) -> Status {
            self.agent.agent.status().expect("the agent answers")
        }

        fn socket_counter(&self, counter: SockCounter) -> u64 {
            let workers = self.status().workers.expect("a datapath");
            workers.socket_lb.get(&counter).copied().unwrap_or(0)
        }

        /// Runs the client script in `netns`, inside the agent's cgroup.
        fn client(&self, netns: &Netns, args: &[&str]) -> Value {
            let out = self
                .agent
                .agent
                .cgroup
                .command(netns, "python3")
                .arg("-c")
                .arg(CLIENT)
                .args(args)
                .output()
                .expect("python3 runs");
            let text = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str(text.lines().next().unwrap_or_default()).unwrap_or_else(|_| {
                panic!("client {args:?}: {text} {}", String::from_utf8_lossy(&out.stderr))
            })
        }

        /// `n` GETs to `url` from `netns` inside the cgroup: the answers by backend.
        fn spread(&self, netns: &Netns, url: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
            let answers = self.agent.agent.cgroup.http_get(netns, url, n, 5).unwrap();
            assert_eq!(answers.answered(), n, "{url}: {}", answers.errors);
            answers.by_host
        }
    }

    /// Every backend answered at least `min` of the requests.
    fn assert_spread(
        by_host: &std::collections::BTreeMap<String, usize>,
        backends: &[&str],
        min: usize,
        what: &str,
    ) {
        for b in backends {
            let got = by_host.get(*b).copied().unwrap_or(0);
            assert!(got >= min, "{what}: {b} answered {got} (< {min}): {by_host:?}");
        }
        assert!(by_host.keys().all(|k| backends.contains(&k.as_str())), "{what}: {by_host:?}");
    }

    fn peer(answer: &Value) -> (String, u64) {
        (answer["peer"][0].as_str().unwrap_or_default().to_owned(), answer["peer"][1].as_u64().unwrap_or(0))
    }

    #[test]
    fn the_node_reaches_cluster_ips_and_node_ports() {
        let node = Node::start("node", &[]);
        let status = node.status();
        let SocketLb::On { cgroup, host_namespace_only: false } = &status.datapath.socket_lb else {
            panic!("socket-LB on: {:?}", status.datapath.socket_lb)
        };
        assert_eq!(cgroup, node.agent.agent.cgroup.path());
        let services = node.agent.agent.client().services().unwrap();
        assert!(services.iter().all(|s| s.socket_lb), "every TCP/UDP frontend served: {services:?}");
        let here = node.netns();
        let (node1, node2) = (&node.lab.nodes()[0], &node.lab.nodes()[1]);
        // 45 new connections over 3 backends: each gets 15 on average, fewer than 3 with a
        // chance of about 3e-6.
        let urls = [
            format!("http://{VIP4}/"),
            format!("http://[{VIP6}]/"),
            format!("http://{}:30080/", node1.ipv4),
            format!("http://[{}]:30080/", node1.ipv6),
            "http://127.0.0.1:30080/".to_owned(),
            format!("http://{}:30080/", node2.ipv4),
            format!("http://[{}]:30080/", node2.ipv6),
        ];
        for url in &urls {
            assert_spread(&node.spread(here, url, 45), &WEB, 3, url);
        }
        // A host-network process: replies and peers show the service's address.
        for vip in [VIP4, VIP6] {
            let answer = node.client(here, &["udp", vip, "53"]);
            assert_eq!(answer["data"], "query");
            assert_eq!(peer(&answer), (vip.to_owned(), 53), "recvfrom's source");
            let answer = node.client(here, &["udp-connected", vip, "53"]);
            assert_eq!(peer(&answer), (vip.to_owned(), 53), "a connected UDP socket's peer");
            let answer = node.client(here, &["tcp", vip, "80"]);
            assert_eq!(peer(&answer), (vip.to_owned(), 80), "getpeername");
        }
        // A dual-stack socket to an IPv4 service (`::ffff:198.19.0.10`).
        let mapped = format!("::ffff:{VIP4}");
        assert_eq!(peer(&node.client(here, &["tcp", &mapped, "80"])), (mapped.clone(), 80));
        // ClientIP affinity: every connection of the node's namespace to one backend.
        let by_host = node.spread(here, &format!("http://{STICKY}/"), 20);
        assert_eq!(by_host.values().copied().collect::<Vec<_>>(), [20], "one backend: {by_host:?}");
        let answer = node.client(here, &["udp", &node2.ipv4.to_string(), "30053"]);
        assert_eq!(peer(&answer), (node2.ipv4.to_string(), 30053), "another node's UDP NodePort");
        let translated = node.socket_counter(SockCounter::Translated);
        assert!(translated >= 7 * 45 + 8 + 20, "translated {translated}");
    }

    #[test]
    fn no_backend_refuses_and_a_removed_backend_keeps_its_connections() {
        let mut node = Node::start("backends", &[]);
        let here = node.netns().clone();
        for vip in [EMPTY, EMPTY6] {
            let answer = node.client(&here, &["connect", vip, "80"]);
            assert_eq!(answer["error"], 111, "ECONNREFUSED from {vip}: {answer}");
            let ms = answer["ms"].as_f64().unwrap_or(f64::MAX);
            assert!(ms < 500.0, "refused at once, not after {ms:.0} ms");
        }
        assert!(node.socket_counter(SockCounter::Refused) >= 2);
        // A port the service does not have is left as it is: neither translated nor refused.
        let before =
            (node.socket_counter(SockCounter::Translated), node.socket_counter(SockCounter::Refused));
        let answer = node.client(&here, &["connect", VIP4, "81"]);
        assert_ne!(answer["error"], 0, "nothing answers {VIP4}:81: {answer}");
        let after = (node.socket_counter(SockCounter::Translated), node.socket_counter(SockCounter::Refused));
        assert_eq!(before, after, "port 81 untouched");

        // A Service on the node's own address: said in the status, and the node's connects
        // to that port go to its backend (as kube-proxy's OUTPUT rules send them). Another
        // external IP it claims is not the node's: its connects there are left alone
        // (CVE-2020-8554), as Cilium's socket-LB leaves them.
        let node1 = node.lab.nodes()[0].ipv4;
        let local = format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: local, namespace: default}}\n\
             spec: {{clusterIP: 198.19.0.13, externalIPs: [{node1}, {CLAIMED}], ports: [{{port: 8000, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: local, namespace: default, labels: {{kubernetes.io/service-name: local}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: ['{}'], nodeName: node1}}]\n",
            node.pods[1].ipv4
        );
        node.set_objects(&WEB, &local);
        node.agent
            .agent
            .wait_until("the status to name the local frontend", |a| {
                a.status().is_some_and(|s| {
                    s.on_node_addresses == [format!("default/local {node1}:8000/TCP (ExternalIP)")]
                })
            })
            .unwrap();
        let by_host = node.spread(&here, &format!("http://{node1}:8000/"), 3);
        assert_eq!(by_host.get("web-1"), Some(&3), "{by_host:?}");
        let services = node.agent.agent.client().services().unwrap();
        let served =
            |addr: &str| services.iter().find(|s| s.address.to_string() == addr).map(|s| s.socket_lb);
        assert_eq!((served(&node1.to_string()), served(CLAIMED)), (Some(true), Some(false)));
        let before = node.socket_counter(SockCounter::Translated);
        let answer = node.client(&here, &["connect", CLAIMED, "8000"]);
        assert_ne!(answer["error"], 0, "nothing answers {CLAIMED}: {answer}");
        assert_eq!(node.socket_counter(SockCounter::Translated), before, "{CLAIMED} left alone");

        // A keep-alive connection, then its backend leaves the service.
        let mut keepalive = node
            .agent
            .agent
            .cgroup
            .command(&here, "python3")
            .args(["-c", CLIENT, "keepalive", VIP4, "80"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(keepalive.stdout.take().expect("stdout")).lines();
        let first: Value = serde_json::from_str(&lines.next().expect("an answer").expect("a line")).unwrap();
        let kept = first["name"].as_str().expect("a name").to_owned();
        let others: Vec<&str> = WEB.iter().copied().filter(|w| *w != kept).collect();
        node.set_objects(&others, "");
        let by_host = node.spread(&here, &format!("http://{VIP4}/"), 30);
        assert_spread(&by_host, &others, 1, "after removing a backend");
        next_line(&mut keepalive);
        let second: Value = serde_json::from_str(&lines.next().expect("an answer").expect("a line")).unwrap();
        assert_eq!(second["name"], kept.as_str(), "the existing connection is still served by {kept}");
        next_line(&mut keepalive);
        let _ = keepalive.wait();

        // Stopped, the agent leaves nothing attached: loopback's NodePort is nobody's again.
        assert_eq!(node.client(&here, &["connect", "127.0.0.1", "30080"])["error"], 0);
        assert!(node.agent.agent.terminate().unwrap().success());
        let answer = node.client(&here, &["connect", "127.0.0.1", "30080"]);
        assert_eq!(answer["error"], 111, "after the agent stopped, nothing translates: {answer}");
    }

    fn next_line(child: &mut Child) {
        let stdin = child.stdin.as_mut().expect("stdin");
        let _ = stdin.write_all(b"\n");
        let _ = stdin.flush();
    }

    /// Accepts one connection on `port` in `netns` within 10 s: the client's address.
    fn accept_one(netns: &Netns, port: u16) -> std::thread::JoinHandle<Option<IpAddr>> {
        let listener = netns
            .run(|| TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
            .unwrap()
            .expect("a listener");
        std::thread::spawn(move || {
            listener.set_nonblocking(true).ok()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok((_, from)) = listener.accept() {
                    return Some(from.ip());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        })
    }

    /// The web pods under policy, so their traffic goes through a worker.
    const ALLOW_ALL_TO_WEB: &str = "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
        metadata: {name: web, namespace: default}\n\
        spec: {endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEntities: [all]}]}\n";

    /// A pod's connect to `peer` from inside the cgroup: the address web-0 saw, and how the
    /// worker's DNAT and socket-LB's translations counted it.
    fn pod_connect(node: &Node) -> (Option<IpAddr>, u64, u64) {
        let counters = |node: &Node| {
            let w = node.status().workers.expect("a datapath");
            (w.service_flows, w.socket_lb.get(&SockCounter::Translated).copied().unwrap_or(0))
        };
        let before = counters(node);
        let accepted = accept_one(&node.pods[0].netns, 9090);
        let client = &node.pods[3];
        let answer = node.client(&client.netns, &["tcp", PEER, "90"]);
        assert_eq!(peer(&answer), (PEER.to_owned(), 90), "the pod's getpeername");
        let seen = accepted.join().expect("the acceptor");
        let after = counters(node);
        (seen, after.0 - before.0, after.1 - before.1)
    }

    #[test]
    fn pods_connect_to_backends_unless_host_namespace_only() {
        let mut node = Node::start("pods", &[]);
        node.set_objects(&WEB, ALLOW_ALL_TO_WEB);
        node.agent
            .agent
            .wait_until("the policy on the web pods", |a| a.status().is_some_and(|s| s.enforced.0 >= 3))
            .unwrap();
        let client = node.pods[3].ipv4;
        let received = node.status().workers.expect("a datapath").received;
        let (seen, dnat, translated) = pod_connect(&node);
        assert_eq!(seen, Some(IpAddr::V4(client)), "web-0 sees the pod's own address");
        assert_eq!((dnat, translated), (0, 1), "translated at connect, no DNAT in the worker");
        let worker_saw = node.status().workers.expect("a datapath").received - received;
        assert!(worker_saw >= 3, "the worker carried the flow to the pod under policy ({worker_saw} frames)");

        // Host namespace only: the pod's connect keeps the service address; the worker DNATs.
        let args: Vec<String> = node
            .agent
            .args
            .iter()
            .cloned()
            .chain(["--socket-lb-host-namespace-only".into(), "true".into()])
            .collect();
        node.agent.agent.kill().unwrap();
        node.agent.agent.restart(&node.agent.node, Path::new(AGENT), &args).unwrap();
        node.agent
            .agent
            .wait_until("the policy on the web pods", |a| a.status().is_some_and(|s| s.enforced.0 >= 3))
            .unwrap();
        let status = node.status();
        assert!(
            matches!(status.datapath.socket_lb, SocketLb::On { host_namespace_only: true, .. }),
            "{:?}",
            status.datapath.socket_lb
        );
        let (seen, dnat, translated) = pod_connect(&node);
        assert_eq!(seen, Some(IpAddr::V4(client)), "web-0 sees the pod's own address");
        assert_eq!((dnat, translated), (1, 0), "the worker's DNAT, not socket-LB");
        let answer = node.client(node.netns(), &["tcp", VIP4, "80"]);
        assert_eq!(peer(&answer), (VIP4.to_owned(), 80));
        assert!(node.socket_counter(SockCounter::Translated) >= 1, "the node's own sockets still translated");
    }

    #[test]
    fn without_a_cgroup_v2_the_agent_runs_without_socket_lb_and_says_why() {
        let lab = Topology::new().cluster(1).build().unwrap();
        let file = std::env::temp_dir().join(format!("skiff-socklb-{}-not-a-dir", lab.id()));
        std::fs::write(&file, "").unwrap();
        let name = format!("socklb-nocgroup-{}", lab.id());
        let root = file.to_str().unwrap_or_default();
        let agent = CniAgent::start(
            &lab.nodes()[0].netns,
            Path::new(AGENT),
            &name,
            "node1",
            "uplink",
            "afxdp",
            &["--cgroup-root", root],
            &nodes_yaml(&lab),
        );
        let status = agent.agent.status().expect("the agent answers");
        let _ = std::fs::remove_file(&file);
        match &status.datapath.socket_lb {
            SocketLb::Off { reason } => assert!(reason.contains(root), "the reason names {root}: {reason}"),
            on => panic!("socket-LB should be off: {on:?}"),
        }
        assert_eq!(status.health, skiff_api::Health::Ok, "the agent serves without socket-LB");
    }

    /// `--cgroup-root` names a folder with no cgroup2: the agent mounts one there. It runs in
    /// the lab's cgroup and a cgroup namespace of its own, so what it mounts (in its own mount
    /// namespace) is the lab's cgroup, as an agent in a pod sees its own.
    #[test]
    fn the_agent_mounts_cgroup2_where_none_is() {
        let mut lab = Topology::new().cluster(1).build().unwrap();
        let client = lab.client().clone();
        lab.serve_http(&client, 8080).unwrap();
        let name = format!("socklb-automount-{}", lab.id());
        let (objects, root) = (
            std::env::temp_dir().join(format!("skiff-{name}-objects")),
            std::env::temp_dir().join(format!("skiff-{name}-cgroup2")),
        );
        std::fs::create_dir_all(&objects).unwrap();
        let yaml = format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: outside, namespace: default}}\n\
             spec: {{clusterIP: {VIP4}, ports: [{{port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: outside, namespace: default, labels: {{kubernetes.io/service-name: outside}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: ['{}']}}]\n",
            nodes_yaml(&lab),
            client.ipv4
        );
        std::fs::write(objects.join("cluster.yaml"), yaml).unwrap();
        let args: Vec<String> = [
            "--state-dir",
            objects.to_str().unwrap_or_default(),
            "--node-name",
            "node1",
            "--device",
            "uplink",
            "--cgroup-root",
            root.to_str().unwrap_or_default(),
        ]
        .map(String::from)
        .into();
        let node = lab.nodes()[0].netns.clone();
        let mut agent =
            skiff_lab::agent::Agent::spawn_in_cgroup_namespace(&node, Path::new(AGENT), &name, &args)
                .unwrap();
        agent.wait_until("the service", |a| a.client().services().is_ok_and(|s| !s.is_empty())).unwrap();
        let status = agent.status().expect("the agent answers");
        let answers = agent.cgroup.http_get(&node, &format!("http://{VIP4}/"), 3, 5).unwrap();
        drop(agent);
        let _ = std::fs::remove_dir_all(&objects);
        let _ = std::fs::remove_dir(&root);
        assert_eq!(
            status.datapath.socket_lb,
            SocketLb::On { cgroup: root.clone(), host_namespace_only: false }
        );
        assert_eq!(answers.by_host.get("client"), Some(&3), "{answers:?}");
    }
}
