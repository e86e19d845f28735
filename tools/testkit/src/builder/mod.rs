//! A fluent packet builder over skiff-wire's `Repr::emit`, so built packets are exactly what
//! the parsers accept. Layers are listed outermost first and emitted innermost first, so each
//! layer knows its payload: lengths, next-protocol fields and checksums are filled in.

mod emit;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use skiff_wire::{
    IpProtocol,
    arp::ArpRepr,
    ethernet::Mac,
    geneve::{self},
    icmp::{self},
    tcp::TcpFlags,
};

/// Default MACs: the lab's client → node uplink.
pub const SRC_MAC: Mac = Mac([0x02, 0, 1, 0, 0, 2]);
pub const DST_MAC: Mac = Mac([0x02, 0, 1, 0, 0, 1]);

/// Starts a frame with an Ethernet header (lab MACs; change them with `src_mac`/`dst_mac`).
pub fn eth() -> Builder {
    Builder::empty().eth()
}

#[derive(Clone, Debug)]
enum LayerSpec {
    Eth {
        src: Mac,
        dst: Mac,
        vlans: Vec<u16>,
    },
    Arp(ArpRepr),
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        ident: u16,
        dont_frag: bool,
        more_frags: bool,
        frag_offset: u16,
        protocol: Option<u8>,
    },
    Ipv6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        flow_label: u32,
    },
    /// An IPv6 extension header: its number and its body after the two first bytes (for the
    /// fragment header: offset/flags and ident).
    Ipv6Ext {
        kind: IpProtocol,
        body: Vec<u8>,
    },
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: TcpFlags,
        window: u16,
        options: Vec<u8>,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Icmp {
        msg_type: u8,
        code: u8,
        rest: u32,
    },
    Vxlan {
        vni: u32,
    },
    Geneve {
        vni: u32,
        options: Vec<u8>,
        critical: bool,
    },
    Payload(Vec<u8>),
}

/// A frame under construction; see the module docs.
#[derive(Clone, Debug)]
pub struct Builder {
    layers: Vec<LayerSpec>,
}

impl Builder {
    /// A builder with no layer yet: start with `.eth()` (the inner frame of a tunnel fixture).
    pub fn empty() -> Self {
        Builder { layers: Vec::new() }
    }

    fn push(mut self, l: LayerSpec) -> Self {
        self.layers.push(l);
        self
    }
    fn last_mut(&mut self) -> &mut LayerSpec {
        self.layers.last_mut().expect("a builder always has a layer")
    }

    /// Another Ethernet header (the inner frame after `.vxlan()` or `.geneve()`).
    pub fn eth(self) -> Self {
        self.push(LayerSpec::Eth { src: SRC_MAC, dst: DST_MAC, vlans: Vec::new() })
    }
    pub fn src_mac(mut self, mac: Mac) -> Self {
        if let LayerSpec::Eth { src, .. } = self.eth_mut() {
            *src = mac;
        }
        self
    }
    pub fn dst_mac(mut self, mac: Mac) -> Self {
        if let LayerSpec::Eth { dst, .. } = self.eth_mut() {
            *dst = mac;
        }
        self
    }
    /// Adds a VLAN tag (TCI) inside the tags already there; two make a QinQ frame.
    pub fn vlan(mut self, tci: u16) -> Self {
        if let LayerSpec::Eth { vlans, .. } = self.eth_mut() {
            vlans.push(tci);
        }
        self
    }
    fn eth_mut(&mut self) -> &mut LayerSpec {
        self.layers.iter_mut().rev().find(|l| matches!(l, LayerSpec::Eth { .. })).expect("an Ethernet layer")
    }

    pub fn arp(self, repr: ArpRepr) -> Self {
        self.push(LayerSpec::Arp(repr))
    }

