//! `skiff_xdp_ingress` in this kernel: the verifier accepts it, every row of the shared fixture
//! table gives its action and output through `BPF_PROG_TEST_RUN`, and on a lab veth, in native
//! and in generic mode, it drops a denied CIDR's real traffic while the rest flows and
//! decapsulates VXLAN sent by the kernel's own vxlan driver.

mod privileged {
    use std::{
        net::{IpAddr, UdpSocket},
        path::PathBuf,
        sync::atomic::{AtomicU32, Ordering},
        time::Duration,
    };

    use skiff_lab::{Lab, Topology};

    use skiff_common::{
        DropReason, XdpAction,
        config::XdpConfig,
        conntrack::{CtEntry, CtKey, CtKey4},
        endpoint::{EndpointInfo, PodSources},
        event::Decision,
        identity::Identity,
        lb::FrontendKind,
        meta::XdpMeta,
        tunnel,
    };
    use skiff_testkit::{
        Expect, eth,
        ingress::{Env, fixtures},
    };
    use skiff_xdp::{Ingress, XdpMode};

    /// A loaded program with the fixture environment in its tables, pinned in a folder of its
    /// own that the guard removes (also when loading fails).
    pub struct Loaded {
        dir: PathBuf,
        ingress: Option<Ingress>,
    }

    impl Loaded {
        pub fn new() -> Loaded {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = PathBuf::from(format!("/sys/fs/bpf/skiff-test-{}-{n}", std::process::id()));
            let mut loaded = Loaded { dir: dir.clone(), ingress: None };
            let ingress =
                loaded.ingress.insert(Ingress::load(dir).expect("the verifier accepts skiff_xdp_ingress"));
            ingress.set_config(&fixture_config()).unwrap();
            ingress.set_host_ports(host_ports(&[])).unwrap();
            ingress.deny(Env::DENIED_V4.0.into(), Env::DENIED_V4.1, 1).unwrap();
            ingress.deny(Env::DENIED_V6.0.into(), Env::DENIED_V6.1, 2).unwrap();
            ingress
                .set_services(&[
                    (Env::SERVICE_V4.into(), Env::SERVICE_PORT, 6, FrontendKind::ClusterIp),
                    (Env::SERVICE_V6.into(), Env::SERVICE_PORT, 6, FrontendKind::ClusterIp),
                ])
                .unwrap();
            let pod = EndpointInfo { identity: Identity(300), flags: EndpointInfo::POLICY_ENFORCED };
            let node = EndpointInfo { identity: Identity::HOST, flags: EndpointInfo::HOST };
            ingress.set_endpoints(&[(Env::POLICY_POD_V4.into(), pod), (Env::NODE_V4.into(), node)]).unwrap();
            let (pods, len) = Env::REMOTE_PODS_V4;
            ingress.set_overlay(&Env::NODES, &[(pods.into(), len)]).unwrap();
            ingress.set_ipcache(&Env::IPCACHE).unwrap();
            let mut flows = ingress.flow_table().unwrap();
            flows.insert(tracked_key(), &CtEntry { flags: CtEntry::REPLY, ..CtEntry::default() }).unwrap();
            loaded
        }
        pub fn get(&mut self) -> &mut Ingress {
            self.ingress.as_mut().expect("loaded")
        }
    }

    /// The interface a test run's frame arrives on.
    const LOOPBACK: u32 = 1;

    /// The fixtures' settings. The node's own traffic on its uplink (a test run's frames
    /// arrive on loopback) passes without a lookup: every fixture gives its action with that
    /// on.
    /// The node's ports that need more than the kernel, as the agent marks them: the tunnels'
    /// (UDP) and `tcp`.
    fn host_ports(tcp: &[u16]) -> Vec<(u8, u16)> {
        let tunnels = [(17, tunnel::VXLAN_PORT), (17, tunnel::GENEVE_PORT)];
        tunnels.into_iter().chain(tcp.iter().map(|&port| (6, port))).collect()
    }

    fn fixture_config() -> XdpConfig {
        let mut config = XdpConfig::DEFAULT;
        config.tunnel_v4 = Env::NODE_V4.octets();
        config.tunnel_v6 = Env::NODE_V6.octets();
        config.drop_sample_every = 1;
        config.host_v4[0] = Env::NODE_V4.octets();
        config.host_v6[0] = Env::NODE_V6.octets();
        config.host_interfaces[0] = LOOPBACK;
        config
    }

