//! A fixture table through a worker over in-memory ports: every frame comes out of the port of
//! its next hop byte-identical to the expected frame (built from scratch, with the next hop's
//! MACs), and the drops are counted under their reasons. The same engine runs over AF_XDP and
//! AF_PACKET in the lab (tests/datapath.rs).

use std::{net::Ipv4Addr, sync::Arc};

use skiff_common::{DropReason, endpoint::PodSources, lb::BackendId};
use skiff_engine::{
    conntrack::Timeouts,
    engine::Engine,
    lb::Backend,
    tables::{Frontend, LocalNode, Neighbor, Service, ServiceConfig, Tables},
};
use skiff_fastpath::{io::memory::MemoryPort, worker::Worker};
use skiff_testkit::{Builder, Expect, Fixture, eth};
use skiff_wire::ethernet::Mac;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
/// The node's MACs towards the client (port 0) and the pod (port 1), and theirs.
const NODE_UPLINK: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const NODE_LXC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const POD_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];

fn to_pod() -> Builder {
    eth().src_mac(Mac(NODE_LXC)).dst_mac(Mac(POD_MAC))
}

fn to_client() -> Builder {
    eth().src_mac(Mac(NODE_UPLINK)).dst_mac(Mac(CLIENT_MAC))
}

/// In order: a connection's handshake both ways, a datagram, a refused connection, malformed
/// and foreign frames.
fn fixtures() -> Vec<Fixture> {
    let syn = |b: Builder| b.tcp(40000, 80).seq(1).syn();
    vec![
        Fixture::new(
            "SYN to the ClusterIP is DNATed to the pod",
            syn(eth().ipv4(CLIENT, VIP)).build(),
            Expect::Tx,
        )
        .output(to_pod().ipv4(CLIENT, POD).ttl(63).tcp(40000, 8080).seq(1).syn().build()),
        Fixture::new(
            "the pod's SYN-ACK is reverse-NATed to the client",
            eth().ipv4(POD, CLIENT).tcp(8080, 40000).seq(9).syn().ack(2).build(),
            Expect::Tx,
        )
        .output(to_client().ipv4(VIP, CLIENT).ttl(63).tcp(80, 40000).seq(9).syn().ack(2).build()),
        Fixture::new(
            "data on the connection follows it",
            eth()
                .ipv4(CLIENT, VIP)
                .tcp(40000, 80)
                .seq(2)
                .ack(10)
                .psh()
                .payload(b"GET / HTTP/1.1\r\n\r\n")
                .build(),
            Expect::Tx,
        )
        .output(
            to_pod()
                .ipv4(CLIENT, POD)
                .ttl(63)
                .tcp(40000, 8080)
                .seq(2)
                .ack(10)
                .psh()
                .payload(b"GET / HTTP/1.1\r\n\r\n")
                .build(),
        ),
        Fixture::new(
            "a UDP datagram to the service",
            eth().ipv4(CLIENT, VIP).udp(5000, 53).payload(b"q").build(),
            Expect::Tx,
        )
        .output(to_pod().ipv4(CLIENT, POD).ttl(63).udp(5000, 5353).payload(b"q").build()),
        Fixture::new(
            "a service without backends answers a SYN with a RST",
            syn(eth().ipv4(CLIENT, EMPTY_VIP)).build(),
            Expect::Tx,
        )
        .output(to_client().ipv4(EMPTY_VIP, CLIENT).tcp(80, 40000).seq(0).rst().ack(2).window(0).build()),
        Fixture::new(
            "a bad IPv4 header length is dropped",
            {
                let mut f = eth().ipv4(CLIENT, VIP).tcp(1, 80).build();
                f[14] = 0x44;
                f
            },
            Expect::Drop(DropReason::Ipv4BadHeaderLength),
        ),
        Fixture::new(
            "a TTL that runs out is dropped",
            eth().ipv4(CLIENT, VIP).ttl(1).tcp(40001, 80).syn().build(),
            Expect::Drop(DropReason::TtlExceeded),
        ),
        Fixture::new("a runt frame is dropped", vec![0; 10], Expect::Drop(DropReason::EthernetTruncated)),
        Fixture::new(
            "traffic for no service is left to the kernel",
            eth().ipv4(CLIENT, POD).tcp(1, 22).build(),
            Expect::Pass,
        ),
    ]
}

/// The engine of the fixtures: the service, the pod and the client as next hops.
fn worker_engine() -> Engine {
    let backend = |port, id| Backend { id: BackendId(id), addr: POD.into(), port, weight: 1, local: true };
    let service = |backends| Service::new(backends, ServiceConfig::default()).unwrap();
    let frontend = |addr: Ipv4Addr, port, protocol| Frontend { addr: addr.into(), port, protocol };
    let services = [
        (frontend(VIP, 80, 6), service(vec![backend(8080, 1)])),
        (frontend(VIP, 53, 17), service(vec![backend(5353, 2)])),
        (frontend(EMPTY_VIP, 80, 6), service(vec![])),
    ];
    let next_hops = [
        (CLIENT.into(), Neighbor { port: 0, src_mac: NODE_UPLINK, dst_mac: CLIENT_MAC }),
        (POD.into(), Neighbor { port: 1, src_mac: NODE_LXC, dst_mac: POD_MAC }),
    ];
    let tables = Tables {
        services: services.into_iter().collect(),
        node: LocalNode::default(),
        next_hops: next_hops.into_iter().collect(),
        ..Tables::default()
    };
    Engine::new(Arc::new(tables), 1024, Timeouts::default())
}

/// A worker over two ports: the client's (0) and the pod's (1).
fn worker() -> Worker<MemoryPort> {
    Worker::new(worker_engine(), vec![MemoryPort::new(), MemoryPort::new()])
}

