//! The seed corpus of skiff-wire's fuzz targets (`fastpath/wire/fuzz`): the frames captured in
//! the lab plus frames the builder makes, each cut at the layer each target parses. `cargo
//! xtask fuzz` writes them out to start from; the workspace's tests replay them through every
//! target.

use std::{io, net::Ipv4Addr, path::Path};

use skiff_wire::{
    arp::{ArpRepr, Operation},
    ethernet::Mac,
    geneve::GeneveOption,
    layers::{self, L3, L4},
};

use crate::{Builder, eth, pcap};

/// Every seed, as (target, bytes); `captures` is the folder of lab captures
/// (`fastpath/wire/tests/captures`).
pub fn seeds(captures: &Path) -> io::Result<Vec<(&'static str, Vec<u8>)>> {
    let mut frames = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(captures)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "pcap")) {
        frames.extend(pcap::read(&path)?);
    }
    frames.extend(built());
    Ok(frames.iter().flat_map(|frame| cuts(frame)).collect())
}

fn built() -> Vec<Vec<u8>> {
    let (a, b) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 19, 0, 1));
    let (a6, b6) = ("fd00::2".parse().unwrap(), "fd00:0:0:19::1".parse().unwrap());
    let inner = |x: Builder| x.eth().ipv4(a, b).tcp(1, 80).syn().build();
    let mut opt = [0u8; 8];
    GeneveOption { class: 0x0103, kind: 0x80, data: &[0, 0, 1, 0] }.emit(&mut opt);
    let arp = ArpRepr {
        operation: Operation::REQUEST,
        sender_mac: Mac([2, 0, 0, 0, 0, 1]),
        sender_ip: a,
        target_mac: Mac::default(),
        target_ip: b,
    };
    vec![
        eth().vlan(100).ipv4(a, b).udp(1, 53).payload(b"q").build(),
        eth()
            .vlan(200)
            .vlan(10)
            .ipv6(a6, b6)
            .tcp(1, 443)
            .syn()
            .tcp_options(&[2, 4, 5, 180, 4, 2, 3, 3, 7])
            .build(),
        eth().ipv6(a6, b6).hop_by_hop().dst_opts(16).udp(2, 3).payload(b"x").build(),
        eth().ipv6(a6, b6).fragment6(8, false, 1).payload(&[0; 8]).build(),
        inner(eth().ipv4(a, b).udp(40000, 8472).vxlan(5)),
        inner(eth().ipv4(a, b).udp(40000, 6081).geneve(5, &opt)),
        inner(eth().ipv4(a, b).udp(40000, 6081).geneve(7, &[])),
        inner(eth().ipv6(a6, b6).udp(40000, 6081).geneve(9, &[opt, opt].concat())),
        eth().arp(arp).build(),
    ]
}

/// The part of `frame` each target parses.
fn cuts(frame: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut cuts = vec![("frame", frame.to_vec()), ("ethernet", frame.to_vec())];
    let Ok(p) = layers::parse(frame) else { return cuts };
    let l3 = frame[p.l3_offset..].to_vec();
    match p.l3 {
        L3::Arp => cuts.push(("arp", l3)),
        L3::Ip(ip) => {
            cuts.push((if ip.v6 { "ipv6" } else { "ipv4" }, l3));
            let l4 = frame[p.l4_offset..p.l3_offset + ip.len].to_vec();
            match p.l4 {
                L4::Tcp { .. } => cuts.push(("tcp", l4)),
                L4::Udp { dst_port, .. } => {
                    let tunnel = match dst_port {
                        8472 => Some("vxlan"),
                        6081 => Some("geneve"),
                        _ => None,
                    };
                    if let Some(target) = tunnel {
                        cuts.push((target, l4[8..].to_vec()));
                    }
                    cuts.push(("udp", l4));
                }
                L4::Icmp { .. } => cuts.push(("icmp", [&[u8::from(ip.v6)][..], &l4].concat())),
                L4::None => {}
            }
        }
        L3::Other(_) => {}
    }
    cuts
}
