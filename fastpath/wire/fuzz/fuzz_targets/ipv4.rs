#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_wire::ipv4::{Ipv4Repr, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_quoted(data) {
        let _ = (p.payload(), p.options(), p.is_fragment());
    }
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (p.payload(), p.options(), p.frag_offset(), p.ttl());
        if let Ok(repr) = Ipv4Repr::parse(&p) {
            assert_eq!(repr.payload_len, p.payload().len());
            let mut out = vec![0u8; 20 + repr.payload_len];
            repr.emit(&mut out);
            let again = Ipv4Repr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap();
            assert_eq!(again, repr, "emit of a parsed header parses back to it");
        }
    }
});
