//! `skiff_xdp_count`: counts every frame per CPU and passes it to the kernel.
//! The smallest program that exercises the whole chain: build, load, attach, read a map.
#![no_std]
#![no_main]

use skiff_xdp_ebpf as _;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use skiff_common::Counter;

/// One slot, per CPU. The name is `skiff_common::maps::COUNT`.
#[map]
static COUNT: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn skiff_xdp_count(ctx: XdpContext) -> u32 {
    if let Some(slot) = COUNT.get_ptr_mut(0) {
        let len = (ctx.data_end() - ctx.data()) as u64;
        // SAFETY: the pointer comes from a successful map lookup, and the slot belongs to this
        // CPU; XDP runs with preemption disabled, so nothing else writes it concurrently.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += len;
        }
    }
    xdp_action::XDP_PASS
}

/// GPL-compatible, so the program may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
