//! The engine on frames: DNAT and reverse NAT give byte-identical output to frames built from
//! scratch with the rewritten fields (so incremental checksums equal full ones), flows stay on
//! their backend across table updates, Maglev spreads flows evenly, and bad input is dropped
//! with its reason.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use hashbrown::HashMap as FastMap;

use skiff_common::{
    DropReason,
    lb::{Algorithm, BackendId, FrontendKind, TrafficPolicy},
};
use skiff_engine::{
    conntrack::Timeouts,
    engine::{Action, Engine, Partition, SNAT_PORTS},
    lb::Backend,
    tables::{Frontend, LocalNode, Service, ServiceConfig, SharedTables, Tables},
};
use skiff_testkit::{
    Builder,
    builder::{DST_MAC, SRC_MAC},
    eth,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0x19, 0, 0, 0, 0x10);
const MAGLEV: ServiceConfig = ServiceConfig {
    kind: FrontendKind::ClusterIp,
    algorithm: Algorithm::Maglev { table_size: 251 },
    traffic_policy: TrafficPolicy::Cluster,
    affinity_timeout: None,
};

fn pod(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 128, 10 + i)
}

fn backends(addrs: &[IpAddr]) -> Vec<Backend> {
    addrs
        .iter()
        .zip(1..)
        .map(|(a, i)| Backend { id: BackendId(i), addr: *a, port: 8080, weight: 1, local: true })
        .collect()
}

fn tables(services: &[(IpAddr, u8, Vec<IpAddr>)]) -> Arc<Tables> {
    let services: FastMap<_, _> = services
        .iter()
        .map(|(vip, proto, b)| {
            (Frontend { addr: *vip, port: 80, protocol: *proto }, Service::new(backends(b), MAGLEV).unwrap())
        })
        .collect();
    Arc::new(Tables { services, ..Tables::default() })
}

fn engine(services: &[(IpAddr, u8, Vec<IpAddr>)]) -> Engine {
    Engine::new(tables(services), 1024, Timeouts::default())
}

fn one_service(frontend: Frontend, service: Service, node: LocalNode) -> Arc<Tables> {
    Arc::new(Tables { services: [(frontend, service)].into_iter().collect(), node, ..Tables::default() })
}

/// Runs `input` through the engine and returns the verdict and the frame after it.
fn run(e: &mut Engine, input: Vec<u8>) -> (Action, Vec<u8>) {
    let mut frame = input;
    let v = e.process(&mut frame, 0);
    (v, frame)
}

/// Where a forwarded frame goes: its destination after the rewrite.
fn next_hop((v, frame): (Action, Vec<u8>)) -> IpAddr {
    assert_eq!(v, Action::Forward, "expected a forward");
    let p = skiff_wire::layers::parse(&frame).unwrap();
    p.addrs(&frame).unwrap().1
}

#[test]
fn dnat_and_reverse_nat_are_byte_identical_to_built_frames() {
    let mut e = engine(&[(VIP.into(), 6, vec![pod(0).into()])]);
    let syn = |b: Builder| b.tcp(45000, 80).seq(7).syn().tcp_options(&[2, 4, 5, 180]).payload(b"");
    let (v, out) = run(&mut e, syn(eth().ipv4(CLIENT, VIP)).build());
    assert_eq!(v, Action::Forward);
    let want =
        eth().ipv4(CLIENT, pod(0)).ttl(63).tcp(45000, 8080).seq(7).syn().tcp_options(&[2, 4, 5, 180]).build();
    assert_eq!(out, want, "DNAT to the backend");

    let syn_ack = |src, dst, sport, ttl| {
        eth().ipv4(src, dst).ttl(ttl).tcp(sport, 45000).seq(99).syn().ack(8).payload(b"hello").build()
    };
    let (v, out) = run(&mut e, syn_ack(pod(0), CLIENT, 8080, 64));
    assert_eq!(v, Action::Forward);
    assert_eq!(out, syn_ack(VIP, CLIENT, 80, 63), "reverse NAT to the frontend");
}

#[test]
fn udp_and_ipv6_flows() {
    let mut e = engine(&[
        (VIP.into(), 17, vec![pod(1).into()]),
        (VIP6.into(), 6, vec!["fd00:0:0:128::11".parse().unwrap()]),
    ]);
    let (v, out) = run(&mut e, eth().ipv4(CLIENT, VIP).udp(5353, 80).payload(b"q").build());
    assert_eq!(v, Action::Forward);
    assert_eq!(out, eth().ipv4(CLIENT, pod(1)).ttl(63).udp(5353, 8080).payload(b"q").build());
    let backend6: Ipv6Addr = "fd00:0:0:128::11".parse().unwrap();
    let (v, out) = run(&mut e, eth().ipv6(CLIENT6, VIP6).tcp(1, 80).syn().build());
    assert_eq!(v, Action::Forward);
    assert_eq!(out, eth().ipv6(CLIENT6, backend6).ttl(63).tcp(1, 8080).syn().build());
}

#[test]
fn a_tracked_flow_keeps_its_backend_when_backends_are_added() {
    let mut e = engine(&[(VIP.into(), 6, vec![pod(0).into()])]);
    let packet = || eth().ipv4(CLIENT, VIP).tcp(46000, 80).ack(1).payload(b"GET").build();
    assert_eq!(next_hop(run(&mut e, packet())), IpAddr::from(pod(0)));
    e.set_tables(tables(&[(VIP.into(), 6, (0..8).map(|i| pod(i).into()).collect())]));
    for _ in 0..5 {
        assert_eq!(next_hop(run(&mut e, packet())), IpAddr::from(pod(0)));
    }
}

