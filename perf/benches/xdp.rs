//! The XDP ingress program's figures, written to `target/bench-report/xdp.json`:
//!
//! - cost per packet from `BPF_PROG_TEST_RUN` with `repeat` (the kernel times the runs), 5
//!   rounds each: pass, over IPv4 and over IPv6 (whose outer frame's decision is a call of
//!   its own; the source's slot is one no denied prefix covers, so it skips the deny trie,
//!   as a source does unless it shares a /16 with a denied prefix), an LPM drop
//!   with 10 000 denied prefixes in the trie, VXLAN and Geneve decapsulation, the redirect
//!   decision, and a flow-table hit (an offloaded connection's packet translated and
//!   redirected). The minimal counting program on the same frames is recorded beside them
//!   as the floor of any XDP program (a floor, not a competitor). The kernel runs a call's
//!   repeats on one copy of the frame, so a frame the program changes gets calls that keep
//!   every run honest: a flow-table hit alternates between two offloaded flows that
//!   translate into each other (200 runs a call, from TTL 255), a decapsulation is one run a
//!   call (its floor measured alike, so both carry the call's timer). Each round loads the
//!   program anew on the same pinned maps: one load's figure can sit a fifth above or below
//!   another's. Both programs are attached to a lab veth meanwhile, as on a node: each call then
//!   reaches them through the kernel's XDP dispatcher without changing it;
//! - packets per second dropped on a lab veth: skiff's XDP_DROP against an nftables
//!   netdev-ingress drop rule (the kernel's earliest hook), same generator, ABBA rounds. Both
//!   are counted at one point, the veth's XDP receive counter (`ethtool -S`), and each round
//!   checks that the datapath measured dropped what was counted. The generator
//!   (`skiff_trafficgen`, live frames) redirects into the veth, which takes frames only with an
//!   XDP program attached: for nftables the counting program, which passes everything (its
//!   few nanoseconds are the generator's tax on the kernel's side).
//!
//! Root only (it loads BPF programs and builds network namespaces).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::Arc,
};

use skiff_common::{
    XdpAction,
    config::XdpConfig,
    endpoint::EndpointInfo,
    identity::Identity,
    lb::{BackendId, FrontendKind},
    tunnel,
};
use skiff_engine::{
    conntrack::Timeouts,
    engine::{Engine, SNAT_PORTS},
    lb::Backend,
    offload::{self, Placement},
    tables::{Frontend, Neighbor, Service, ServiceConfig, Tables},
};
use skiff_lab::Topology;
use skiff_perf::{
    Record,
    lab::{
        FRAMES, ROUNDS, Result, abba, generate, ifindex, nft_counter, nft_drop_rule, split_layout, udp_frame,
        xdp_received,
    },
    write_report,
};
use skiff_testkit::{
    eth,
    ingress::{Env, fixtures},
};
use skiff_xdp::{CountProgram, Ingress, TestRun, XdpError, XdpMode, bpffs};

/// Runs of each program per round.
const RUNS: u32 = 2_000_000;
/// Runs per call for a frame the program rewrites: the TTL it starts with (255) allows no
/// more than 254 forwards.
const HIT_RUNS_PER_CALL: u32 = 200;
/// Runs per round of a frame the program decapsulates, one per call.
const DECAP_RUNS: u32 = 200_000;
const PREFIXES: u32 = 10_000;
/// The interface a test run's frame arrives on.
const LOOPBACK: u32 = 1;

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let dir = PathBuf::from(format!("/sys/fs/bpf/skiff-bench-{}", std::process::id()));
    let per_packet = per_packet(&dir);
    bpffs::remove_pins(&dir)?;
    let mut records = per_packet?;
    records.push(drop_rate(&dir)?);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(&target, "xdp", &records)?;
    Ok(())
}

