#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_wire::layers::{self, L3, L4};

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = layers::parse(data) {
        assert!(parsed.l3_offset <= parsed.l4_offset && parsed.l4_offset <= data.len());
        if let (L3::Ip(ip), L4::Tcp { .. } | L4::Udp { .. }) = (parsed.l3, parsed.l4) {
            assert!(parsed.l3_offset + ip.len <= data.len());
        }
        let _ = parsed.flow(data);
    }
});
