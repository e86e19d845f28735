//! The XDP ingress program's figures, written to `target/bench-report/xdp.json`:
//!
//! - cost per packet from `BPF_PROG_TEST_RUN` with `repeat` (the kernel times the runs), 5
//!   rounds each: pass, an LPM drop with 10 000 denied prefixes, VXLAN and Geneve
//!   decapsulation and the redirect decision. The minimal counting program on the same frames
//!   is recorded beside them as the floor of any XDP program (a floor, not a competitor);
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
};

use skiff_common::{XdpAction, config::XdpConfig, lb::FrontendKind};
use skiff_lab::Topology;
use skiff_perf::{
    Record,
    lab::{
        FRAMES, ROUNDS, Result, abba, generate, ifindex, nft_counter, nft_drop_rule, split_layout, udp_frame,
        xdp_received,
    },
    write_report,
};
use skiff_testkit::ingress::{Env, fixtures};
use skiff_xdp::{CountProgram, Ingress, XdpMode, bpffs};

const REPEAT: u32 = 2_000_000;
const PREFIXES: u32 = 10_000;

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
    ingress.set_config(&config)?;
    // 10 000 denied /32s across 198.19.128.0/17, plus the fixtures' /24.
    for i in 0..PREFIXES {
        ingress.deny(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 128, 0)) + i).into(), 32, i)?;
    }
    ingress.deny(Env::DENIED_V4.0.into(), Env::DENIED_V4.1, PREFIXES)?;
    ingress.set_services(&[(Env::SERVICE_V4.into(), Env::SERVICE_PORT, 6, FrontendKind::ClusterIp)])?;
    let (pods, len) = Env::REMOTE_PODS_V4;
    ingress.set_overlay(&Env::NODES, &[(pods.into(), len)])?;
    ingress.set_identities(&Env::IDENTITIES)?;
    let floor = CountProgram::load()?;

    let cases = [
        ("pass_tcp", "TCP to the node passes"),
        ("lpm_drop_10k_prefixes", "denied IPv4 source"),
        ("vxlan_decap", "VXLAN to the node is decapsulated"),
        ("geneve_decap", "Geneve without options is decapsulated"),
        ("geneve_decap_identity_option", "Geneve with an identity option is decapsulated"),
        ("redirect_decision_service", "TCP to an IPv4 service"),
    ];
    let table = fixtures();
    let mut records = Vec::new();
    for (name, description) in cases {
        let f = table.iter().find(|f| f.description == description).ok_or(description)?;
        let (skiff, empty) = abba(
            ROUNDS,
            || Ok(ingress.test_run(&f.input, REPEAT)?.duration_ns.into()),
            || Ok(floor.test_run(&f.input, REPEAT)?.duration_ns.into()),
        )?;
        records.push(Record::new(format!("ns_per_packet_{name}"), "ns", skiff));
        records.push(Record::new(format!("floor_ns_per_packet_{name}_counting_program"), "ns", empty));
    }
    Ok(records)
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
