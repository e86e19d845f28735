//! skiff's XDP programs. One module per attach point; built for `bpfel-unknown-none` by
//! `skiff-xdp`'s build script and embedded in the loader.
#![no_std]
#![no_main]

mod count;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach a panic; this is never executed.
    loop {}
}

/// GPL-compatible, so the program may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