fn per_packet(dir: &Path) -> Result<Vec<Record>> {
    let mut ingress = Ingress::load(dir)?;
    let mut config = XdpConfig::DEFAULT;
    config.tunnel_v4 = Env::NODE_V4.octets();
    config.tunnel_v6 = Env::NODE_V6.octets();
    // As the agent sets them: the node's addresses, its uplink (a test run's frames arrive on
    // loopback), the ports on them that need more than the kernel (masquerading's, the
    // tunnels'; the fixtures' service is a ClusterIP).
    config.host_v4[0] = Env::NODE_V4.octets();
    config.host_v6[0] = Env::NODE_V6.octets();
    config.host_interfaces[0] = LOOPBACK;
    ingress.set_config(&config)?;
    let snat = [6, 17].into_iter().flat_map(|proto| SNAT_PORTS.map(move |port| (proto, port)));
    ingress.set_host_ports(snat.chain([(17, tunnel::VXLAN_PORT), (17, tunnel::GENEVE_PORT)]))?;
    // 10 000 denied /32s across 198.19.128.0/17, plus the fixtures' /24.
    for i in 0..PREFIXES {
        ingress.deny(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 128, 0)) + i).into(), 32, i)?;
    }
    ingress.deny(Env::DENIED_V4.0.into(), Env::DENIED_V4.1, PREFIXES)?;
    ingress.set_services(&[(Env::SERVICE_V4.into(), Env::SERVICE_PORT, 6, FrontendKind::ClusterIp)])?;
    let (pods, len) = Env::REMOTE_PODS_V4;
    ingress.set_overlay(&Env::NODES, &[(pods.into(), len)])?;
    ingress.set_ipcache(&Env::IPCACHE)?;
    // The node's address marked as the agent marks it: its own traffic passes on its first
    // endpoint lookup.
    ingress.set_endpoints(&[(
        Env::NODE_V4.into(),
        EndpointInfo { identity: Identity::HOST, flags: EndpointInfo::HOST },
    )])?;
    let mut floor = CountProgram::load()?;
    let lab = Topology::new().build()?;
    let (client, node) = (lab.client(), lab.node());
    node.netns.run(|| ingress.attach(&client.node_iface, XdpMode::Native))??;
    client.netns.run(|| floor.attach(&client.iface, XdpMode::Native))??;

    let cases = [
        ("pass_tcp", "TCP to the node passes"),
        ("pass_udp_ipv6", "IPv6 UDP to the node passes"),
        ("lpm_drop_10k_prefixes", "denied IPv4 source"),
        ("vxlan_decap", "VXLAN to the node is decapsulated"),
        ("geneve_decap", "Geneve without options is decapsulated"),
        ("geneve_decap_identity_option", "Geneve with an identity option is decapsulated"),
        ("redirect_decision_service", "TCP to an IPv4 service"),
    ];
    let table = fixtures();
    let mut frames = Vec::new();
    for (name, description) in cases {
        let f = table.iter().find(|f| f.description == description).ok_or(description)?;
        frames.push((name, f.input.clone()));
    }
    let hit = offloaded(&mut ingress)?;
    let run = ingress.test_run(&hit, HIT_RUNS_PER_CALL)?;
    if run.action != XdpAction::Redirect.code() {
        return Err(format!("the offloaded flow's packet got action {}, not a redirect", run.action).into());
    }
    frames.push(("flow_table_hit", hit.clone()));
    let mut records = vec![events_on_and_off(&mut ingress, &config, &hit)?];
    for (name, frame) in frames {
        let (runs, per_call) = match name {
            "flow_table_hit" => (RUNS, HIT_RUNS_PER_CALL),
            _ if name.contains("decap") => (DECAP_RUNS, 1),
            _ => (RUNS, RUNS),
        };
        let (skiff, empty) = abba(
            ROUNDS,
            || {
                // A new load each round, as a restarted agent's (the pinned maps as they are,
                // the attachment updated in place): where the kernel puts a program's code
                // moves its cost by up to a fifth here, so the median is over loads.
                ingress = Ingress::load(dir)?;
                mean_ns(|n| ingress.test_run(&frame, n), runs, per_call)
            },
            || mean_ns(|n| floor.test_run(&frame, n), runs, per_call),
        )?;
        records.push(Record::new(format!("ns_per_packet_{name}"), "ns", skiff));
        records.push(Record::new(format!("floor_ns_per_packet_{name}_counting_program"), "ns", empty));
    }
    Ok(records)
}

/// Mean nanoseconds per run of `runs`, `per_call` runs to a `BPF_PROG_TEST_RUN` call.
fn mean_ns(
    run: impl Fn(u32) -> std::result::Result<TestRun, XdpError>,
    runs: u32,
    per_call: u32,
) -> Result<f64> {
    let calls = runs / per_call;
    let mut total = 0.0;
    for _ in 0..calls {
        total += f64::from(run(per_call)?.duration_ns);
    }
    Ok(total / f64::from(calls))
}

/// A flow-table hit with the program's decisions sampled for observers (one in
/// `trace_sample_every`, the default) against the same with sampling off, alternating.
fn events_on_and_off(ingress: &mut Ingress, config: &XdpConfig, hit: &[u8]) -> Result<Record> {
    let ingress = std::cell::RefCell::new(ingress);
    let run = |config: XdpConfig| -> Result<f64> {
        let mut ingress = ingress.borrow_mut();
        ingress.set_config(&config)?;
        mean_ns(|n| ingress.test_run(hit, n), RUNS, HIT_RUNS_PER_CALL)
    };
    let off = XdpConfig { trace_sample_every: 0, ..*config };
    let (with, without) = abba(ROUNDS, || run(*config), || run(off))?;
    ingress.borrow_mut().set_config(config)?;
    Ok(Record::new("ns_per_packet_flow_table_hit_flow_events_on", "ns", with)
        .against("the same with flow events off (no sampling)", without))
}

