#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::Ipv6Addr;

use skiff_wire::{checksum::IpPair, udp::{Packet, UdpRepr}};

const IPS: IpPair = IpPair::V6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_header_checked(data) {
        let _ = (p.payload(), p.verify_checksum(IPS));
    }
    if let Ok(p) = Packet::new_checked(data) {
        if let Ok(repr) = UdpRepr::parse(&p, IPS) {
            let mut out = vec![0; repr.buffer_len()];
            repr.emit(&mut out, IPS);
            assert_eq!((&out[..6], &out[8..]), (&data[..6], &data[8..out.len()]));
            assert_eq!(UdpRepr::parse(&Packet::new_checked(&out[..]).unwrap(), IPS).unwrap(), repr);
        }
    }
});
