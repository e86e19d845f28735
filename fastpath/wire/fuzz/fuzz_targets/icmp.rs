#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, Ipv6Addr};

use skiff_wire::{checksum::IpPair, icmp::{IcmpRepr, Packet}, layers};

fuzz_target!(|data: &[u8]| {
    let Some((&family, data)) = data.split_first() else { return };
    let v6 = family & 1 == 1;
    let ips = if v6 { IpPair::V6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST) } else { IpPair::V4(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST) };
    if let Ok(p) = Packet::new_checked(data, ips) {
        let _ = (p.ident(), p.seq(), p.rest());
        let _ = layers::parse_quoted(p.data(), v6);
        if let Ok(repr) = IcmpRepr::parse(&p, ips) {
            let mut out = vec![0; repr.buffer_len()];
            repr.emit(&mut out, ips);
            assert_eq!((&out[..2], &out[4..]), (&data[..2], &data[4..]));
            assert_eq!(IcmpRepr::parse(&Packet::new_checked(&out[..], ips).unwrap(), ips).unwrap(), repr);
        }
    }
});
