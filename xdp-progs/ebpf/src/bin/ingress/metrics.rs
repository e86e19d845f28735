//! Counters per CPU (every XDP action, every drop reason) and decisions sampled into the event
//! ring with the frame's first bytes.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    maps::PerCpuArray,
    programs::XdpContext,
};
use skiff_common::{
    Counter,
    event::{CAPTURE_LEN, Decision, XdpEvent},
};
use skiff_xdp_ebpf::packet::len;

use crate::maps::EVENTS;

/// Counts one frame of `bytes` in slot `index`; returns the slot's packets since it was
/// created (0 without a slot).
#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u64) -> u64 {
    match map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot from a successful lookup; XDP runs with preemption disabled.
        Some(slot) => unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes;
            (*slot).packets
        },
        None => 0,
    }
}

/// Sends the frame to the event ring, with its first bytes, when it is the `every`th of its
/// counter (`counted`, from [`count`]; `every` 0: never): sampling by a count the program
/// keeps anyway costs a division, not a helper call.
#[inline(always)]
pub fn sample(ctx: &XdpContext, counted: u64, every: u32, decision: Decision, reason: u8) {
    if every == 0 || counted % u64::from(every) != 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<XdpEvent>(0) else { return };
    let frame_len = len(ctx);
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring-buffer record of XdpEvent's size; every field
    // is written before submit. The context pointer is the program's own.
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).ifindex = (*ctx.ctx).ingress_ifindex;
        (*event).rx_queue = (*ctx.ctx).rx_queue_index;
        (*event).len = frame_len as u32;
        (*event).reason = reason;
        (*event).decision = decision as u8;
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
