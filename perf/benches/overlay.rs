//! Packets per second of one pod-to-remote-pod flow in the lab: through skiff's overlay (XDP
//! redirect at the sending pod's veth → AF_XDP worker → VXLAN encapsulation → AF_XDP transmit
//! on the link between the nodes → XDP decapsulation on the other node → its worker → the
//! pod's veth) against the same flow through the kernel's vxlan devices and routing, same
//! generator, same run, ABBA rounds. One UDP flow of 64-byte frames from node1's pod to
//! node2's, counted where it ends: an nftables drop rule on the receiving pod's interface.
//!
//! CPU 0 runs the generator; CPU 1 runs both nodes (their NAPI threads and, for skiff, both
//! workers). Writes `target/bench-report/overlay.json`. Root only. `SKIFF_LAB_FRAMES` sets
//! the frames per round (default 2^24).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::Arc,
};

use ipnet::IpNet;
use skiff_common::{DropReason, tunnel::VXLAN_PORT};
use skiff_engine::{
    prefix::PrefixMap,
    tables::{LocalNode, Neighbor, Tables},
    tunnel::{Overlay, TunnelProtocol},
};
use skiff_fastpath::datapath::{Config, Datapath, Io};
use skiff_lab::{Host, Lab, LabNode, Topology};
use skiff_perf::{
    Record,
    lab::{
        FRAMES, ROUNDS, Result, abba, generate_sized, ifindex, nft_counter, nft_drop_rule, split_layout,
        udp_frame,
    },
    write_report,
};
use skiff_xdp::{CountProgram, Ingress, XdpMode, bpffs};

const SINK: &str = "skiffsink";
/// The lab's link between the two nodes, each end's address.
const NODE1: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const NODE2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// The MACs of the lab's `peer` link (see `skiff_lab`'s `Wire::peer`).
const NODE1_PEER_MAC: [u8; 6] = [0x02, 0, 3, 0, 0, 1];
const NODE2_PEER_MAC: [u8; 6] = [0x02, 0, 3, 0, 0, 2];

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let lab = Topology::new().pods(1).second_node(1).build()?;
    let (from, to) = (lab.pods()[0].clone(), lab.node2_pods()[0].clone());
    nft_drop_rule(&to.netns, SINK, &to.iface, from.ipv4)?;
    let frames = std::env::var("SKIFF_LAB_FRAMES").ok().and_then(|f| f.parse().ok()).unwrap_or(FRAMES);
    let pins =
        |n: usize| PathBuf::from(format!("/sys/fs/bpf/skiff-bench-overlay-{}-{n}", std::process::id()));
    let delivered = || -> Result<f64> {
        let frame =
            udp_frame(&from, SocketAddrV4::new(from.ipv4, 40000), SocketAddrV4::new(to.ipv4, 8080), 64)?;
        let before = nft_counter(&to.netns, "netdev", SINK)?;
        let elapsed = generate_sized(&from.netns, frame, 64, ifindex(&from.netns, &from.iface)?, frames)?;
        Ok((nft_counter(&to.netns, "netdev", SINK)? - before) as f64 / elapsed.as_secs_f64())
    };
    let skiff = || -> Result<f64> {
        let node1 = start(
            &lab.nodes()[0],
            &from,
            pins(1),
            (NODE1, NODE2),
            ("198.18.128.0/24", "198.18.129.0/24"),
            None,
        )?;
        let node2 = start(
            &lab.nodes()[1],
            &to,
            pins(2),
            (NODE2, NODE1),
            ("198.18.129.0/24", "198.18.128.0/24"),
            Some(&to),
        )?;
        split_layout(&lab.node().netns, &from.node_iface)?;
        split_layout(&lab.nodes()[1].netns, "peer")?;
        let pps = delivered();
        for (n, (datapath, dir)) in [(1, node1), (2, node2)] {
            let s = datapath.stop();
            let drops: Vec<String> = DropReason::ALL
                .into_iter()
                .filter(|&r| s.drops_of(r) > 0)
                .map(|r| format!("{r} {}", s.drops_of(r)))
                .collect();
            println!(
                "  node{n}'s worker: received {}, forwarded {}, dropped {} ({})",
                s.received,
                s.forwarded,
                s.dropped,
                drops.join(", ")
            );
            bpffs::remove_pins(&dir)?;
        }
        pps
    };
    let kernel = || -> Result<f64> {
        // The generator's redirect needs an XDP program at the pod's veth: the counting one.
        let mut pass = CountProgram::load()?;
        lab.node().netns.run(|| pass.attach(&from.node_iface, XdpMode::Native))??;
        kernel_vxlan(&lab, true)?;
        split_layout(&lab.node().netns, &from.node_iface)?;
        let pps = delivered();
        kernel_vxlan(&lab, false)?;
        pps
    };
    let (skiff, kernel) = abba(ROUNDS, skiff, kernel)?;
    println!(
        "one pod-to-remote-pod UDP flow, 64-byte frames: skiff VXLAN {:.2} Mpps, kernel vxlan + routing {:.2} Mpps; rounds {:.0?} and {:.0?}",
        skiff.value / 1e6,
        kernel.value / 1e6,
        skiff.rounds,
        kernel.rounds
    );
    let record = Record::new("lab_pps_pod_to_remote_pod_vxlan", "pps", skiff)
        .against("the kernel's vxlan devices and routing", kernel);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(&target, "overlay", &[record])?;
    Ok(())
}

