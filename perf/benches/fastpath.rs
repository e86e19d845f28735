//! The packet engine's costs: an established flow through DNAT and its reply through reverse
//! NAT (with its backend under network policy, and without), a new flow (a conntrack miss,
//! Maglev pick and conntrack insert), the policy verdict on a new flow at 1000 rules over
//! 10 000 identities against the same rules evaluated one by one, Maglev table builds for
//! 1000 backends at the default and the largest table size, conntrack owned by a worker
//! against shared, and a frame's encapsulation for the tunnel against its plain copy.

use std::{
    collections::HashSet,
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime};
use skiff_common::{
    identity::Identity,
    lb::{BackendId, MAGLEV_TABLE_SIZE, MAGLEV_TABLE_SIZE_MAX},
    tunnel::{GENEVE_PORT, VXLAN_PORT},
};
use skiff_engine::{
    conntrack::{Conntrack, Timeouts},
    engine::{Action, Engine},
    flow::Tuple,
    lb::{Backend, maglev::Maglev},
    policy::{EndpointPolicy, Entry, Policy, PortRange, Rules},
    prefix::PrefixMap,
    tables::{Frontend, Service, ServiceConfig, Tables},
    tunnel::{self, Encap, Overlay, TunnelProtocol},
};
use skiff_testkit::eth;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

/// `n` backends at consecutive pod addresses.
fn backends(n: u32) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend {
            id: BackendId(i + 1),
            addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 10)) + i).into(),
            port: 8080,
            weight: 1,
            local: true,
        })
        .collect()
}

fn engine(capacity: usize) -> Engine {
    engine_with(capacity, Policy::default())
}

fn engine_with(capacity: usize, policy: Policy) -> Engine {
    let service = Service::new(backends(10), ServiceConfig::default()).expect("table");
    let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 6 };
    let services = [(frontend, service)].into_iter().collect();
    let tables = Tables { services, policy: Arc::new(policy), ..Tables::default() };
    Engine::new(Arc::new(tables), capacity, Timeouts::default())
}

/// Every backend under ingress policy that admits the client (identity 300) on 8080.
fn backends_under_policy() -> Policy {
    let mut policy = Policy::default();
    policy.ipcache.insert(IpAddr::from(CLIENT).into(), Identity(300));
    let mut rules = Rules::default();
    let ports = PortRange { protocol: 6, first: 8080, last: 8080 };
    rules.insert(Identity(300), Entry { ports, deny: false, rule: 1 });
    let ingress = Some(Arc::new(rules));
    for b in backends(10) {
        let endpoint = EndpointPolicy { identity: Identity(400), ingress: ingress.clone(), egress: None };
        policy.endpoints.insert(b.addr, Arc::new(endpoint));
    }
    policy
}

/// One established flow: a client packet through DNAT, and the backend's reply through
/// reverse NAT. Each iteration copies both frames into fixed buffers (as a worker's UMEM
/// frames) and processes them: no allocation. Both must be forwarded, before and after.
/// Then the same with the backends under network policy: the verdict is the flow's, kept in
/// conntrack, so established packets should not pay for it; and with flow events off:
/// observers hear of decisions, never of each packet, so they should not pay for them either.
fn established(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/established");
    established_flow(&mut g, "dnat_and_reverse_nat", Policy::default(), true);
    established_flow(&mut g, "under_policy", backends_under_policy(), true);
    established_flow(&mut g, "flow_events_off", Policy::default(), false);
    g.finish();
}

