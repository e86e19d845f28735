//! The node's own traffic on its uplinks: TCP or UDP to one of the node's addresses (compared,
//! from the config), arriving on a host interface (compared), to a port no worker serves (a
//! bit of `HOST_PORTS`, an array the verifier inlines) passes to the kernel without a hash or
//! trie lookup. No tracked flow can match it: the flows a worker keeps that arrive at the
//! node's own addresses are to its NodePorts and frontends, and masquerading's replies, all
//! of them on ports `HOST_PORTS` marks; a tunnel's port is checked here.

use aya_ebpf::programs::XdpContext;
use skiff_common::config::{HOST_PORT_WORDS, XdpConfig, host_port_slot};

use crate::{maps::HOST_PORTS, tunnel};

/// Whether the frame arrived on a host interface (no pod behind it).
#[inline(always)]
pub fn on_host_interface(ctx: &XdpContext, config: &XdpConfig) -> bool {
    // SAFETY: `ctx.ctx` is the program's valid xdp_md.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    config.host_interfaces.iter().any(|&i| i == ifindex)
}

/// Whether a frame to `dst` is the node's own traffic that no worker serves. An unused slot
/// (zeros) matches only the unspecified address, which no worker serves either.
#[inline(always)]
pub fn unserved<const N: usize>(
    config: &XdpConfig,
    own: &[[u8; N]],
    dst: &[u8; N],
    protocol: u8,
    dport: u16,
) -> bool {
    let Some(slot) = host_port_slot(protocol) else { return false };
    if !own.iter().any(|a| a == dst) || (slot == 1 && tunnel::is_port(config, dport)) {
        return false;
    }
    let word = slot * HOST_PORT_WORDS + u32::from(dport) / 64;
    HOST_PORTS.get(word).is_some_and(|bits| bits & (1 << (dport % 64)) == 0)
}
