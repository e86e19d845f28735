//! The whole toolchain for real: the counting program, built by aya-build, loaded into this
//! kernel, attached to a lab veth in native and in generic mode, counts real traffic from a
//! pod namespace and passes all of it.

mod privileged {
    use std::{net::UdpSocket, time::Duration};

    use skiff_lab::Topology;
    use skiff_xdp::{CountProgram, XdpMode};

    const DATAGRAMS: u64 = 500;
    const CHUNK: u64 = 50;
    const PAYLOAD: usize = 100;
    /// Ethernet + IPv4 + UDP headers.
    const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;

    fn counts_traffic_from_a_pod(mode: XdpMode, ip_link_flag: &str) {
        let lab = Topology::new().pods(1).build().expect("lab");
        let (node, pod) = (lab.node(), &lab.pods()[0]);
        let iface = pod.node_iface.as_str();
        let rx_before = node.netns.link_stat(iface, "rx_packets").expect("stats");

        let mut object = CountProgram::load().expect("load");
        let active = node.netns.run(|| object.attach(iface, mode)).expect("netns").expect("attach");
        assert_eq!(active, mode);
        let link = node.netns.exec("ip", &["-d", "link", "show", iface]).expect("ip link");
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains(ip_link_flag), "expected {ip_link_flag} on {iface}: {link}");

        let gateway = node.pod_gateway_v4();
        let receiver = node.netns.run(|| UdpSocket::bind((gateway, 0))).expect("netns").expect("bind");
        receiver.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let port = receiver.local_addr().expect("addr").port();
        let sender = pod.netns.run(|| UdpSocket::bind((pod.ipv4, 0))).expect("netns").expect("bind");

        // XDP_PASS: every datagram reaches the socket on the node. Chunks keep the socket's
        // receive buffer from overflowing.
        let mut received = 0;
        let mut buf = [0u8; 2048];
        for _ in 0..DATAGRAMS / CHUNK {
            for _ in 0..CHUNK {
                sender.send_to(&[0x5a; PAYLOAD], (gateway, port)).expect("send");
            }
            for _ in 0..CHUNK {
                let Ok((len, _)) = receiver.recv_from(&mut buf) else { break };
                assert_eq!(len, PAYLOAD);
                received += 1;
            }
        }
        assert_eq!(received, DATAGRAMS, "datagrams that reached the node's socket");

        let seen = object.count().expect("read counter");
        let rx = node.netns.link_stat(iface, "rx_packets").expect("stats") - rx_before;
        assert!(
            seen.packets >= DATAGRAMS && seen.packets <= rx,
            "XDP counted {} packets; sent {DATAGRAMS}, the interface received {rx}",
            seen.packets
        );
        assert!(seen.bytes >= DATAGRAMS * FRAME, "XDP counted {} bytes", seen.bytes);

        drop(object);
        let link = node.netns.exec("ip", &["link", "show", iface]).expect("ip link");
        assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "detached when the object dropped");
    }

    #[test]
    fn counts_real_traffic_in_native_mode() {
        counts_traffic_from_a_pod(XdpMode::Native, "xdp ");
    }

    #[test]
    fn counts_real_traffic_in_generic_mode() {
        counts_traffic_from_a_pod(XdpMode::Generic, "xdpgeneric");
    }

    #[test]
    fn auto_mode_picks_native_on_veth() {
        let lab = Topology::new().pods(1).build().expect("lab");
        let iface = lab.pods()[0].node_iface.clone();
        let mut object = CountProgram::load().expect("load");
        let active =
            lab.node().netns.run(|| object.attach(&iface, XdpMode::Auto)).expect("netns").expect("attach");
        assert_eq!(active, XdpMode::Native);
    }

    /// A device whose driver has no native XDP (a bridge here, as many virtual NICs): auto
    /// attaches in generic mode rather than fail.
    #[test]
    fn auto_mode_falls_back_to_generic_without_native_xdp() {
        let lab = Topology::new().build().expect("lab");
        lab.node().netns.exec("ip", &["link", "add", "nonative0", "type", "bridge"]).unwrap();
        lab.node().netns.exec("ip", &["link", "set", "nonative0", "up"]).unwrap();
        let mut object = CountProgram::load().expect("load");
        let native = lab.node().netns.run(|| object.attach("nonative0", XdpMode::Native)).expect("netns");
        assert!(native.is_err(), "a bridge has no native XDP");
        let active = lab
            .node()
            .netns
            .run(|| object.attach("nonative0", XdpMode::Auto))
            .expect("netns")
            .expect("attach");
        assert_eq!(active, XdpMode::Generic);
    }
}
