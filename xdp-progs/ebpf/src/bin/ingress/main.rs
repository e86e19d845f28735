//! `skiff_xdp_ingress`: the first line of the datapath, on the node's uplinks and the host side
//! of pod veths. One module per concern, as Cilium's `bpf/lib/`:
//!
//! 1. [`parse`]: Ethernet (up to two VLAN tags), IPv4/IPv6 (extension headers, bounded) and
//!    the L4 header; malformed frames are dropped with their reason.
//! 2. [`prefilter`]: a source in a denied CIDR, or a pod's frame from another address than
//!    its own, is dropped. Then [`host`]: the node's own TCP or UDP on an uplink, to a port
//!    no worker serves, passes on comparisons alone (no hash or trie lookup).
//! 3. [`tunnel`]: VXLAN or Geneve to this node's tunnel address from a known node is
//!    decapsulated in place, and the inner frame goes through steps 1–2, must claim its
//!    source's identity (the ipcache), then goes to a worker.
//! 4. [`flows`]: a packet of a tracked flow is forwarded here if a worker offloaded the
//!    flow's direction (the flow table at the NIC), else it goes to the worker.
//! 5. [`redirect`]: what else needs a worker goes to the queue's AF_XDP socket (services, pods
//!    under policy, pods on other nodes).
//! 6. Everything else passes: the node's own traffic.
//!
//! One exit counts every XDP action (and every drop's reason) per CPU, and samples decisions
//! into the event ring by those counts ([`metrics`]).
#![no_std]
#![no_main]

mod flows;
mod host;
mod maps;
mod metrics;
mod parse;
mod prefilter;
mod redirect;
mod tunnel;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    macros::xdp,
    programs::XdpContext,
};
use skiff_common::{
    DropReason,
    config::XdpConfig,
    conntrack::{CtEntry, CtKey4, CtKey6},
    event::Decision,
    proto::{ethertype, ip},
};
use skiff_xdp_ebpf::packet::len;

use crate::{
    flows::Tracked,
    maps::{
        ACTION_COUNTS, CONFIG, CT_V4, CT_V6, DROP_COUNTS, FLOW_CACHE_V4, FLOW_CACHE_V6, NODES_V4, NODES_V6,
    },
    redirect::Need,
    tunnel::Decap,
};

#[xdp]
pub fn skiff_xdp_ingress(ctx: XdpContext) -> u32 {
    let frame_len = len(&ctx) as u64;
    // A reference, not a copy: the settings are read where needed, not copied per frame.
    let config = CONFIG.get(0).unwrap_or(&XdpConfig::DEFAULT);
    match try_ingress(&ctx, config) {
        Ok((action, decision)) => {
            let n = metrics::count(&ACTION_COUNTS, action, frame_len);
            metrics::sample(&ctx, n, config.trace_sample_every, decision, 0);
            action
        }
        Err(reason) => {
            let n = metrics::count(&DROP_COUNTS, reason as u32, frame_len);
            metrics::count(&ACTION_COUNTS, XDP_DROP, frame_len);
            metrics::sample(&ctx, n, config.drop_sample_every, Decision::Dropped, reason as u8);
            XDP_DROP
        }
    }
}

/// What the parse of one (outer or inner) frame decided.
enum Next {
    Pass,
    Redirect,
    /// To a worker for a policy verdict: dropped when none is bound.
    Judge,
    /// Forwarded out of another interface by the flow table (XDP_REDIRECT done).
    Forwarded,
    /// Strip the outer headers (see [`Decap`]); the inner frame follows.
    Decap,
}

/// The frame's XDP action and what it means, or why it is dropped.
#[inline(always)]
fn try_ingress(ctx: &XdpContext, config: &XdpConfig) -> Result<(u32, Decision), DropReason> {
    let mut decap = Decap::default();
    let action = match decide::<true>(ctx, config, &mut decap)? {
        Next::Pass => XDP_PASS,
        Next::Redirect => redirect::to_worker(ctx),
        Next::Judge => redirect::to_judge(ctx)?,
        Next::Forwarded => return Ok((XDP_REDIRECT, Decision::Forwarded)),
        Next::Decap => {
            tunnel::decapsulate(ctx, &decap)?;
            // The inner frame passes the same checks (an inner tunnel is dropped), then a
            // worker delivers it: its MACs are the sender's, not this node's.
            match Next::decode(classify(ctx, config, &mut decap))? {
                Next::Judge => redirect::to_judge(ctx)?,
                _ => redirect::to_worker(ctx),
            }
        }
    };
    Ok((action, if action == XDP_PASS { Decision::Passed } else { Decision::ToWorker }))
}

