//! The XDP ingress program's figures, written to `target/bench-report/xdp.json`:
//!
//! - cost per packet from `BPF_PROG_TEST_RUN` with `repeat` (the kernel times the runs): pass,
//!   an LPM drop with 10 000 denied prefixes, VXLAN and Geneve decapsulation and the redirect
//!   decision, each beside the minimal counting program on the same frame (the floor of any
//!   XDP program);
//! - packets per second dropped on a lab veth: skiff's XDP_DROP against an nftables
//!   netdev-ingress drop rule (the kernel's earliest hook), same generator, same run,
//!   alternating, medians of 3. The generator is `skiff_trafficgen` (live frames), pinned to
//!   CPU 0; the node's veth receives in a threaded NAPI pinned to CPU 1
//!   (shared/notes/lab-rates.md). The nftables case needs an XDP program on the veth for the
//!   generator's redirect to arrive: the counting program, which passes everything.
//!
//! Root only (it loads BPF programs and builds network namespaces).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use skiff_common::{XdpAction, config::XdpConfig, lb::FrontendKind};
use skiff_lab::Topology;
use skiff_perf::{
    Record,
    lab::{FRAMES, Result, generate, ifindex, median, nft_counter, nft_drop_rule, split_layout, udp_frame},
    write_report,
};
use skiff_testkit::ingress::{Env, fixtures};
use skiff_xdp::{CountProgram, Ingress, XdpMode, bpffs};

const REPEAT: u32 = 2_000_000;
const PREFIXES: u32 = 10_000;
const ROUNDS: usize = 3;

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let dir = PathBuf::from(format!("/sys/fs/bpf/skiff-bench-{}", std::process::id()));
    let per_packet = per_packet(&dir);
    bpffs::remove_pins(&dir)?;
    let mut records = per_packet?;
    records.extend(packet_rates(&dir)?);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(&target, "xdp", &records)?;
    Ok(())
}

fn per_packet(dir: &PathBuf) -> Result<Vec<Record>> {
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
        let ns = ingress.test_run(&f.input, REPEAT)?.duration_ns;
        let base = floor.test_run(&f.input, REPEAT)?.duration_ns;
        records
            .push(Record::new(format!("ns_per_packet_{name}"), ns.into(), "ns").with_baseline(base.into()));
    }
    Ok(records)
}

/// XDP_DROP versus an nftables drop on the same lab veth, alternating, medians of `ROUNDS`.
fn packet_rates(dir: &PathBuf) -> Result<Vec<Record>> {
    let lab = Topology::new().build()?;
    let (client, node) = (lab.client().clone(), lab.node().clone());
    let source = Ipv4Addr::new(198, 18, 0, 66);
    let frame = udp_frame(&client, SocketAddrV4::new(source, 9), SocketAddrV4::new(node.ipv4, 9), 64)?;
    let ifindex = ifindex(&client.netns, &client.iface)?;
    let (mut xdp, mut nft) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut ingress = Ingress::load(dir)?;
        ingress.deny(IpAddr::V4(source), 32, 1)?;
        node.netns.run(|| ingress.attach(&client.node_iface, XdpMode::Native))??;
        split_layout(&node.netns, &client.node_iface)?;
        let before = dropped(&ingress)?;
        let elapsed = generate(&client.netns, frame, ifindex, FRAMES)?;
        xdp.push((dropped(&ingress)? - before) as f64 / elapsed.as_secs_f64());
        ingress.remove_pins()?;

        let mut pass = CountProgram::load()?;
        node.netns.run(|| pass.attach(&client.node_iface, XdpMode::Native))??;
        split_layout(&node.netns, &client.node_iface)?;
        nft_drop_rule(&node.netns, "skiffbench", &client.node_iface, source)?;
        let elapsed = generate(&client.netns, frame, ifindex, FRAMES)?;
        nft.push(nft_counter(&node.netns, "netdev", "skiffbench")? as f64 / elapsed.as_secs_f64());
        node.netns.exec("nft", &["delete", "table", "netdev", "skiffbench"])?;
    }
    let (xdp, nft) = (median(xdp), median(nft));
    println!("XDP_DROP {:.2} Mpps, nftables netdev-ingress drop {:.2} Mpps", xdp / 1e6, nft / 1e6);
    Ok(vec![Record::new("pps_drop_xdp_vs_nftables_netdev_ingress", xdp, "pps").with_baseline(nft)])
}

fn dropped(ingress: &Ingress) -> Result<u64> {
    let drop = ingress.actions()?.into_iter().find(|(a, _)| *a == XdpAction::Drop);
    Ok(drop.map_or(0, |(_, c)| c.packets))
}
