//! The flow table at the NIC against the worker, on the same frames: a worker over memory
//! ports (standing for interface 1) writes its flows into a loaded `skiff_xdp_ingress`'s table
//! through the datapath's own `NicFlows`, and each frame is run through the program
//! (`BPF_PROG_TEST_RUN`) and through the worker. Once a flow is established, the program
//! forwards both directions itself and its output is byte for byte the worker's; what is not
//! plain, a closing connection and a flow whose backend left go to the worker.

mod privileged {
    use std::{
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        path::PathBuf,
        sync::atomic::{AtomicU32, Ordering},
    };

    use skiff_common::{
        XdpAction,
        config::XdpConfig,
        conntrack::{CT_CAPACITY, CachedFlow, CtEntry, CtKey, CtKey4, FlowPath, cache_slot},
        lb::{BackendId, FrontendKind},
    };
    use skiff_engine::{
        conntrack::Timeouts,
        engine::Engine,
        lb::Backend,
        tables::{Frontend, Neighbor, Service, ServiceConfig, SharedTables, Tables},
    };
    use skiff_fastpath::{io::memory::MemoryPort, nic::NicFlows, worker::Worker};
    use skiff_testkit::{Builder, eth};
    use skiff_xdp::{FlowTable, Ingress, bpffs};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
    const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 10);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
    const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x128, 0, 0, 0, 0, 0, 0x10);
    /// The node's MACs towards the client (port 0) and the pod (port 1), and theirs.
    const NODE_UPLINK: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const NODE_LXC: [u8; 6] = [2, 0, 0, 0, 1, 1];
    const POD_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
    /// Loopback: an interface every namespace has, for the devmap.
    const IFINDEX: u32 = 1;

    /// The service (TCP 80 → 8080, UDP 53 → 5353, both families, its IPv4 backend `pod`,
    /// numbered `backend_id`) and the two next hops.
    fn tables(pod: Ipv4Addr, backend_id: u32) -> Tables {
        let mut services = hashbrown::HashMap::new();
        for (vip, pod) in [(IpAddr::from(VIP), IpAddr::from(pod)), (VIP6.into(), POD6.into())] {
            for (port, target, protocol) in [(80, 8080, 6), (53, 5353, 17)] {
                let backend =
                    Backend { id: BackendId(backend_id), addr: pod, port: target, weight: 1, local: true };
                let config = ServiceConfig { kind: FrontendKind::ClusterIp, ..ServiceConfig::default() };
                services.insert(
                    Frontend { addr: vip, port, protocol },
                    Service::new(vec![backend], config).unwrap(),
                );
            }
        }
        let client = Neighbor { port: 0, src_mac: NODE_UPLINK, dst_mac: CLIENT_MAC };
        let pod = Neighbor { port: 1, src_mac: NODE_LXC, dst_mac: POD_MAC };
        let next_hops =
            [(CLIENT.into(), client), (CLIENT6.into(), client), (POD.into(), pod), (POD6.into(), pod)];
        Tables { services, next_hops: next_hops.into_iter().collect(), ..Tables::default() }
    }

    /// A loaded program, a worker over two memory ports standing for interface 1, and the
    /// datapath's `NicFlows` between them; the pins go on drop.
    struct Bench {
        dir: PathBuf,
        ingress: Option<Ingress>,
        worker: Worker<MemoryPort>,
        flows: NicFlows,
        shared: SharedTables,
    }

    impl Bench {
        fn new() -> Bench {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = PathBuf::from(format!("/sys/fs/bpf/skiff-test-offload-{}-{n}", std::process::id()));
            let ingress = Ingress::load(&dir);
            let shared = SharedTables::new(tables(POD, 1));
            let engine = Engine::new(shared.current(), 1024, Timeouts::default());
            let ports = vec![MemoryPort::with_ifindex(IFINDEX), MemoryPort::with_ifindex(IFINDEX)];
            let mut bench = Bench {
                dir,
                ingress: None,
                worker: Worker::new(engine, ports),
                flows: NicFlows::new(None),
                shared,
            };
            let mut ingress = ingress.expect("the verifier accepts skiff_xdp_ingress");
            ingress.set_config(&XdpConfig::DEFAULT).unwrap();
            ingress.set_tx_port(IFINDEX, true).unwrap();
            bench.flows = NicFlows::new(Some(ingress.flow_table().unwrap()));
            bench.ingress = Some(ingress);
            bench
        }

        fn ingress(&mut self) -> &mut Ingress {
            self.ingress.as_mut().expect("loaded")
        }

        fn table(&self) -> FlowTable {
            FlowTable::open(&self.dir).unwrap()
        }

        /// The frame the worker sends for `frame` arriving on `port`, if one.
        fn worker(&mut self, port: usize, frame: &[u8]) -> Option<Vec<u8>> {
            self.worker.port_mut(port).unwrap().push(frame);
            self.worker.poll(0, 1, &mut self.flows);
            let mut out = Vec::new();
            for p in self.worker.ports_mut() {
                p.drain_sent(|f| out.push(f.to_vec()));
            }
            assert!(out.len() <= 1, "one frame in, at most one out");
            out.pop()
        }

        /// What the program does with `frame`: its action, its output, and where the flow
        /// table counted it.
        fn nic(&mut self, frame: &[u8]) -> (u32, Vec<u8>, Option<FlowPath>) {
            let before = self.ingress().flow_paths().unwrap();
            let run = self.ingress().test_run(frame, 1).unwrap();
            let after = self.ingress().flow_paths().unwrap();
            let path = after.iter().zip(&before).find(|(a, b)| a.1.packets != b.1.packets).map(|(a, _)| a.0);
            (run.action, run.output, path)
        }
    }

    impl Drop for Bench {
        fn drop(&mut self) {
            drop(self.ingress.take());
            bpffs::remove_pins(&self.dir)
                .unwrap_or_else(|e| eprintln!("removing {}: {e}", self.dir.display()));
        }
    }

    /// A connection's or a datagram flow's frames: those that open it, then data both ways.
    struct Case {
        name: &'static str,
        /// (port it arrives on, frame).
        opening: Vec<(usize, Vec<u8>)>,
        data: Vec<(usize, Vec<u8>)>,
    }

    fn cases() -> Vec<Case> {
        let v4 = |from: Ipv4Addr, to: Ipv4Addr| eth().ipv4(from, to);
        let v6 = |from: Ipv6Addr, to: Ipv6Addr| eth().ipv6(from, to);
        let tcp = |name, to_vip: Builder, from_pod: Builder| Case {
            name,
            opening: vec![
                (0, to_vip.clone().tcp(40000, 80).seq(1).syn().build()),
                (1, from_pod.clone().tcp(8080, 40000).seq(9).syn().ack(2).build()),
                (0, to_vip.clone().tcp(40000, 80).seq(2).ack(10).build()),
            ],
            data: vec![
                (0, to_vip.tcp(40000, 80).seq(2).ack(10).psh().payload(b"GET / HTTP/1.1\r\n\r\n").build()),
                (1, from_pod.tcp(8080, 40000).seq(10).ack(20).psh().payload(b"HTTP/1.1 200 OK").build()),
            ],
        };
        let udp = |name, to_vip: Builder, from_pod: Builder| Case {
            name,
            opening: vec![
                (0, to_vip.clone().udp(5000, 53).payload(b"query").build()),
                (1, from_pod.clone().udp(5353, 5000).payload(b"answer").build()),
            ],
            data: vec![
                (0, to_vip.udp(5000, 53).payload(b"another query").build()),
                (1, from_pod.udp(5353, 5000).payload(b"another answer").build()),
            ],
        };
        vec![
            tcp("TCP over IPv4", v4(CLIENT, VIP), v4(POD, CLIENT)),
            udp("UDP over IPv4", v4(CLIENT, VIP), v4(POD, CLIENT)),
            tcp("TCP over IPv6", v6(CLIENT6, VIP6), v6(POD6, CLIENT6)),
            udp("UDP over IPv6", v6(CLIENT6, VIP6), v6(POD6, CLIENT6)),
        ]
    }

    /// Runs a case's opening frames through the worker (the program hands each to it).
    fn open(bench: &mut Bench, case: &Case) {
        for (port, frame) in &case.opening {
            let (_, _, path) = bench.nic(frame);
            assert_ne!(path, Some(FlowPath::Forwarded), "{}: an opening frame is the worker's", case.name);
            assert!(bench.worker(*port, frame).is_some(), "{}: the worker forwards it", case.name);
        }
    }

    #[test]
    fn an_offloaded_flow_leaves_the_nic_as_the_worker_sends_it() {
        let mut bench = Bench::new();
        for (n, case) in cases().iter().enumerate() {
            open(&mut bench, case);
            assert_eq!(
                bench.worker.stats.offloaded,
                n as u64 + 1,
                "{}: offloaded once established",
                case.name
            );
            for (port, frame) in &case.data {
                let (action, at_nic, path) = bench.nic(frame);
                assert_eq!(
                    (action, path),
                    (XdpAction::Redirect.code(), Some(FlowPath::Forwarded)),
                    "{}: forwarded at the NIC",
                    case.name
                );
                let by_worker = bench.worker(*port, frame).expect("the worker forwards it too");
                assert_eq!(at_nic, by_worker, "{}: the same bytes as the worker's", case.name);
            }
        }
        // The table recorded what it forwarded: one packet of each direction, just now.
        let tcp = &cases()[0];
        let (_, arrived, _) = bench.nic(&tcp.data[0].1);
        assert_eq!(arrived.len(), tcp.data[0].1.len());
        let key = CtKey::V4(CtKey4::new(CLIENT.octets(), 40000, VIP.octets(), 80, 6));
        let entry = bench.table().get(key).expect("the client's direction");
        assert_eq!((entry.packets, entry.bytes), (2, 2 * tcp.data[0].1.len() as u64));
        let seen = bench.table().seen_ns(&entry).expect("a time recorded");
        let ago = skiff_xdp::monotonic_ns().abs_diff(seen);
        assert!(ago < 100_000_000, "forwarded {ago} ns from now, in the kernel's ticks");
    }

    #[test]
    fn what_is_not_plain_goes_to_the_worker() {
        let mut bench = Bench::new();
        let case = &cases()[0];
        open(&mut bench, case);
        let data = |b: Builder| b.tcp(40000, 80).seq(2).ack(10).payload(b"x").build();
        let worker = Some(FlowPath::NotSimple);
        // IPv4 options: four bytes (NOP, NOP, NOP, end) after the fixed header.
        let mut with_options = data(eth().ipv4(CLIENT, VIP));
        with_options.splice(34..34, [1, 1, 1, 0]);
        with_options[14] = 0x46;
        let total = u16::from_be_bytes([with_options[16], with_options[17]]) + 4;
        with_options[16..18].copy_from_slice(&total.to_be_bytes());
        let not_plain = [
            ("IP options", with_options, worker),
            ("a TTL about to run out", data(eth().ipv4(CLIENT, VIP).ttl(1)), worker),
            ("a VLAN tag", data(eth().vlan(7).ipv4(CLIENT, VIP)), worker),
            ("a first fragment", data(eth().ipv4(CLIENT, VIP).fragment4(0, true, 1)), worker),
        ];
        for (what, frame, expected) in not_plain {
            let (action, out, path) = bench.nic(&frame);
            // No AF_XDP socket is bound in a test run: to the worker shows as a pass.
            assert_eq!((action, path), (XdpAction::Pass.code(), expected), "{what}");
            assert_eq!(out, frame, "{what}: untouched");
        }
        let plain = data(eth().ipv4(CLIENT, VIP));
        bench.ingress().set_tx_port(IFINDEX, false).unwrap();
        assert_eq!(bench.nic(&plain).2, Some(FlowPath::NoDevice), "an output that takes no XDP frames");
        bench.ingress().set_tx_port(IFINDEX, true).unwrap();
        assert_eq!(bench.nic(&plain).2, Some(FlowPath::Forwarded));
        // A FIN goes to the worker, which takes the closing connection back.
        let fin = eth().ipv4(CLIENT, VIP).tcp(40000, 80).seq(3).ack(10).fin().build();
        assert_eq!(bench.nic(&fin).2, Some(FlowPath::TcpControl));
        bench.worker(0, &fin).expect("forwarded by the worker");
        assert_eq!(bench.worker.stats.taken_back, 1);
        let (action, _, path) = bench.nic(&plain);
        assert_eq!(
            (action, path),
            (XdpAction::Pass.code(), None),
            "the service's path again, not the table's"
        );
        let reply = eth().ipv4(POD, CLIENT).tcp(8080, 40000).seq(10).ack(4).fin().build();
        assert_eq!(bench.nic(&reply).2, Some(FlowPath::Worker), "its replies steered to the worker");
    }

    #[test]
    fn a_flow_whose_backend_is_removed_is_taken_back() {
        let mut bench = Bench::new();
        let case = &cases()[1];
        open(&mut bench, case);
        assert_eq!(bench.nic(&case.data[0].1).2, Some(FlowPath::Forwarded));
        // Its backend numbered otherwise (a restarted agent): still the same backend.
        bench.shared.publish(tables(POD, 7));
        bench.worker.refresh(&bench.shared, &mut bench.flows);
        assert_eq!(bench.worker.stats.taken_back, 0);
        assert_eq!(bench.nic(&case.data[0].1).2, Some(FlowPath::Forwarded));
        // The same service with another backend: the flow's is gone.
        bench.shared.publish(tables(Ipv4Addr::new(198, 18, 128, 11), 2));
        bench.worker.refresh(&bench.shared, &mut bench.flows);
        assert_eq!(bench.worker.stats.taken_back, 1);
        assert_eq!(bench.nic(&case.data[1].1).2, Some(FlowPath::Worker), "the reply back to the worker");
        assert_eq!(bench.nic(&case.data[0].1).2, None, "the client's direction is the service's again");
        // Tables that keep it gone change nothing.
        bench.shared.publish(tables(Ipv4Addr::new(198, 18, 128, 11), 2));
        bench.worker.refresh(&bench.shared, &mut bench.flows);
        assert_eq!(bench.worker.stats.taken_back, 1);
    }

    /// New tables that leave an offloaded flow as it was cost it no write (nor a read): a
    /// table change rechecks every flow at the NIC. Each entry is marked where the worker
    /// writes nothing of its own; a rewrite would clear the mark.
    #[test]
    fn tables_that_leave_a_flow_alone_do_not_rewrite_it() {
        let mut bench = Bench::new();
        let case = &cases()[1];
        open(&mut bench, case);
        let mut table = bench.table();
        let marked = |e: CtEntry| CtEntry { _pad: [0xaa; 2], ..e };
        let entries = table.entries();
        assert_eq!(entries.len(), 2, "both directions at the NIC");
        for (key, entry) in &entries {
            table.insert(*key, &marked(*entry)).unwrap();
        }
        bench.shared.publish(tables(POD, 7));
        bench.worker.refresh(&bench.shared, &mut bench.flows);
        for (key, entry) in &entries {
            assert_eq!(table.get(*key), Some(marked(*entry)), "not written again");
        }
        // A next hop that moves is written.
        let mut moved = tables(POD, 7);
        moved.next_hops.get_mut(&IpAddr::from(POD)).unwrap().dst_mac = [2, 0, 0, 0, 0, 0x99];
        bench.shared.publish(moved);
        bench.worker.refresh(&bench.shared, &mut bench.flows);
        let now = table.entries();
        assert!(now.iter().all(|(_, e)| e._pad == [0; 2]), "both rewritten: {now:?}");
        assert!(now.iter().any(|(_, e)| e.dst_mac == [2, 0, 0, 0, 0, 0x99]), "to the new MAC");
        assert_eq!(bench.worker.stats.taken_back, 0);
    }

    /// A direction whose flow-cache slot another holds lives in the hash map and is
    /// forwarded from there, and stays there (never in both) when the slot frees.
    #[test]
    fn a_direction_whose_cache_slot_is_taken_is_forwarded_from_the_hash_map() {
        let mut bench = Bench::new();
        let mut table = bench.table();
        let case = &cases()[0];
        let client = CtKey4::new(CLIENT.octets(), 40000, VIP.octets(), 80, 6);
        let reply = CtKey4::new(POD.octets(), 8080, CLIENT.octets(), 40000, 6);
        // Directions of other flows that take both slots first.
        let holders: Vec<CtKey> = [client, reply]
            .iter()
            .map(|key| {
                let other = |n: u32| CtKey4::new(n.to_be_bytes(), 1, [10, 0, 0, 1], 2, 17);
                let holder = (0..).map(other).find(|o| cache_slot(o) == cache_slot(key)).unwrap();
                table.insert(CtKey::V4(holder), &CtEntry::default()).unwrap();
                CtKey::V4(holder)
            })
            .collect();
        open(&mut bench, case);
        assert_eq!(bench.worker.stats.offloaded, 1, "offloaded into the hash map");
        let forwarded = |bench: &mut Bench, when: &str| {
            for (port, frame) in &case.data {
                let (action, at_nic, path) = bench.nic(frame);
                assert_eq!((action, path), (XdpAction::Redirect.code(), Some(FlowPath::Forwarded)), "{when}");
                assert_eq!(Some(at_nic), bench.worker(*port, frame), "{when}: as the worker sends it");
            }
        };
        forwarded(&mut bench, "beside the slots' holders");
        assert!(holders.iter().all(|h| table.get(*h).is_some()), "the holders keep their slots");
        for holder in &holders {
            table.remove(*holder).unwrap();
        }
        forwarded(&mut bench, "with the slots free");
        // Rewritten where it is: one entry for the direction, the new one.
        let entry = table.get(CtKey::V4(client)).unwrap();
        table.insert(CtKey::V4(client), &CtEntry { packets: 99, ..entry }).unwrap();
        let entries = table.entries();
        let found: Vec<_> = entries.iter().filter(|(k, _)| *k == CtKey::V4(client)).collect();
        assert_eq!(found.len(), 1, "in one place: {found:?}");
        assert_eq!(found[0].1.packets, 99);
        forwarded(&mut bench, "after a rewrite");
    }

    /// A flow-cache slot an agent killed mid-write left locked (its sequence odd) sends its
    /// direction's packets to the worker, counted, untouched; the next agent frees it.
    #[test]
    fn a_cache_slot_left_locked_goes_to_the_worker_until_freed() {
        use aya::maps::{Array, Map, MapData};
        let mut bench = Bench::new();
        let case = &cases()[1];
        open(&mut bench, case);
        let frame = &case.data[0].1;
        assert_eq!(bench.nic(frame).2, Some(FlowPath::Forwarded));
        let pin = bench.dir.join(skiff_common::maps::FLOW_CACHE_V4);
        let map = Map::from_map_data(MapData::from_pin(pin).unwrap()).unwrap();
        let mut cache: Array<MapData, [u8; size_of::<CachedFlow<CtKey4>>()]> = map.try_into().unwrap();
        let slot = cache_slot(&CtKey4::new(CLIENT.octets(), 5000, VIP.octets(), 53, 17));
        let mut raw = cache.get(&slot, 0).unwrap();
        let seq = u32::from_ne_bytes(raw[..4].try_into().unwrap());
        assert_eq!(seq % 2, 0, "unlocked after its write");
        raw[..4].copy_from_slice(&(seq + 1).to_ne_bytes());
        cache.set(slot, raw, 0).unwrap();
        let (action, out, path) = bench.nic(frame);
        // No AF_XDP socket is bound in a test run: to the worker shows as a pass.
        assert_eq!((action, path), (XdpAction::Pass.code(), Some(FlowPath::Busy)));
        assert_eq!(&out, frame, "untouched");
        assert_eq!(bench.table().settle(), 1);
        assert_eq!(bench.table().settle(), 0, "freed once");
        let key = CtKey::V4(CtKey4::new(CLIENT.octets(), 5000, VIP.octets(), 53, 17));
        assert_eq!(bench.table().get(key), None, "the direction is lost, as a flow that ended");
        assert_ne!(bench.nic(frame).2, Some(FlowPath::Forwarded));
    }

    /// With the table one entry short of full (every cache slot taken, the hash map one short
    /// of `CT_CAPACITY`), a new flow's replies are steered (the last entry) but its
    /// established directions find no room: it stays on the worker path, counted, and its
    /// packets are forwarded by the worker.
    #[test]
    fn a_full_flow_table_leaves_flows_on_the_worker_path() {
        let mut bench = Bench::new();
        let mut table = bench.table();
        let filler = |n: u32| {
            let [a, b, c, d] = n.to_be_bytes();
            CtKey::V4(CtKey4::new([10, b, c, d], 1, [10, 0, 0, a], 2, 17))
        };
        // The first fillers take the cache's slots; past 2^20 of them, all but a share of
        // e^-32 are taken, and the last fillers went to the hash map.
        let mut n = 0;
        while table.insert(filler(n), &CtEntry::default()).is_ok() {
            n += 1;
        }
        assert!(n > CT_CAPACITY, "{n} directions fill the table");
        table.remove(filler(n - 1)).unwrap();
        let case = &cases()[1];
        open(&mut bench, case);
        let stats = bench.worker.stats;
        assert_eq!((stats.offloaded, stats.flow_table_full, stats.dropped), (0, 1, 0));
        for (port, frame) in &case.data {
            assert_ne!(bench.nic(frame).2, Some(FlowPath::Forwarded));
            assert!(bench.worker(*port, frame).is_some(), "forwarded by the worker");
        }
        // Room again: the next flow is offloaded.
        table.remove(filler(n - 2)).unwrap();
        table.remove(filler(n - 3)).unwrap();
        bench.worker(0, &eth().ipv4(CLIENT, VIP).udp(5001, 53).payload(b"q").build()).unwrap();
        bench.worker(1, &eth().ipv4(POD, CLIENT).udp(5353, 5001).payload(b"a").build()).unwrap();
        assert_eq!(bench.worker.stats.offloaded, 1);
    }
}
