//! The prefilter: a source address in a denied CIDR (the deny LPM tries), or a pod's frame from
//! an address that is not the pod's (on its veth), is dropped before anything else looks at
//! the frame. A source whose slot no denied prefix covers (`DENY_FREE`) skips the trie.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use skiff_common::{
    DropReason,
    endpoint::PodSources,
    lpm::{deny_slot_v4, deny_slot_v6},
};

use crate::maps::{DENY_FREE, DENY_V4, DENY_V6, POD_SOURCES};

/// The sources the pod behind the frame's interface may use, if the interface is a pod's.
#[inline(always)]
fn pod_sources(ctx: &XdpContext) -> Option<PodSources> {
    // SAFETY: `ctx.ctx` is the program's valid xdp_md.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: a pointer from a successful lookup, valid for this run.
    POD_SOURCES.get_ptr(&ifindex).map(|p| unsafe { *p })
}

/// Whether the frame arrived on a pod's interface.
#[inline(always)]
pub fn on_pod_interface(ctx: &XdpContext) -> bool {
    pod_sources(ctx).is_some()
}

#[inline(always)]
pub fn check_source_v4(ctx: &XdpContext, src: [u8; 4]) -> Result<(), DropReason> {
    match pod_sources(ctx) {
        Some(own) if own.v4 != src => Err(DropReason::SpoofedSource),
        _ => Ok(()),
    }
}

#[inline(always)]
pub fn check_source_v6(ctx: &XdpContext, src: [u8; 16]) -> Result<(), DropReason> {
    match pod_sources(ctx) {
        Some(own) if own.v6 != src && !PodSources::neighbour_discovery_v6(&src) => {
            Err(DropReason::SpoofedSource)
        }
        _ => Ok(()),
    }
}

#[inline(always)]
pub fn check_v4(src: [u8; 4]) -> Result<(), DropReason> {
    if deny_free(deny_slot_v4(src)) {
        return Ok(());
    }
    match DENY_V4.get(Key::new(32, src)) {
        Some(_) => Err(DropReason::DeniedCidr),
        None => Ok(()),
    }
}

#[inline(always)]
pub fn check_v6(src: [u8; 16]) -> Result<(), DropReason> {
    if deny_free(deny_slot_v6(src)) {
        return Ok(());
    }
    match DENY_V6.get(Key::new(128, src)) {
        Some(_) => Err(DropReason::DeniedCidr),
        None => Ok(()),
    }
}

/// Whether no denied prefix covers an address of `slot` (an array read the verifier inlines).
#[inline(always)]
fn deny_free(slot: u32) -> bool {
    DENY_FREE.get(slot / 64).is_some_and(|bits| bits & (1 << (slot % 64)) != 0)
}
