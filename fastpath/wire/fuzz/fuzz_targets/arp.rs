#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_wire::arp::{ArpRepr, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data) {
        let repr = ArpRepr::parse(&p);
        let mut out = [0u8; skiff_wire::arp::PACKET_LEN];
        repr.emit(&mut out);
        assert_eq!(&out[..], &data[..out.len()]);
    }
});