/// 1000 new flows over 3 backends: each gets a third, within ±15%.
#[test]
fn maglev_spreads_new_flows_evenly() {
    let pods: Vec<IpAddr> = (0..3).map(|i| pod(i).into()).collect();
    let mut e = engine(&[(VIP.into(), 6, pods.clone())]);
    let mut count: HashMap<IpAddr, u32> = HashMap::new();
    for port in 0..1000u16 {
        let out = run(&mut e, eth().ipv4(CLIENT, VIP).tcp(20000 + port, 80).syn().build());
        *count.entry(next_hop(out)).or_default() += 1;
    }
    for p in &pods {
        let n = f64::from(count[p]);
        assert!((n - 333.3).abs() <= 0.15 * 333.3, "{p} got {n} of 1000 flows: {count:?}");
    }
}

#[test]
fn other_traffic_passes_and_bad_input_is_dropped_with_its_reason() {
    let mut e = engine(&[
        (VIP.into(), 6, vec![]),
        (IpAddr::from(Ipv4Addr::new(198, 19, 0, 11)), 6, vec![pod(0).into()]),
    ]);
    let (v, _) = run(&mut e, eth().ipv4(CLIENT, pod(3)).tcp(1, 22).build());
    assert_eq!(v, Action::Pass, "not a service");
    // A service without backends refuses: TCP with a RST, UDP with port unreachable.
    let (v, out) = run(&mut e, eth().ipv4(CLIENT, VIP).tcp(1, 80).syn().build());
    assert_eq!(v, Action::Reply { len: 54 });
    let back = || eth().src_mac(DST_MAC).dst_mac(SRC_MAC).ipv4(VIP, CLIENT);
    assert_eq!(out[..54], back().tcp(80, 1).seq(0).rst().ack(2).window(0).build()[..]);
    let mut udp = engine(&[(VIP.into(), 17, vec![])]);
    let datagram = eth().ipv4(CLIENT, VIP).udp(5353, 80).payload(&[7; 30]).build();
    let (v, out) = run(&mut udp, datagram.clone());
    assert_eq!(v, Action::Reply { len: 70 });
    assert_eq!(out[..70], back().icmp(3, 3, 0).payload(&datagram[14..42]).build()[..]);
    let (v, _) = run(&mut udp, eth().ipv4(CLIENT, VIP).udp(5353, 80).build());
    assert_eq!(v, Action::Drop(DropReason::ServiceWithoutBackends), "too short to hold the answer");
    let mut bad = eth().ipv4(CLIENT, VIP).tcp(1, 80).build();
    bad[14] = 0x44;
    assert_eq!(run(&mut e, bad).0, Action::Drop(DropReason::Ipv4BadHeaderLength));
    let (v, _) =
        run(&mut e, eth().ipv4(CLIENT, Ipv4Addr::new(198, 19, 0, 11)).ttl(1).tcp(1, 80).syn().build());
    assert_eq!(v, Action::Drop(DropReason::TtlExceeded));
    let fragment = eth().ipv4(CLIENT, VIP).fragment4(1480, false, 1).protocol(6).payload(&[0; 8]).build();
    assert_eq!(run(&mut e, fragment).0, Action::Drop(DropReason::Ipv4Fragment));
    assert_eq!(run(&mut e, vec![0; 10]).0, Action::Drop(DropReason::EthernetTruncated));
}

/// The control plane publishes 200 table versions while a worker processes packets of
/// long-lived flows and new flows, the two overlapping (the worker starts first and stops
/// after the last publish): the worker sees many versions, every packet is forwarded, every
/// new flow goes to a backend of the version it saw (never a half-built table), and every
/// long-lived flow keeps its first backend throughout.
#[test]
fn table_swaps_under_traffic_lose_nothing() {
    let shared = SharedTables::new((*tables(&[(VIP.into(), 6, vec![pod(0).into(), pod(1).into()])])).clone());
    let started = Arc::new(std::sync::Barrier::new(2));
    let publisher = {
        let (shared, started) = (shared.clone(), started.clone());
        std::thread::spawn(move || {
            started.wait();
            for n in 0..200u8 {
                let pods = (0..2 + n % 6).map(|i| pod(i).into()).collect();
                shared.publish((*tables(&[(VIP.into(), 6, pods)])).clone());
                std::thread::yield_now();
            }
        })
    };
    let mut e = Engine::new(shared.current(), 1 << 16, Timeouts::default());
    let mut first: HashMap<u16, IpAddr> = HashMap::new();
    let mut versions = std::collections::HashSet::new();
    started.wait();
    let mut i = 0u32;
    while !publisher.is_finished() || i < 20_000 {
        e.refresh(&shared);
        versions.insert(std::ptr::from_ref(e.tables()) as usize);
        let in_this_version: Vec<IpAddr> =
            e.tables().services.values().flat_map(|s| s.backends().map(|b| b.addr)).collect();
        // Ports 1..=50 are long-lived flows; the rest are new flows.
        let port = if i.is_multiple_of(2) { 1 + (i / 2 % 50) as u16 } else { 1000 + (i % 30_000) as u16 };
        let backend = next_hop(run(&mut e, eth().ipv4(CLIENT, VIP).tcp(port, 80).ack(1).build()));
        if port <= 50 {
            assert_eq!(*first.entry(port).or_insert(backend), backend, "flow {port} moved");
        } else if i < 30_000 {
            // A port not used before: a new flow.
            assert!(
                in_this_version.contains(&backend),
                "new flow {port} went to {backend}, not in its table"
            );
        }
        i += 1;
    }
    publisher.join().unwrap();
    assert_eq!(first.len(), 50);
    assert!(versions.len() >= 10, "the worker saw {} table versions", versions.len());
}