    /// The XDP key of the environment's tracked flow (a TCP reply).
    fn tracked_key() -> CtKey {
        let (src, sport, dst, dport) = Env::TRACKED_V4;
        CtKey::V4(CtKey4::new(src.octets(), sport, dst.octets(), dport, 6))
    }

    impl Drop for Loaded {
        fn drop(&mut self) {
            drop(self.ingress.take());
            skiff_xdp::bpffs::remove_pins(&self.dir)
                .unwrap_or_else(|e| eprintln!("removing {}: {e}", self.dir.display()));
        }
    }

    /// TCP to the node passes on comparisons alone, unless a worker serves its port: a
    /// NodePort, or masquerading's (a tracked reply); nor does a pod's interface skip the
    /// checks an uplink may.
    #[test]
    fn the_node_s_own_traffic_passes_unless_a_worker_serves_its_port() {
        const NODE_PORT: u16 = 30080;
        let mut loaded = Loaded::new();
        let ingress = loaded.get();
        ingress.set_services(&[(Env::NODE_V4.into(), NODE_PORT, 6, FrontendKind::NodePort)]).unwrap();
        let masqueraded =
            CtKey::V4(CtKey4::new(Env::CLIENT_V4.octets(), 443, Env::NODE_V4.octets(), 61000, 6));
        let mut flows = ingress.flow_table().unwrap();
        flows.insert(masqueraded, &CtEntry { flags: CtEntry::REPLY, ..CtEntry::default() }).unwrap();
        let to_node =
            |sport, dport| eth().ipv4(Env::CLIENT_V4, Env::NODE_V4).tcp(sport, dport).ack(1).build();
        let to_worker = |ingress: &Ingress, frame: &[u8]| {
            let before = ingress.no_worker().unwrap().packets;
            assert_eq!(ingress.test_run(frame, 1).unwrap().action, XdpAction::Pass.code());
            ingress.no_worker().unwrap().packets - before == 1
        };
        assert!(!to_worker(ingress, &to_node(45000, 22)), "the node's own port: to the kernel");
        assert!(!to_worker(ingress, &to_node(45000, NODE_PORT)), "a port not marked: not looked up");
        ingress.set_host_ports(host_ports(&[NODE_PORT, 61000])).unwrap();
        assert!(to_worker(ingress, &to_node(45000, NODE_PORT)), "the NodePort: to a worker");
        assert!(to_worker(ingress, &to_node(443, 61000)), "a masqueraded reply: to its worker");
        ingress.set_host_ports(host_ports(&[])).unwrap();
        assert!(!to_worker(ingress, &to_node(45000, NODE_PORT)), "unmarked again: to the kernel");
        // Not an uplink: a spoofed source is looked up and dropped.
        ingress.set_config(&XdpConfig { host_interfaces: [0; 4], ..fixture_config() }).unwrap();
        let pod = PodSources { v4: Env::POLICY_POD_V4.octets(), ..PodSources::default() };
        ingress.set_pod_sources(LOOPBACK, Some(pod)).unwrap();
        let spoofed = ingress.test_run(&to_node(45000, 22), 1).unwrap();
        assert_eq!(spoofed.action, XdpAction::Drop.code(), "a pod's frame from another address");
    }

    /// A flow its worker expired is withdrawn: its replies pass to the kernel again, and
    /// withdrawing it twice is not an error.
    #[test]
    fn an_untracked_flow_is_no_longer_redirected() {
        let mut loaded = Loaded::new();
        let ingress = loaded.get();
        let reply = fixtures().into_iter().find(|f| f.description == "a tracked flow's reply").unwrap();
        let redirected = |ingress: &Ingress| {
            let before = ingress.no_worker().unwrap().packets;
            assert_eq!(ingress.test_run(&reply.input, 1).unwrap().action, XdpAction::Pass.code());
            ingress.no_worker().unwrap().packets - before == 1
        };
        assert!(redirected(ingress), "tracked: to the workers");
        let mut flows = ingress.flow_table().unwrap();
        flows.remove(tracked_key()).unwrap();
        assert!(!redirected(ingress), "untracked: to the kernel");
        flows.remove(tracked_key()).unwrap();
    }

