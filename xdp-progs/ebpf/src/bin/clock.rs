//! `skiff_xdp_clock`: writes the kernel's tick count (`bpf_jiffies64`, host order) into the
//! frame's first 8 bytes and passes it. Run once by `BPF_PROG_TEST_RUN`, it tells userspace
//! where the clock the flow table records last-seen times in stands against its own.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, helpers::bpf_jiffies64, macros::xdp, programs::XdpContext};
use skiff_xdp_ebpf::packet::bytes_mut;

#[xdp]
pub fn skiff_xdp_clock(ctx: XdpContext) -> u32 {
    if let Some(out) = bytes_mut::<8>(&ctx, 0) {
        // SAFETY: a helper without arguments.
        *out = unsafe { bpf_jiffies64() }.to_ne_bytes();
    }
    xdp_action::XDP_PASS
}

/// GPL-compatible, so the program may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