/// A pod's port-unreachable about a DNATed datagram reaches the client as if the frontend had
/// sent it, quote included (byte-identical to one built from scratch); an error about no flow,
/// sent to a frontend, is dropped and counted.
#[test]
fn icmp_errors_follow_their_flow() {
    let mut e = engine(&[(VIP.into(), 17, vec![pod(1).into()])]);
    let (v, dnated) = run(&mut e, eth().ipv4(CLIENT, VIP).udp(5353, 80).payload(b"q").build());
    assert_eq!(v, Action::Forward);
    let unreachable =
        |src, dst, quote: &[u8], ttl| eth().ipv4(src, dst).ttl(ttl).icmp(3, 3, 0).payload(quote).build();
    let (v, out) = run(&mut e, unreachable(pod(1), CLIENT, &dnated[14..14 + 28], 64));
    assert_eq!(v, Action::Forward);
    let as_sent = eth().ipv4(CLIENT, VIP).ttl(63).udp(5353, 80).payload(b"q").build();
    assert_eq!(out, unreachable(VIP, CLIENT, &as_sent[14..14 + 28], 63));

    let stranger = eth().ipv4(CLIENT, VIP).udp(1, 9).payload(b"?").build();
    let (v, _) = run(&mut e, unreachable(pod(2), VIP, &stranger[14..14 + 28], 64));
    assert_eq!(v, Action::Drop(DropReason::UnsolicitedIcmpError));
    let (v, _) = run(&mut e, unreachable(pod(2), pod(3), &stranger[14..14 + 28], 64));
    assert_eq!(v, Action::Pass, "not about a service");
}

/// sessionAffinity ClientIP: a client's new flows stick to its backend until the timeout has
/// passed since its last new flow; other clients spread.
#[test]
fn client_ip_affinity_sticks_until_its_timeout() {
    let pods: Vec<IpAddr> = (0..4).map(|i| pod(i).into()).collect();
    let service =
        Service::new(backends(&pods), ServiceConfig { affinity_timeout: Some(10), ..MAGLEV }).unwrap();
    let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 6 };
    let mut e = Engine::new(one_service(frontend, service, LocalNode::default()), 1024, Timeouts::default());
    let syn = |client: Ipv4Addr, port: u16| eth().ipv4(client, VIP).tcp(port, 80).syn().build();
    let at = |e: &mut Engine, frame: Vec<u8>, now: u64| {
        let mut f = frame;
        assert_eq!(e.process(&mut f, now), Action::Forward);
        next_hop((Action::Forward, f))
    };
    let first = at(&mut e, syn(CLIENT, 1000), 0);
    for port in 1001..1050 {
        assert_eq!(at(&mut e, syn(CLIENT, port), 5), first, "within the timeout");
    }
    let others: std::collections::HashSet<IpAddr> =
        (0..40).map(|i| at(&mut e, syn(Ipv4Addr::new(198, 18, 0, 100 + i), 2000), 5)).collect();
    assert!(others.len() > 1, "other clients are not pinned to one backend");
    let later: std::collections::HashSet<IpAddr> =
        (0..40).map(|i| at(&mut e, syn(CLIENT, 3000 + i), 100 + 20 * u64::from(i))).collect();
    assert!(later.len() > 1, "after the timeout a new backend may be chosen");
}

/// A terminating backend (weight 0) keeps the flows it has and gets no new ones.
#[test]
fn a_terminating_backend_keeps_only_its_existing_flows() {
    let pods: Vec<IpAddr> = (0..2).map(|i| pod(i).into()).collect();
    let mut e = engine(&[(VIP.into(), 6, pods.clone())]);
    let packet = |port: u16| eth().ipv4(CLIENT, VIP).tcp(port, 80).ack(1).build();
    // Flows until one lands on pod 0.
    let port = (1..100).find(|p| next_hop(run(&mut e, packet(*p))) == pods[0]).expect("a flow on pod 0");
    let mut terminating = backends(&pods);
    terminating[0].weight = 0;
    let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 6 };
    e.set_tables(one_service(frontend, Service::new(terminating, MAGLEV).unwrap(), LocalNode::default()));
    assert_eq!(next_hop(run(&mut e, packet(port))), pods[0], "the existing flow stays");
    for p in 1000..1100 {
        assert_eq!(next_hop(run(&mut e, packet(p))), pods[1], "new flows avoid the terminating backend");
    }
}

/// The node's address, as seen by an external client and by the other node.
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE_PORT: u16 = 30080;

/// A NodePort frontend over pod 0 (here) and pod 1 (on another node), for a node whose cluster
/// is 198.18.128.0/17.
fn node_port(policy: TrafficPolicy, algorithm: Algorithm) -> (Frontend, Arc<Tables>) {
    let mut b = backends(&[pod(0).into(), pod(1).into()]);
    b[1].local = false;
    let frontend = Frontend { addr: NODE.into(), port: NODE_PORT, protocol: 6 };
    let config = ServiceConfig { kind: FrontendKind::NodePort, traffic_policy: policy, algorithm, ..MAGLEV };
    let node = LocalNode {
        masquerade_v4: Some(NODE.into()),
        masquerade_v6: None,
        cluster_prefixes: vec!["198.18.128.0/17".parse().unwrap()],
        ..LocalNode::default()
    };
    (frontend, one_service(frontend, Service::new(b, config).unwrap(), node))
}

