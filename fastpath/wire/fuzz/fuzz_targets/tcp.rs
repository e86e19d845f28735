#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

use skiff_wire::{checksum::IpPair, tcp::{Packet, TcpRepr}};

const IPS: IpPair = IpPair::V4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data) {
        for option in p.options() {
            let _ = option;
        }
        let _ = (p.payload(), p.flags(), p.verify_checksum(IPS));
        if let Ok(repr) = TcpRepr::parse(&p, IPS) {
            if repr.options.len() % 4 == 0 {
                let mut out = vec![0; repr.buffer_len()];
                repr.emit(&mut out, IPS);
                // The checksum may differ only as +0 versus -0 in one's complement, and the
                // reserved bits beside the data offset are not part of the repr.
                assert_eq!((&out[..12], out[12], &out[13..16], &out[18..]), (&data[..12], data[12] & 0xf0, &data[13..16], &data[18..]));
                assert_eq!(TcpRepr::parse(&Packet::new_checked(&out[..]).unwrap(), IPS).unwrap(), repr);
            }
        }
    }
});
