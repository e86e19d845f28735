//! `skiff_xdp_ingress`: the first line of the datapath, on the node's uplinks and the host side
//! of pod veths.
//!
//! 1. Parse Ethernet (up to two VLAN tags), IPv4/IPv6 (extension headers, bounded) and the L4
//!    header; malformed frames are dropped with their reason.
//! 2. Prefilter: a source in a denied CIDR (LPM tries) is dropped.
//! 3. Tunnels: VXLAN or Geneve to this node's tunnel address is decapsulated in place
//!    (`bpf_xdp_adjust_head`); the VNI and any identity option go into the XDP metadata for the
//!    worker, and the inner frame goes through steps 1–4.
//! 4. Redirect to the queue's AF_XDP socket what needs a worker: service frontends, pods
//!    under policy, tracked flows. With no socket bound the frame passes to the kernel, so the
//!    node never blackholes while workers are down.
//! 5. Everything else passes: the node's own traffic.
//!
//! One exit counts every verdict (and every drop's reason) per CPU, and samples drops into the
//! event ring.
#![no_std]
#![no_main]

mod maps;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_meta, bpf_xdp_load_bytes,
    },
    macros::xdp,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use skiff_common::{
    Counter, DropReason,
    config::{XSK_QUEUES_PER_IF, XdpConfig},
    conntrack::{CtKey4, CtKey6},
    endpoint::EndpointInfo,
    event::{CAPTURE_LEN, DropEvent},
    lb::{ServiceKey4, ServiceKey6},
    meta::XdpMeta,
    policy::Identity,
    tunnel::{GENEVE_OPT_CLASS, GENEVE_OPT_IDENTITY},
};

use skiff_xdp_ebpf::packet::{be16, bytes, len};

use crate::maps::*;

const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_TEB: u16 = 0x6558;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers followed (as skiff-wire's parser).
const MAX_EXT_HEADERS: usize = 8;
/// Geneve options examined; more are only accepted when none can be critical.
const MAX_GENEVE_OPTIONS: usize = 8;
/// Furthest offset an L4 header may start at: keeps offsets bounded for the verifier.
const MAX_L4_OFFSET: usize = 512;

#[xdp]
pub fn skiff_xdp_ingress(ctx: XdpContext) -> u32 {
    let frame_len = len(&ctx) as u64;
    let action = match try_ingress(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(&DROP_COUNTS, reason as u32, frame_len);
            sample_drop(&ctx, reason);
            XDP_DROP
        }
    };
    count(&VERDICT_COUNTS, action, frame_len);
    action
}

/// What the parse of one (outer or inner) frame decided.
enum Next {
    Pass,
    Redirect,
    /// Strip the outer headers (see [`Decap`]); the inner frame follows.
    Decap,
}

fn try_ingress(ctx: &XdpContext) -> Result<u32, DropReason> {
    let config = CONFIG.get(0).copied().unwrap_or(XdpConfig::DEFAULT);
    let mut decap = Decap::default();
    match Next::decode(classify(ctx, &config, true, &mut decap))? {
        Next::Pass => Ok(XDP_PASS),
        Next::Redirect => Ok(redirect(ctx)),
        Next::Decap => {
            // SAFETY: the helper checks the adjustment against the frame and fails if it does
            // not fit; the context pointer is the program's own.
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, decap.strip as i32) } != 0 {
                return Err(DropReason::Internal);
            }
            write_meta(ctx, XdpMeta::new(decap.vni, Identity(decap.identity), XdpMeta::DECAPSULATED));
            // One level of tunnels: an inner tunnel packet is just UDP.
            match Next::decode(classify(ctx, &config, false, &mut decap))? {
                Next::Redirect => Ok(redirect(ctx)),
                Next::Pass | Next::Decap => Ok(XDP_PASS),
            }
        }
    }
}

/// What to strip and what to tell the worker after a tunnel header.
#[derive(Default)]
struct Decap {
    strip: u32,
    vni: u32,
    identity: u32,
}