/// Flows from external clients until one goes to `backend`; returns its client port and frame.
fn flow_to(e: &mut Engine, client: Ipv4Addr, backend: Ipv4Addr) -> (u16, Vec<u8>) {
    (1000..2000u16)
        .find_map(|port| {
            let (v, out) = run(e, eth().ipv4(client, NODE).tcp(port, NODE_PORT).syn().build());
            (v == Action::Forward && next_hop((v, out.clone())) == IpAddr::from(backend))
                .then_some((port, out))
        })
        .expect("a flow to the backend")
}

/// NodePort from outside to a backend on another node is masqueraded: the backend sees the
/// node as the client, from a port of the SNAT range; its reply goes back to the client from
/// the node port. Both byte-identical to frames built from scratch.
#[test]
fn node_port_masquerades_to_a_remote_backend_and_translates_the_reply_back() {
    let (_, t) = node_port(TrafficPolicy::Cluster, Algorithm::default());
    let mut e = Engine::new(t, 1024, Timeouts::default());
    let (port, out) = flow_to(&mut e, CLIENT, pod(1));
    let p = skiff_wire::layers::parse(&out).unwrap();
    let flow = p.flow(&out).unwrap();
    assert_eq!(flow.src, IpAddr::from(NODE), "masqueraded");
    assert!(SNAT_PORTS.contains(&flow.src_port), "source port {} from the SNAT range", flow.src_port);
    let snat = flow.src_port;
    assert_eq!(out, eth().ipv4(NODE, pod(1)).ttl(63).tcp(snat, 8080).syn().build());

    let reply = |src, sport, dst, dport, ttl| {
        eth().ipv4(src, dst).ttl(ttl).tcp(sport, dport).syn().ack(1).payload(b"hi").build()
    };
    let (v, out) = run(&mut e, reply(pod(1), 8080, NODE, snat, 64));
    assert_eq!(v, Action::Forward);
    assert_eq!(out, reply(NODE, NODE_PORT, CLIENT, port, 63), "reverse NAT of both ends");

    // A local backend keeps the client's address.
    let (port, out) = flow_to(&mut e, CLIENT, pod(0));
    assert_eq!(out, eth().ipv4(CLIENT, pod(0)).ttl(63).tcp(port, 8080).syn().build());
    // So does a client inside the cluster, even to the remote backend.
    let (port, out) = flow_to(&mut e, pod(7), pod(1));
    assert_eq!(out, eth().ipv4(pod(7), pod(1)).ttl(63).tcp(port, 8080).syn().build());
}

/// With egress masquerading, a pod's new flow out of the cluster leaves with the node's address
/// and a port of the SNAT range, and its reply comes back to the pod; inside the cluster, or
/// from an address that is no pod of this node, nothing is translated.
#[test]
fn pods_flows_out_of_the_cluster_are_masqueraded() {
    let node = LocalNode {
        masquerade_v4: Some(NODE.into()),
        cluster_prefixes: vec!["198.18.128.0/17".parse().unwrap()],
        pod_cidrs: vec!["198.18.128.0/24".parse().unwrap()],
        egress_masquerade_v4: true,
        ..LocalNode::default()
    };
    let mut e = Engine::new(Arc::new(Tables { node, ..Tables::default() }), 1024, Timeouts::default());
    let (v, out) = run(&mut e, eth().ipv4(pod(0), CLIENT).tcp(40000, 443).syn().build());
    assert_eq!(v, Action::Forward);
    let flow = skiff_wire::layers::parse(&out).unwrap().flow(&out).unwrap();
    assert!(SNAT_PORTS.contains(&flow.src_port), "source port {} from the SNAT range", flow.src_port);
    assert_eq!(out, eth().ipv4(NODE, CLIENT).ttl(63).tcp(flow.src_port, 443).syn().build());
    let (v, back) = run(&mut e, eth().ipv4(CLIENT, NODE).tcp(443, flow.src_port).syn().ack(1).build());
    assert_eq!(
        (v, back),
        (Action::Forward, eth().ipv4(CLIENT, pod(0)).ttl(63).tcp(443, 40000).syn().ack(1).build())
    );
    let inside = eth().ipv4(pod(0), Ipv4Addr::new(198, 18, 129, 10)).tcp(40001, 80).syn().build();
    assert_eq!(run(&mut e, inside).0, Action::Pass, "to another node's pod: not masqueraded");
    let not_a_pod = eth().ipv4(Ipv4Addr::new(198, 18, 0, 7), CLIENT).tcp(40002, 80).syn().build();
    assert_eq!(run(&mut e, not_a_pod).0, Action::Pass, "not this node's pod");
}

/// An ICMP error from the remote backend about a masqueraded flow reaches the client about the
/// packet the client sent.
#[test]
fn icmp_errors_about_masqueraded_flows_are_translated_at_both_ends() {
    let (_, t) = node_port(TrafficPolicy::Cluster, Algorithm::default());
    let mut e = Engine::new(t, 1024, Timeouts::default());
    let (port, out) = flow_to(&mut e, CLIENT, pod(1));
    let error =
        |src, dst, quote: &[u8], ttl| eth().ipv4(src, dst).ttl(ttl).icmp(3, 4, 1400).payload(quote).build();
    let (v, translated) = run(&mut e, error(pod(1), NODE, &out[14..14 + 40], 64));
    assert_eq!(v, Action::Forward);
    let as_sent = eth().ipv4(CLIENT, NODE).ttl(63).tcp(port, NODE_PORT).syn().build();
    assert_eq!(translated, error(NODE, CLIENT, &as_sent[14..14 + 40], 63));
}

