//! Frames built with the testkit are what the Linux kernel expects: injected on a lab veth with
//! an AF_PACKET socket, they reach sockets, get answered, and decapsulate in the kernel's own
//! VXLAN driver. The kernel drops anything with a wrong checksum, so every check here is also a
//! checksum check.

mod privileged {
    use std::{
        net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
        time::Duration,
    };

    use skiff_fastpath::io::{PacketIo, packet::PacketPort, wait_readable};
    use skiff_lab::{Host, Lab, Topology};
    use skiff_testkit::eth;
    use skiff_wire::{
        checksum::IpPair,
        ethernet::Mac,
        icmp,
        layers::{self, L4},
        tcp::{self, TcpFlags},
    };

    const WAIT: Duration = Duration::from_secs(3);

    /// A lab with one pod, and a raw socket on the node's end of the pod's veth.
    fn setup() -> (Lab, Host, Raw) {
        let lab = Topology::new().pods(1).build().expect("lab");
        let pod = lab.pods()[0].clone();
        let iface = pod.node_iface.clone();
        let raw = lab
            .node()
            .netns
            .run(move || PacketPort::open(&iface, false))
            .expect("netns")
            .expect("raw socket");
        (lab, pod, Raw(std::cell::RefCell::new(raw)))
    }

    /// The fast path's AF_PACKET port, used frame by frame.
    struct Raw(std::cell::RefCell<PacketPort>);

    impl Raw {
        fn send(&self, frame: &[u8]) -> std::io::Result<()> {
            self.0.borrow_mut().send_now(frame)
        }

        /// Receives frames until `pred` accepts one or `timeout` passes; returns the accepted one.
        fn recv_until(
            &self,
            timeout: Duration,
            mut pred: impl FnMut(&[u8]) -> bool,
        ) -> std::io::Result<Option<Vec<u8>>> {
            let deadline = std::time::Instant::now() + timeout;
            let mut port = self.0.borrow_mut();
            let fd = port.fd().expect("a socket");
            let mut found = None;
            while found.is_none() && std::time::Instant::now() < deadline {
                if wait_readable(&[fd], 50)? {
                    port.recv(64, |f, _| {
                        if found.is_none() && pred(f) {
                            found = Some(f.to_vec());
                        }
                    })?;
                }
            }
            Ok(found)
        }
    }

    /// The client's and the pod's address of one family: replies route back through the node.
    fn peer(lab: &Lab, v6: bool) -> (IpAddr, IpAddr) {
        let (c, p) = (lab.client(), &lab.pods()[0]);
        if v6 { (c.ipv6.into(), p.ipv6.into()) } else { (c.ipv4.into(), p.ipv4.into()) }
    }

    fn to_pod(pod: &Host) -> skiff_testkit::Builder {
        eth().src_mac(Mac(pod.node_mac)).dst_mac(Mac(pod.mac))
    }

    #[test]
    fn udp_datagrams_reach_a_socket_in_the_pod() {
        let (lab, pod, raw) = setup();
        for v6 in [false, true] {
            let (src, dst) = peer(&lab, v6);
            let socket =
                pod.netns.run(|| UdpSocket::bind(SocketAddr::new(dst, 0))).expect("netns").expect("bind");
            socket.set_read_timeout(Some(WAIT)).unwrap();
            let port = socket.local_addr().unwrap().port();
            raw.send(&to_pod(&pod).ip(src, dst).udp(40000, port).payload(b"built by testkit").build())
                .unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = socket.recv_from(&mut buf).expect("the kernel accepted the datagram");
            assert_eq!((&buf[..n], from), (&b"built by testkit"[..], SocketAddr::new(src, 40000)));
        }
    }