fn established_flow(g: &mut BenchmarkGroup<WallTime>, name: &str, policy: Policy, flow_events: bool) {
    let mut e = engine_with(1024, policy);
    e.events().on = flow_events;
    let request = eth().ipv4(CLIENT, VIP).tcp(45000, 80).ack(1).payload(&[0x41; 64]).build();
    let mut first = request.clone();
    assert_eq!(e.process(&mut first, 0), Action::Forward);
    // The rewritten destination: the backend Maglev chose.
    let backend = Ipv4Addr::new(first[30], first[31], first[32], first[33]);
    let reply = eth().ipv4(backend, CLIENT).tcp(8080, 45000).ack(1).payload(&[0x42; 64]).build();
    let mut answer = reply.clone();
    assert_eq!(e.process(&mut answer, 0), Action::Forward, "the reply is forwarded");
    assert_eq!(&answer[26..30], &VIP.octets(), "reverse-NATed: it comes from the frontend");
    let (mut req, mut rep) = (request.clone(), reply.clone());
    let mut both = |e: &mut Engine| {
        req.copy_from_slice(&request);
        rep.copy_from_slice(&reply);
        (e.process(&mut req, 1), e.process(&mut rep, 1))
    };
    g.bench_function(name, |b| b.iter(|| black_box(both(&mut e))));
    assert_eq!(both(&mut e), (Action::Forward, Action::Forward), "still forwarded after the bench");
}

/// Distinct SYNs per round: within a round no two iterations see the same tuple.
const NEW_FLOWS: u32 = 1 << 18;

/// A new flow every packet: parse, a conntrack miss, Maglev pick, conntrack insert, DNAT. A
/// round takes `NEW_FLOWS` distinct SYNs into a table with room for twice as many (nothing is
/// evicted, no SYN finds an entry: the table fills from empty to half full); between rounds,
/// outside the timing, every flow expires. The table's memory is touched once before the
/// first round, as a running worker's is: the figure is a worker's steady state, not the page
/// faults of a fresh table.
fn new_flow(c: &mut Criterion) {
    let frames: Vec<Vec<u8>> = (0..NEW_FLOWS)
        .map(|i| {
            eth()
                .ipv4(Ipv4Addr::from(u32::from(CLIENT) + (i >> 16)), VIP)
                .tcp(u16::try_from(i & 0xffff).expect("16 bits"), 80)
                .syn()
                .build()
        })
        .collect();
    let mut e = engine(2 * NEW_FLOWS as usize);
    let mut buf = frames[0].clone();
    // A round of `n` new flows, and how many were forwarded; then they all expire.
    let mut round = |e: &mut Engine, n: usize| {
        let started = Instant::now();
        let mut forwarded = 0usize;
        for frame in &frames[..n] {
            buf.copy_from_slice(frame);
            forwarded += usize::from(black_box(e.process(&mut buf, 0)) == Action::Forward);
        }
        let elapsed = started.elapsed();
        assert_eq!((forwarded, e.conntrack().len()), (n, n), "every SYN started a flow of its own");
        e.drain_new_flows(|_| {});
        let ct = e.conntrack();
        ct.gc_step(1 << 30, 2 * NEW_FLOWS as usize, |_| None);
        ct.drain_ended(|_| {});
        assert!(ct.is_empty());
        elapsed
    };
    round(&mut e, NEW_FLOWS as usize);
    c.bench_function("engine/new_flow_maglev_and_ct_insert", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(u64::from(NEW_FLOWS));
                elapsed += round(&mut e, usize::try_from(n).expect("at most NEW_FLOWS"));
                left -= n;
            }
            elapsed
        })
    });
}

/// Identities of the policy bench, and its rules.
const IDENTITIES: u32 = 10_000;
const RULES: u32 = 1000;