/// Masquerading ports: every concurrent flow to one backend gets its own, from the worker's
/// share of the range only; when the share is used up, new flows are dropped with
/// `NatPortExhausted` and existing ones keep working.
#[test]
fn snat_ports_never_collide_and_stay_in_the_workers_share() {
    let (_, t) = node_port(TrafficPolicy::Cluster, Algorithm::default());
    let workers = 1500; // 4536 ports: a share of 3 or 4 each
    let mut e = Engine::new(t, 1 << 16, Timeouts::default());
    e.set_partition(Partition { index: 7, count: workers });
    let mut ports = std::collections::HashSet::new();
    let mut exhausted = 0;
    for client in 0..200u16 {
        let c = Ipv4Addr::from(u32::from(CLIENT) + u32::from(client));
        // As the flows' owner: handed over by whichever worker received them.
        let mut out = eth().ipv4(c, NODE).tcp(5000, NODE_PORT).syn().build();
        match e.process_handed(&mut out, 0, None) {
            Action::Forward => {
                let flow = skiff_wire::layers::parse(&out).unwrap().flow(&out).unwrap();
                if flow.dst == IpAddr::from(pod(1)) {
                    assert_eq!(flow.src_port % workers, 7, "port {} outside the share", flow.src_port);
                    assert!(ports.insert(flow.src_port), "port {} given twice", flow.src_port);
                }
            }
            Action::Drop(DropReason::NatPortExhausted) => exhausted += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ports.len() == 3 || ports.len() == 4, "the whole share used: {ports:?}");
    assert!(exhausted > 50, "{exhausted} flows found no port");
}

/// Several workers: whichever worker a NIC's hash gives a frame, a flow's request and its reply
/// (DNAT only, or masqueraded) meet at one owner, the only worker that tracks the flow; a
/// worker that is not the owner hands the frame over untouched, and the owner never hands on.
#[test]
fn both_directions_of_a_flow_meet_at_its_owner() {
    let (_, t) = node_port(TrafficPolicy::Cluster, Algorithm::default());
    let mut workers: Vec<Engine> = (0..3)
        .map(|index| {
            let mut e = Engine::new(t.clone(), 1024, Timeouts::default());
            e.set_partition(Partition { index, count: 3 });
            e
        })
        .collect();
    // Runs a frame arriving at worker `first` to its end; returns the verdict, the frame and
    // the worker that processed it.
    let mut deliver = |first: usize, input: Vec<u8>| {
        let mut frame = input.clone();
        match workers[first].process(&mut frame, 0) {
            Action::Handoff { worker } => {
                assert_eq!(frame, input, "handed over untouched");
                let owner = usize::from(worker);
                assert_ne!(owner, first);
                let v = workers[owner].process_handed(&mut frame, 0, None);
                (v, frame, owner)
            }
            v => (v, frame, first),
        }
    };
    let mut handed = 0;
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..300u16 {
        let (client, port) = (Ipv4Addr::from(u32::from(CLIENT) + u32::from(i % 7)), 1000 + i);
        let syn = eth().ipv4(client, NODE).tcp(port, NODE_PORT).syn().build();
        let (v, out, owner) = deliver(usize::from(i % 3), syn);
        assert_eq!(v, Action::Forward);
        let flow = skiff_wire::layers::parse(&out).unwrap().flow(&out).unwrap();
        let (IpAddr::V4(backend), IpAddr::V4(src)) = (flow.dst, flow.src) else { panic!("IPv4") };
        let reply = eth().ipv4(backend, src).tcp(8080, flow.src_port).syn().ack(1).build();
        // The reply arrives at another worker than the request did.
        let (v, back, reply_owner) = deliver(usize::from((i + 1) % 3), reply);
        assert_eq!((v, reply_owner), (Action::Forward, owner), "flow {i}: reply at its owner");
        assert_eq!(back, eth().ipv4(NODE, client).ttl(63).tcp(NODE_PORT, port).syn().ack(1).build());
        if owner != usize::from(i % 3) {
            handed += 1;
        }
        owners.insert(owner);
    }
    assert!(handed > 100, "most requests arrive away from their owner: {handed} of 300");
    assert_eq!(owners.len(), 3, "every worker owns flows");
}

/// externalTrafficPolicy Local: external clients reach only this node's backends, keep their
/// address, and are dropped when there is none here; clients inside the cluster still use every
/// backend.
#[test]
fn external_traffic_policy_local() {
    let (frontend, t) = node_port(TrafficPolicy::Local, Algorithm::default());
    let mut e = Engine::new(t.clone(), 1024, Timeouts::default());
    for port in 1000..1100 {
        let (v, out) = run(&mut e, eth().ipv4(CLIENT, NODE).tcp(port, NODE_PORT).syn().build());
        assert_eq!(out, eth().ipv4(CLIENT, pod(0)).ttl(63).tcp(port, 8080).syn().build(), "{v:?}");
    }
    let inside: std::collections::HashSet<IpAddr> = (1000..1100)
        .map(|port| next_hop(run(&mut e, eth().ipv4(pod(7), NODE).tcp(port, NODE_PORT).syn().build())))
        .collect();
    assert_eq!(inside.len(), 2, "internal clients use both backends");
    let connect_time = t.services[&frontend].internal_backends().count();
    assert_eq!(connect_time, 2, "socket-LB's clients are inside the cluster");

    let mut remote_only = backends(&[pod(1).into()]);
    remote_only[0].local = false;
    let service = Service::new(remote_only, *t.services[&frontend].config()).unwrap();
    e.set_tables(one_service(frontend, service, t.node.clone()));
    let (v, _) = run(&mut e, eth().ipv4(CLIENT, NODE).tcp(3000, NODE_PORT).syn().build());
    assert_eq!(v, Action::Drop(DropReason::NoLocalBackend));
}

/// internalTrafficPolicy Local: a ClusterIP sends every client to this node's backends only
/// (socket-LB's choice at connect time too, which also leaves out terminating ones).
#[test]
fn internal_traffic_policy_local() {
    let mut b = backends(&[pod(0).into(), pod(1).into(), pod(2).into(), pod(3).into()]);
    b[0].local = false;
    b[3].weight = 0;
    let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 6 };
    let config = ServiceConfig { traffic_policy: TrafficPolicy::Local, ..MAGLEV };
    let mut e = Engine::new(
        one_service(frontend, Service::new(b.clone(), config).unwrap(), LocalNode::default()),
        1024,
        Timeouts::default(),
    );
    let reached: std::collections::HashSet<IpAddr> = (1000..1300)
        .map(|port| next_hop(run(&mut e, eth().ipv4(pod(7), VIP).tcp(port, 80).syn().build())))
        .collect();
    assert_eq!(reached, [pod(1).into(), pod(2).into()].into_iter().collect());
    let service = Service::new(b, config).unwrap();
    let mut connect_time: Vec<IpAddr> = service.internal_backends().map(|b| b.addr).collect();
    connect_time.sort_unstable();
    assert_eq!(connect_time, [IpAddr::from(pod(1)), pod(2).into()]);
}

