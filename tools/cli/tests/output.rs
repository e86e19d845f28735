//! What the CLI prints, checked as snapshots (insta): a change of format is a reviewed
//! decision (`cargo insta review`, or INSTA_UPDATE=always and a look at the diff). The
//! agent's side is its real local API server, answering from a state built here: the
//! status with its counters, tracked flows, pinned maps, metrics and observed flows.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::{Arc, RwLock},
};

use skiff_api::{
    Datapath, FlowCounters, FlowView, Io, MapView, Source, Status, WorkerCounters,
    observe::{
        Counts, DecidedBy, Endpoint, EventType, Flow, FlowType, Ip, L4, Service, TrafficDirection,
        Translation, Verdict,
    },
};
use skiff_common::{DropReason, XdpAction, config::XdpMode, conntrack::FlowPath};
use skiff_control::{
    api::{self, Live, Snapshot},
    metrics::{self, ControlMetrics},
    observer::Observer,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 13);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 11);

fn status() -> Status {
    let datapath = Datapath {
        io: Io::AfXdp { xdp_mode: XdpMode::Native },
        devices: vec!["eth0".into(), "lxc0".into()],
        workers: 2,
        xdp_modes: [("eth0".into(), XdpMode::Native), ("lxc0".into(), XdpMode::Generic)].into(),
        ..Datapath::default()
    };
    let mut s = Status::new(Source::StateDir { path: "/var/lib/skiff/objects".into() }, datapath);
    s.version = "0.1.0".into();
    s.node = "node1".into();
    s.connected = true;
    (s.frontends, s.backends, s.next_hops, s.identities, s.applies) = (2, 3, 4, 2, 1);
    s.flows = Some(FlowCounters { seen: 130, kept: 130, capacity: 4095, lost_to_followers: 0, followers: 1 });
    s
}

/// The datapath's counters, as the agent reads them live.
fn counters() -> WorkerCounters {
    WorkerCounters {
        received: 1200,
        forwarded: 1180,
        dropped: 20,
        drops: [(DropReason::PolicyDenied, 20)].into(),
        xdp_drops: [(DropReason::DeniedCidr, 64)].into(),
        service_flows: 40,
        offloaded: 38,
        taken_back: 2,
        flow_paths: [(FlowPath::Forwarded, 9000), (FlowPath::TcpControl, 160)].into(),
        forwarded_bytes: 1_500_000,
        nic_forwarded_bytes: 7_200_000,
        xdp_actions: [
            (XdpAction::Drop, (64, 2816)),
            (XdpAction::Pass, (310, 40_000)),
            (XdpAction::Redirect, (10_360, 9_000_000)),
        ]
        .into(),
        conntrack: (40, 2),
        nat_ports: (3, 0),
        busy_permille: vec![120, 85],
        ..WorkerCounters::default()
    }
}

fn flow_view(masqueraded: bool) -> FlowView {
    let (reply_to, at_nic) = if masqueraded {
        (SocketAddr::from(([198, 18, 0, 1], 61_000)), true)
    } else {
        (SocketAddr::from((CLIENT, 40_010)), false)
    };
    FlowView {
        protocol: "TCP".into(),
        source: SocketAddr::from((CLIENT, 40_010)),
        destination: SocketAddr::from((VIP, 80)),
        reply_source: SocketAddr::from((BACKEND, 8080)),
        reply_destination: reply_to,
        backend: 2,
        at_nic,
        nic_packets: if at_nic { 12 } else { 0 },
        nic_bytes: if at_nic { 9_000 } else { 0 },
    }
}

fn end(pod: &str, identity: u32, app: &str) -> Endpoint {
    Endpoint {
        identity,
        namespace: "demo".into(),
        labels: vec![format!("k8s:app={app}")],
        pod_name: pod.into(),
    }
}

