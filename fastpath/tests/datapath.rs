//! The whole fast path in the lab, with real TCP: a client curls a ClusterIP and a NodePort of a
//! service backed by pods running HTTP servers, through `Datapath` over AF_XDP (native and
//! generic XDP) and over the AF_PACKET fallback. Neither frontend exists in the kernel's
//! tables: every answer went through a worker both ways.

mod privileged {
    use std::{
        collections::{BTreeMap, BTreeSet},
        io::{BufRead, BufReader, Write},
        net::{IpAddr, Ipv4Addr},
        process::{Child, Stdio},
    };

    use hashbrown::HashMap;
    use skiff_common::{
        DropReason,
        config::XdpConfig,
        conntrack::FlowPath,
        lb::{BackendId, FrontendKind},
    };
    use skiff_engine::{
        conntrack::Timeouts,
        engine::SNAT_PORTS,
        event::EventKind,
        lb::Backend,
        tables::{Frontend, LocalNode, Neighbor, Service, ServiceConfig, Tables},
    };
    use skiff_fastpath::datapath::{Config, Datapath, Io};
    use skiff_lab::{Host, Lab, Topology};
    use skiff_xdp::{Ingress, XdpMode, bpffs};

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
    const NODE_PORT: u16 = 30080;

    /// A lab whose node runs the datapath; stops it and removes its pins on drop.
    struct LabDatapath {
        datapath: Option<Datapath>,
        pins: Option<String>,
        lab: Lab,
        next_hops: HashMap<IpAddr, Neighbor>,
    }

    impl Drop for LabDatapath {
        fn drop(&mut self) {
            drop(self.datapath.take());
            if let Some(dir) = &self.pins {
                let _ = bpffs::remove_pins(std::path::Path::new(dir));
            }
        }
    }

    fn mac(ns: &skiff_lab::Netns, iface: &str) -> [u8; 6] {
        let out = ns.exec("cat", &[&format!("/sys/class/net/{iface}/address")]).unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let bytes: Vec<u8> = text.trim().split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
        bytes.try_into().unwrap()
    }

    /// The service over `local` pods of the node and `remote` pods of node2: its ClusterIP
    /// `VIP:80` and its NodePort `node:30080`.
    fn tables(lab: &Lab, local: usize, remote: usize) -> Tables {
        let pods = lab.pods()[..local].iter().map(|p| (p, true));
        let remote = lab.node2_pods().iter().take(remote).map(|p| (p, false));
        let backends: Vec<Backend> = pods
            .chain(remote)
            .zip(1..)
            .map(|((p, local), id)| Backend {
                id: BackendId(id),
                addr: p.ipv4.into(),
                port: 8080,
                weight: 1,
                local,
            })
            .collect();
        let node = lab.node().ipv4;
        let mut services = hashbrown::HashMap::new();
        for (frontend, kind) in [
            (Frontend { addr: VIP.into(), port: 80, protocol: 6 }, FrontendKind::ClusterIp),
            (Frontend { addr: node.into(), port: NODE_PORT, protocol: 6 }, FrontendKind::NodePort),
        ] {
            let config = ServiceConfig { kind, ..ServiceConfig::default() };
            services.insert(frontend, Service::new(backends.clone(), config).unwrap());
        }
        Tables {
            services,
            node: LocalNode {
                masquerade_v4: Some(node.into()),
                masquerade_v6: None,
                cluster_prefixes: vec!["198.18.128.0/17".parse().unwrap()],
                ..LocalNode::default()
            },
            ..Tables::default()
        }
    }