impl Next {
    /// A code a BPF subprogram can return: 0 pass, 1 redirect, 2 decap, 3 forwarded, 4 judge,
    /// 256 + reason: drop.
    /// (A returned struct would be a pointer into the caller's stack, which the verifier
    /// refuses.)
    #[inline(always)]
    fn encode(result: Result<Next, DropReason>) -> u32 {
        match result {
            Ok(Next::Pass) => 0,
            Ok(Next::Redirect) => 1,
            Ok(Next::Decap) => 2,
            Ok(Next::Forwarded) => 3,
            Ok(Next::Judge) => 4,
            Err(reason) => 256 + reason as u32,
        }
    }

    #[inline(always)]
    fn decode(code: u32) -> Result<Next, DropReason> {
        match code {
            0 => Ok(Next::Pass),
            1 => Ok(Next::Redirect),
            2 => Ok(Next::Decap),
            3 => Ok(Next::Forwarded),
            4 => Ok(Next::Judge),
            other => Err(u8::try_from(other - 256)
                .ok()
                .and_then(DropReason::from_u8)
                .unwrap_or(DropReason::Internal)),
        }
    }
}

/// Decides what happens to a decapsulated frame, in a BPF-to-BPF call. Every outer frame's
/// decision is inlined instead (a call is a tenth of a forward's cost where returns are
/// dear); a second inlined copy lets the compiler share blocks across a helper call in a way
/// the verifier rejects (a clobbered register read). `decide::<false>` leaves out what only
/// an outer frame does (forwarding at the NIC, opening a tunnel), which keeps the two frames'
/// stacks within the verifier's 512 bytes.
#[inline(never)]
fn classify(ctx: &XdpContext, config: &XdpConfig, tunnel: &mut Decap) -> u32 {
    Next::encode(decide::<false>(ctx, config, tunnel))
}

/// An outer IPv6 frame's decision, in a BPF-to-BPF call: inlined beside IPv4's, its locals
/// take the program's frame past what the verifier allows with the inner frame's call (512
/// bytes of stack down a chain of calls).
#[inline(never)]
fn outer_ipv6(ctx: &XdpContext, config: &XdpConfig, l3: usize, out: &mut Decap) -> u32 {
    Next::encode(ipv6::<true>(ctx, config, l3, out))
}

/// Parses the frame now in `ctx` (`OUTER`: as it arrived; else decapsulated) and decides
/// what happens to it.
#[inline(always)]
fn decide<const OUTER: bool>(
    ctx: &XdpContext,
    config: &XdpConfig,
    out: &mut Decap,
) -> Result<Next, DropReason> {
    let (ethertype, l3) = parse::ethernet(ctx)?;
    match ethertype {
        ethertype::IPV4 => ipv4::<OUTER>(ctx, config, l3, out),
        ethertype::IPV6 if OUTER => Next::decode(outer_ipv6(ctx, config, l3, out)),
        ethertype::IPV6 => ipv6::<false>(ctx, config, l3, out),
        // ARP, LLDP, …: the kernel's business.
        _ => Ok(Next::Pass),
    }
}