/// A new flow, its reply, its end, a policy drop and a drop at the NIC.
fn flows() -> Vec<Flow> {
    let time = |ms: i64| jiff::Timestamp::from_millisecond(1_796_198_400_000 + ms).unwrap();
    let to = |a: Ipv4Addr, port: u16| SocketAddr::from((a, port));
    let base = Flow {
        time: time(0),
        verdict: Verdict::Forwarded,
        drop_reason_desc: None,
        ip: Ip { source: CLIENT.into(), destination: VIP.into(), ip_version: "IPv4".into() },
        l4: L4::Tcp { source_port: 40_010, destination_port: 80 },
        source: end("client", 300, "client"),
        destination: Endpoint::default(),
        flow_type: FlowType::L3L4,
        node_name: "node1".into(),
        event_type: EventType { kind: 4, sub_type: 0 },
        traffic_direction: TrafficDirection::Egress,
        trace_observation_point: Some("TO_ENDPOINT".into()),
        is_reply: false,
        destination_service: Some(Service { name: "web".into(), namespace: "demo".into() }),
        ingress_allowed_by: Vec::new(),
        egress_allowed_by: Vec::new(),
        ingress_denied_by: Vec::new(),
        egress_denied_by: Vec::new(),
        translated: Some(Translation { source: to(CLIENT, 40_010), destination: to(BACKEND, 8080) }),
        decided_by: DecidedBy::Worker,
        counts: None,
        summary: "new flow, to 198.18.128.11:8080 (backend 2)".into(),
    };
    let reply = Flow {
        time: time(1),
        ip: Ip { source: BACKEND.into(), destination: CLIENT.into(), ip_version: "IPv4".into() },
        l4: L4::Tcp { source_port: 8080, destination_port: 40_010 },
        source: end("web-1", 301, "web"),
        destination: end("client", 300, "client"),
        traffic_direction: TrafficDirection::Ingress,
        is_reply: true,
        translated: Some(Translation { source: to(VIP, 80), destination: to(CLIENT, 40_010) }),
        summary: "reply, from 198.19.0.10:80".into(),
        ..base.clone()
    };
    let ended = Flow {
        time: time(40),
        trace_observation_point: None,
        counts: Some(Counts { packets: 12, bytes: 1_480 }),
        summary: "flow ended: 12 packets, 1480 bytes".into(),
        ..base.clone()
    };
    let world = IpAddr::from([198, 18, 0, 2]);
    let denied = Flow {
        time: time(50),
        verdict: Verdict::Dropped,
        drop_reason_desc: Some("POLICY_DENIED".into()),
        ip: Ip { source: world, destination: BACKEND.into(), ip_version: "IPv4".into() },
        l4: L4::Tcp { source_port: 51_000, destination_port: 8080 },
        source: Endpoint { identity: 2, labels: vec!["reserved:world".into()], ..Endpoint::default() },
        destination: end("web-1", 301, "web"),
        event_type: EventType { kind: 1, sub_type: 133 },
        traffic_direction: TrafficDirection::Ingress,
        trace_observation_point: None,
        destination_service: None,
        translated: None,
        summary: "Policy denies the flow.".into(),
        ..base.clone()
    };
    let at_nic = Flow {
        time: time(60),
        l4: L4::Udp { source_port: 40_000, destination_port: 9 },
        ip: Ip { source: world, destination: IpAddr::from([198, 18, 0, 1]), ip_version: "IPv4".into() },
        destination: Endpoint { identity: 1, labels: vec!["reserved:host".into()], ..Endpoint::default() },
        drop_reason_desc: Some("DENIED_CIDR".into()),
        event_type: EventType { kind: 1, sub_type: 40 },
        decided_by: DecidedBy::Xdp,
        trace_observation_point: Some("FROM_NETWORK".into()),
        summary: "XDP: The source address is in a denied CIDR.".into(),
        ..denied.clone()
    };
    vec![base, reply, ended, denied, at_nic]
}

/// The agent's API on a socket of its own, answering from the state above; its folder goes
/// on drop.
struct Agent {
    dir: PathBuf,
    _runtime: tokio::runtime::Runtime,
}

impl Agent {
    fn start() -> Agent {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("skiff-cli-test-{}-{n}", std::process::id()));
        let socket = dir.join("skiff.sock");
        let mut snapshot = Snapshot::new(status());
        snapshot.live = Some(Arc::new(counters));
        snapshot.flows = Some(Arc::new(|| Ok(vec![flow_view(false), flow_view(true)])));
        snapshot.maps = Some(Arc::new(|| {
            Ok(vec![
                MapView { name: "CT_V4".into(), kind: "Hash".into(), entries: Some(80), capacity: 1 << 20 },
                MapView {
                    name: "DROP_COUNTS".into(),
                    kind: "PerCpuArray".into(),
                    entries: None,
                    capacity: 256,
                },
            ])
        }));
        let observer = Observer::new(4095);
        for f in flows() {
            observer.record(f);
        }
        snapshot.observer = Some(observer.clone());
        let snapshot = Arc::new(RwLock::new(snapshot));
        let registry = Arc::new(metrics::registry(snapshot.clone(), &ControlMetrics::default()));
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (asks, _) = tokio::sync::mpsc::channel(1);
        let live = Live { observer: Some(observer), metrics: Some(registry) };
        runtime.spawn({
            let socket = socket.clone();
            async move { api::serve(&socket, snapshot, asks, live).await }
        });
        while !socket.exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Agent { dir, _runtime: runtime }
    }

    /// What `skiff ARGS` prints (stdout, then stderr if any).
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("--socket")
            .arg(self.dir.join("skiff.sock"))
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if stderr.is_empty() { stdout.into_owned() } else { format!("{stdout}--- stderr ---\n{stderr}") }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn status_and_its_counters() {
    let agent = Agent::start();
    insta::assert_snapshot!("status", agent.run(&["status"]));
    insta::assert_snapshot!("status_verbose", agent.run(&["status", "--verbose"]));
}

#[test]
fn lists() {
    let agent = Agent::start();
    insta::assert_snapshot!("ct_list", agent.run(&["ct", "list"]));
    insta::assert_snapshot!("nat_list", agent.run(&["nat", "list"]));
    insta::assert_snapshot!("map_list", agent.run(&["map", "list"]));
    insta::assert_snapshot!("metrics_list", agent.run(&["metrics", "list"]));
}

#[test]
fn observe() {
    let agent = Agent::start();
    insta::assert_snapshot!("observe_last", agent.run(&["observe", "--last", "20"]));
    insta::assert_snapshot!("observe_dropped", agent.run(&["observe", "--verdict", "DROPPED"]));
    insta::assert_snapshot!("observe_json", agent.run(&["observe", "--last", "2", "-o", "json"]));
    insta::assert_snapshot!("observe_bad_protocol", agent.run(&["observe", "--protocol", "sctpx"]));
}
