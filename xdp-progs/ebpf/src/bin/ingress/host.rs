//! The node's own traffic on its uplinks: TCP or UDP to one of the node's addresses (compared,
//! from the config), arriving on a host interface (compared), to a port no worker serves (a
//! bit of `HOST_PORTS`, an array the verifier inlines) passes to the kernel without a hash or
//! trie lookup. No tracked flow or tunnel can match it: what arrives at the node's own
//! addresses for more than the kernel (its NodePorts and frontends, masquerading's replies,
//! the tunnel) comes to ports `HOST_PORTS` marks.

use aya_ebpf::programs::XdpContext;
use skiff_common::config::{HOST_PORT_WORDS, XdpConfig, host_port_slot};

use crate::maps::HOST_PORTS;

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
pub fn unserved<const N: usize>(own: &[[u8; N]], dst: &[u8; N], protocol: u8, dport: u16) -> bool {
    let Some(slot) = host_port_slot(protocol) else { return false };
    if !own.iter().any(|a| a == dst) {
        return false;
    }
    let word = slot * HOST_PORT_WORDS + u32::from(dport) / 64;
    HOST_PORTS.get(word).is_some_and(|bits| bits & (1 << (dport % 64)) == 0)
}
