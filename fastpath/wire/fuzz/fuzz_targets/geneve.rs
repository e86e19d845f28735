#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_wire_fuzz::geneve(data));
