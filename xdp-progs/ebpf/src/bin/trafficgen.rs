//! `skiff_trafficgen`: the lab's traffic generator. Run with `BPF_PROG_RUN` and live frames
//! (the mechanism of xdp-trafficgen), it writes the frame template of `GEN` into every frame
//! (live frames are recycled pages: the receiver's edits come back) and redirects it out of
//! `GEN`'s interface. Reaches several Mpps where socket senders stop near 0.3.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::XDP_ABORTED,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use skiff_common::config::TrafficGen;
use skiff_xdp_ebpf as _;

#[map]
static GEN: Array<TrafficGen> = Array::with_max_entries(1, 0);

#[xdp]
pub fn skiff_trafficgen(ctx: XdpContext) -> u32 {
    let Some(job) = GEN.get(0) else { return XDP_ABORTED };
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + size_of::<[u8; 64]>() > end {
        return XDP_ABORTED;
    }
    // SAFETY: 64 bytes at `start` are inside the frame (checked above).
    unsafe { *(start as *mut [u8; 64]) = job.frame };
    // SAFETY: a helper taking plain integers.
    unsafe { bpf_redirect(job.ifindex, 0) as u32 }
}

/// GPL-compatible, so the program may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