    /// Starts the datapath on the node's uplink and pod veths (and its link to node2, if any),
    /// over the first `local` pods and `remote` node2 pods, all serving HTTP on 8080, with
    /// `workers` workers and as many queues on the client's and pods' veths. With `gro`, the
    /// client's and pods' ends have GRO on (as skiff-cni sets it): the XDP program may forward
    /// established flows into them itself.
    fn start(io: Io, workers: u16, pods: usize, local: usize, remote: usize, gro: bool) -> LabDatapath {
        let mut topology = Topology::new().pods(pods).queues(workers);
        if remote > 0 {
            topology = topology.second_node(remote);
        }
        let mut lab = topology.build().expect("lab");
        for host in std::iter::once(lab.client()).chain(lab.pods()).filter(|_| gro) {
            host.netns.exec("ethtool", &["-K", &host.iface, "gro", "on"]).unwrap();
        }
        for pod in lab.pods().iter().chain(lab.node2_pods()).cloned().collect::<Vec<Host>>() {
            lab.serve_http(&pod, 8080).unwrap();
        }
        let (node, client) = (lab.node().clone(), lab.client().clone());
        let mut interfaces = vec![client.node_iface.clone()];
        let mut neighbors = HashMap::new();
        neighbors
            .insert(client.ipv4.into(), Neighbor { port: 0, src_mac: client.node_mac, dst_mac: client.mac });
        for pod in lab.pods() {
            neighbors.insert(
                pod.ipv4.into(),
                Neighbor { port: interfaces.len(), src_mac: pod.node_mac, dst_mac: pod.mac },
            );
            interfaces.push(pod.node_iface.clone());
        }
        if let Some(node2) = lab.node2() {
            let (ours, theirs) = (mac(&node.netns, "peer"), mac(&node2.netns, "peer"));
            for pod in lab.node2_pods() {
                neighbors.insert(
                    pod.ipv4.into(),
                    Neighbor { port: interfaces.len(), src_mac: ours, dst_mac: theirs },
                );
            }
            interfaces.push("peer".into());
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pins = matches!(io, Io::AfXdp(_))
            .then(|| format!("/sys/fs/bpf/skiff-test-datapath-{}-{n}", std::process::id()));
        let mut guard = LabDatapath { datapath: None, pins: pins.clone(), lab, next_hops: neighbors };
        let ingress = pins.map(|dir| {
            let mut ingress = Ingress::load(dir).unwrap();
            ingress.set_config(&XdpConfig::DEFAULT).unwrap();
            ingress
        });
        // Closed flows stay tracked for the whole test (not the default 10 s, which a slow run
        // outlasts): their ports are given again only after they expire, as Linux's NAT does,
        // and the checks on ports assume none did.
        let timeouts = Timeouts { tcp_closing: 600, ..Timeouts::default() };
        let config = Config { interfaces, io, workers, ct_capacity: 1 << 16, timeouts, ..Config::default() };
        let mut tables = tables(&guard.lab, local, remote);
        tables.next_hops = guard.next_hops.clone();
        let datapath = node.netns.run(move || Datapath::start(config, Some(tables), ingress)).unwrap();
        guard.datapath = Some(datapath.expect("the datapath starts"));
        guard
    }

    impl LabDatapath {
        fn datapath(&self) -> &Datapath {
            self.datapath.as_ref().expect("started")
        }

        /// `n` HTTP requests to `url`, each on its own TCP connection, from one curl; returns
        /// the answering pods' names and how often each answered.
        fn get(&self, url: &str, n: usize) -> BTreeMap<String, usize> {
            let answers = self.lab.client().netns.http_get(url, n, 5).unwrap();
            let stats = self.datapath().stats();
            assert_eq!(answers.answered(), n, "every request to {url} answered: {answers:?} {stats:?}");
            answers.by_host
        }

        /// A keep-alive connection in the background: it makes one request, prints `started`
        /// and waits for a line on its stdin, then makes 11 more on the same connection and
        /// prints the 12 answering pods' names.
        fn keep_alive(&self, url_host: &str, port: u16) -> Child {
            let script = format!(
                "import http.client, sys\nc = http.client.HTTPConnection('{url_host}', {port}, timeout=3)\nnames = []\ndef get():\n    c.request('GET', '/')\n    names.append(c.getresponse().read().decode().strip())\nget()\nprint('started', flush=True)\nsys.stdin.readline()\nfor i in range(11):\n    get()\nprint(','.join(names))\n"
            );
            self.python(&script)
        }

        /// A python3 `script` in the client, its stdin, stdout and stderr piped.
        fn python(&self, script: &str) -> Child {
            self.lab
                .client()
                .netns
                .command("python3")
                .args(["-c", script])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        }
    }

    /// Each pod's share of `answers` is within ±15% of even. curl's source ports are random, so
    /// each share is binomial: at 1000 requests over 3 pods the bound is only 3.3 standard
    /// deviations (one run in a hundred of this file would fail on chance alone), at 3000 it is
    /// 5.8 (one in ten million).
    fn assert_even(answers: &BTreeMap<String, usize>, pods: &[&str]) {
        assert_eq!(
            answers.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            pods.iter().copied().collect()
        );
        let total: usize = answers.values().sum();
        let even = total as f64 / pods.len() as f64;
        for (pod, n) in answers {
            assert!((*n as f64 - even).abs() <= 0.15 * even, "{pod} answered {n} of {total}: {answers:?}");
        }
    }

    /// The whole check for one I/O backend: 3000 requests to the ClusterIP and 3000 to
    /// the NodePort all answered and evenly spread over 3 pods; a keep-alive connection keeps
    /// its pod while the service grows to 5; new connections then reach all 5.
    fn serves_a_service(io: Io) {
        let lab = start(io, 1, 5, 3, 0, false);
        let three = ["pod0", "pod1", "pod2"];
        assert_even(&lab.get(&format!("http://{VIP}/"), 3000), &three);
        let node = lab.lab.node().ipv4;
        assert_even(&lab.get(&format!("http://{node}:{NODE_PORT}/"), 3000), &three);

        // The connection has its first answer before the service grows, and goes on after.
        let mut client = lab.keep_alive(&VIP.to_string(), 80);
        let mut stdout = BufReader::new(client.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "started", "the first request was answered");
        let datapath = lab.datapath();
        let grown = Tables { next_hops: lab.next_hops.clone(), ..tables(&lab.lab, 5, 0) };
        lab.lab.node().netns.run(|| datapath.publish(grown)).unwrap().unwrap();
        client.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let out = client.wait_with_output().unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        let names: Vec<&str> = line.trim().split(',').collect();
        assert_eq!(
            names.len(),
            12,
            "every request answered: {names:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(names.iter().all(|n| *n == names[0]), "one backend throughout: {names:?}");
        assert_eq!(lab.get(&format!("http://{VIP}/"), 100).len(), 5, "new connections reach all 5");

        let stats = lab.datapath().stats();
        assert_eq!(stats.dropped, 0, "{stats:?}");
        assert!(stats.forwarded >= 6100 * 8, "both directions of every connection: {stats:?}");
    }

    #[test]
    fn serves_a_service_over_af_xdp_native() {
        serves_a_service(Io::AfXdp(XdpMode::Native));
    }

    #[test]
    fn serves_a_service_over_af_xdp_generic() {
        serves_a_service(Io::AfXdp(XdpMode::Generic));
    }

    #[test]
    fn serves_a_service_over_af_packet() {
        serves_a_service(Io::AfPacket);
    }

    /// Two workers on NICs with two queues: a connection's packets arrive on either queue (the
    /// client's and the pods' kernels pick one by their own flow hash), and whichever worker
    /// receives one hands it to the flow's owner. Every request answered, none dropped.
    fn two_workers_on_two_queues(io: Io) {
        let lab = start(io, 2, 3, 3, 0, false);
        let three = ["pod0", "pod1", "pod2"];
        assert_eq!(lab.get(&format!("http://{VIP}/"), 300).len(), three.len());
        let node = lab.lab.node().ipv4;
        assert_eq!(lab.get(&format!("http://{node}:{NODE_PORT}/"), 300).len(), three.len());
        let stats = lab.datapath().stats();
        assert_eq!(stats.dropped, 0, "{stats:?}");
        assert!(stats.handed_off > 0, "frames arrived away from their flow's owner: {stats:?}");
        assert!(stats.forwarded >= 600 * 8, "both directions of every connection: {stats:?}");
        println!(
            "two workers: {} frames forwarded, {} handed to their owner",
            stats.forwarded, stats.handed_off
        );
    }

    #[test]
    fn two_workers_on_two_queues_over_af_xdp() {
        two_workers_on_two_queues(Io::AfXdp(XdpMode::Native));
    }

    #[test]
    fn two_workers_on_two_queues_over_af_packet() {
        two_workers_on_two_queues(Io::AfPacket);
    }

    /// NodePort to pods on another node: the worker masquerades (the pods see the node, from a
    /// SNAT port), their replies come back to the node and reach the client from the NodePort.
    fn masquerades_to_another_node(io: Io) {
        let lab = start(io, 1, 1, 0, 2, false);
        let node = lab.lab.node().ipv4;
        let answers = lab.get(&format!("http://{node}:{NODE_PORT}/"), 200);
        assert_eq!(answers.keys().map(String::as_str).collect::<Vec<_>>(), ["node2-pod0", "node2-pod1"]);
        // The flows as observers hear of them: each leaves translated (to the node's address,
        // from a SNAT port).
        let events = lab.datapath().events.try_iter();
        let flows: Vec<_> = events.filter(|e| e.kind == EventKind::Started).collect();
        assert_eq!(flows.len(), 200, "one new flow per connection");
        for f in &flows {
            assert_eq!(f.translated.src, node.to_ipv6_mapped().octets(), "leaves from the node");
            assert!(SNAT_PORTS.contains(&f.translated.src_port), "from a SNAT port: {f:?}");
        }
        // A client port the client's kernel used again (the server closed first, so the
        // client kept no TIME_WAIT) is a new connection on a finished one's tuple: it takes
        // the same hash, so the same port. Two different connections never share one.
        let connections: BTreeSet<_> = flows.iter().map(|f| (f.tuple.src, f.tuple.src_port)).collect();
        let ports: BTreeSet<([u8; 16], u16)> =
            flows.iter().map(|f| (f.translated.dst, f.translated.src_port)).collect();
        assert_eq!(ports.len(), connections.len(), "no two connections to one backend share a port");
        let stats = lab.datapath().stats();
        assert_eq!((stats.dropped, stats.drops_of(DropReason::NatPortExhausted)), (0, 0), "{stats:?}");
    }

    #[test]
    fn masquerades_to_another_node_over_af_xdp() {
        masquerades_to_another_node(Io::AfXdp(XdpMode::Native));
    }

    #[test]
    fn masquerades_to_another_node_over_af_packet() {
        masquerades_to_another_node(Io::AfPacket);
    }

    /// An established connection through the ClusterIP is carried by the XDP program alone:
    /// its handshake goes through the worker, then 50 requests and their answers on the same
    /// connection leave the worker's counters flat while the program's flow table forwards
    /// them; its close goes back through the worker.
    #[test]
    fn an_established_flow_is_forwarded_at_the_nic_alone() {
        let lab = start(Io::AfXdp(XdpMode::Native), 1, 1, 1, 0, true);
        let script = format!(
            "import http.client, sys\nc = http.client.HTTPConnection('{VIP}', 80, timeout=3)\ndef get():\n    c.request('GET', '/')\n    return c.getresponse().read().decode().strip()\nprint(get(), flush=True)\nsys.stdin.readline()\nprint(','.join(get() for _ in range(50)), flush=True)\nsys.stdin.readline()\nc.close()\n"
        );
        let mut client = lab.python(&script);
        let (mut stdin, mut stdout) =
            (client.stdin.take().unwrap(), BufReader::new(client.stdout.take().unwrap()));
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "pod0", "the first request answered");
        let forwarded = |lab: &LabDatapath| {
            let paths = lab.datapath().flow_paths().unwrap();
            paths.iter().find(|(p, _)| *p == FlowPath::Forwarded).map_or(0, |(_, c)| c.packets)
        };
        let (before, at_nic) = (lab.datapath().stats(), forwarded(&lab));
        assert_eq!(before.offloaded, 1, "offloaded once established: {before:?}");
        stdin.write_all(b"go\n").unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim().split(',').filter(|n| *n == "pod0").count(),
            50,
            "every request answered: {line}"
        );
        let (after, by_nic) = (lab.datapath().stats(), forwarded(&lab) - at_nic);
        assert_eq!(after.received, before.received, "no packet reached the worker: {after:?}");
        assert!(by_nic >= 100, "each request and answer forwarded at the NIC: {by_nic}");
        stdin.write_all(b"close\n").unwrap();
        assert!(client.wait().unwrap().success());
        let closed = lab.datapath().stats();
        assert!(closed.received > after.received, "the close went through the worker: {closed:?}");
        assert_eq!((closed.taken_back, closed.dropped), (1, 0), "{closed:?}");
        println!(
            "50 requests on an offloaded connection: {by_nic} packets forwarded at the NIC, none by the worker"
        );
    }
}
