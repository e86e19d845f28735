//! The fixture table of `skiff_xdp_ingress`, for its `BPF_PROG_TEST_RUN` tests and benches:
//! the node and table contents it assumes ([`Env`]), and one row per path through the program,
//! malformed frames at every layer included.

use std::net::{Ipv4Addr, Ipv6Addr};

use skiff_common::{
    DropReason,
    identity::Identity,
    tunnel::{GENEVE_OPT_CLASS, GENEVE_OPT_IDENTITY},
};
use skiff_wire::geneve::GeneveOption;

use crate::{Builder, Expect, Fixture, eth};

/// What the tables hold when the fixtures run.
pub struct Env;

impl Env {
    /// The node's tunnel addresses (also where node traffic goes).
    pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    /// Denied prefixes, and an address inside each.
    pub const DENIED_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 66, 0), 24);
    pub const DENIED_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x66, 0, 0, 0, 0, 0, 0), 32);
    pub const IN_DENIED_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 66, 7);
    pub const IN_DENIED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x66, 0, 0, 0, 0, 0, 7);
    /// A service frontend (TCP port 80) of each family.
    pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
    pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0x19, 0, 0, 0, 0x10);
    pub const SERVICE_PORT: u16 = 80;
    /// A local pod under network policy.
    pub const POLICY_POD_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 20);
    /// A tracked (NATed) flow: a backend's reply to the client.
    pub const TRACKED_V4: (Ipv4Addr, u16, Ipv4Addr, u16) =
        (Ipv4Addr::new(198, 18, 128, 10), 8080, Self::CLIENT_V4, 45000);
    /// A pod on another node, and its identity (tunnel frames carry it as their VNI).
    pub const REMOTE_POD_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 129, 10);
    pub const VNI: u32 = 42;
    /// Another pod there, whose identity travels in a Geneve option.
    pub const OPTION_POD_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 129, 11);
    pub const IDENTITY: u32 = 4242;
    /// The ipcache: those pods' identities, and the other node's (`CLIENT_V4`), which its
    /// host's tunnel frames claim as `host`.
    pub const IPCACHE: [(std::net::IpAddr, u8, Identity); 3] = [
        (std::net::IpAddr::V4(Self::REMOTE_POD_V4), 32, Identity(Self::VNI)),
        (std::net::IpAddr::V4(Self::OPTION_POD_V4), 32, Identity(Self::IDENTITY)),
        (std::net::IpAddr::V4(Self::CLIENT_V4), 32, Identity::REMOTE_NODE),
    ];
    /// The other nodes: the client's addresses (tunnel frames come from them), and their pod
    /// CIDR.
    pub const NODES: [std::net::IpAddr; 2] =
        [std::net::IpAddr::V4(Self::CLIENT_V4), std::net::IpAddr::V6(Self::CLIENT_V6)];
    pub const REMOTE_PODS_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 129, 0), 24);
}

fn to_node() -> Builder {
    eth().ipv4(Env::CLIENT_V4, Env::NODE_V4)
}

/// The frame a tunnel carries in the fixtures: a pod's TCP SYN to another pod.
pub fn inner_frame() -> Vec<u8> {
    inner_frame_from(Env::REMOTE_POD_V4)
}

/// A TCP SYN from `src` to a pod here.
fn inner_frame_from(src: Ipv4Addr) -> Vec<u8> {
    Builder::empty().eth().ipv4(src, Ipv4Addr::new(198, 18, 128, 11)).tcp(40000, 8080).syn().build()
}

fn vxlan_to_node(vni: u32) -> Builder {
    to_node().udp(51000, 8472).vxlan(vni)
}

fn geneve_option(class: u16, kind: u8, data: &[u8]) -> Vec<u8> {
    let o = GeneveOption { class, kind, data };
    let mut out = vec![0; o.wire_len()];
    o.emit(&mut out);
    out
}

fn with_inner(outer: Builder) -> Vec<u8> {
    [outer.build(), inner_frame()].concat()
}

fn with_inner_from(outer: Builder, src: Ipv4Addr) -> Vec<u8> {
    [outer.build(), inner_frame_from(src)].concat()
}

