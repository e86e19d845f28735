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
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use skiff_common::{Verdict, config::XdpConfig};
use skiff_lab::{Netns, Topology};
use skiff_perf::{Record, write_report};
use skiff_testkit::{
    eth,
    ingress::{Env, fixtures},
};
use skiff_wire::ethernet::Mac;
use skiff_xdp::{CountProgram, Ingress, TrafficGen, XdpMode, bpffs};

const REPEAT: u32 = 2_000_000;
const PREFIXES: u32 = 10_000;
/// Frames per generator call (~20 ms of setup per call, so many).
const FRAMES: u32 = 1 << 24;
const ROUNDS: usize = 3;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

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
    ingress.set_services(&[(Env::SERVICE_V4.into(), Env::SERVICE_PORT, 6)])?;
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
    let frame: [u8; 64] = eth()
        .src_mac(Mac(client.mac))
        .dst_mac(Mac(client.node_mac))
        .ipv4(source, node.ipv4)
        .udp(9, 9)
        .payload(&[0; 22])
        .build()
        .try_into()
        .map_err(|f: Vec<u8>| format!("the frame is {} bytes, not 64", f.len()))?;
    let ifindex: u32 = String::from_utf8(client.netns.exec("cat", &["/sys/class/net/eth0/ifindex"])?.stdout)?
        .trim()
        .parse()?;
    let (mut xdp, mut nft) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut ingress = Ingress::load(dir)?;
        ingress.deny(IpAddr::V4(source), 32, 1)?;
        node.netns.run(|| ingress.attach(&client.node_iface, XdpMode::Native))??;
        split_layout(&node.netns, &client.node_iface)?;
        let before = dropped(&ingress)?;
        let elapsed = generate(&client.netns, frame, ifindex)?;
        xdp.push((dropped(&ingress)? - before) as f64 / elapsed.as_secs_f64());
        ingress.remove_pins()?;

        let mut pass = CountProgram::load()?;
        node.netns.run(|| pass.attach(&client.node_iface, XdpMode::Native))??;
        split_layout(&node.netns, &client.node_iface)?;
        nft_drop_rule(&node.netns, &client.node_iface, source)?;
        let elapsed = generate(&client.netns, frame, ifindex)?;
        nft.push(nft_dropped(&node.netns)? as f64 / elapsed.as_secs_f64());
        node.netns.exec("nft", &["delete", "table", "netdev", "skiffbench"])?;
    }
    let (xdp, nft) = (median(xdp), median(nft));
    println!("XDP_DROP {:.2} Mpps, nftables netdev-ingress drop {:.2} Mpps", xdp / 1e6, nft / 1e6);
    Ok(vec![Record::new("pps_drop_xdp_vs_nftables_netdev_ingress", xdp, "pps").with_baseline(nft)])
}

fn dropped(ingress: &Ingress) -> Result<u64> {
    let drop = ingress.verdicts()?.into_iter().find(|(v, _)| *v == Verdict::Drop);
    Ok(drop.map_or(0, |(_, c)| c.packets))
}

/// Sends `FRAMES` frames from the client, on CPU 0; returns how long it took.
fn generate(client: &Netns, frame: [u8; 64], ifindex: u32) -> Result<Duration> {
    let sent = client.run(move || -> std::result::Result<Duration, String> {
        pin_to_cpu(0).map_err(|e| e.to_string())?;
        let generator = TrafficGen::load(frame, ifindex).map_err(|e| e.to_string())?;
        generator.send(FRAMES).map_err(|e| e.to_string())
    })?;
    Ok(sent?)
}

/// The veth's receive processing in a threaded NAPI, pinned to CPU 1 (the generator has CPU 0).
/// A veth has NAPI only while an XDP program is attached: call it after each attach.
fn split_layout(node: &Netns, iface: &str) -> Result<()> {
    node.exec("sh", &["-c", &format!("echo 1 > /sys/class/net/{iface}/threaded")])?;
    let name = format!("napi/{iface}-");
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Some(pid) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.starts_with(&name)) {
            set_affinity(pid, 1)?;
            pinned += 1;
        }
    }
    if pinned == 0 {
        return Err(format!("no {name}* NAPI thread found").into());
    }
    Ok(())
}

fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    set_affinity(0, cpu)
}

fn set_affinity(pid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data (all-zero is empty); CPU_SET and sched_setaffinity only
    // touch the set passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn nft_drop_rule(node: &Netns, iface: &str, source: Ipv4Addr) -> Result<()> {
    let hook = format!("{{ type filter hook ingress device \"{iface}\" priority 0; policy accept; }}");
    node.exec("nft", &["add", "table", "netdev", "skiffbench"])?;
    node.exec("nft", &["add", "chain", "netdev", "skiffbench", "ingress", &hook])?;
    node.exec(
        "nft",
        &[
            "add",
            "rule",
            "netdev",
            "skiffbench",
            "ingress",
            "ip",
            "saddr",
            &source.to_string(),
            "counter",
            "drop",
        ],
    )?;
    Ok(())
}

/// The packets the bench rule's counter has dropped.
fn nft_dropped(node: &Netns) -> Result<u64> {
    let out = node.exec("nft", &["-j", "list", "table", "netdev", "skiffbench"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    fn counter(v: &serde_json::Value) -> Option<u64> {
        match v {
            serde_json::Value::Object(m) => {
                m.get("counter").and_then(|c| c["packets"].as_u64()).or_else(|| m.values().find_map(counter))
            }
            serde_json::Value::Array(a) => a.iter().find_map(counter),
            _ => None,
        }
    }
    counter(&json).ok_or_else(|| "no counter in the nftables table".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