    pub fn ipv4(self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.push(LayerSpec::Ipv4 {
            src,
            dst,
            ttl: 64,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            protocol: None,
        })
    }
    pub fn ipv6(self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        self.push(LayerSpec::Ipv6 { src, dst, hop_limit: 64, flow_label: 0 })
    }
    /// IPv4 or IPv6 by the addresses' family (both must be of one family).
    pub fn ip(self, src: IpAddr, dst: IpAddr) -> Self {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s, d),
            _ => panic!("mixed address families {src} {dst}"),
        }
    }
    /// TTL or hop limit of the last IP layer.
    pub fn ttl(mut self, v: u8) -> Self {
        match self.ip_mut() {
            LayerSpec::Ipv4 { ttl, .. } => *ttl = v,
            LayerSpec::Ipv6 { hop_limit, .. } => *hop_limit = v,
            _ => unreachable!(),
        }
        self
    }
    /// Makes the last IPv4 layer a fragment (`offset` in bytes, a multiple of 8).
    pub fn fragment4(mut self, offset: u16, more: bool, id: u16) -> Self {
        if let LayerSpec::Ipv4 { frag_offset, more_frags, dont_frag, ident, .. } = self.ip_mut() {
            (*frag_offset, *more_frags, *dont_frag, *ident) = (offset, more, false, id);
        }
        self
    }
    /// Sets the IPv4 protocol field explicitly (otherwise it follows the next layer).
    pub fn protocol(mut self, p: u8) -> Self {
        if let LayerSpec::Ipv4 { protocol, .. } = self.ip_mut() {
            *protocol = Some(p);
        }
        self
    }
    fn ip_mut(&mut self) -> &mut LayerSpec {
        self.layers
            .iter_mut()
            .rev()
            .find(|l| matches!(l, LayerSpec::Ipv4 { .. } | LayerSpec::Ipv6 { .. }))
            .expect("an IP layer")
    }

    /// An IPv6 hop-by-hop header with a router-alert option (8 bytes).
    pub fn hop_by_hop(self) -> Self {
        self.push(LayerSpec::Ipv6Ext { kind: IpProtocol::HOP_BY_HOP, body: vec![5, 2, 0, 0, 1, 0] })
    }
    /// An IPv6 destination-options header of `len` bytes (a multiple of 8), PadN-filled.
    pub fn dst_opts(self, len: usize) -> Self {
        assert!(len >= 8 && len.is_multiple_of(8));
        let mut body = vec![0; len - 2];
        body[0] = 1; // PadN
        // Fits: len - 4 <= 253 for any header this builder is asked for.
        body[1] = u8::try_from(len - 4).expect("a small header");
        self.push(LayerSpec::Ipv6Ext { kind: IpProtocol::DST_OPTS, body })
    }
    /// An IPv6 fragment header.
    pub fn fragment6(self, offset: u16, more: bool, ident: u32) -> Self {
        let mut body = (offset & 0xfff8 | u16::from(more)).to_be_bytes().to_vec();
        body.extend_from_slice(&ident.to_be_bytes());
        self.push(LayerSpec::Ipv6Ext { kind: IpProtocol::FRAGMENT, body })
    }

    pub fn tcp(self, src_port: u16, dst_port: u16) -> Self {
        self.push(LayerSpec::Tcp {
            src_port,
            dst_port,
            seq: 1,
            ack: 0,
            flags: TcpFlags::default(),
            window: 64240,
            options: Vec::new(),
        })
    }
    pub fn syn(self) -> Self {
        self.tcp_flag(TcpFlags::SYN)
    }
    /// Sets ACK with acknowledgment number `n`.
    pub fn ack(mut self, n: u32) -> Self {
        if let LayerSpec::Tcp { ack, .. } = self.last_mut() {
            *ack = n;
        }
        self.tcp_flag(TcpFlags::ACK)
    }
    pub fn fin(self) -> Self {
        self.tcp_flag(TcpFlags::FIN)
    }
    pub fn rst(self) -> Self {
        self.tcp_flag(TcpFlags::RST)
    }
    pub fn psh(self) -> Self {
        self.tcp_flag(TcpFlags::PSH)
    }
    pub fn window(mut self, w: u16) -> Self {
        if let LayerSpec::Tcp { window, .. } = self.last_mut() {
            *window = w;
        }
        self
    }
    pub fn seq(mut self, n: u32) -> Self {
        if let LayerSpec::Tcp { seq, .. } = self.last_mut() {
            *seq = n;
        }
        self
    }
    /// Raw TCP options (padded with NOPs to a multiple of 4).
    pub fn tcp_options(mut self, opts: &[u8]) -> Self {
        if let LayerSpec::Tcp { options, .. } = self.last_mut() {
            *options = opts.to_vec();
            while options.len() % 4 != 0 {
                options.push(1);
            }
        }
        self
    }
    fn tcp_flag(mut self, f: TcpFlags) -> Self {
        match self.last_mut() {
            LayerSpec::Tcp { flags, .. } => *flags = *flags | f,
            other => panic!("TCP flag on {other:?}"),
        }
        self
    }

    pub fn udp(self, src_port: u16, dst_port: u16) -> Self {
        self.push(LayerSpec::Udp { src_port, dst_port })
    }
    /// An ICMP (v4 or v6, by the IP layer) message with its four message-specific bytes.
    pub fn icmp(self, msg_type: u8, code: u8, rest: u32) -> Self {
        self.push(LayerSpec::Icmp { msg_type, code, rest })
    }
    /// An echo request of the IP layer's family.
    pub fn echo_request(self, ident: u16, seq: u16) -> Self {
        let ty = if self.is_v6() { icmp::v6::ECHO_REQUEST } else { icmp::v4::ECHO_REQUEST };
        self.icmp(ty, 0, (u32::from(ident) << 16) | u32::from(seq))
    }
    fn is_v6(&self) -> bool {
        matches!(
            self.layers.iter().rev().find(|l| matches!(l, LayerSpec::Ipv4 { .. } | LayerSpec::Ipv6 { .. })),
            Some(LayerSpec::Ipv6 { .. })
        )
    }

    /// A VXLAN header after the current UDP layer; continue with `.eth()` for the inner frame.
    pub fn vxlan(self, vni: u32) -> Self {
        self.push(LayerSpec::Vxlan { vni })
    }
    /// A Geneve header with raw option TLVs (see `skiff_wire::geneve::GeneveOption::emit`);
    /// continue with `.eth()`. The C bit is set when an option is critical.
    pub fn geneve(self, vni: u32, options: &[u8]) -> Self {
        let critical = geneve_options_critical(options);
        self.push(LayerSpec::Geneve { vni, options: options.to_vec(), critical })
    }

    pub fn payload(self, bytes: &[u8]) -> Self {
        self.push(LayerSpec::Payload(bytes.to_vec()))
    }

    /// Emits the frame.
    pub fn build(&self) -> Vec<u8> {
        let mut inner: Vec<u8> = Vec::new();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let next = self.layers.get(i + 1);
            inner = self.emit_layer(i, layer, next, inner);
        }
        inner
    }
}

fn geneve_options_critical(options: &[u8]) -> bool {
    let mut area = vec![0u8; geneve::HEADER_LEN];
    area[0] = u8::try_from(options.len() / 4).expect("at most 252 bytes of options");
    area.extend_from_slice(options);
    geneve::Packet::new_checked(&area[..])
        .is_ok_and(|p| p.options().any(|o| o.is_ok_and(|o| o.is_critical())))
}