    #[test]
    fn a_built_syn_gets_a_syn_ack_from_a_listening_socket() {
        let (lab, pod, raw) = setup();
        for v6 in [false, true] {
            let (src, dst) = peer(&lab, v6);
            let listener =
                pod.netns.run(|| TcpListener::bind(SocketAddr::new(dst, 0))).expect("netns").expect("listen");
            let port = listener.local_addr().unwrap().port();
            let syn = to_pod(&pod)
                .ip(src, dst)
                .tcp(45000, port)
                .seq(1000)
                .syn()
                .tcp_options(&[2, 4, 5, 180])
                .build();
            raw.send(&syn).unwrap();
            let reply = raw
                .recv_until(WAIT, |f| {
                    layers::parse(f)
                        .is_ok_and(|p| matches!(p.l4, L4::Tcp { src_port, .. } if src_port == port))
                })
                .unwrap()
                .expect("a SYN-ACK");
            let p = layers::parse(&reply).unwrap();
            let seg = tcp::Packet::new_checked(&reply[p.l4_offset..]).unwrap();
            assert_eq!(seg.flags(), TcpFlags::SYN | TcpFlags::ACK);
            assert_eq!((seg.ack(), seg.dst_port()), (1001, 45000));
            let ips = match (dst, src) {
                (IpAddr::V4(a), IpAddr::V4(b)) => IpPair::V4(a, b),
                (IpAddr::V6(a), IpAddr::V6(b)) => IpPair::V6(a, b),
                _ => unreachable!(),
            };
            assert!(seg.verify_checksum(ips), "our parser verifies the kernel's checksum");
            // Answer with RST so the half-open connection goes away now.
            raw.send(&to_pod(&pod).ip(src, dst).tcp(45000, port).seq(1001).rst().build()).unwrap();
        }
    }

    #[test]
    fn a_built_echo_request_is_answered() {
        let (lab, pod, raw) = setup();
        for v6 in [false, true] {
            let (src, dst) = peer(&lab, v6);
            raw.send(
                &to_pod(&pod).ip(src, dst).echo_request(0x5151, 1).payload(b"ping from testkit").build(),
            )
            .unwrap();
            let reply_type = if v6 { icmp::v6::ECHO_REPLY } else { icmp::v4::ECHO_REPLY };
            let reply = raw
                .recv_until(WAIT, |f| {
                    layers::parse(f).is_ok_and(|p| matches!(p.l4, L4::Icmp { msg_type, ident: 0x5151, .. } if msg_type == reply_type))
                })
                .unwrap();
            assert!(reply.is_some(), "echo reply (v6: {v6})");
        }
    }

    /// The testkit's VXLAN encapsulation, sent to a vxlan device of the kernel in the pod: the
    /// kernel decapsulates it and delivers the inner datagram.
    #[test]
    fn the_kernel_vxlan_driver_decapsulates_a_built_vxlan_packet() {
        let (lab, pod, raw) = setup();
        let ns = &pod.netns;
        let local = pod.ipv4.to_string();
        let add = ["link", "add", "vx0", "address", "02:00:00:00:42:02", "type", "vxlan", "id", "42"];
        ns.exec("ip", &[&add[..], &["local", &local, "dstport", "8472", "dev", "eth0"]].concat()).unwrap();
        ns.exec("ip", &["addr", "add", "198.19.42.2/24", "dev", "vx0"]).unwrap();
        ns.exec("ip", &["link", "set", "vx0", "up"]).unwrap();
        let socket = ns.run(|| UdpSocket::bind("198.19.42.2:0")).expect("netns").expect("bind");
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let port = socket.local_addr().unwrap().port();
        let (src, _) = peer(&lab, false);
        let frame = to_pod(&pod)
            .ip(src, pod.ipv4.into())
            .udp(51000, 8472)
            .vxlan(42)
            .eth()
            .src_mac(Mac([0x02, 0, 0, 0, 0x42, 1]))
            .dst_mac(Mac([0x02, 0, 0, 0, 0x42, 2]))
            .ipv4("198.19.42.1".parse().unwrap(), "198.19.42.2".parse().unwrap())
            .udp(7000, port)
            .payload(b"inner")
            .build();
        raw.send(&frame).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = socket.recv_from(&mut buf).expect("the inner datagram");
        assert_eq!((&buf[..n], from.to_string().as_str()), (&b"inner"[..], "198.19.42.1:7000"));
    }
}
