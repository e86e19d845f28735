//! Counters per CPU (every XDP action, every drop reason) and drops sampled into the event
//! ring with the frame's first bytes.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    maps::PerCpuArray,
    programs::XdpContext,
};
use skiff_common::{
    Counter, DropReason,
    config::XdpConfig,
    event::{CAPTURE_LEN, DropEvent},
};
use skiff_xdp_ebpf::packet::len;

use crate::maps::{CONFIG, EVENTS};

#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot from a successful lookup; XDP runs with preemption disabled.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes;
        }
    }
}

/// Sends one drop in `drop_sample_every` to the event ring, with the frame's first bytes.
#[inline(always)]
pub fn sample_drop(ctx: &XdpContext, reason: DropReason) {
    let every = CONFIG.get(0).map_or(XdpConfig::DEFAULT.drop_sample_every, |c| c.drop_sample_every);
    // SAFETY: a helper without arguments.
    if every == 0 || unsafe { bpf_get_prandom_u32() } % every != 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else { return };
    let frame_len = len(ctx);
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring-buffer record of DropEvent's size; every field
    // is written before submit. The context pointer is the program's own.
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).ifindex = (*ctx.ctx).ingress_ifindex;
        (*event).rx_queue = (*ctx.ctx).rx_queue_index;
        (*event).len = frame_len as u32;
        (*event).reason = reason as u8;
        (*event)._pad = [0];
        (*event).headers = [0; CAPTURE_LEN];
        (*event).captured = capture(ctx, &mut (*event).headers, frame_len);
    }
    entry.submit(0);
}

/// Copies the frame's first bytes (up to `CAPTURE_LEN`) into `out`, as a sum of constant-size
/// loads: the verifier checks each size trivially, where a variable length needs bounds it
/// loses through the compiler's rewrites. Returns the bytes copied.
#[inline(always)]
fn capture(ctx: &XdpContext, out: &mut [u8; CAPTURE_LEN], frame_len: usize) -> u16 {
    let mut done = 0usize;
    let mut left = if frame_len < CAPTURE_LEN { frame_len } else { CAPTURE_LEN };
    for size in [128usize, 64, 32, 16, 8, 4, 2, 1] {
        if left >= size && done + size <= CAPTURE_LEN {
            // SAFETY: `out[done..done + size]` is inside the array (checked); the helper checks
            // the frame range itself and fails without writing past `size` bytes.
            let rc = unsafe {
                bpf_xdp_load_bytes(ctx.ctx, done as u32, out.as_mut_ptr().add(done).cast(), size as u32)
            };
            if rc != 0 {
                break;
            }
            done += size;
            left -= size;
        }
    }
    done as u16
}