/// skiff's datapath in `node` over the pod's veth and the link to the other node (`local`,
/// `remote` its ends), its pods in the first CIDR of `pods`, tunnelling to the second;
/// `deliver_to` the pod it delivers to.
fn start(
    node: &LabNode,
    pod: &Host,
    pins: PathBuf,
    (local, remote): (Ipv4Addr, Ipv4Addr),
    pods: (&str, &str),
    deliver_to: Option<&Host>,
) -> Result<(Datapath, PathBuf)> {
    let ingress = Ingress::load(&pins)?;
    let mut routes = PrefixMap::default();
    routes.insert(pods.1.parse::<IpNet>()?, IpAddr::V4(remote));
    let overlay = Overlay {
        protocol: TunnelProtocol::Vxlan,
        port: VXLAN_PORT,
        local_v4: Some(local),
        local_v6: None,
        remote: routes,
        mtu: 1500,
    };
    let (local_mac, remote_mac) =
        if local == NODE1 { (NODE1_PEER_MAC, NODE2_PEER_MAC) } else { (NODE2_PEER_MAC, NODE1_PEER_MAC) };
    let mut next_hops: hashbrown::HashMap<IpAddr, Neighbor> =
        [(IpAddr::V4(remote), Neighbor { port: 1, src_mac: local_mac, dst_mac: remote_mac })]
            .into_iter()
            .collect();
    if let Some(pod) = deliver_to {
        next_hops.insert(pod.ipv4.into(), Neighbor { port: 0, src_mac: pod.node_mac, dst_mac: pod.mac });
    }
    let here = LocalNode { pod_cidrs: vec![pods.0.parse::<IpNet>()?], ..LocalNode::default() };
    let tables = Tables { overlay: Some(Arc::new(overlay)), next_hops, node: here, ..Tables::default() };
    let config = Config {
        interfaces: vec![pod.node_iface.clone(), "peer".into()],
        io: Io::AfXdp(XdpMode::Native),
        cores: vec![1],
        ..Config::default()
    };
    let datapath = node.netns.run(|| Datapath::start(config, Some(tables), Some(ingress)))??;
    Ok((datapath, pins))
}

/// The kernel's way (`on`), or none: a vxlan device on each node (VNI 2, port 8472) and
/// node1's route to node2's pods through it, instead of the lab's plain route over the link.
fn kernel_vxlan(lab: &Lab, on: bool) -> Result<()> {
    let (node1, node2) = (&lab.nodes()[0].netns, &lab.nodes()[1].netns);
    if !on {
        node1.exec("ip", &["link", "del", "vx0"])?;
        node2.exec("ip", &["link", "del", "vx0"])?;
        node1.exec("ip", &["route", "replace", "198.18.129.0/24", "via", &NODE2.to_string()])?;
        return Ok(());
    }
    let vx2_mac = "02:00:42:00:00:02";
    for (ns, local, remote, mac) in
        [(node1, NODE1, NODE2, "02:00:42:00:00:01"), (node2, NODE2, NODE1, vx2_mac)]
    {
        let (local, remote) = (local.to_string(), remote.to_string());
        let vxlan = ["id", "2", "dstport", "8472", "local", &local, "remote", &remote, "dev", "peer"];
        ns.exec("ip", &[&["link", "add", "vx0", "address", mac, "type", "vxlan"][..], &vxlan].concat())?;
        ns.exec("ip", &["link", "set", "vx0", "up"])?;
    }
    node1.exec(
        "ip",
        &["route", "replace", "198.18.129.0/24", "via", "198.18.129.1", "dev", "vx0", "onlink"],
    )?;
    node1.exec(
        "ip",
        &["neigh", "replace", "198.18.129.1", "lladdr", vx2_mac, "dev", "vx0", "nud", "permanent"],
    )?;
    Ok(())
}