/// Every path through `skiff_xdp_ingress`. `Redirect` rows expect a worker; with no AF_XDP
/// socket bound the program passes them and counts `NO_WORKER`. A table: one row per path.
#[allow(clippy::too_many_lines)]
pub fn fixtures() -> Vec<Fixture> {
    let identity_option = geneve_option(GENEVE_OPT_CLASS, GENEVE_OPT_IDENTITY, &Env::IDENTITY.to_be_bytes());
    let critical_unknown = geneve_option(0x0104, 0x80 | 7, &[0; 4]);
    let (tracked_src, tracked_sport, tracked_dst, tracked_dport) = Env::TRACKED_V4;
    let mut ihl4 = to_node().tcp(1, 22).build();
    ihl4[14] = 0x44;
    let mut long_total = to_node().udp(1, 53).payload(b"q").build();
    long_total[16..18].copy_from_slice(&200u16.to_be_bytes());
    let mut no_i_flag = with_inner(vxlan_to_node(Env::VNI));
    no_i_flag[14 + 20 + 8] = 0;
    let mut option_past_end = with_inner(to_node().udp(51000, 6081).geneve(Env::VNI, &[]));
    option_past_end[14 + 20 + 8] = 0x3f; // 252 bytes of options in a short packet
    let mut bad_doff = to_node().tcp(1, 22).build();
    bad_doff[14 + 20 + 12] = 0x30;
    let mut bad_udp_len = to_node().udp(1, 53).payload(b"q").build();
    bad_udp_len[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&4u16.to_be_bytes());
    let mut ext_loop = eth().ipv6(Env::CLIENT_V6, Env::NODE_V6);
    for _ in 0..9 {
        ext_loop = ext_loop.dst_opts(8);
    }
    let inner_syn = Builder::empty()
        .eth()
        .ipv4(Env::REMOTE_POD_V4, Env::SERVICE_V4)
        .tcp(1, Env::SERVICE_PORT)
        .syn()
        .build();
    vec![
        Fixture::new("TCP to the node passes", to_node().tcp(45000, 22).syn().build(), Expect::Pass),
        Fixture::new(
            "IPv6 UDP to the node passes",
            eth().ipv6(Env::CLIENT_V6, Env::NODE_V6).udp(1, 53).payload(b"q").build(),
            Expect::Pass,
        ),
        Fixture::new("ARP passes", arp_request(), Expect::Pass),
        Fixture::new(
            "802.1Q-tagged TCP passes",
            eth().vlan(100).ipv4(Env::CLIENT_V4, Env::NODE_V4).tcp(1, 22).build(),
            Expect::Pass,
        ),
        Fixture::new(
            "a later IPv4 fragment passes",
            to_node().fragment4(1480, false, 7).protocol(17).payload(&[0; 16]).build(),
            Expect::Pass,
        ),
        Fixture::new(
            "denied IPv4 source",
            eth().ipv4(Env::IN_DENIED_V4, Env::NODE_V4).tcp(1, 80).syn().build(),
            Expect::Drop(DropReason::DeniedCidr),
        ),
        Fixture::new(
            "denied IPv6 source",
            eth().ipv6(Env::IN_DENIED_V6, Env::NODE_V6).tcp(1, 80).syn().build(),
            Expect::Drop(DropReason::DeniedCidr),
        ),
        Fixture::new(
            "VXLAN to the node is decapsulated",
            with_inner(vxlan_to_node(Env::VNI)),
            Expect::Redirect,
        )
        .output(inner_frame()),
        Fixture::new(
            "VXLAN over IPv6 is decapsulated",
            with_inner(eth().ipv6(Env::CLIENT_V6, Env::NODE_V6).udp(51000, 8472).vxlan(Env::VNI)),
            Expect::Redirect,
        )
        .output(inner_frame()),
        Fixture::new(
            "VXLAN to another address is not ours",
            with_inner(eth().ipv4(Env::CLIENT_V4, Ipv4Addr::new(198, 18, 0, 9)).udp(51000, 8472).vxlan(1)),
            Expect::Pass,
        ),
        Fixture::new(
            "Geneve without options is decapsulated",
            with_inner(to_node().udp(51000, 6081).geneve(Env::VNI, &[])),
            Expect::Redirect,
        )
        .output(inner_frame()),
        Fixture::new(
            "Geneve with an identity option is decapsulated",
            with_inner_from(
                to_node().udp(51000, 6081).geneve(Env::VNI, &identity_option),
                Env::OPTION_POD_V4,
            ),
            Expect::Redirect,
        )
        .output(inner_frame_from(Env::OPTION_POD_V4)),
        Fixture::new(
            "Geneve with an unknown critical option",
            with_inner(to_node().udp(51000, 6081).geneve(Env::VNI, &critical_unknown)),
            Expect::Drop(DropReason::GeneveCriticalOption),
        ),
        Fixture::new(
            "VXLAN from an address that is no node",
            with_inner(
                eth().ipv4(Ipv4Addr::new(198, 18, 0, 9), Env::NODE_V4).udp(51000, 8472).vxlan(Env::VNI),
            ),
            Expect::Drop(DropReason::TunnelUnknownNode),
        ),
        Fixture::new(
            "VXLAN claiming another identity than its source's",
            with_inner(vxlan_to_node(Env::IDENTITY)),
            Expect::Drop(DropReason::TunnelIdentityMismatch),
        ),
        Fixture::new(
            "Geneve whose option claims another identity than its source's",
            with_inner(to_node().udp(51000, 6081).geneve(Env::VNI, &identity_option)),
            Expect::Drop(DropReason::TunnelIdentityMismatch),
        ),
        Fixture::new(
            "VXLAN from an address the ipcache does not know claims world",
            with_inner_from(vxlan_to_node(Identity::WORLD.0), Ipv4Addr::new(198, 19, 200, 1)),
            Expect::Redirect,
        )
        .output(inner_frame_from(Ipv4Addr::new(198, 19, 200, 1))),
        Fixture::new(
            "VXLAN from another node's host is from a remote node",
            with_inner_from(vxlan_to_node(Identity::HOST.0), Env::CLIENT_V4),
            Expect::Redirect,
        )
        .output(inner_frame_from(Env::CLIENT_V4)),
        Fixture::new(
            "VXLAN inside VXLAN is not opened twice",
            // The outer VNI is the inner source's (the other node's host, `remote-node` here).
            [vxlan_to_node(Identity::HOST.0).build(), with_inner(vxlan_to_node(Env::VNI))].concat(),
            Expect::Drop(DropReason::TunnelNested),
        ),
        Fixture::new(
            "to a pod on another node",
            eth()
                .ipv4(Ipv4Addr::new(198, 18, 128, 11), Ipv4Addr::new(198, 18, 129, 10))
                .tcp(40000, 80)
                .syn()
                .build(),
            Expect::Redirect,
        ),
        Fixture::new(
            "TCP to an IPv4 service",
            eth().ipv4(Env::CLIENT_V4, Env::SERVICE_V4).tcp(45000, Env::SERVICE_PORT).syn().build(),
            Expect::Redirect,
        ),
        Fixture::new(
            "TCP to an IPv6 service",
            eth().ipv6(Env::CLIENT_V6, Env::SERVICE_V6).tcp(45000, Env::SERVICE_PORT).syn().build(),
            Expect::Redirect,
        ),
        Fixture::new(
            "a service inside VXLAN",
            [vxlan_to_node(Env::VNI).build(), inner_syn.clone()].concat(),
            Expect::Redirect,
        )
        .output(inner_syn),
        Fixture::new(
            "another port of a service IP is not a service",
            eth().ipv4(Env::CLIENT_V4, Env::SERVICE_V4).tcp(45000, 81).syn().build(),
            Expect::Pass,
        ),
        Fixture::new(
            "to a pod under policy",
            eth().ipv4(Env::CLIENT_V4, Env::POLICY_POD_V4).udp(1, 53).payload(b"q").build(),
            Expect::Judge,
        ),
        Fixture::new(
            "from a pod under policy",
            eth().ipv4(Env::POLICY_POD_V4, Env::CLIENT_V4).udp(53, 1).payload(b"q").build(),
            Expect::Judge,
        ),
        Fixture::new(
            "from a pod under policy to the node passes",
            eth().ipv4(Env::POLICY_POD_V4, Env::NODE_V4).tcp(45000, 22).syn().build(),
            Expect::Pass,
        ),
        Fixture::new(
            "a tracked flow's reply",
            eth().ipv4(tracked_src, tracked_dst).tcp(tracked_sport, tracked_dport).ack(1).build(),
            Expect::Redirect,
        ),
        Fixture::new("truncated Ethernet", vec![0x02; 10], Expect::Drop(DropReason::EthernetTruncated)),
        Fixture::new(
            "truncated VLAN tag",
            eth().vlan(5).build()[..16].to_vec(),
            Expect::Drop(DropReason::VlanTruncated),
        ),
        Fixture::new(
            "three VLAN tags",
            eth()
                .vlan(1)
                .vlan(2)
                .build()
                .into_iter()
                .take(12)
                .chain([0x81, 0, 0, 3, 0x81, 0, 0, 4, 0x81, 0, 0, 5, 0x08, 0])
                .chain([0; 20])
                .collect(),
            Expect::Drop(DropReason::VlanTooDeep),
        ),
        Fixture::new(
            "truncated IPv4 header",
            to_node().tcp(1, 22).build()[..30].to_vec(),
            Expect::Drop(DropReason::Ipv4Truncated),
        ),
        Fixture::new("IPv4 IHL below 5", ihl4, Expect::Drop(DropReason::Ipv4BadHeaderLength)),
        Fixture::new(
            "IPv4 total length beyond the frame",
            long_total,
            Expect::Drop(DropReason::Ipv4BadTotalLength),
        ),
        Fixture::new(
            "IPv6 extension headers that never end",
            ext_loop.udp(1, 2).build(),
            Expect::Drop(DropReason::Ipv6ExtHeaderLimit),
        ),
        Fixture::new("TCP data offset below 5", bad_doff, Expect::Drop(DropReason::TcpBadDataOffset)),
        Fixture::new("UDP length below its header", bad_udp_len, Expect::Drop(DropReason::UdpBadLength)),
        Fixture::new("VXLAN without the I flag", no_i_flag, Expect::Drop(DropReason::VxlanBadFlags)),
        Fixture::new(
            "Geneve option length past the packet",
            option_past_end,
            Expect::Drop(DropReason::GeneveOptionOverflow),
        ),
    ]
}

fn arp_request() -> Vec<u8> {
    use skiff_wire::{
        arp::{ArpRepr, Operation},
        ethernet::Mac,
    };
    let repr = ArpRepr {
        operation: Operation::REQUEST,
        sender_mac: Mac([2, 0, 1, 0, 0, 2]),
        sender_ip: Env::CLIENT_V4,
        target_mac: Mac::default(),
        target_ip: Env::NODE_V4,
    };
    eth().dst_mac(Mac::BROADCAST).arp(repr).build()
}
