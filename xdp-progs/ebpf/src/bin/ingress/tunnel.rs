//! Tunnels: VXLAN or Geneve addressed to this node's tunnel address and port, from a known
//! node, on an uplink, is decapsulated in place; the VNI and skiff's identity option go into
//! the XDP metadata for the worker. The inner frame must claim its source's identity as this
//! node's ipcache gives it. Anything else on the tunnel port is dropped with its reason, and
//! a tunnel inside a tunnel is never opened.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use skiff_common::{
    DropReason,
    config::XdpConfig,
    identity::Identity,
    meta::XdpMeta,
    proto::ethertype,
    tunnel::{GENEVE_OPT_CLASS, GENEVE_OPT_IDENTITY, VXLAN_FLAG_VNI, claimed_identity},
};
use skiff_xdp_ebpf::packet::{be16, bytes, len};

use crate::{
    maps::{IPCACHE_V4, IPCACHE_V6},
    parse::ETH_LEN,
    prefilter,
};

/// Geneve options examined; more are only accepted when none can be critical.
const MAX_GENEVE_OPTIONS: usize = 8;

/// What to strip and what to tell the worker after a tunnel header.
#[derive(Default)]
pub struct Decap {
    /// Bytes in front of the inner Ethernet frame.
    pub strip: u32,
    pub vni: u32,
    pub identity: u32,
}

/// Whether a datagram to this node's tunnel address on `dport` is a tunnel frame.
#[inline(always)]
pub fn is_port(config: &XdpConfig, dport: u16) -> bool {
    dport != 0 && (dport == config.vxlan_port || dport == config.geneve_port)
}

/// A tunnel frame (see [`is_port`]): `Some` with what to strip when it may be decapsulated;
/// `None` for Geneve that carries no Ethernet (the kernel's).
#[inline(always)]
pub fn admit(
    ctx: &XdpContext,
    config: &XdpConfig,
    (udp, dport): (usize, u16),
    outer: bool,
    from_node: bool,
) -> Result<Option<Decap>, DropReason> {
    if !outer {
        return Err(DropReason::TunnelNested);
    }
    if prefilter::on_pod_interface(ctx) {
        return Err(DropReason::TunnelOnPodInterface);
    }
    if !from_node {
        return Err(DropReason::TunnelUnknownNode);
    }
    inspect(ctx, config, udp, dport)
}

/// Whether a decapsulated IPv4 frame from `src` claims the identity this node's ipcache gives
/// `src`: a node cannot speak for another's pods, and nothing judges a flow by a label set
/// that nodes number differently (their identities not agreed yet).
#[inline(always)]
pub fn check_identity_v4(decap: &Decap, src: [u8; 4]) -> Result<(), DropReason> {
    check_identity(decap, IPCACHE_V4.get(Key::new(32, src)).copied())
}

/// [`check_identity_v4`] for IPv6.
#[inline(always)]
pub fn check_identity_v6(decap: &Decap, src: [u8; 16]) -> Result<(), DropReason> {
    check_identity(decap, IPCACHE_V6.get(Key::new(128, src)).copied())
}

#[inline(always)]
fn check_identity(decap: &Decap, known: Option<Identity>) -> Result<(), DropReason> {
    let claimed = claimed_identity(decap.vni, Identity(decap.identity));
    if claimed == known.unwrap_or(Identity::WORLD) { Ok(()) } else { Err(DropReason::TunnelIdentityMismatch) }
}

