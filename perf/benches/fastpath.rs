//! The packet engine's costs: an established flow through DNAT and its reply through reverse
//! NAT, a new flow (a conntrack miss, Maglev pick and conntrack insert), Maglev table builds
//! for 1000 backends at the default and the largest table size, and conntrack owned by a
//! worker against shared.

use std::{
    hint::black_box,
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use skiff_common::lb::{BackendId, MAGLEV_TABLE_SIZE, MAGLEV_TABLE_SIZE_MAX};
use skiff_engine::{
    conntrack::{Conntrack, Timeouts},
    engine::{Action, Engine},
    flow::Tuple,
    lb::{Backend, maglev::Maglev},
    tables::{Frontend, Service, ServiceConfig, Tables},
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
    let service = Service::new(backends(10), ServiceConfig::default()).expect("table");
    let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 6 };
    let tables = Tables { services: [(frontend, service)].into_iter().collect(), ..Tables::default() };
    Engine::new(Arc::new(tables), capacity, Timeouts::default())
}

/// One established flow: a client packet through DNAT, and the backend's reply through
/// reverse NAT. Each iteration copies both frames into fixed buffers (as a worker's UMEM
/// frames) and processes them: no allocation. Both must be forwarded, before and after.
fn established(c: &mut Criterion) {
    let mut e = engine(1024);
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
    c.bench_function("engine/established_dnat_and_reverse_nat", |b| b.iter(|| black_box(both(&mut e))));
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
        ct.gc_step(1 << 30, 2 * NEW_FLOWS as usize);
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

criterion_group!(benches, established, new_flow, maglev_build, conntrack_ownership);
criterion_main!(benches);