/// Offloads two connections as a worker does (an engine sees their handshakes; their
/// clients' directions go into the flow table, out of loopback) and returns a data packet of
/// the first: what the flow table translates and redirects. The first goes to the fixtures'
/// service, whose backend is the frontend of the second, whose backend is the first's
/// frontend: each translates a packet into the other's, so every run of a call is a hit,
/// with its whole translation, until the TTL runs out.
fn offloaded(ingress: &mut Ingress) -> Result<Vec<u8>> {
    let pod = Ipv4Addr::new(198, 18, 128, 10);
    let service = (Env::SERVICE_V4, Env::SERVICE_PORT);
    let ends = [(service, (pod, 8080)), ((pod, 8080), service)];
    let mut services = Vec::new();
    for (i, ((vip, port), (addr, backend_port))) in (1..).zip(ends) {
        let backend =
            Backend { id: BackendId(i), addr: addr.into(), port: backend_port, weight: 1, local: true };
        let frontend = Frontend { addr: vip.into(), port, protocol: 6 };
        services.push((frontend, Service::new(vec![backend], ServiceConfig::default())?));
    }
    let hop = Neighbor { port: 0, src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 2] };
    let tables = Tables {
        services: services.into_iter().collect(),
        next_hops: [pod, Env::CLIENT_V4, Env::SERVICE_V4].into_iter().map(|a| (a.into(), hop)).collect(),
        ..Tables::default()
    };
    let mut engine = Engine::new(Arc::new(tables), 16, Timeouts::default());
    let to = |(vip, port): (Ipv4Addr, u16)| eth().ipv4(Env::CLIENT_V4, vip).tcp(46000, port);
    for ((vip, port), (addr, backend_port)) in ends {
        let handshake = [
            to((vip, port)).seq(1).syn().build(),
            eth().ipv4(addr, Env::CLIENT_V4).tcp(backend_port, 46000).seq(9).syn().ack(2).build(),
            to((vip, port)).seq(2).ack(10).build(),
        ];
        for mut frame in handshake {
            engine.process(&mut frame, 0);
        }
    }
    let mut placed = Vec::new();
    engine.drain_nic_changes(|e, t| match offload::placement(e, t, |_| Some(LOOPBACK)) {
        Placement::Nic(directions) => {
            placed.push(directions[0]);
            Some(offload::digest(&directions))
        }
        _ => None,
    });
    if placed.len() != 2 {
        return Err(format!("{} of 2 connections offloaded", placed.len()).into());
    }
    for (key, entry) in placed {
        ingress.flow_table()?.insert(key, &entry)?;
    }
    ingress.set_tx_port(LOOPBACK, true)?;
    Ok(to(service).ttl(255).seq(2).ack(10).payload(b"GET / HTTP/1.1\r\n\r\n").build())
}

/// XDP_DROP versus an nftables drop on the same lab veth, in ABBA rounds.
fn drop_rate(dir: &Path) -> Result<Record> {
    let lab = Topology::new().build()?;
    let (client, node) = (lab.client().clone(), lab.node().clone());
    let source = Ipv4Addr::new(198, 18, 0, 66);
    let frame = udp_frame(&client, SocketAddrV4::new(source, 9), SocketAddrV4::new(node.ipv4, 9), 64)?;
    let ifindex = ifindex(&client.netns, &client.iface)?;
    let veth = client.node_iface.clone();
    // Frames the veth took per second of generating, and how many of them `dropped` counts.
    let rate = |dropped: &dyn Fn() -> Result<u64>| -> Result<f64> {
        let (received, before) = (xdp_received(&node.netns, &veth)?, dropped()?);
        let elapsed = generate(&client.netns, frame, ifindex, FRAMES)?;
        let (received, dropped) = (xdp_received(&node.netns, &veth)? - received, dropped()? - before);
        if dropped < received * 99 / 100 {
            return Err(format!("{dropped} of {received} frames dropped: not a drop rate").into());
        }
        Ok(received as f64 / elapsed.as_secs_f64())
    };
    let skiff = || -> Result<f64> {
        let mut ingress = Ingress::load(dir)?;
        ingress.deny(IpAddr::V4(source), 32, 1)?;
        node.netns.run(|| ingress.attach(&veth, XdpMode::Native))??;
        split_layout(&node.netns, &veth)?;
        let pps = rate(&|| {
            let drop = ingress.actions()?.into_iter().find(|(a, _)| *a == XdpAction::Drop);
            Ok(drop.map_or(0, |(_, c)| c.packets))
        });
        ingress.remove_pins()?;
        pps
    };
    let nftables = || -> Result<f64> {
        let mut pass = CountProgram::load()?;
        node.netns.run(|| pass.attach(&veth, XdpMode::Native))??;
        split_layout(&node.netns, &veth)?;
        nft_drop_rule(&node.netns, "skiffbench", &veth, source)?;
        let pps = rate(&|| nft_counter(&node.netns, "netdev", "skiffbench"));
        node.netns.exec("nft", &["delete", "table", "netdev", "skiffbench"])?;
        pps
    };
    let (xdp, nft) = abba(ROUNDS, skiff, nftables)?;
    println!(
        "XDP_DROP {:.2} Mpps, nftables netdev-ingress drop {:.2} Mpps",
        xdp.value / 1e6,
        nft.value / 1e6
    );
    println!("  rounds: XDP {:.0?}, nftables {:.0?}", xdp.rounds, nft.rounds);
    Ok(Record::new("pps_dropped_at_the_nic_xdp", "pps", xdp).against("nftables netdev-ingress drop", nft))
}
