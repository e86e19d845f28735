#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_wire::geneve::{GeneveRepr, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data) {
        let mut seen = 0;
        for option in p.options() {
            if let Ok(o) = option {
                seen += o.wire_len();
            }
        }
        assert!(seen <= p.options_len());
        if let Ok(repr) = GeneveRepr::parse(&p) {
            let mut out = vec![0; repr.header_len()];
            repr.emit(&mut out);
            // Reserved bits are not kept; everything the repr carries must be.
            assert_eq!(GeneveRepr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap(), repr);
        }
        let _ = skiff_wire::layers::parse(p.payload());
    }
});