/// The random algorithm spreads new flows like Maglev does (each of 3 within ±15% of even) and
/// keeps each flow on its first backend. Its draws are seeded by the clock, so the share is
/// binomial: 10000 flows put the bound at 10 standard deviations, where 1000 would fail on chance
/// once in a few hundred runs.
#[test]
fn random_spreads_new_flows_and_keeps_established_ones() {
    let pods: Vec<IpAddr> = (0..3).map(|i| pod(i).into()).collect();
    let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 6 };
    let config = ServiceConfig { algorithm: Algorithm::Random, ..MAGLEV };
    let service = Service::new(backends(&pods), config).unwrap();
    let mut e =
        Engine::new(one_service(frontend, service, LocalNode::default()), 1 << 14, Timeouts::default());
    let mut count: HashMap<IpAddr, u32> = HashMap::new();
    for port in 0..10_000u16 {
        let first = next_hop(run(&mut e, eth().ipv4(CLIENT, VIP).tcp(20000 + port, 80).syn().build()));
        *count.entry(first).or_default() += 1;
        let again = next_hop(run(&mut e, eth().ipv4(CLIENT, VIP).tcp(20000 + port, 80).ack(1).build()));
        assert_eq!(first, again);
    }
    for p in &pods {
        let n = f64::from(count[p]);
        assert!((n - 3333.3).abs() <= 0.15 * 3333.3, "{p} got {n} of 10000 flows: {count:?}");
    }
}

/// A client reusing its port towards a second frontend with the same backend: the backend
/// would see one 4-tuple for two connections. While the first lives, the second's client port
/// is remapped (to one whose replies this worker owns); once the first has finished, a new
/// SYN takes its tuple over.
#[test]
fn a_port_reused_towards_another_frontend_never_mixes_two_flows() {
    let vips = [VIP, Ipv4Addr::new(198, 19, 0, 11), Ipv4Addr::new(198, 19, 0, 12)];
    let mut e = engine(&vips.map(|vip| (vip.into(), 6, vec![pod(0).into()])));
    e.set_partition(Partition { index: 0, count: 2 });
    let syn = |vip, port| eth().ipv4(CLIENT, vip).tcp(port, 80).syn().build();
    // A port whose flows this worker owns (the other worker's are handed over).
    let port = (40000..).find(|&p| run(&mut e, syn(vips[0], p)).0 == Action::Forward).unwrap();

    let (v, out) = run(&mut e, syn(vips[1], port));
    assert_eq!(v, Action::Forward);
    let p = skiff_wire::layers::parse(&out).unwrap();
    let skiff_wire::layers::L4::Tcp { src_port: remapped, .. } = p.l4 else { panic!("TCP out: {p:?}") };
    assert!(SNAT_PORTS.contains(&remapped), "the second connection's port is remapped: {remapped}");
    assert_eq!(out, eth().ipv4(CLIENT, pod(0)).ttl(63).tcp(remapped, 8080).syn().build());
    // Each reply reaches its own connection, from its own frontend, on this worker.
    let syn_ack = |port| eth().ipv4(pod(0), CLIENT).tcp(8080, port).syn().ack(1).build();
    let answered = |vip| eth().ipv4(vip, CLIENT).ttl(63).tcp(80, port).syn().ack(1).build();
    assert_eq!(run(&mut e, syn_ack(port)), (Action::Forward, answered(vips[0])));
    assert_eq!(run(&mut e, syn_ack(remapped)), (Action::Forward, answered(vips[1])));

    // The first connection is reset; a third frontend's SYN from the same port takes its tuple.
    run(&mut e, eth().ipv4(CLIENT, vips[0]).tcp(port, 80).rst().build());
    let (v, out) = run(&mut e, syn(vips[2], port));
    assert_eq!((v, out), (Action::Forward, eth().ipv4(CLIENT, pod(0)).ttl(63).tcp(port, 8080).syn().build()));
    assert_eq!(run(&mut e, syn_ack(port)), (Action::Forward, answered(vips[2])));
    assert_eq!(run(&mut e, syn_ack(remapped)), (Action::Forward, answered(vips[1])), "the second lives on");
}

