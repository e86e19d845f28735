//! Which frames of no tracked flow need a worker (service frontends, pods under policy, pods
//! on other nodes, which a worker encapsulates), and the
//! redirect to the AF_XDP socket of the frame's receive queue. With no socket bound the frame
//! passes to the kernel, so the node never blackholes while workers are down.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, maps::lpm_trie::Key, programs::XdpContext};
use skiff_common::{
    DropReason,
    config::{XSK_QUEUES_PER_IF, XdpConfig},
    endpoint::EndpointInfo,
    lb::{ServiceKey4, ServiceKey6},
};
use skiff_xdp_ebpf::packet::len;

use crate::{maps::*, metrics::count, prefilter};

/// What a packet of no tracked flow needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: the kernel's (the node's own traffic).
    Nothing,
    /// A worker (a service, a pod on another node); without one the kernel has it.
    Worker,
    /// A worker's policy verdict; without one it is dropped (`NoXskSocket`), never let
    /// through unjudged (while no agent runs, say).
    Verdict,
}

/// What an IPv4 packet of no tracked flow, from `src` to `dst:dport`, needs.
#[inline(always)]
pub fn need_v4(src: [u8; 4], dst: [u8; 4], dport: u16, proto: u8) -> Need {
    let service = ServiceKey4 { vip: dst, dport: dport.to_be(), proto, scope: 0 };
    if SERVICES_V4.get_ptr(&service).is_some() {
        return Need::Worker;
    }
    let to = ENDPOINTS_V4.get_ptr(&dst);
    if under_policy(to, || ENDPOINTS_V4.get_ptr(&src)) {
        Need::Verdict
    } else if to.is_none() && REMOTE_PODS_V4.get(Key::new(32, dst)).is_some() {
        Need::Worker
    } else {
        Need::Nothing
    }
}

/// What an IPv6 packet of no tracked flow, from `src` to `dst:dport`, needs.
#[inline(always)]
pub fn need_v6(src: [u8; 16], dst: [u8; 16], dport: u16, proto: u8) -> Need {
    let service = ServiceKey6 { vip: dst, dport: dport.to_be(), proto, scope: 0 };
    if SERVICES_V6.get_ptr(&service).is_some() {
        return Need::Worker;
    }
    let to = ENDPOINTS_V6.get_ptr(&dst);
    if under_policy(to, || ENDPOINTS_V6.get_ptr(&src)) {
        Need::Verdict
    } else if to.is_none() && REMOTE_PODS_V6.get(Key::new(128, dst)).is_some() {
        Need::Worker
    } else {
        Need::Nothing
    }
}

/// Whether a pod's IPv4 packet leaves the cluster masqueraded (a worker translates it).
#[inline(always)]
pub fn masqueraded_v4(ctx: &XdpContext, config: &XdpConfig, dst: [u8; 4]) -> bool {
    config.flags & XdpConfig::MASQUERADE_V4 != 0
        && prefilter::on_pod_interface(ctx)
        && CLUSTER_V4.get(Key::new(32, dst)).is_none()
}

/// Whether a pod's IPv6 packet leaves the cluster masqueraded.
#[inline(always)]
pub fn masqueraded_v6(ctx: &XdpContext, config: &XdpConfig, dst: [u8; 16]) -> bool {
    config.flags & XdpConfig::MASQUERADE_V6 != 0
        && prefilter::on_pod_interface(ctx)
        && CLUSTER_V6.get(Key::new(128, dst)).is_none()
}

/// Whether a packet between these endpoints needs a verdict: to a pod under policy, or from
/// one (unless it goes to the node itself). The source is looked up only when that decides
/// (not for the node's own traffic, a destination that is the node: a local endpoint, never
/// on another node, so neither the remote pods' trie is asked).
#[inline(always)]
fn under_policy(dst: Option<*const EndpointInfo>, src: impl FnOnce() -> Option<*const EndpointInfo>) -> bool {
    // SAFETY: the pointers come from successful lookups and stay valid for this program run
    // (RCU); a concurrent update can at worst show the old or the new flags.
    let flags = |e: Option<*const EndpointInfo>| e.map_or(0, |e| unsafe { (*e).flags });
    let to = flags(dst);
    to & EndpointInfo::POLICY_ENFORCED != 0
        || (to & EndpointInfo::HOST == 0 && flags(src()) & EndpointInfo::POLICY_ENFORCED != 0)
}

/// To the AF_XDP socket of this interface's receive queue, for a verdict: dropped
/// (`NoXskSocket`) when none is bound.
#[inline(always)]
pub fn to_judge(ctx: &XdpContext) -> Result<u32, DropReason> {
    match redirect_to_socket(ctx) {
        XDP_PASS => Err(DropReason::NoXskSocket),
        action => Ok(action),
    }
}

/// To the AF_XDP socket of this interface's receive queue; XDP_PASS (counted in `NO_WORKER`)
/// when none is bound.
#[inline(always)]
pub fn to_worker(ctx: &XdpContext) -> u32 {
    let action = redirect_to_socket(ctx);
    if action == XDP_PASS {
        count(&NO_WORKER, 0, len(ctx) as u64);
    }
    action
}

/// XDP_REDIRECT to the socket of this interface's receive queue, or XDP_PASS when none is
/// bound.
#[inline(always)]
fn redirect_to_socket(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the program's valid xdp_md.
    let (ifindex, queue) = unsafe { ((*ctx.ctx).ingress_ifindex, (*ctx.ctx).rx_queue_index) };
    let slot = IF_SLOTS.get_ptr(&ifindex);
    match slot {
        Some(slot) if queue < XSK_QUEUES_PER_IF => {
            // SAFETY: a pointer from a successful lookup, valid for this run.
            let index = unsafe { *slot } * XSK_QUEUES_PER_IF + queue;
            XSKS.redirect(index, u64::from(XDP_PASS)).unwrap_or(XDP_PASS)
        }
        _ => XDP_PASS,
    }
}
