//! skiff's XDP programs share this: bounds-checked frame access and the panic handler. Each
//! program is a binary of its own (`src/bin/`), built for `bpfel-unknown-none` by
//! `skiff-xdp`'s build script and embedded in the loader, so loading one never creates the
//! other's maps.
#![no_std]

pub mod packet;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach a panic; this is never executed.
    loop {}
}