#[inline(always)]
fn ipv4<const OUTER: bool>(
    ctx: &XdpContext,
    config: &XdpConfig,
    l3: usize,
    out: &mut Decap,
) -> Result<Next, DropReason> {
    let h = parse::ipv4(ctx, l3)?;
    prefilter::check_v4(h.src)?;
    let uplink = OUTER && host::on_host_interface(ctx, config);
    if !OUTER {
        tunnel::check_identity_v4(out, h.src)?;
    } else if !uplink {
        prefilter::check_source_v4(ctx, h.src)?;
    }
    // A later fragment has no ports: the kernel reassembles it.
    if h.later_fragment {
        return Ok(Next::Pass);
    }
    let ports = parse::l4(ctx, h.l4, h.protocol)?;
    if uplink && host::unserved(&config.host_v4, &h.dst, h.protocol, ports.dst) {
        return Ok(Next::Pass);
    }
    let flow = CtKey4::new(h.src, ports.src, h.dst, ports.dst, h.protocol);
    let tracked = flows::lookup(&FLOW_CACHE_V4, &CT_V4, &flow);
    if let Some(next) =
        tracked_next::<OUTER>(ctx, tracked, |e| flows::forward_v4(ctx, l3, &h, ports.tcp_flags, e))?
    {
        return Ok(next);
    }
    if config.tunnel_v4 != [0; 4]
        && h.dst == config.tunnel_v4
        && h.protocol == ip::UDP
        && tunnel::is_port(config, ports.dst)
        && let Some(found) =
            tunnel::admit(ctx, config, (h.l4, ports.dst), OUTER, NODES_V4.get_ptr(&h.src).is_some())?
    {
        *out = found;
        return Ok(Next::Decap);
    }
    let need = redirect::need_v4(h.src, h.dst, ports.dst, h.protocol);
    Ok(next(need, || redirect::masqueraded_v4(ctx, config, h.dst)))
}

#[inline(always)]
fn ipv6<const OUTER: bool>(
    ctx: &XdpContext,
    config: &XdpConfig,
    l3: usize,
    out: &mut Decap,
) -> Result<Next, DropReason> {
    let mut h = parse::ipv6(ctx, l3)?;
    prefilter::check_v6(h.src)?;
    let uplink = OUTER && host::on_host_interface(ctx, config);
    if !OUTER {
        tunnel::check_identity_v6(out, h.src)?;
    } else if !uplink {
        prefilter::check_source_v6(ctx, h.src)?;
    }
    parse::extension_headers(ctx, &mut h)?;
    if h.later_fragment {
        return Ok(Next::Pass);
    }
    let ports = parse::l4(ctx, h.l4, h.protocol)?;
    if uplink && host::unserved(&config.host_v6, &h.dst, h.protocol, ports.dst) {
        return Ok(Next::Pass);
    }
    let flow = CtKey6::new(h.src, ports.src, h.dst, ports.dst, h.protocol);
    let tracked = flows::lookup(&FLOW_CACHE_V6, &CT_V6, &flow);
    if let Some(next) =
        tracked_next::<OUTER>(ctx, tracked, |e| flows::forward_v6(ctx, l3, &h, ports.tcp_flags, e))?
    {
        return Ok(next);
    }
    if config.tunnel_v6 != [0; 16]
        && h.dst == config.tunnel_v6
        && h.protocol == ip::UDP
        && tunnel::is_port(config, ports.dst)
        && let Some(found) =
            tunnel::admit(ctx, config, (h.l4, ports.dst), OUTER, NODES_V6.get_ptr(&h.src).is_some())?
    {
        *out = found;
        return Ok(Next::Decap);
    }
    let need = redirect::need_v6(h.src, h.dst, ports.dst, h.protocol);
    Ok(next(need, || redirect::masqueraded_v6(ctx, config, h.dst)))
}

/// Where a frame of a tracked flow goes (`None`: untracked): forwarded here if `forward`
/// does it (only an outer frame: a decapsulated one a worker delivers), else to the worker.
#[inline(always)]
fn tracked_next<const OUTER: bool>(
    ctx: &XdpContext,
    tracked: Option<Tracked>,
    forward: impl FnOnce((*const CtEntry, *mut CtEntry)) -> Result<bool, DropReason>,
) -> Result<Option<Next>, DropReason> {
    Ok(match tracked {
        Some(Tracked::Entry(e, at)) if OUTER && forward((e, at))? => Some(Next::Forwarded),
        Some(Tracked::Busy) if OUTER => {
            flows::busy(ctx);
            Some(Next::Redirect)
        }
        Some(_) => Some(Next::Redirect),
        None => None,
    })
}

/// Where a frame of no tracked flow goes: a worker for a verdict, a worker, or (unless a
/// pod's traffic is `masqueraded` out of the cluster) the kernel.
#[inline(always)]
fn next(need: Need, masqueraded: impl FnOnce() -> bool) -> Next {
    match need {
        Need::Verdict => Next::Judge,
        Need::Worker => Next::Redirect,
        Need::Nothing if masqueraded() => Next::Redirect,
        Need::Nothing => Next::Pass,
    }
}

/// GPL-compatible, so the program may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
