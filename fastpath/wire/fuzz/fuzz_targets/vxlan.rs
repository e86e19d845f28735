#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_wire::vxlan::{Packet, VxlanRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data) {
        let repr = VxlanRepr::parse(&p);
        assert!(repr.vni < 1 << 24);
        let _ = skiff_wire::layers::parse(p.payload());
    }
});