impl Next {
    /// A code a BPF subprogram can return: 0 pass, 1 redirect, 2 decap, 256 + reason: drop.
    /// (A returned struct would be a pointer into the caller's stack, which the verifier
    /// refuses.)
    #[inline(always)]
    fn encode(result: Result<Next, DropReason>) -> u32 {
        match result {
            Ok(Next::Pass) => 0,
            Ok(Next::Redirect) => 1,
            Ok(Next::Decap) => 2,
            Err(reason) => 256 + reason as u32,
        }
    }

    #[inline(always)]
    fn decode(code: u32) -> Result<Next, DropReason> {
        match code {
            0 => Ok(Next::Pass),
            1 => Ok(Next::Redirect),
            2 => Ok(Next::Decap),
            other => Err(u8::try_from(other - 256)
                .ok()
                .and_then(DropReason::from_u8)
                .unwrap_or(DropReason::Internal)),
        }
    }
}

/// Parses the frame now in `ctx` and decides what happens to it. A BPF-to-BPF call, not
/// inlined: it runs on the outer and the inner frame, and two inlined copies let the compiler
/// share blocks across a helper call in a way the verifier rejects (a clobbered register read).
#[inline(never)]
fn classify(ctx: &XdpContext, config: &XdpConfig, decap: bool, tunnel: &mut Decap) -> u32 {
    Next::encode(parse(ctx, config, decap, tunnel))
}

#[inline(always)]
fn parse(ctx: &XdpContext, config: &XdpConfig, decap: bool, tunnel: &mut Decap) -> Result<Next, DropReason> {
    let eth: [u8; ETH_LEN] = bytes(ctx, 0).ok_or(DropReason::EthernetTruncated)?;
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut l3 = ETH_LEN;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag: [u8; 4] = bytes(ctx, l3).ok_or(DropReason::VlanTruncated)?;
        ethertype = be16([tag[2], tag[3]]);
        l3 += 4;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(ctx, config, l3, decap, tunnel),
        ETH_P_IPV6 => ipv6(ctx, config, l3, decap, tunnel),
        ETH_P_8021Q | ETH_P_8021AD => Err(DropReason::VlanTooDeep),
        // ARP, LLDP, …: the kernel's business.
        _ => Ok(Next::Pass),
    }
}