/// A SYN on the tuple of a finished connection opens a new one, balanced afresh: a client that
/// reuses its port is not sent to the backend its old connection had.
#[test]
fn a_syn_after_a_reset_is_balanced_afresh() {
    let mut e = engine(&[(VIP.into(), 6, vec![pod(0).into()])]);
    let syn = || eth().ipv4(CLIENT, VIP).tcp(47000, 80).syn().build();
    assert_eq!(next_hop(run(&mut e, syn())), IpAddr::from(pod(0)));
    e.set_tables(tables(&[(VIP.into(), 6, vec![pod(1).into()])]));
    assert_eq!(next_hop(run(&mut e, syn())), IpAddr::from(pod(0)), "a retransmitted SYN keeps its backend");
    run(&mut e, eth().ipv4(pod(0), CLIENT).tcp(8080, 47000).rst().build());
    assert_eq!(next_hop(run(&mut e, syn())), IpAddr::from(pod(1)), "after the reset");
}

/// A client that reused a reset NAT'd flow's port to connect to the backend itself (socket-LB
/// translated its connect): the backend's SYN-ACK on the old flow's reply tuple is not the old
/// flow's. It is not translated back to the service; the old flow goes.
#[test]
fn a_syn_ack_on_a_reset_flows_reply_tuple_is_not_translated() {
    let mut e = engine(&[(VIP.into(), 6, vec![pod(0).into()])]);
    run(&mut e, eth().ipv4(CLIENT, VIP).tcp(47000, 80).syn().build());
    let syn_ack = || eth().ipv4(pod(0), CLIENT).tcp(8080, 47000).syn().ack(1).build();
    assert_eq!(run(&mut e, syn_ack()).0, Action::Forward, "the NAT'd flow's own answer");
    run(&mut e, eth().ipv4(CLIENT, VIP).tcp(47000, 80).rst().build());
    assert_eq!(run(&mut e, syn_ack()).0, Action::Pass, "a new connection's answer");
    assert!(e.conntrack().is_empty(), "the reset flow is gone");
}

/// Tables where `pod(1)` admits only identity 300 (`pod(0)`) on TCP 8080, and `pod(2)` may
/// send nothing (egress isolated); the service at `VIP` has `pod(1)` as its backend.
fn policy_tables() -> Arc<Tables> {
    use skiff_common::identity::Identity;
    use skiff_engine::policy::{EndpointPolicy, Entry, Policy, PortRange, Rules};
    let mut policy = Policy::default();
    let mut ingress = Rules::default();
    let ports = PortRange { protocol: 6, first: 8080, last: 8080 };
    ingress.insert(Identity(300), Entry { ports, deny: false, rule: 4 });
    for (i, identity, ingress, egress) in [
        (0, 300, None, None),
        (1, 301, Some(Arc::new(ingress)), None),
        (2, 302, None, Some(Arc::new(Rules::default()))),
    ] {
        let addr = IpAddr::from(pod(i));
        policy.ipcache.insert(addr.into(), Identity(identity));
        policy
            .endpoints
            .insert(addr, Arc::new(EndpointPolicy { identity: Identity(identity), ingress, egress }));
    }
    let service = Service::new(backends(&[pod(1).into()]), MAGLEV).unwrap();
    let services = [(Frontend { addr: VIP.into(), port: 80, protocol: 6 }, service)].into_iter().collect();
    Arc::new(Tables { services, policy: Arc::new(policy), ..Tables::default() })
}

#[test]
fn policy_allows_tracks_and_denies_new_flows() {
    let mut e = Engine::new(policy_tables(), 1024, Timeouts::default());
    // Allowed: tracked untranslated, and its reply follows the flow.
    let (v, out) = run(&mut e, eth().ipv4(pod(0), pod(1)).tcp(40000, 8080).syn().build());
    assert_eq!(
        (v, out),
        (Action::Forward, eth().ipv4(pod(0), pod(1)).ttl(63).tcp(40000, 8080).syn().build())
    );
    let reply = eth().ipv4(pod(1), pod(0)).tcp(8080, 40000).syn().ack(1).build();
    assert_eq!(run(&mut e, reply).0, Action::Forward, "the reply of an allowed flow");
    // Another port, another peer, another protocol: no rule allows them.
    for denied in [
        eth().ipv4(pod(0), pod(1)).tcp(40001, 81).syn().build(),
        eth().ipv4(CLIENT, pod(1)).tcp(40002, 8080).syn().build(),
        eth().ipv4(pod(0), pod(1)).udp(40003, 8080).payload(b"q").build(),
        eth().ipv4(pod(0), pod(1)).echo_request(1, 1).build(),
    ] {
        assert_eq!(run(&mut e, denied).0, Action::Drop(DropReason::PolicyDenied));
    }
    // Egress isolation at the sender: pod(2) reaches nobody, not even an open pod.
    let (v, _) = run(&mut e, eth().ipv4(pod(2), pod(0)).udp(5000, 53).payload(b"q").build());
    assert_eq!(v, Action::Drop(DropReason::PolicyDenied));
    // A service flow is judged towards its backend: allowed for pod(0), not for the client.
    assert_eq!(
        next_hop(run(&mut e, eth().ipv4(pod(0), VIP).tcp(40010, 80).syn().build())),
        IpAddr::from(pod(1))
    );
    let (v, _) = run(&mut e, eth().ipv4(CLIENT, VIP).tcp(40011, 80).syn().build());
    assert_eq!(v, Action::Drop(DropReason::PolicyDenied));
    // Traffic between addresses no policy selects passes to the kernel as before.
    assert_eq!(run(&mut e, eth().ipv4(CLIENT, pod(0)).tcp(1, 2).syn().build()).0, Action::Pass);
}

