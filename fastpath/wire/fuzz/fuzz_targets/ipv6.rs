#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_wire::{IpProtocol, ipv6::{self, Ipv6Repr, Packet}};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_quoted(data) {
        let _ = p.upper_layer();
    }
    if let Ok(p) = Packet::new_checked(data) {
        let repr = Ipv6Repr::parse(&p).unwrap();
        let mut out = [0u8; 40];
        repr.emit(&mut out);
        assert_eq!(&out[..], &data[..40]);
        if let Ok(up) = p.upper_layer() {
            assert!(up.offset <= p.payload().len());
            assert!(usize::from(up.ext_headers) <= ipv6::MAX_EXT_HEADERS);
        }
    }
    if let Some((&first, rest)) = data.split_first() {
        let _ = ipv6::walk_extension_headers(IpProtocol(first), rest);
    }
});