    #[test]
    fn every_fixture_gives_its_action_and_output() {
        let mut loaded = Loaded::new();
        let ingress = loaded.get();
        let mut failures = Vec::new();
        for f in fixtures() {
            if f.input.len() < 14 {
                // The kernel never gives XDP a frame shorter than an Ethernet header, and
                // BPF_PROG_TEST_RUN refuses one too; the engine tests run this row.
                let refused = ingress.test_run(&f.input, 1).unwrap_err();
                assert!(refused.to_string().contains("Invalid argument"), "{}: {refused}", f.description);
                continue;
            }
            let no_worker_before = ingress.no_worker().unwrap().packets;
            let drops_before = ingress.drops().unwrap();
            let run = ingress.test_run(&f.input, 1).unwrap();
            let no_worker = ingress.no_worker().unwrap().packets - no_worker_before;
            let dropped_for = |reason: DropReason| {
                let count = |d: &[skiff_xdp::DropCount]| {
                    d.iter().find(|d| d.reason == reason).map_or(0, |d| d.count.packets)
                };
                count(&ingress.drops().unwrap()) - count(&drops_before)
            };
            let ok = match f.expect {
                Expect::Pass => run.action == XdpAction::Pass.code() && no_worker == 0,
                // No AF_XDP socket is bound in a test run: the decision shows as a counted fallback.
                Expect::Redirect => run.action == XdpAction::Pass.code() && no_worker == 1,
                Expect::Judge => {
                    run.action == XdpAction::Drop.code() && dropped_for(DropReason::NoXskSocket) == 1
                }
                Expect::Drop(reason) => run.action == XdpAction::Drop.code() && dropped_for(reason) == 1,
                Expect::Tx => run.action == XdpAction::Tx.code(),
            };
            // A frame that goes on leaves as the row says, or untouched; a dropped one's bytes
            // do not matter.
            let output_ok = match (f.expect, &f.output) {
                (Expect::Drop(_), _) => true,
                (_, Some(want)) => *want == run.output,
                (_, None) => f.input == run.output,
            };
            if !ok || !output_ok {
                failures.push(format!("{}: expected {:?}, got action {} (no-worker +{no_worker}), output as expected: {output_ok}", f.description, f.expect, run.action));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn decapsulation_tells_the_worker_the_vni_and_identity() {
        let mut loaded = Loaded::new();
        let ingress = loaded.get();
        for (description, vni, identity) in [
            ("VXLAN to the node is decapsulated", Env::VNI, 0),
            ("VXLAN over IPv6 is decapsulated", Env::VNI, 0),
            ("Geneve with an identity option is decapsulated", Env::VNI, Env::IDENTITY),
        ] {
            let f = fixtures().into_iter().find(|f| f.description == description).unwrap();
            let run = ingress.test_run(&f.input, 1).unwrap();
            let meta: XdpMeta = bytemuck::pod_read_unaligned(&run.meta);
            assert!(meta.is_valid(), "{description}: {meta:?}");
            assert_eq!(
                (meta.vni, meta.src_identity, meta.flags),
                (vni, Identity(identity), XdpMeta::DECAPSULATED),
                "{description}"
            );
        }
        // Without a tunnel there is no metadata.
        let plain = fixtures().into_iter().find(|f| f.description == "TCP to the node passes").unwrap();
        assert!(ingress.test_run(&plain.input, 1).unwrap().meta.is_empty());
    }

    /// Drops and other decisions reach the event ring, one in `drop_sample_every` and
    /// `trace_sample_every` of their counts, with their first bytes.
    #[test]
    fn decisions_are_sampled_to_the_event_ring_with_their_headers() {
        let mut loaded = Loaded::new();
        let ingress = loaded.get();
        let mut ring = ingress.event_ring().unwrap();
        let denied =
            fixtures().into_iter().find(|f| f.expect == Expect::Drop(DropReason::DeniedCidr)).unwrap();
        ingress.test_run(&denied.input, 3).unwrap();
        let events = ring.drain();
        assert_eq!(events.len(), 3, "sampling every drop");
        let e = events[0];
        assert_eq!((e.decision(), e.reason()), (Some(Decision::Dropped), Some(DropReason::DeniedCidr)));
        assert_eq!((e.len as usize, e.headers()), (denied.input.len(), &denied.input[..]));
        let mut config = XdpConfig { tunnel_v4: Env::NODE_V4.octets(), ..XdpConfig::DEFAULT };
        config.trace_sample_every = 2;
        ingress.set_config(&config).unwrap();
        let pass = fixtures().into_iter().find(|f| f.description == "TCP to the node passes").unwrap();
        ingress.test_run(&pass.input, 4).unwrap();
        let events = ring.drain();
        assert_eq!(events.len(), 2, "one pass in two: {events:?}");
        assert!(events.iter().all(|e| e.decision() == Some(Decision::Passed) && e.headers() == pass.input));
    }

    /// Maps pinned by a version of another layout are removed before a load, not misread: the
    /// flow table of a reload comes back empty, and says so.
    #[test]
    fn maps_of_another_layout_are_rebuilt() {
        let mut loaded = Loaded::new();
        assert!(!loaded.get().adopted().maps_rebuilt, "a fresh folder");
        drop(loaded.ingress.take());
        loaded.ingress = Some(Ingress::load(&loaded.dir).unwrap());
        assert!(!loaded.get().adopted().maps_rebuilt, "the same layout is kept");
        assert!(loaded.get().flow_table().unwrap().get(tracked_key()).is_some(), "with its flows");
        drop(loaded.ingress.take());
        let marker = format!("layout-{}", skiff_xdp::MAP_LAYOUT);
        std::fs::rename(loaded.dir.join(&marker), loaded.dir.join("layout-1")).unwrap();
        loaded.ingress = Some(Ingress::load(&loaded.dir).unwrap());
        assert!(loaded.get().adopted().maps_rebuilt, "another layout is rebuilt");
        assert!(loaded.get().flow_table().unwrap().entries().is_empty(), "not misread");
        assert!(loaded.dir.join(&marker).is_dir() && !loaded.dir.join("layout-1").exists());
    }

    #[test]
    fn pinned_maps_survive_a_reload() {
        let mut loaded = Loaded::new();
        let denied =
            fixtures().into_iter().find(|f| f.expect == Expect::Drop(DropReason::DeniedCidr)).unwrap();
        drop(loaded.ingress.take());
        // A restarted agent: a new load from the same folder sees the deny list it left.
        loaded.ingress = Some(Ingress::load(&loaded.dir).unwrap());
        assert_eq!(loaded.get().test_run(&denied.input, 1).unwrap().action, XdpAction::Drop.code());
        // And lifting the rule lets the source through again.
        loaded.get().undeny(Env::DENIED_V4.0.into(), Env::DENIED_V4.1).unwrap();
        assert_eq!(loaded.get().test_run(&denied.input, 1).unwrap().action, XdpAction::Pass.code());
        let bad = loaded.get().deny(Env::DENIED_V4.0.into(), 33, 1).unwrap_err();
        assert!(bad.to_string().contains("0..=32"), "{bad}");
    }

    /// A source skips the deny tries only where no denied prefix covers its slot: a short
    /// prefix drops every address it spans, a longer one inside it keeps its slot covered
    /// when the short one goes, and a replaced deny list leaves none of its slots behind.
    #[test]
    fn a_denied_prefix_drops_every_address_it_spans() {
        let mut loaded = Loaded::new();
        let ingress = loaded.get();
        let action = |ingress: &mut Ingress, src: &str| {
            let frame = match src.parse().unwrap() {
                IpAddr::V4(a) => eth().ipv4(a, Env::NODE_V4).tcp(40000, 22).build(),
                IpAddr::V6(a) => eth().ipv6(a, Env::NODE_V6).tcp(40000, 22).build(),
            };
            ingress.test_run(&frame, 1).unwrap().action
        };
        let (drop, pass) = (XdpAction::Drop.code(), XdpAction::Pass.code());
        ingress.set_deny_list(&[]).unwrap();
        assert_eq!(action(ingress, "198.19.200.1"), pass);
        ingress.deny("198.18.0.0".parse().unwrap(), 15, 3).unwrap();
        assert_eq!(action(ingress, "198.19.1.1"), drop, "the /15's second /16");
        ingress.deny("198.19.200.0".parse().unwrap(), 24, 4).unwrap();
        ingress.undeny("198.18.0.0".parse().unwrap(), 15).unwrap();
        assert_eq!(action(ingress, "198.19.200.1"), drop, "still under the /24");
        assert_eq!(action(ingress, "198.19.1.1"), pass);
        ingress.deny("fd00::".parse().unwrap(), 8, 5).unwrap();
        assert_eq!(action(ingress, "fd00:9:8:7::1"), drop, "a /8 covers every IPv6 slot");
        ingress.set_deny_list(&[]).unwrap();
        for src in ["198.19.200.1", "fd00:9:8:7::1"] {
            assert_eq!(action(ingress, src), pass, "{src}");
        }
    }

    /// The program on the node's uplink of a lab (client → node), with the node's uplink
    /// address as its tunnel address.
    fn on_uplink(mode: XdpMode) -> (Lab, Loaded) {
        let lab = Topology::new().pods(1).build().expect("lab");
        let mut loaded = Loaded::new();
        let ingress = loaded.get();
        let mut config = XdpConfig::DEFAULT;
        config.tunnel_v4 = lab.node().ipv4.octets();
        config.drop_sample_every = 1;
        ingress.set_config(&config).unwrap();
        let iface = lab.client().node_iface.clone();
        let active = lab.node().netns.run(|| ingress.attach(&iface, mode)).expect("netns").expect("attach");
        assert_eq!(active, mode);
        (lab, loaded)
    }

    /// Sends `n` datagrams from `src` in the client to a fresh socket on `dst` in the node and
    /// returns how many arrived.
    fn datagrams(lab: &Lab, src: IpAddr, dst: IpAddr, n: usize) -> usize {
        let receiver = lab.node().netns.run(|| UdpSocket::bind((dst, 0))).expect("netns").expect("bind");
        receiver.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let to = receiver.local_addr().unwrap();
        let sender = lab.client().netns.run(|| UdpSocket::bind((src, 0))).expect("netns").expect("bind");
        for _ in 0..n {
            sender.send_to(b"through xdp", to).unwrap();
        }
        let mut buf = [0u8; 64];
        (0..n).take_while(|_| receiver.recv_from(&mut buf).is_ok()).count()
    }

    fn denied_cidr_is_dropped_while_the_rest_flows(mode: XdpMode) {
        let (mut lab, mut loaded) = on_uplink(mode);
        let client = lab.client().clone();
        // A second client address, in a denied /28.
        let bad: IpAddr = "198.18.0.66".parse().unwrap();
        client.netns.exec("ip", &["addr", "add", "198.18.0.66/32", "dev", "eth0"]).unwrap();
        loaded.get().deny("198.18.0.64".parse().unwrap(), 28, 7).unwrap();
        let node: IpAddr = lab.node().ipv4.into();
        assert_eq!(datagrams(&lab, bad, node, 50), 0, "denied source");
        assert_eq!(datagrams(&lab, client.ipv4.into(), node, 50), 50, "allowed source");
        let pod = lab.pods()[0].clone();
        lab.serve_http(&pod, 80).unwrap();
        let reply =
            client.netns.exec("curl", &["-sS", "--max-time", "5", &format!("http://{}/", pod.ipv4)]).unwrap();
        assert_eq!(String::from_utf8_lossy(&reply.stdout), "pod0\n", "TCP through the node still flows");
        let drops = loaded.get().drops().unwrap();
        let denied = drops.iter().find(|d| d.reason == DropReason::DeniedCidr).map_or(0, |d| d.count.packets);
        assert_eq!(denied, 50, "every denied datagram counted: {drops:?}");
        let events = loaded.get().event_ring().unwrap().drain();
        let drops: Vec<_> = events.iter().filter(|e| e.decision() == Some(Decision::Dropped)).collect();
        assert!(drops.iter().all(|e| e.reason() == Some(DropReason::DeniedCidr)) && !drops.is_empty());
    }

    fn kernel_vxlan_is_decapsulated_to_the_node_stack(mode: XdpMode) {
        let (lab, mut loaded) = on_uplink(mode);
        // The client's vx0 addresses have identity 42, the VNI its kernel sends.
        loaded.get().set_ipcache(&[("198.19.42.0".parse().unwrap(), 24, Identity(42))]).unwrap();
        let (client, node) = (lab.client(), lab.node());
        let uplink_mac = client.node_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let local = client.ipv4.to_string();
        let remote = node.ipv4.to_string();
        let add = ["link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "8472", "dev", "eth0"];
        client.netns.exec("ip", &[&add[..], &["local", &local, "remote", &remote]].concat()).unwrap();
        client.netns.exec("ip", &["addr", "add", "198.19.42.2/24", "dev", "vx0"]).unwrap();
        client.netns.exec("ip", &["link", "set", "vx0", "up"]).unwrap();
        // The inner frame is addressed to the uplink's MAC, as a peer node's would be.
        client
            .netns
            .exec(
                "ip",
                &["neigh", "replace", "198.19.42.1", "lladdr", &uplink_mac, "dev", "vx0", "nud", "permanent"],
            )
            .unwrap();
        // The node has no vxlan device: only XDP's decap can deliver to this address.
        node.netns.exec("ip", &["addr", "add", "198.19.42.1/32", "dev", "lo"]).unwrap();
        let arrived = datagrams(&lab, "198.19.42.2".parse().unwrap(), "198.19.42.1".parse().unwrap(), 20);
        assert_eq!(arrived, 20, "inner datagrams reached the node's socket");
    }

    #[test]
    fn denied_cidr_is_dropped_in_native_mode() {
        denied_cidr_is_dropped_while_the_rest_flows(XdpMode::Native);
    }

    #[test]
    fn denied_cidr_is_dropped_in_generic_mode() {
        denied_cidr_is_dropped_while_the_rest_flows(XdpMode::Generic);
    }

    #[test]
    fn kernel_vxlan_is_decapsulated_in_native_mode() {
        kernel_vxlan_is_decapsulated_to_the_node_stack(XdpMode::Native);
    }

    #[test]
    fn kernel_vxlan_is_decapsulated_in_generic_mode() {
        kernel_vxlan_is_decapsulated_to_the_node_stack(XdpMode::Generic);
    }

    /// The id of the XDP program on `iface` in `ns`, as `ip` shows it; `None` when detached.
    fn xdp_prog_id(ns: &skiff_lab::Netns, iface: &str) -> Option<u32> {
        let out = ns.exec("ip", &["-d", "link", "show", iface]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let at = text.find("prog/xdp id ")? + "prog/xdp id ".len();
        text[at..].split_whitespace().next()?.parse().ok()
    }

    #[test]
    fn an_upgrade_swaps_the_program_in_place_and_dropping_detaches() {
        let (lab, mut old) = on_uplink(XdpMode::Native);
        let (node, iface) = (lab.node().netns.clone(), lab.client().node_iface.clone());
        let old_id = xdp_prog_id(&node, &iface).expect("attached");
        let mut new = Loaded::new();
        new.get().set_config(&XdpConfig::DEFAULT).unwrap();
        // Only the new program denies the client: traffic shows which one runs.
        new.get().deny(lab.client().ipv4.into(), 32, 9).unwrap();
        let node_addr: IpAddr = lab.node().ipv4.into();
        assert_eq!(datagrams(&lab, lab.client().ipv4.into(), node_addr, 10), 10, "old program passes");
        old.get().hand_over(new.get()).unwrap();
        let new_id = xdp_prog_id(&node, &iface).expect("still attached");
        assert_ne!(new_id, old_id, "the link now runs the new program");
        assert_eq!(datagrams(&lab, lab.client().ipv4.into(), node_addr, 10), 0, "new program denies");
        drop(old);
        assert_eq!(xdp_prog_id(&node, &iface), Some(new_id), "the old program's exit does not detach");
        drop(new);
        assert_eq!(xdp_prog_id(&node, &iface), None, "dropping the program detaches it");
    }

    /// A veth takes frames another interface's XDP program redirects to it only while its peer
    /// can receive them (GRO or an XDP program there), and the kernel says so: the flow table
    /// forwards out of a pod's veth only then.
    #[test]
    fn a_veth_takes_xdp_frames_once_its_peer_has_gro() {
        let lab = Topology::new().pods(1).build().expect("lab");
        let (node, pod) = (lab.node(), &lab.pods()[0]);
        let takes = || {
            let name = pod.node_iface.clone();
            node.netns
                .run(move || {
                    let name = std::ffi::CString::new(name).unwrap();
                    // SAFETY: a NUL-terminated name that outlives the call.
                    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
                    skiff_xdp::takes_xdp_frames(index)
                })
                .unwrap()
                .unwrap()
        };
        pod.netns.exec("ethtool", &["-K", &pod.iface, "gro", "off"]).unwrap();
        assert!(!takes(), "no GRO and no XDP program on the pod's side");
        pod.netns.exec("ethtool", &["-K", &pod.iface, "gro", "on"]).unwrap();
        assert!(takes(), "GRO on the pod's side");
    }
}