#[test]
fn fixtures_through_a_worker_over_memory_ports() {
    let mut w = worker();
    for f in fixtures() {
        let before = w.stats;
        w.port_mut(0).unwrap().push(&f.input);
        assert_eq!(w.poll(0, 0, &mut ()), 1, "{}", f.description);
        let mut out: Vec<Vec<u8>> = Vec::new();
        for port in w.ports_mut() {
            port.drain_sent(|frame| out.push(frame.to_vec()));
        }
        match f.expect {
            Expect::Tx => {
                assert_eq!(out.len(), 1, "{}: one frame out", f.description);
                assert_eq!(Some(&out[0]), f.output.as_ref(), "{}", f.description);
            }
            Expect::Drop(reason) => {
                assert!(out.is_empty(), "{}", f.description);
                assert_eq!(w.stats.drops_of(reason), before.drops_of(reason) + 1, "{}", f.description);
            }
            Expect::Pass => {
                assert!(out.is_empty(), "{}", f.description);
                assert_eq!(w.stats.not_ours, before.not_ours + 1, "{}", f.description);
            }
            Expect::Redirect | Expect::Judge => unreachable!("not a worker's action"),
        }
    }
}

/// A batch of fixtures in one poll sends the same frames as one at a time, in the same order
/// on each port.
#[test]
fn a_batch_gives_the_same_frames() {
    let (mut one, mut batch) = (worker(), worker());
    /// The frames each of the two ports sent, in order.
    type PerPort = [Vec<Vec<u8>>; 2];
    let sent = |w: &mut Worker<MemoryPort>, by_port: &mut PerPort| {
        for (port, out) in w.ports_mut().zip(by_port.iter_mut()) {
            port.drain_sent(|frame| out.push(frame.to_vec()));
        }
    };
    let (mut singly, mut together) = (PerPort::default(), PerPort::default());
    for f in fixtures() {
        one.port_mut(0).unwrap().push(&f.input);
        one.poll(0, 0, &mut ());
        sent(&mut one, &mut singly);
        batch.port_mut(0).unwrap().push(&f.input);
    }
    batch.poll(0, 0, &mut ());
    sent(&mut batch, &mut together);
    assert!(singly.iter().map(Vec::len).sum::<usize>() >= 4, "the fixtures send frames: {singly:?}");
    assert_eq!(together, singly);
}

/// Ports come and go while the worker runs (a pod's veth attached, then detached): a frame
/// whose next hop is a removed port is dropped as unroutable, and the port inserted again
/// under its number carries the flow on.
#[test]
fn ports_come_and_go_at_run_time() {
    let mut w = worker();
    let [syn, syn_ack, data, ..] = &fixtures()[..] else { panic!("the fixtures") };
    let pod = w.remove_port(1).expect("the pod's port");
    w.port_mut(0).unwrap().push(&syn.input);
    w.poll(0, 0, &mut ());
    assert_eq!(w.stats.drops_of(DropReason::Unroutable), 1, "no port for the pod's next hop");
    w.insert_port(1, pod, None);
    w.port_mut(1).unwrap().push(&syn_ack.input);
    w.port_mut(0).unwrap().push(&data.input);
    w.poll(0, 0, &mut ());
    let mut to_pod = Vec::new();
    w.port_mut(1).unwrap().drain_sent(|f| to_pod.push(f.to_vec()));
    assert_eq!(Some(&to_pod[0]), data.output.as_ref(), "the pod's port carries the flow again");
    assert!(w.remove_port(7).is_none(), "no port 7");
}

/// With more ports than a round has room for, a round takes `ROUND` frames and the next
/// round starts where it stopped: every port is served, none starves.
#[test]
fn a_round_is_bounded_and_every_port_is_served() {
    use skiff_fastpath::{io::BATCH, worker::ROUND};
    let ports = ROUND / BATCH * 2;
    let mut w = Worker::new(worker_engine(), (0..ports).map(|_| MemoryPort::new()).collect());
    // Frames for no one: the engine leaves them to the kernel.
    let foreign = eth().ipv4(CLIENT, Ipv4Addr::new(198, 18, 200, 1)).udp(1, 2).build();
    for port in w.ports_mut() {
        for _ in 0..BATCH {
            port.push(&foreign);
        }
    }
    assert_eq!(w.poll(0, 0, &mut ()), ROUND, "a round's worth");
    assert_eq!(w.poll(0, 0, &mut ()), ROUND, "the ports the first round did not reach");
    assert_eq!(w.poll(0, 0, &mut ()), 0, "all served");
    assert_eq!(w.stats.not_ours, u64::try_from(ports * BATCH).unwrap());
}

/// A port that carries a pod's sources (AF_PACKET: the worker checks them) drops a frame
/// from any other address as spoofed-source, and passes the pod's own.
#[test]
fn a_pods_port_drops_other_sources() {
    let mut w = worker();
    let pod = w.remove_port(1).expect("the pod's port");
    let sources = PodSources { v4: POD.octets(), v6: [0; 16] };
    w.insert_port(1, pod, Some(sources));
    let other = Ipv4Addr::new(198, 18, 128, 99);
    w.port_mut(1).unwrap().push(&eth().ipv4(other, CLIENT).udp(1, 2).build());
    w.port_mut(1).unwrap().push(&eth().ipv4(POD, CLIENT).udp(1, 2).build());
    w.poll(0, 0, &mut ());
    assert_eq!(w.stats.drops_of(DropReason::SpoofedSource), 1, "only the frame from another address");
    assert_eq!(w.stats.received, 2);
}