/// The verdict on a new flow to an endpoint whose ingress has `RULES` rules, each admitting
/// its own 10 of `IDENTITIES` identities (pods, one address each) on one TCP port, looked up
/// as a worker does (the ipcache for both addresses, then the endpoint's map by peer
/// identity), against the same rules evaluated one by one as a rule list is (the ipcache,
/// then each rule's set of peers and its port, first match wins). Half the flows are allowed.
fn policy_verdict(c: &mut Criterion) {
    let pod = |i: u32| IpAddr::from(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 256 + i));
    let endpoint = IpAddr::from(Ipv4Addr::new(198, 19, 255, 1));
    let port_of = |rule: u32| u16::try_from(1000 + rule % 100).expect("small");
    let mut policy = Policy::default();
    let mut ingress = Rules::default();
    let mut list: Vec<(HashSet<Identity>, PortRange)> = Vec::new();
    for rule in 0..RULES {
        let ports = PortRange { protocol: 6, first: port_of(rule), last: port_of(rule) };
        let peers: HashSet<Identity> = (rule * 10..rule * 10 + 10).map(|i| Identity(256 + i)).collect();
        for &peer in &peers {
            ingress.insert(peer, Entry { ports, deny: false, rule });
        }
        list.push((peers, ports));
    }
    for i in 0..IDENTITIES {
        policy.ipcache.insert(pod(i).into(), Identity(256 + i));
    }
    policy.ipcache.insert(endpoint.into(), Identity(100_000));
    let isolated =
        EndpointPolicy { identity: Identity(100_000), ingress: Some(Arc::new(ingress)), egress: None };
    policy.endpoints.insert(endpoint, Arc::new(isolated));
    // Flows in a scattered order; odd ones on a port their rule does not allow.
    let flows: Vec<(IpAddr, u16)> = (0..IDENTITIES)
        .map(|k| {
            let i = (k * 7919) % IDENTITIES;
            (pod(i), if k % 2 == 0 { port_of(i / 10) } else { 1 })
        })
        .collect();
    let rule_list = |src: IpAddr, port: u16| {
        let peer = policy.ipcache.lookup(src);
        let _ = policy.ipcache.lookup(endpoint);
        list.iter().any(|(peers, ports)| peers.contains(&peer) && ports.first <= port && port <= ports.last)
    };
    for (k, &(src, port)) in flows.iter().enumerate() {
        let allowed = policy.check(src, endpoint, 6, port).is_ok();
        assert_eq!(allowed, k % 2 == 0, "the map's verdict");
        assert_eq!(rule_list(src, port), allowed, "the rule list's verdict");
    }
    let mut g = c.benchmark_group("policy_verdict_1000_rules_10k_identities");
    let mut k = 0usize;
    g.bench_function("identity_map", |b| {
        b.iter(|| {
            k = (k + 1) % flows.len();
            let (src, port) = flows[k];
            black_box(policy.check(black_box(src), endpoint, 6, port))
        })
    });
    g.bench_function("rule_list", |b| {
        b.iter(|| {
            k = (k + 1) % flows.len();
            let (src, port) = flows[k];
            black_box(rule_list(black_box(src), port))
        })
    });
    g.finish();
}

fn maglev_build(c: &mut Criterion) {
    let backends = backends(1000);
    let mut g = c.benchmark_group("maglev_build_1000_backends");
    g.sample_size(10);
    for size in [MAGLEV_TABLE_SIZE, MAGLEV_TABLE_SIZE_MAX] {
        g.bench_function(format!("m{size}"), |b| {
            b.iter(|| Maglev::build(black_box(&backends), size).unwrap())
        });
    }
    g.finish();
}