/// A new flow from the tunnel carries its sender's identity: it must be the one this node
/// gives the source address (nodes that number identities differently fail closed); then
/// policy judges it as any flow. `pod(1)` admits only 300, `pod(0)`'s identity.
#[test]
fn a_tunnelled_flow_must_carry_the_identity_of_its_source() {
    use skiff_common::identity::Identity;
    let mut e = Engine::new(policy_tables(), 1024, Timeouts::default());
    let remote = Ipv4Addr::new(198, 18, 129, 10);
    let syn = |src, port| eth().ipv4(src, pod(1)).tcp(port, 8080).syn().build();
    let (mut agreed, mut forged, mut world) = (syn(pod(0), 40000), syn(remote, 40001), syn(remote, 40002));
    assert_eq!(
        e.process_tunnelled(&mut agreed, 0, Identity(300)),
        Action::Forward,
        "300, as the ipcache says"
    );
    assert_eq!(
        e.process_tunnelled(&mut forged, 0, Identity(300)),
        Action::Drop(DropReason::TunnelIdentityMismatch),
        "300 claimed for an address this node knows as the world's"
    );
    assert_eq!(
        e.process_tunnelled(&mut world, 0, Identity::WORLD),
        Action::Drop(DropReason::PolicyDenied),
        "the world's, judged as the world"
    );
}

/// What observers hear: a service flow's start (translated to its backend) and first reply
/// (from the frontend again), and its end with both directions' counts; a policy verdict
/// with the identities and the deciding rule and direction, allowed and denied. Nothing per
/// forwarded packet.
#[test]
fn observers_hear_each_decision_once() {
    use skiff_common::identity::Identity;
    use skiff_engine::{
        event::{Event, EventKind},
        flow::Tuple,
        policy::Verdict,
    };
    let mut e = Engine::new(policy_tables(), 1024, Timeouts::default());
    let drain = |e: &mut Engine| {
        let mut got: Vec<Event> = Vec::new();
        assert_eq!(e.events().drain(|ev| got.push(ev)), 0, "nothing lost");
        got
    };
    let (client, backend) = (IpAddr::from(pod(0)), IpAddr::from(pod(1)));
    let to_vip = Tuple::new(client, VIP.into(), 6, 40010, 80);
    run(&mut e, eth().ipv4(pod(0), VIP).tcp(40010, 80).syn().build());
    run(&mut e, eth().ipv4(pod(1), pod(0)).tcp(8080, 40010).syn().ack(1).build());
    for _ in 0..3 {
        run(&mut e, eth().ipv4(pod(0), VIP).tcp(40010, 80).ack(1).payload(b"data").build());
    }
    let got = drain(&mut e);
    let kinds: Vec<EventKind> = got.iter().map(|ev| ev.kind).collect();
    let allowed = EventKind::Judged { verdict: Verdict::Allowed(Some(4)), ingress: true };
    assert_eq!(kinds, [allowed, EventKind::Started, EventKind::Replied], "{got:#?}");
    assert_eq!((got[0].src_identity, got[0].dst_identity), (Identity(300), Identity(301)));
    assert_eq!(got[1].tuple, to_vip);
    assert_eq!(got[1].translated, Tuple::new(client, backend, 6, 40010, 8080), "DNAT to the backend");
    assert_eq!(got[1].backend, BackendId(1));
    assert_eq!(got[2].tuple, Tuple::new(backend, client, 6, 8080, 40010));
    assert_eq!(got[2].translated, to_vip.reversed(), "from the frontend again");
    // Denied: the verdict, then the worker's drop (not the engine's to record).
    let (v, _) = run(&mut e, eth().ipv4(CLIENT, VIP).tcp(40011, 80).syn().build());
    assert_eq!(v, Action::Drop(DropReason::PolicyDenied));
    let got = drain(&mut e);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].kind, EventKind::Judged { verdict: Verdict::Denied, ingress: true });
    assert_eq!((got[0].src_identity, got[0].dst_identity), (Identity::WORLD, Identity(301)));
    // The end, with the counts of both directions.
    run(&mut e, eth().ipv4(pod(0), VIP).tcp(40010, 80).rst().build());
    let id = e.conntrack().lookup(&to_vip).unwrap().0;
    e.conntrack().remove(id);
    e.drain_ended(|_| (10, 1000));
    let ended = drain(&mut e).into_iter().find(|ev| ev.kind == EventKind::Ended).expect("an end");
    assert_eq!(
        (ended.tuple, ended.packets),
        (to_vip, 6 + 10),
        "6 here (both ways, the RST too), 10 at the NIC"
    );
}
