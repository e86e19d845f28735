//! Packets per second of a service's NAT path in the lab: skiff (XDP redirect → AF_XDP worker →
//! DNAT → AF_XDP transmit to the pod) against the kernel's nftables DNAT with conntrack doing
//! the same service, same generator, same run, alternating, medians of 3. One established UDP
//! flow of 64-byte frames from the client to `VIP:80`, DNATed to the pod's port 8080, counted
//! where it ends: an nftables drop rule on the pod's interface (the same sink for both).
//!
//! CPU 0 runs the generator; CPU 1 runs everything of the node: the uplink's threaded NAPI and,
//! for skiff, the worker (pinned there). Writes `target/bench-report/fastpath-lab.json`, which
//! `bench-report` adds to `fastpath.json`. Root only.

use std::{net::Ipv4Addr, path::PathBuf};

use skiff_common::{config::XdpConfig, lb::BackendId};
use skiff_fastpath::{
    datapath::{Config, Datapath, Io},
    engine::{Frontend, Neighbor, Service, ServiceConfig, Tables},
    lb::Backend,
};
use skiff_lab::Topology;
use skiff_perf::{
    Record,
    lab::{FRAMES, Result, generate, ifindex, median, nft, nft_counter, nft_drop_rule, split_layout},
    write_report,
};
use skiff_testkit::eth;
use skiff_wire::ethernet::Mac;
use skiff_xdp::{CountProgram, Ingress, XdpMode, bpffs};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const ROUNDS: usize = 3;
const SINK: &str = "skiffsink";

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let lab = Topology::new().pods(1).build()?;
    let (client, node, pod) = (lab.client().clone(), lab.node().clone(), lab.pods()[0].clone());
    let frame: [u8; 64] = eth()
        .src_mac(Mac(client.mac))
        .dst_mac(Mac(client.node_mac))
        .ipv4(client.ipv4, VIP)
        .udp(40000, 80)
        .payload(&[0; 22])
        .build()
        .try_into()
        .map_err(|f: Vec<u8>| format!("the frame is {} bytes, not 64", f.len()))?;
    let out = ifindex(&client.netns, &client.iface)?;
    nft_drop_rule(&pod.netns, SINK, &pod.iface, client.ipv4)?;
    let delivered = || nft_counter(&pod.netns, "netdev", SINK);
    let dir = PathBuf::from(format!("/sys/fs/bpf/skiff-bench-nat-{}", std::process::id()));

    let frames = std::env::var("SKIFF_LAB_FRAMES").ok().and_then(|f| f.parse().ok()).unwrap_or(FRAMES);
    let send = || -> Result<f64> {
        let before = delivered()?;
        let elapsed = generate(&client.netns, frame, out, frames)?;
        Ok((delivered()? - before) as f64 / elapsed.as_secs_f64())
    };
    let (mut skiff, mut kernel) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // skiff: the ingress program on the uplink and the pod's veth, one worker on CPU 1.
        let mut ingress = Ingress::load(&dir)?;
        ingress.set_config(&XdpConfig::DEFAULT)?;
        let backend = Backend { id: BackendId(1), addr: pod.ipv4.into(), port: 8080, weight: 1, local: true };
        let service = Service::new(vec![backend], ServiceConfig::default())?;
        let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 17 };
        let to_pod = Neighbor { port: 1, src_mac: pod.node_mac, dst_mac: pod.mac };
        let tables = Tables {
            services: [(frontend, service)].into_iter().collect(),
            next_hops: [(pod.ipv4.into(), to_pod)].into_iter().collect(),
            ..Tables::default()
        };
        let config = Config {
            interfaces: vec![client.node_iface.clone(), pod.node_iface.clone()],
            io: Io::AfXdp(XdpMode::Native),
            cores: vec![1],
            ..Config::default()
        };
        let datapath = node.netns.run(|| Datapath::start(config, tables, Some(ingress)))??;
        split_layout(&node.netns, &client.node_iface)?;
        skiff.push(send()?);
        let stats = datapath.stop();
        println!(
            "skiff worker: received {}, forwarded {}, dropped {}",
            stats.received, stats.forwarded, stats.dropped
        );
        bpffs::remove_pins(&dir)?;

        // The kernel: DNAT in prerouting, conntrack, forwarding. The uplink needs an XDP
        // program for the generator's redirect to arrive: the counting one, which passes.
        let mut pass = CountProgram::load()?;
        node.netns.run(|| pass.attach(&client.node_iface, XdpMode::Native))??;
        split_layout(&node.netns, &client.node_iface)?;
        nft(
            &node.netns,
            &format!(
                "table ip skiffnat {{\n  chain prerouting {{\n    type nat hook prerouting priority -100;\n    ip daddr {VIP} udp dport 80 dnat to {}:8080\n  }}\n}}\n",
                pod.ipv4
            ),
        )?;
        kernel.push(send()?);
        node.netns.exec("nft", &["delete", "table", "ip", "skiffnat"])?;
        drop(pass);
    }
    println!("rounds: skiff {skiff:.0?} pps, nftables {kernel:.0?} pps");
    let (skiff, kernel) = (median(skiff), median(kernel));
    println!(
        "NAT path, 1 established UDP flow: skiff AF_XDP {:.2} Mpps, nftables DNAT + conntrack {:.2} Mpps ({:.2}x)",
        skiff / 1e6,
        kernel / 1e6,
        skiff / kernel
    );
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    let record =
        Record::new("lab_pps_dnat_afxdp_vs_nftables_dnat_conntrack", skiff, "pps").with_baseline(kernel);
    write_report(&target, "fastpath-lab", &[record])?;
    Ok(())
}