/// How the reply direction reaches its flow's state: each worker owning its table (what skiff
/// does) against one table shared by every worker, sharded 64 ways behind mutexes, with and
/// without a second thread working the same shards. Each iteration looks up one of 64k
/// established flows and accounts a packet to it.
fn conntrack_ownership(c: &mut Criterion) {
    const FLOWS: u16 = u16::MAX;
    const SHARDS: usize = 64;
    let flow = |i: u16| {
        let t = Tuple::new(CLIENT.into(), VIP.into(), 6, i, 80);
        (t, Tuple::new(VIP.into(), CLIENT.into(), 6, 80, i))
    };
    let shard = |t: &Tuple| usize::from(t.dst_port) % SHARDS;
    // The flows whose reply tuple `keep` accepts.
    let table = |capacity: usize, keep: &dyn Fn(&Tuple) -> bool| {
        let mut ct = Conntrack::new(capacity, Timeouts::default());
        for i in 0..FLOWS {
            let (o, r) = flow(i);
            if keep(&r) {
                ct.insert(o, r, 0x10, BackendId(1), 0).expect("room");
            }
        }
        ct
    };
    let replies: Vec<Tuple> = (0..FLOWS).map(|i| flow(i).1).collect();
    let touch = |ct: &mut Conntrack, t: &Tuple| {
        if let Some((id, dir)) = ct.lookup(t) {
            ct.update(id, dir, 0x10, 64, 1);
        }
    };
    let mut g = c.benchmark_group("conntrack_ownership");
    let mut owned = table(usize::from(FLOWS), &|_| true);
    let mut i = 0usize;
    g.bench_function("owned", |b| {
        b.iter(|| {
            i = (i + 1) % replies.len();
            touch(&mut owned, black_box(&replies[i]));
        })
    });
    let shared: Arc<Vec<Mutex<Conntrack>>> = Arc::new(
        (0..SHARDS).map(|k| Mutex::new(table(usize::from(FLOWS) / SHARDS + 1, &|t| shard(t) == k))).collect(),
    );
    g.bench_function("shared_uncontended", |b| {
        b.iter(|| {
            i = (i + 1) % replies.len();
            let t = black_box(&replies[i]);
            touch(&mut shared[shard(t)].lock().expect("lock"), t);
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (shared, stop, replies) = (shared.clone(), stop.clone(), replies.clone());
        std::thread::spawn(move || {
            let mut j = 0usize;
            while !stop.load(Ordering::Relaxed) {
                j = (j + 7) % replies.len();
                let t = &replies[j];
                touch(&mut shared[shard(t)].lock().expect("lock"), t);
            }
        })
    };
    g.bench_function("shared_contended", |b| {
        b.iter(|| {
            i = (i + 1) % replies.len();
            let t = black_box(&replies[i]);
            touch(&mut shared[shard(t)].lock().expect("lock"), t);
        })
    });
    stop.store(true, Ordering::Relaxed);
    other.join().expect("the other worker");
    g.finish();
}

/// The tunnel: a 1400-byte frame encapsulated into a worker's staging slot (VXLAN and
/// Geneve over IPv4, VXLAN over IPv6 with its UDP checksum over the whole datagram), beside
/// the plain copy into the slot every forwarded frame gets (a floor, not a baseline).
fn encapsulation(c: &mut Criterion) {
    let mut g = c.benchmark_group("tunnel/encapsulate_1400");
    let frame = eth().ipv4(CLIENT, VIP).tcp(45000, 80).ack(1).payload(&[0x41; 1346]).build();
    assert_eq!(frame.len(), 1400);
    let mut remote = PrefixMap::default();
    remote.insert("198.18.129.0/24".parse().unwrap(), IpAddr::from(Ipv4Addr::new(198, 18, 0, 3)));
    let overlay = |protocol, port| Overlay {
        protocol,
        port,
        local_v4: Some(Ipv4Addr::new(198, 18, 0, 1)),
        local_v6: Some("fd00::1".parse().unwrap()),
        remote: remote.clone(),
        mtu: 1500,
    };
    let mut slot = [0u8; 2048];
    g.bench_function("copy_only", |b| {
        b.iter(|| {
            slot[..frame.len()].copy_from_slice(black_box(&frame));
            black_box(&slot);
        });
    });
    for (name, o, node) in [
        (
            "vxlan_ipv4",
            overlay(TunnelProtocol::Vxlan, VXLAN_PORT),
            IpAddr::from(Ipv4Addr::new(198, 18, 0, 3)),
        ),
        (
            "geneve_ipv4",
            overlay(TunnelProtocol::Geneve, GENEVE_PORT),
            IpAddr::from(Ipv4Addr::new(198, 18, 0, 3)),
        ),
        ("vxlan_ipv6", overlay(TunnelProtocol::Vxlan, VXLAN_PORT), "fd00::3".parse().unwrap()),
    ] {
        let p = skiff_wire::layers::parse(&frame).unwrap();
        let to = Encap {
            node,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            identity: Identity(300),
            flow_hash: tunnel::flow_hash(&frame, &p),
        };
        assert_eq!(
            o.encapsulate(&mut slot, &frame, &to),
            Some(frame.len() + o.protocol.mtu_overhead(node.is_ipv6()))
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                let p = skiff_wire::layers::parse(black_box(&frame)).unwrap();
                let to = Encap { flow_hash: tunnel::flow_hash(&frame, &p), ..to };
                black_box(o.encapsulate(&mut slot, &frame, &to))
            });
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    established,
    new_flow,
    policy_verdict,
    maglev_build,
    conntrack_ownership,
    encapsulation
);
criterion_main!(benches);
