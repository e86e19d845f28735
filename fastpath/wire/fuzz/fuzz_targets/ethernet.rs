#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_wire::ethernet::{EthernetRepr, Frame, VlanTag};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Frame::new_checked(data) {
        let _ = (f.dst(), f.src(), f.ethertype(), f.payload());
    }
    if let Ok(t) = VlanTag::new_checked(data) {
        let _ = (t.vid(), t.pcp(), t.inner_type());
    }
    if let Ok((repr, offset)) = EthernetRepr::parse(data) {
        assert!(offset <= data.len());
        let mut out = vec![0; repr.header_len()];
        repr.emit(&mut out);
        // Re-emitting normalises only the outer TPID of a lone tag; the parse must agree.
        assert_eq!(EthernetRepr::parse(&out).unwrap().0, repr);
    }
});
