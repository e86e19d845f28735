//! AF_XDP for real on lab veths: skiff_xdp_ingress redirects a service frame into a bound
//! socket (the XDP_REDIRECT path itself, not just the decision), and a frame sent through a
//! socket reaches a pod's socket.

mod privileged {
    use std::{
        collections::HashMap as StdMap,
        net::{Ipv4Addr, UdpSocket},
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    use hashbrown::HashMap;
    use skiff_common::{
        conntrack::{CtEntry, CtKey4},
        lb::BackendId,
    };
    use skiff_fastpath::{
        conntrack::Timeouts,
        engine::{Engine, Frontend, Node, Service, ServiceConfig, SharedTables, Tables},
        lb::Backend,
        worker::{Neighbor, Stats, Worker},
    };

    use skiff_common::{Verdict as Action, config::XdpConfig, lb::ServiceValue};
    use skiff_fastpath::io::afxdp::XskPort;
    use skiff_lab::{Lab, Topology};
    use skiff_testkit::eth;
    use skiff_wire::{ethernet::Mac, layers};
    use skiff_xdp::{Ingress, XdpMode, bpffs};

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

    #[test]
    fn a_service_frame_is_redirected_into_the_socket() {
        let lab = Topology::new().build().expect("lab");
        let (node, client) = (lab.node().clone(), lab.client().clone());
        let dir = format!("/sys/fs/bpf/skiff-test-xsk-{}", std::process::id());
        let result = std::panic::catch_unwind(|| {
            let mut ingress = Ingress::load(&dir).unwrap();
            ingress.set_config(&XdpConfig::DEFAULT).unwrap();
            ingress.add_service(VIP.into(), 80, 17, ServiceValue::default()).unwrap();
            let iface = client.node_iface.clone();
            node.netns.run(|| ingress.attach(&iface, XdpMode::Native)).unwrap().unwrap();
            let mut port = node.netns.run(|| XskPort::bind(&iface, 0, 64)).unwrap().unwrap();
            let ifindex = String::from_utf8(
                node.netns.exec("cat", &[&format!("/sys/class/net/{iface}/ifindex")]).unwrap().stdout,
            )
            .unwrap();
            ingress.set_worker(ifindex.trim().parse().unwrap(), 0, port.fd()).unwrap();

            let sender = client.netns.run(|| UdpSocket::bind((client.ipv4, 0))).unwrap().unwrap();
            let mut got = Vec::new();
            for _ in 0..20 {
                sender.send_to(b"to the worker", (VIP, 80)).unwrap();
                port.recv(100, |frame| got.push(frame.to_vec())).unwrap();
                if !got.is_empty() {
                    break;
                }
            }
            let frame = got.first().expect("a frame reached the AF_XDP socket");
            let p = layers::parse(frame).unwrap();
            let flow = p.flow(frame).unwrap();
            assert_eq!((flow.dst, flow.dst_port), (VIP.into(), 80));
            assert!(frame.ends_with(b"to the worker"));
            let redirected =
                ingress.verdicts().unwrap().into_iter().find(|(v, _)| *v == Action::Redirect).unwrap().1;
            assert!(redirected.packets >= 1);
            assert_eq!(ingress.no_worker().unwrap().packets, 0);
        });
        bpffs::remove_pins(std::path::Path::new(&dir)).unwrap();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn a_frame_sent_through_a_socket_reaches_a_pod() {
        let lab = Topology::new().pods(1).build().expect("lab");
        let (node, pod, client) = (lab.node().clone(), lab.pods()[0].clone(), lab.client().clone());
        let receiver = pod.netns.run(|| UdpSocket::bind((pod.ipv4, 0))).unwrap().unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = receiver.local_addr().unwrap().port();
        let iface = pod.node_iface.clone();
        let mut port = node.netns.run(|| XskPort::bind(&iface, 0, 64)).unwrap().unwrap();
        let frame = eth()
            .src_mac(Mac(pod.node_mac))
            .dst_mac(Mac(pod.mac))
            .ipv4(client.ipv4, pod.ipv4)
            .udp(40000, to)
            .payload(b"sent through AF_XDP")
            .build();
        port.send(&frame).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = receiver.recv_from(&mut buf).expect("the pod received the frame");
        assert_eq!(
            (&buf[..n], from.to_string()),
            (&b"sent through AF_XDP"[..], format!("{}:40000", client.ipv4))
        );
    }

    /// The interface's index in its namespace.
    fn ifindex(ns: &skiff_lab::Netns, iface: &str) -> u32 {
        let out = ns.exec("cat", &[&format!("/sys/class/net/{iface}/ifindex")]).unwrap();
        String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
    }

    /// A node whose uplink and pod veths carry skiff_xdp_ingress and an AF_XDP socket each,
    /// with a worker thread running the engine for `VIP:80` over the first `backends` pods
    /// (HTTP on 8080). Stops and cleans up on drop.
    struct Datapath {
        lab: Lab,
        dir: String,
        shared: SharedTables,
        stop: Arc<AtomicBool>,
        worker: Option<std::thread::JoinHandle<Stats>>,
    }

    fn tables_for(pods: &[skiff_lab::Host]) -> Tables {
        let backends = pods
            .iter()
            .zip(1..)
            .map(|(p, id)| Backend {
                id: BackendId(id),
                addr: p.ipv4.into(),
                port: 8080,
                weight: 1,
                local: true,
            })
            .collect();
        let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 6 };
        let service = Service::new(backends, ServiceConfig::default()).unwrap();
        Tables { services: [(frontend, service)].into_iter().collect(), node: Node::default() }
    }

    impl Datapath {
        fn start(mode: XdpMode, pods: usize, backends: usize) -> Datapath {
            let mut lab = Topology::new().pods(pods).build().expect("lab");
            for pod in lab.pods().to_vec() {
                lab.serve_http(&pod, 8080).unwrap();
            }
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = format!("/sys/fs/bpf/skiff-test-worker-{}-{n}", std::process::id());
            let (node, client, all) = (lab.node().clone(), lab.client().clone(), lab.pods().to_vec());
            let shared = SharedTables::new(tables_for(&all[..backends]));
            let stop = Arc::new(AtomicBool::new(false));
            let mut datapath =
                Datapath { lab, dir: dir.clone(), shared: shared.clone(), stop: stop.clone(), worker: None };
            let mut ingress = Ingress::load(&dir).unwrap();
            ingress.set_config(&XdpConfig::DEFAULT).unwrap();
            ingress.add_service(VIP.into(), 80, 6, ServiceValue::default()).unwrap();
            let ifaces: Vec<String> = std::iter::once(client.node_iface.clone())
                .chain(all.iter().map(|p| p.node_iface.clone()))
                .collect();
            let mut ports = Vec::new();
            for iface in &ifaces {
                assert_eq!(node.netns.run(|| ingress.attach(iface, mode)).unwrap().unwrap(), mode);
                let port = node.netns.run(|| XskPort::bind(iface, 0, 256)).unwrap().unwrap();
                ingress.set_worker(ifindex(&node.netns, iface), 0, port.fd()).unwrap();
                ports.push(port);
            }
            let mut neighbors = HashMap::new();
            neighbors.insert(
                client.ipv4.into(),
                Neighbor { port: 0, src_mac: client.node_mac, dst_mac: client.mac },
            );
            for (i, pod) in all.iter().enumerate() {
                neighbors.insert(
                    pod.ipv4.into(),
                    Neighbor { port: i + 1, src_mac: pod.node_mac, dst_mac: pod.mac },
                );
            }
            let engine = Engine::new(shared.current(), 1 << 16, Timeouts::default());
            let mut worker = Worker::new(engine, ports, neighbors);
            datapath.worker = Some(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    worker.engine().refresh(&shared);
                    worker.poll(1, 0, |reply| {
                        let key = CtKey4 {
                            saddr: reply.src[12..].try_into().unwrap(),
                            daddr: reply.dst[12..].try_into().unwrap(),
                            sport: reply.src_port.to_be(),
                            dport: reply.dst_port.to_be(),
                            proto: reply.protocol,
                            _pad: [0; 3],
                        };
                        ingress
                            .track_v4(key, CtEntry { flags: CtEntry::NAT_DNAT, ..CtEntry::default() })
                            .unwrap();
                    });
                }
                worker.stats
            }));
            datapath
        }

        fn curl(&self) -> String {
            let out = self
                .lab
                .client()
                .netns
                .exec("curl", &["-sS", "--max-time", "3", &format!("http://{VIP}/")])
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }

        /// Stops the worker and returns what it did.
        fn finish(mut self) -> Stats {
            self.stop.store(true, Ordering::Relaxed);
            self.worker.take().unwrap().join().unwrap()
        }
    }

    impl Drop for Datapath {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(w) = self.worker.take() {
                let _ = w.join();
            }
            let _ = bpffs::remove_pins(std::path::Path::new(&self.dir));
        }
    }

    /// curl through skiff: requests to a VIP that exists nowhere in the kernel are redirected
    /// by XDP to the worker, DNATed to a pod's HTTP server and sent on the pod's veth; replies
    /// come back on the pod veths, steered to the worker by the flows it mirrored into XDP,
    /// reverse-NATed and sent to the client. Every request is answered, by every backend; with
    /// `check_spread`, each backend's share is within 15% of even (curl's source ports are
    /// random, so this needs enough requests: at 1000 the bound is 3.3 standard deviations).
    fn requests_are_answered(mode: XdpMode, requests: u32, check_spread: bool) {
        let datapath = Datapath::start(mode, 3, 3);
        let mut answers: StdMap<String, u32> = StdMap::new();
        for _ in 0..requests {
            *answers.entry(datapath.curl()).or_default() += 1;
        }
        let stats = datapath.finish();
        assert_eq!(answers.values().sum::<u32>(), requests);
        assert_eq!(
            answers.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
            ["pod0", "pod1", "pod2"].map(String::from).into()
        );
        let even = f64::from(requests) / 3.0;
        for (pod, n) in answers.iter().filter(|_| check_spread) {
            assert!(
                (f64::from(*n) - even).abs() <= 0.15 * even,
                "{pod} answered {n} of {requests}: {answers:?}"
            );
        }
        assert_eq!((stats.dropped, stats.no_neighbor, stats.not_ours), (0, 0, 0), "{stats:?}");
        assert!(stats.forwarded >= u64::from(requests) * 8, "both directions through the worker: {stats:?}");
    }

    #[test]
    fn a_thousand_requests_through_the_worker_in_native_mode() {
        requests_are_answered(XdpMode::Native, 1000, true);
    }

    #[test]
    fn requests_through_the_worker_in_generic_mode() {
        requests_are_answered(XdpMode::Generic, 300, false);
    }

    /// A keep-alive HTTP connection keeps its backend while the service grows from 3 to 5
    /// backends under it.
    #[test]
    fn a_long_lived_connection_survives_a_table_update() {
        let datapath = Datapath::start(XdpMode::Native, 5, 3);
        let script = format!(
            "import http.client, time\nc = http.client.HTTPConnection('{VIP}', 80, timeout=3)\nnames = []\nfor i in range(12):\n    c.request('GET', '/')\n    names.append(c.getresponse().read().decode().strip())\n    time.sleep(0.1)\nprint(','.join(names))\n"
        );
        let client = datapath.lab.client().netns.command("python3").args(["-c", &script]).output_async();
        std::thread::sleep(Duration::from_millis(500));
        datapath.shared.publish(tables_for(datapath.lab.pods()));
        let out = client.wait_with_output().unwrap();
        let names = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let names: Vec<&str> = names.split(',').collect();
        assert_eq!(
            names.len(),
            12,
            "every request on the connection answered: {names:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(names.iter().all(|n| *n == names[0]), "one backend throughout: {names:?}");
        // New connections now reach the new backends too.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..60 {
            seen.insert(datapath.curl());
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
        datapath.finish();
    }

    trait OutputAsync {
        fn output_async(&mut self) -> std::process::Child;
    }

    impl OutputAsync for std::process::Command {
        fn output_async(&mut self) -> std::process::Child {
            self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        }
    }
}
