//! The links of a lab: veth pairs with static addresses, neighbours and routes, set up with
//! `ip -batch`.

use std::{
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
};

use crate::{LabError, LabNode, Netns, check};

/// Joins two nodes by the `peer` link and routes each one's pods through it.
pub(crate) fn join_nodes(node: &LabNode, node2: &LabNode) -> Result<(), LabError> {
    let wire = Wire::peer();
    connect(&node.netns, &node2.netns, &wire, "peer")?;
    let (n1v4, n1v6) = wire.node_addr();
    let (n2v4, n2v6) = wire.far_addr();
    let pods2 = Ipv4Addr::new(198, 18, node2.pod_net, 0);
    batch(
        &node.netns,
        &[
            format!("route add {pods2}/24 via {n2v4}"),
            format!("route add {}/64 via {n2v6}", mirror_v6(pods2)),
        ],
    )?;
    batch(&node2.netns, &[format!("route add default via {n1v4}"), format!("route add ::/0 via {n1v6}")])
}

/// One veth pair between a node and the host on its far end.
#[derive(Clone, Debug)]
pub(crate) struct Wire {
    pub(crate) node_iface: String,
    pub(crate) node_mac: [u8; 6],
    pub(crate) far_mac: [u8; 6],
    pub(crate) node_v4: Ipv4Addr,
    pub(crate) far_v4: Ipv4Addr,
    /// 24 for a shared subnet (uplink, peer); 32 for a pod (node side has no address on it).
    pub(crate) prefix_len: u8,
    /// Queues each way.
    pub(crate) queues: u16,
}

impl Wire {
    pub(crate) fn uplink() -> Wire {
        Wire::subnet("uplink", 1, 0)
    }
    pub(crate) fn peer() -> Wire {
        Wire::subnet("peer", 3, 2)
    }
    pub(crate) fn subnet(node_iface: &str, kind: u8, net: u8) -> Wire {
        Wire {
            node_iface: node_iface.into(),
            node_mac: [0x02, 0, kind, 0, 0, 1],
            far_mac: [0x02, 0, kind, 0, 0, 2],
            node_v4: Ipv4Addr::new(198, 18, net, 1),
            far_v4: Ipv4Addr::new(198, 18, net, 2),
            prefix_len: 24,
            queues: 1,
        }
    }
    pub(crate) fn pod(node: &LabNode, i: usize) -> Wire {
        let i = u8::try_from(i).expect("at most 200 pods per node");
        Wire {
            node_iface: format!("lxc{i}"),
            node_mac: [0x02, 0, node.pod_net, i, 0, 1],
            far_mac: [0x02, 0, node.pod_net, i, 0, 2],
            node_v4: node.pod_gateway_v4(),
            far_v4: Ipv4Addr::new(198, 18, node.pod_net, 10 + i),
            prefix_len: 32,
            queues: 1,
        }
    }
    pub(crate) fn node_addr(&self) -> (Ipv4Addr, Ipv6Addr) {
        (self.node_v4, mirror_v6(self.node_v4))
    }
    pub(crate) fn far_addr(&self) -> (Ipv4Addr, Ipv6Addr) {
        (self.far_v4, mirror_v6(self.far_v4))
    }
}

