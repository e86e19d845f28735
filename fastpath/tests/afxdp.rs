//! AF_XDP for real on lab veths: skiff_xdp_ingress redirects a service frame into a bound
//! socket (the XDP_REDIRECT path itself, not just the decision), and a frame sent through a
//! socket reaches a pod's socket.

mod privileged {
    use std::{
        net::{Ipv4Addr, UdpSocket},
        time::Duration,
    };

    use skiff_common::{XdpAction, config::XdpConfig, lb::FrontendKind};
    use skiff_fastpath::io::{PacketIo, afxdp::XskPort};
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
            ingress.set_services(&[(VIP.into(), 80, 17, FrontendKind::ClusterIp)]).unwrap();
            let iface = client.node_iface.clone();
            node.netns.run(|| ingress.attach(&iface, XdpMode::Native)).unwrap().unwrap();
            let mut port = node.netns.run(|| XskPort::bind(&iface, 0, 64, None)).unwrap().unwrap();
            let ifindex = String::from_utf8(
                node.netns.exec("cat", &[&format!("/sys/class/net/{iface}/ifindex")]).unwrap().stdout,
            )
            .unwrap();
            ingress.set_worker(ifindex.trim().parse().unwrap(), 0, port.fd().unwrap()).unwrap();

            let sender = client.netns.run(|| UdpSocket::bind((client.ipv4, 0))).unwrap().unwrap();
            let mut got = Vec::new();
            for _ in 0..20 {
                sender.send_to(b"to the worker", (VIP, 80)).unwrap();
                if skiff_fastpath::io::wait_readable(&[port.fd().unwrap()], 100).unwrap() {
                    port.recv(64, |frame, _| got.push(frame.to_vec())).unwrap();
                }
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
                ingress.actions().unwrap().into_iter().find(|(a, _)| *a == XdpAction::Redirect).unwrap().1;
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
        let mut port = node.netns.run(|| XskPort::bind(&iface, 0, 64, None)).unwrap().unwrap();
        let frame = eth()
            .src_mac(Mac(pod.node_mac))
            .dst_mac(Mac(pod.mac))
            .ipv4(client.ipv4, pod.ipv4)
            .udp(40000, to)
            .payload(b"sent through AF_XDP")
            .build();
        port.send(&frame).unwrap();
        port.flush().unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = receiver.recv_from(&mut buf).expect("the pod received the frame");
        assert_eq!(
            (&buf[..n], from.to_string()),
            (&b"sent through AF_XDP"[..], format!("{}:40000", client.ipv4))
        );
    }
}
