//! AF_XDP for real on lab veths: skiff_xdp_ingress redirects a service frame into a bound
//! socket (the XDP_REDIRECT path itself, not just the decision), and a frame sent through a
//! socket reaches a pod's socket.

mod privileged {
    use std::{
        net::{Ipv4Addr, UdpSocket},
        time::Duration,
    };

    use skiff_common::{Verdict as Action, config::XdpConfig, lb::ServiceValue};
    use skiff_fastpath::io::afxdp::XskPort;
    use skiff_lab::Topology;
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

    /// curl through skiff: the client's requests to a ClusterIP-style VIP are redirected by XDP
    /// to the worker, DNATed to one of 3 pods' HTTP servers and sent on the pod's veth; the
    /// replies come back on the pod veths, are steered to the worker by the flows it mirrored
    /// into XDP, reverse-NATed and sent to the client.
    #[test]
    fn curl_to_a_service_goes_through_the_af_xdp_worker() {
        use std::{
            collections::HashMap as StdMap,
            sync::{
                Arc,
                atomic::{AtomicBool, Ordering},
            },
        };

        use hashbrown::HashMap;
        use skiff_common::{
            conntrack::{CtEntry, CtKey4},
            lb::BackendId,
        };
        use skiff_fastpath::{
            conntrack::Timeouts,
            engine::{Engine, Frontend, Service, Tables},
            lb::maglev::Weighted,
            worker::{Neighbor, Worker},
        };

        let mut lab = Topology::new().pods(3).build().expect("lab");
        for pod in lab.pods().to_vec() {
            lab.serve_http(&pod, 8080).unwrap();
        }
        let (node, client, pods) = (lab.node().clone(), lab.client().clone(), lab.pods().to_vec());
        let dir = format!("/sys/fs/bpf/skiff-test-worker-{}", std::process::id());
        let stop = Arc::new(AtomicBool::new(false));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut ingress = Ingress::load(&dir).unwrap();
            ingress.set_config(&XdpConfig::DEFAULT).unwrap();
            ingress.add_service(VIP.into(), 80, 6, ServiceValue::default()).unwrap();
            // Ports: the uplink, then each pod's veth; XDP on each, a socket on each.
            let ifaces: Vec<String> = std::iter::once(client.node_iface.clone())
                .chain(pods.iter().map(|p| p.node_iface.clone()))
                .collect();
            let mut ports = Vec::new();
            for iface in &ifaces {
                node.netns.run(|| ingress.attach(iface, XdpMode::Native)).unwrap().unwrap();
                let port = node.netns.run(|| XskPort::bind(iface, 0, 256)).unwrap().unwrap();
                ingress.set_worker(ifindex(&node.netns, iface), 0, port.fd()).unwrap();
                ports.push(port);
            }
            let mut neighbors = HashMap::new();
            neighbors.insert(
                client.ipv4.into(),
                Neighbor { port: 0, src_mac: client.node_mac, dst_mac: client.mac },
            );
            for (i, pod) in pods.iter().enumerate() {
                neighbors.insert(
                    pod.ipv4.into(),
                    Neighbor { port: i + 1, src_mac: pod.node_mac, dst_mac: pod.mac },
                );
            }
            let backends = pods
                .iter()
                .zip(1..)
                .map(|(p, id)| Weighted { id: BackendId(id), addr: p.ipv4.into(), port: 8080, weight: 1 })
                .collect();
            let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 6 };
            let tables =
                Tables { services: [(frontend, Service::new(backends, 251).unwrap())].into_iter().collect() };
            let engine = Engine::new(Arc::new(tables), 4096, Timeouts::default());
            let mut worker = Worker::new(engine, ports, neighbors);

            let worker_stop = stop.clone();
            let running = std::thread::spawn(move || {
                while !worker_stop.load(Ordering::Relaxed) {
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
            });

            let mut answers: StdMap<String, u32> = StdMap::new();
            for _ in 0..30 {
                let out = client
                    .netns
                    .exec("curl", &["-sS", "--max-time", "3", &format!("http://{VIP}/")])
                    .unwrap();
                *answers.entry(String::from_utf8_lossy(&out.stdout).trim().to_owned()).or_default() += 1;
            }
            stop.store(true, Ordering::Relaxed);
            let stats = running.join().unwrap();
            assert_eq!(answers.values().sum::<u32>(), 30, "every request answered: {answers:?}");
            assert_eq!(answers.len(), 3, "all three pods answered: {answers:?}");
            assert!(answers.keys().all(|k| k.starts_with("pod")), "{answers:?}");
            assert_eq!((stats.dropped, stats.no_neighbor, stats.not_ours), (0, 0, 0), "{stats:?}");
            assert!(
                stats.forwarded >= 30 * 8,
                "both directions of 30 connections went through the worker: {stats:?}"
            );
        }));
        stop.store(true, Ordering::Relaxed);
        bpffs::remove_pins(std::path::Path::new(&dir)).unwrap();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