#[inline(always)]
fn ipv4(
    ctx: &XdpContext,
    config: &XdpConfig,
    l3: usize,
    decap: bool,
    out: &mut Decap,
) -> Result<Next, DropReason> {
    let h: [u8; 20] = bytes(ctx, l3).ok_or(DropReason::Ipv4Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(DropReason::Ipv4BadVersion);
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < 20 || l3 + header_len > len(ctx) {
        return Err(DropReason::Ipv4BadHeaderLength);
    }
    let total = usize::from(be16([h[2], h[3]]));
    if total < header_len || l3 + total > len(ctx) {
        return Err(DropReason::Ipv4BadTotalLength);
    }
    let src = [h[12], h[13], h[14], h[15]];
    let dst = [h[16], h[17], h[18], h[19]];
    if DENY_V4.get(Key::new(32, src)).is_some() {
        return Err(DropReason::DeniedCidr);
    }
    // A later fragment has no ports: the kernel reassembles it.
    if be16([h[6], h[7]]) & 0x1fff != 0 {
        return Ok(Next::Pass);
    }
    let proto = h[9];
    let ports = l4(ctx, l3 + header_len, proto)?;
    if decap && config.tunnel_v4 != [0; 4] && dst == config.tunnel_v4 && proto == PROTO_UDP {
        if let Some(next) = tunnel(ctx, config, l3 + header_len, ports, out)? {
            return Ok(next);
        }
    }
    let (sport, dport) = ports;
    let service = ServiceKey4 { vip: dst, dport: dport.to_be(), proto, scope: 0 };
    let flow =
        CtKey4 { saddr: src, daddr: dst, sport: sport.to_be(), dport: dport.to_be(), proto, _pad: [0; 3] };
    let to_worker = SERVICES_V4.get_ptr(&service).is_some()
        || under_policy(ENDPOINTS_V4.get_ptr(&dst))
        || CT_V4.get_ptr(&flow).is_some();
    Ok(if to_worker { Next::Redirect } else { Next::Pass })
}

#[inline(always)]
fn ipv6(
    ctx: &XdpContext,
    config: &XdpConfig,
    l3: usize,
    decap: bool,
    out: &mut Decap,
) -> Result<Next, DropReason> {
    let h: [u8; 40] = bytes(ctx, l3).ok_or(DropReason::Ipv6Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::Ipv6BadVersion);
    }
    if l3 + 40 + usize::from(be16([h[4], h[5]])) > len(ctx) {
        return Err(DropReason::Ipv6BadPayloadLength);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    if DENY_V6.get(Key::new(128, src)).is_some() {
        return Err(DropReason::DeniedCidr);
    }
    let (proto, l4_offset, later_fragment) = extension_headers(ctx, h[6], l3 + 40)?;
    if later_fragment {
        return Ok(Next::Pass);
    }
    let ports = l4(ctx, l4_offset, proto)?;
    if decap && config.tunnel_v6 != [0; 16] && dst == config.tunnel_v6 && proto == PROTO_UDP {
        if let Some(next) = tunnel(ctx, config, l4_offset, ports, out)? {
            return Ok(next);
        }
    }
    let (sport, dport) = ports;
    let service = ServiceKey6 { vip: dst, dport: dport.to_be(), proto, scope: 0 };
    let flow =
        CtKey6 { saddr: src, daddr: dst, sport: sport.to_be(), dport: dport.to_be(), proto, _pad: [0; 3] };
    let to_worker = SERVICES_V6.get_ptr(&service).is_some()
        || under_policy(ENDPOINTS_V6.get_ptr(&dst))
        || CT_V6.get_ptr(&flow).is_some();
    Ok(if to_worker { Next::Redirect } else { Next::Pass })
}

/// Follows hop-by-hop, routing, fragment and destination-options headers from `next` at
/// `offset`; returns the upper protocol, its offset, and whether this is a later fragment.
#[inline(always)]
fn extension_headers(
    ctx: &XdpContext,
    mut next: u8,
    mut offset: usize,
) -> Result<(u8, usize, bool), DropReason> {
    for crossed in 0..=MAX_EXT_HEADERS {
        match next {
            0 | 43 | 44 | 60 => {}
            _ => return Ok((next, offset, false)),
        }
        if crossed == MAX_EXT_HEADERS {
            break;
        }
        if next == 0 && crossed != 0 {
            return Err(DropReason::Ipv6BadExtHeader);
        }
        let e: [u8; 8] = bytes(ctx, offset).ok_or(DropReason::Ipv6BadExtHeader)?;
        if next == 44 {
            if be16([e[2], e[3]]) & 0xfff8 != 0 {
                return Ok((e[0], offset + 8, true));
            }
            offset += 8;
        } else {
            offset += (usize::from(e[1]) + 1) * 8;
        }
        if offset > MAX_L4_OFFSET || offset > len(ctx) {
            return Err(DropReason::Ipv6BadExtHeader);
        }
        next = e[0];
    }
    Err(DropReason::Ipv6ExtHeaderLimit)
}

/// Validates the L4 header at `offset` and returns (source, destination) port; ICMP's echo
/// identifier stands in the source port.
#[inline(always)]
fn l4(ctx: &XdpContext, offset: usize, proto: u8) -> Result<(u16, u16), DropReason> {
    if offset > MAX_L4_OFFSET {
        return Err(DropReason::Ipv6BadExtHeader);
    }
    match proto {
        PROTO_TCP => {
            let t: [u8; 20] = bytes(ctx, offset).ok_or(DropReason::TcpTruncated)?;
            let data_offset = usize::from(t[12] >> 4) * 4;
            if data_offset < 20 || offset + data_offset > len(ctx) {
                return Err(DropReason::TcpBadDataOffset);
            }
            Ok((be16([t[0], t[1]]), be16([t[2], t[3]])))
        }
        PROTO_UDP => {
            let u: [u8; 8] = bytes(ctx, offset).ok_or(DropReason::UdpTruncated)?;
            let udp_len = usize::from(be16([u[4], u[5]]));
            if udp_len < 8 || offset + udp_len > len(ctx) {
                return Err(DropReason::UdpBadLength);
            }
            Ok((be16([u[0], u[1]]), be16([u[2], u[3]])))
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let i: [u8; 8] = bytes(ctx, offset).ok_or(DropReason::IcmpTruncated)?;
            Ok((be16([i[4], i[5]]), 0))
        }
        _ => Ok((0, 0)),
    }
}

/// A UDP datagram to this node's tunnel address: decapsulation, if it is on a tunnel port.
#[inline(always)]
fn tunnel(
    ctx: &XdpContext,
    config: &XdpConfig,
    udp: usize,
    (_, dport): (u16, u16),
    out: &mut Decap,
) -> Result<Option<Next>, DropReason> {
    let header = udp + 8;
    if dport == config.vxlan_port && dport != 0 {
        let v: [u8; 8] = bytes(ctx, header).ok_or(DropReason::VxlanTruncated)?;
        if v[0] & 0x08 == 0 {
            return Err(DropReason::VxlanBadFlags);
        }
        let inner = header + 8;
        bytes::<ETH_LEN>(ctx, inner).ok_or(DropReason::VxlanTruncated)?;
        *out = Decap { strip: inner as u32, vni: u32::from_be_bytes([0, v[4], v[5], v[6]]), identity: 0 };
        return Ok(Some(Next::Decap));
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
        if be16([g[2], g[3]]) != ETH_P_TEB {
            // Not an Ethernet payload: leave it to the kernel.
            return Ok(None);
        }
        bytes::<ETH_LEN>(ctx, inner).ok_or(DropReason::GeneveTruncated)?;
        *out = Decap {
            strip: inner as u32,
            vni: u32::from_be_bytes([0, g[4], g[5], g[6]]),
            identity: identity.0,
        };
        return Ok(Some(Next::Decap));
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

#[inline(always)]
fn under_policy(endpoint: Option<*const EndpointInfo>) -> bool {
    // SAFETY: the pointer comes from a successful lookup and stays valid for this program run
    // (RCU); a concurrent update can at worst show the old or the new flags.
    endpoint.is_some_and(|e| unsafe { (*e).flags } & EndpointInfo::POLICY_ENFORCED != 0)
}

/// To the AF_XDP socket of this interface's receive queue; XDP_PASS (counted in `NO_WORKER`)
/// when none is bound.
#[inline(always)]
fn redirect(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the program's valid xdp_md.
    let (ifindex, queue) = unsafe { ((*ctx.ctx).ingress_ifindex, (*ctx.ctx).rx_queue_index) };
    let slot = IF_SLOTS.get_ptr(&ifindex);
    let action = match slot {
        Some(slot) if queue < XSK_QUEUES_PER_IF => {
            // SAFETY: a pointer from a successful lookup, valid for this run.
            let index = unsafe { *slot } * XSK_QUEUES_PER_IF + queue;
            XSKS.redirect(index, u64::from(XDP_PASS)).unwrap_or(XDP_PASS)
        }
        _ => XDP_PASS,
    };
    if action == XDP_PASS {
        count(&NO_WORKER, 0, len(ctx) as u64);
    }
    action
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

#[inline(always)]
fn count(map: &aya_ebpf::maps::PerCpuArray<Counter>, index: u32, bytes: u64) {
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
fn sample_drop(ctx: &XdpContext, reason: DropReason) {
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

/// GPL-compatible, so the program may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

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