/// Creates the veth pair of `wire` between `node` and `far` (named `far_iface` there),
/// addresses it, brings it up, adds static neighbours both ways and turns off transmit
/// checksum offload on both ends.
pub(crate) fn connect(node: &Netns, far: &Netns, wire: &Wire, far_iface: &str) -> Result<(), LabError> {
    let (node_if, node_mac, far_mac) = (&wire.node_iface, mac(wire.node_mac), mac(wire.far_mac));
    let (n4, n6) = wire.node_addr();
    let (f4, f6) = wire.far_addr();
    let (len4, len6) = if wire.prefix_len == 32 { (32, 128) } else { (24, 64) };
    let mut node_cmds = vec![
        format!(
            "link add {node_if} numtxqueues {q} numrxqueues {q} address {node_mac} type veth peer name {far_iface} numtxqueues {q} numrxqueues {q} address {far_mac} netns {}",
            far.name(),
            q = wire.queues,
        ),
        format!("link set {node_if} up"),
        format!("neigh replace {f4} lladdr {far_mac} dev {node_if} nud permanent"),
        format!("neigh replace {f6} lladdr {far_mac} dev {node_if} nud permanent"),
    ];
    if wire.prefix_len < 32 {
        node_cmds.push(format!("addr add {n4}/{len4} dev {node_if}"));
        node_cmds.push(format!("addr add {n6}/{len6} dev {node_if} nodad"));
    }
    batch(node, &node_cmds)?;
    batch(
        far,
        &[
            format!("addr add {f4}/{len4} dev {far_iface}"),
            format!("addr add {f6}/{len6} dev {far_iface} nodad"),
            format!("link set {far_iface} up"),
            format!("neigh replace {n4} lladdr {node_mac} dev {far_iface} nud permanent"),
            format!("neigh replace {n6} lladdr {node_mac} dev {far_iface} nud permanent"),
        ],
    )?;
    node.exec("ethtool", &["-K", node_if, "tx", "off"])?;
    far.exec("ethtool", &["-K", far_iface, "tx", "off"])?;
    Ok(())
}

/// A host's link to a switch: its interface, MAC and IPv4 address (/24; IPv6 the mirror /64).
pub(crate) struct Port {
    pub(crate) netns: Netns,
    pub(crate) iface: String,
    pub(crate) mac: [u8; 6],
    pub(crate) v4: Ipv4Addr,
}

/// Plugs every port's host into `switch`'s bridge `br0` and gives each host a static
/// neighbour entry for every other.
pub(crate) fn plug_all(switch: &Netns, ports: &[Port]) -> Result<(), LabError> {
    for (i, p) in ports.iter().enumerate() {
        let (v4, v6) = (p.v4, mirror_v6(p.v4));
        batch(
            switch,
            &[
                format!(
                    "link add sw{i} type veth peer name {} address {} netns {}",
                    p.iface,
                    mac(p.mac),
                    p.netns.name()
                ),
                format!("link set sw{i} master br0"),
                format!("link set sw{i} up"),
            ],
        )?;
        let mut cmds = vec![
            format!("addr add {v4}/24 dev {}", p.iface),
            format!("addr add {v6}/64 dev {} nodad", p.iface),
            format!("link set {} up", p.iface),
        ];
        for other in ports.iter().filter(|o| o.v4 != p.v4) {
            let (o4, o6, m) = (other.v4, mirror_v6(other.v4), mac(other.mac));
            cmds.push(format!("neigh replace {o4} lladdr {m} dev {} nud permanent", p.iface));
            cmds.push(format!("neigh replace {o6} lladdr {m} dev {} nud permanent", p.iface));
        }
        batch(&p.netns, &cmds)?;
        p.netns.exec("ethtool", &["-K", &p.iface, "tx", "off"])?;
    }
    Ok(())
}

/// `198.18.c.d` → `fd00:0:0:c::d`, written with the same digits so the two read alike.
pub fn mirror_v6(v4: Ipv4Addr) -> Ipv6Addr {
    let [_, _, c, d] = v4.octets();
    let hexlike = |n: u8| u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0xfd00, 0, 0, hexlike(c), 0, 0, 0, hexlike(d))
}

fn mac(m: [u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// Runs `ip` commands (one per line) in a namespace through one `ip -batch` process.
pub(crate) fn batch(ns: &Netns, lines: &[String]) -> Result<(), LabError> {
    let command = format!("ip -n {} -batch - <<< {lines:?}", ns.name());
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(lines.join("\n").as_bytes())
        .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    drop(stdin);
    let out =
        child.wait_with_output().map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    check(command, out).map(drop)
}
