//! Flow events per second the agent sustains to one `skiff observe --follow` client, written
//! to `target/bench-report/observe.json`: the agent's whole path after the datapath's queue
//! (its observer names each record with pods, identities and the service, keeps it in the
//! ring, streams it through the local API as JSON) and the CLI's client reading it. A
//! producer feeds the queue as fast as the observer takes records; 5 rounds of 2 s, the
//! median. What the follower missed by falling behind is counted, not hidden.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use skiff_api::{
    Answer, Client, Source, Status,
    observe::{FlowFilter, Service},
};
use skiff_control::{
    api::{self, Live, Snapshot},
    observer::{Context, Observer},
};
use skiff_engine::{
    event::{Event, EventKind},
    flow::Tuple,
};
use skiff_perf::{Record, lab::ROUNDS, write_report};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const ROUND: Duration = Duration::from_secs(2);

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let (mut delivered, mut lost) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (rate, missed) = one_round(round)?;
        delivered.push(rate);
        lost.push(missed);
    }
    let figure = skiff_perf::Figure::rounds(delivered);
    println!(
        "flow events to one follower: {:.0}/s (rounds {:.0?}); missed by the follower per round: {lost:?}",
        figure.value, figure.rounds
    );
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(&target, "observe", &[Record::new("flow_events_to_one_follower", "flows/s", figure)])?;
    Ok(())
}

/// What the control plane would name the flows by: the client and backend pods, the service.
fn context() -> Context {
    let mut c = Context { node: "node1".into(), ..Context::default() };
    c.pods.insert(IpAddr::from([198, 18, 128, 13]), ("demo".into(), "client".into()));
    c.pods.insert(IpAddr::from([198, 18, 128, 11]), ("demo".into(), "web-1".into()));
    let service = Service { name: "web".into(), namespace: "demo".into() };
    c.services.insert((IpAddr::from([198, 19, 0, 10]), 80, 6), service);
    c
}

/// One round: flows per second the follower received, and how many it missed.
fn one_round(round: usize) -> Result<(f64, u64)> {
    let dir = std::env::temp_dir().join(format!("skiff-bench-observe-{}-{round}", std::process::id()));
    let socket = dir.join("skiff.sock");
    let observer = Observer::new(skiff_control::observer::DEFAULT_CAPACITY);
    observer.set_context(context());
    let (records, queue) = crossbeam_channel::bounded(4096);
    observer.start(queue, None);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let snapshot = Arc::new(RwLock::new(Snapshot::new(Status::new(
        Source::StateDir { path: dir.clone() },
        Default::default(),
    ))));
    let (asks, _) = tokio::sync::mpsc::channel(1);
    let live = Live { observer: Some(observer.clone()), metrics: None };
    runtime.spawn({
        let socket = socket.clone();
        async move { api::serve(&socket, snapshot, asks, live).await }
    });
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (got, missed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let follower = std::thread::spawn({
        let (stop, got, missed, socket) = (stop.clone(), got.clone(), missed.clone(), socket.clone());
        move || {
            Client::new(&socket).observe(FlowFilter::default(), Some(0), true, |a| {
                match a {
                    Answer::Flow(_) => got.fetch_add(1, Ordering::Relaxed),
                    Answer::Lost(l) => missed.fetch_add(l.num_events_lost, Ordering::Relaxed),
                    _ => 0,
                };
                !stop.load(Ordering::Relaxed)
            })
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let (client, vip, backend) =
        (Ipv4Addr::new(198, 18, 128, 13), Ipv4Addr::new(198, 19, 0, 10), Ipv4Addr::new(198, 18, 128, 11));
    let started = Instant::now();
    let before = got.load(Ordering::Relaxed);
    let mut port = 0u16;
    while started.elapsed() < ROUND {
        port = port.wrapping_add(1);
        let tuple = Tuple::new(client.into(), vip.into(), 6, port, 80);
        let translated = Tuple::new(client.into(), backend.into(), 6, port, 8080);
        // Blocking: the producer goes at the pace the observer takes records.
        records.send(Event { translated, ..Event::of(EventKind::Started, tuple) })?;
    }
    let rate = (got.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    drop(records);
    // The server's end closes with its runtime: the follower reads the end of its stream.
    drop(runtime);
    let _ = follower.join();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((rate, missed.load(Ordering::Relaxed)))
}