/// A UDP datagram to this node's tunnel address: `Some` with what to strip if it is on a
/// tunnel port.
#[inline(always)]
fn inspect(
    ctx: &XdpContext,
    config: &XdpConfig,
    udp: usize,
    dport: u16,
) -> Result<Option<Decap>, DropReason> {
    let header = udp + 8;
    if dport == config.vxlan_port && dport != 0 {
        let v: [u8; 8] = bytes(ctx, header).ok_or(DropReason::VxlanTruncated)?;
        if v[0] & VXLAN_FLAG_VNI == 0 {
            return Err(DropReason::VxlanBadFlags);
        }
        let inner = header + 8;
        bytes::<ETH_LEN>(ctx, inner).ok_or(DropReason::VxlanTruncated)?;
        return Ok(Some(Decap {
            strip: inner as u32,
            vni: u32::from_be_bytes([0, v[4], v[5], v[6]]),
            identity: 0,
        }));
    }
    if dport == config.geneve_port && dport != 0 {
        let g: [u8; 8] = bytes(ctx, header).ok_or(DropReason::GeneveTruncated)?;
        if g[0] >> 6 != 0 {
            return Err(DropReason::GeneveBadVersion);
        }
        let options_len = usize::from(g[0] & 0x3f) * 4;
        // The options are walked before anything else bounds the frame: each read then keeps
        // its own check, which the verifier needs (it cannot follow the compiler's proof that
        // a later check covers them).
        let critical_flag = g[1] & 0x40 != 0;
        let identity = geneve_options(ctx, header + 8, options_len, critical_flag)?;
        let inner = header + 8 + options_len;
        if inner > len(ctx) {
            return Err(DropReason::GeneveOptionOverflow);
        }
        if be16([g[2], g[3]]) != ethertype::TEB {
            // Not an Ethernet payload: leave it to the kernel.
            return Ok(None);
        }
        bytes::<ETH_LEN>(ctx, inner).ok_or(DropReason::GeneveTruncated)?;
        let vni = u32::from_be_bytes([0, g[4], g[5], g[6]]);
        return Ok(Some(Decap { strip: inner as u32, vni, identity: identity.0 }));
    }
    Ok(None)
}

/// Walks Geneve options: picks up skiff's identity option; drops on a critical option it does
/// not understand, or on an option running past the options area.
#[inline(always)]
fn geneve_options(
    ctx: &XdpContext,
    start: usize,
    options_len: usize,
    critical_flag: bool,
) -> Result<Identity, DropReason> {
    let mut identity = Identity::UNKNOWN;
    let mut at = 0;
    for _ in 0..MAX_GENEVE_OPTIONS {
        if at >= options_len {
            return Ok(identity);
        }
        let o: [u8; 4] = bytes(ctx, start + at).ok_or(DropReason::GeneveOptionOverflow)?;
        let data_len = usize::from(o[3] & 0x1f) * 4;
        if at + 4 + data_len > options_len {
            return Err(DropReason::GeneveOptionOverflow);
        }
        let class = be16([o[0], o[1]]);
        if class == GENEVE_OPT_CLASS && o[2] == GENEVE_OPT_IDENTITY && data_len == 4 {
            let id: [u8; 4] = bytes(ctx, start + at + 4).ok_or(DropReason::GeneveOptionOverflow)?;
            identity = Identity(u32::from_be_bytes(id));
        } else if o[2] & 0x80 != 0 {
            return Err(DropReason::GeneveCriticalOption);
        }
        at += 4 + data_len;
    }
    // Options beyond those examined: acceptable only if none may be critical.
    if at < options_len && critical_flag {
        return Err(DropReason::GeneveCriticalOption);
    }
    Ok(identity)
}

/// Strips the outer headers and tells the worker what they said.
#[inline(always)]
pub fn decapsulate(ctx: &XdpContext, decap: &Decap) -> Result<(), DropReason> {
    // SAFETY: the helper checks the adjustment against the frame and fails if it does not
    // fit; the context pointer is the program's own.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, decap.strip as i32) } != 0 {
        return Err(DropReason::Internal);
    }
    write_meta(ctx, XdpMeta::new(decap.vni, Identity(decap.identity), XdpMeta::DECAPSULATED));
    Ok(())
}

/// Writes `meta` in front of the frame for the worker; skipped where the driver has no room.
#[inline(always)]
fn write_meta(ctx: &XdpContext, meta: XdpMeta) {
    let size = size_of::<XdpMeta>();
    // SAFETY: the helper validates the adjustment; the context pointer is the program's own.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(size as i32)) } != 0 {
        return;
    }
    let (start, data) = (ctx.metadata(), ctx.data());
    if start + size > data {
        return;
    }
    // SAFETY: [start, start + size) is the metadata area just made, below `data` (checked).
    unsafe { core::ptr::write_unaligned(start as *mut XdpMeta, meta) };
}
