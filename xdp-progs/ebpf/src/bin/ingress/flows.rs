//! The flow table at the NIC. A packet's direction is looked up in the flow cache (an array
//! slot by the key's hash, read under its sequence lock), then in the flow table's hash map.
//! A packet of a tracked flow goes to the worker unless the worker
//! offloaded the flow's direction; then it is translated here (addresses, ports, checksums
//! by the entry's precomputed deltas, TTL or hop limit, MACs) and sent out of the entry's
//! interface through `TX_PORTS` (XDP_REDIRECT), as the kernel's flowtable or Katran do. What is
//! not plain (TCP SYN, FIN or RST, IP options, extension headers, fragments, a TTL running out,
//! VLAN tags, an output the devmap lacks) still goes to the worker, counted by [`FlowPath`].

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::bpf_jiffies64,
    maps::{Array, HashMap},
    programs::XdpContext,
};
use skiff_common::{
    DropReason,
    conntrack::{CachedFlow, CtEntry, FlowPath, cache_slot},
    proto::ip,
};
use skiff_xdp_ebpf::packet::{bytes_mut, len};

use crate::{
    maps::{COPY, FLOW_COUNTS, TX_PORTS},
    metrics::count,
    parse::{ETH_LEN, Ip},
};

const V4_L4: usize = ETH_LEN + 20;
const V6_L4: usize = ETH_LEN + 40;
const TCP_SYN_FIN_RST: u8 = 0x07;

/// A direction of the flow table, as looked up for a frame.
pub enum Tracked {
    /// Its entry as read (the element itself, or a consistent copy of a cache slot's) and
    /// where the XDP program records its counts.
    Entry(*const CtEntry, *mut CtEntry),
    /// Its cache slot is being written: the worker decides ([`busy`]).
    Busy,
}

/// Counts a frame that met its cache slot being written.
#[inline(always)]
pub fn busy(ctx: &XdpContext) {
    count(&FLOW_COUNTS, FlowPath::Busy as u32, len(ctx) as u64);
}

/// The direction `key` of the flow table, if tracked.
#[inline(always)]
pub fn lookup<K: Copy>(
    cache: &Array<CachedFlow<K>>,
    table: &HashMap<K, CtEntry>,
    key: &K,
) -> Option<Tracked> {
    if let Some(cached) = cache.get_ptr_mut(cache_slot(key)) {
        // SAFETY: pointers from successful lookups, valid for this run (the copy's slot is
        // this CPU's, and XDP runs with preemption disabled). Volatile reads keep the
        // sequence lock's order (the seq, the key and the copy, the seq again); x86 keeps
        // loads in order.
        unsafe {
            let seq = read_volatile(&(*cached).seq);
            if same_words(&raw const (*cached).key, key)
                && let Some(copy) = COPY.get_ptr_mut(0)
            {
                copy_words(&raw const (*cached).entry, copy);
                if seq & 1 != 0 || read_volatile(&(*cached).seq) != seq {
                    return Some(Tracked::Busy);
                }
                return Some(Tracked::Entry(copy, &raw mut (*cached).entry));
            }
        }
    }
    // A hash map's element is replaced whole (RCU), never written under this run.
    table.get_ptr_mut(key).map(|at| Tracked::Entry(at, at))
}

/// Whether `*slot` (read volatile, a word at a time: no copy on the stack) equals `*key`.
/// Both are whole 64-bit words long; `slot` is aligned to them.
#[inline(always)]
unsafe fn same_words<K>(slot: *const K, key: &K) -> bool {
    let (slot, key) = (slot.cast::<u64>(), (key as *const K).cast::<u64>());
    // SAFETY: the caller's; `key` is aligned to 4 only.
    (0..size_of::<K>() / 8).all(|i| unsafe { read_volatile(slot.add(i)) == key.add(i).read_unaligned() })
}

/// Copies `*from` (read volatile, a word at a time) to `*to`; both aligned to 64-bit words.
#[inline(always)]
unsafe fn copy_words<T>(from: *const T, to: *mut T) {
    let (from, to) = (from.cast::<u64>(), to.cast::<u64>());
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: the caller's.
        unsafe { *to.add(i) = read_volatile(from.add(i)) };
    }
}

/// Forwards an IPv4 packet (L3 at `l3`, header `h` as parsed) whose tuple has the entry `e`,
/// recorded at `at`: `Ok(true)`, redirected; `Ok(false)`, it goes to the worker.
#[inline(always)]
pub fn forward_v4(
    ctx: &XdpContext,
    l3: usize,
    h: &Ip<4>,
    tcp_flags: u8,
    (e, at): (*const CtEntry, *mut CtEntry),
) -> Result<bool, DropReason> {
    // No VLAN tag, no options, not a fragment (MF or an offset), a TTL left.
    let plain = l3 == ETH_LEN && h.l4 == V4_L4 && !h.fragment && h.ttl > 1;
    finish(ctx, try_forward(ctx, (e, at), plain, (V4_L4, h.protocol, tcp_flags)))
}

/// As [`forward_v4`], for IPv6 (no extension headers).
#[inline(always)]
pub fn forward_v6(
    ctx: &XdpContext,
    l3: usize,
    h: &Ip<16>,
    tcp_flags: u8,
    (e, at): (*const CtEntry, *mut CtEntry),
) -> Result<bool, DropReason> {
    let plain = l3 == ETH_LEN && h.l4 == V6_L4 && h.ttl > 1;
    finish(ctx, try_forward(ctx, (e, at), plain, (V6_L4, h.protocol, tcp_flags)))
}

#[inline(always)]
fn finish(ctx: &XdpContext, path: Result<FlowPath, DropReason>) -> Result<bool, DropReason> {
    let path = path?;
    count(&FLOW_COUNTS, path as u32, len(ctx) as u64);
    Ok(path == FlowPath::Forwarded)
}

/// `plain`: the IP header is one the rewrite handles; then where L4 starts, its protocol
/// and (TCP) flags, as parsed.
#[inline(always)]
fn try_forward(
    ctx: &XdpContext,
    (e, at): (*const CtEntry, *mut CtEntry),
    plain: bool,
    (l4, protocol, tcp_flags): (usize, u8, u8),
) -> Result<FlowPath, DropReason> {
    // SAFETY: pointers from `lookup`, valid for this run.
    let e = unsafe { &*e };
    if !e.offloaded() {
        return Ok(FlowPath::Worker);
    }
    match protocol {
        _ if !plain => return Ok(FlowPath::NotSimple),
        // TCP without SYN, FIN or RST, or UDP; anything else is the worker's.
        ip::TCP if tcp_flags & TCP_SYN_FIN_RST != 0 => return Ok(FlowPath::TcpControl),
        ip::TCP | ip::UDP => {}
        _ => return Ok(FlowPath::NotSimple),
    }
    // The redirect is only recorded here (it happens when the program returns), so it is
    // asked for before the frame changes: an output missing from the devmap leaves the frame
    // whole for the worker.
    if TX_PORTS.redirect(e.ifindex, 0).is_err() {
        return Ok(FlowPath::NoDevice);
    }
    // Bounds checked by the parse: the rewrite cannot stop half way.
    if rewrite(ctx, e, l4, protocol).is_none() {
        return Err(DropReason::Internal);
    }
    // SAFETY: `at` is the looked-up element, valid for this run. Plain adds, not atomic ones
    // (a locked add costs more than the rest of the rewrite): a direction arrives on one
    // receive queue, so one CPU at a time writes its entry, and a rare race between two (or
    // with a worker rewriting the slot) loses a count, never corrupts one. The tick count,
    // because the verifier inlines it into a load where any clock helper is a call (a tenth
    // of the forward's cost where returns are dear), and conntrack reads this in seconds.
    unsafe {
        (*at).packets += 1;
        (*at).bytes += len(ctx) as u64;
        (*at).last_seen = bpf_jiffies64();
    }
    Ok(FlowPath::Forwarded)
}

/// Writes the entry's tuple, checksums, TTL and MACs into the frame, in 16-bit words: the
/// BPF backend copies byte by byte what it cannot prove aligned, and every field rewritten
/// sits at an even offset of a frame the kernel starts at an even address.
#[inline(always)]
fn rewrite(ctx: &XdpContext, e: &CtEntry, l4: usize, protocol: u8) -> Option<()> {
    let eth: &mut [u8; 12] = bytes_mut(ctx, 0)?;
    put(&mut eth[..6], &e.dst_mac);
    put(&mut eth[6..], &e.src_mac);
    if l4 == V4_L4 {
        let h: &mut [u8; 20] = bytes_mut(ctx, ETH_LEN)?;
        h[8] -= 1;
        put(&mut h[12..16], &e.src[..4]);
        put(&mut h[16..20], &e.dst[..4]);
        let sum = add(get(&h[10..12]), e.ip_csum, false);
        set(&mut h[10..12], sum);
    } else {
        let h: &mut [u8; 40] = bytes_mut(ctx, ETH_LEN)?;
        h[7] -= 1;
        put(&mut h[8..24], &e.src);
        put(&mut h[24..40], &e.dst);
    }
    let t: &mut [u8; 8] = bytes_mut(ctx, l4)?;
    set(&mut t[..2], u16::from_be(e.sport));
    set(&mut t[2..4], u16::from_be(e.dport));
    if protocol == ip::UDP {
        let sum = add(get(&t[6..8]), e.l4_csum, true);
        set(&mut t[6..8], sum);
    } else {
        let t: &mut [u8; 18] = bytes_mut(ctx, l4)?;
        let sum = add(get(&t[16..18]), e.l4_csum, false);
        set(&mut t[16..18], sum);
    }
    Some(())
}

/// Copies `from` into `to`, as long, a 16-bit word at a time.
#[inline(always)]
fn put(to: &mut [u8], from: &[u8]) {
    let words = from.len() / 2;
    let (to, from) = (to.as_mut_ptr().cast::<u16>(), from.as_ptr().cast::<u16>());
    for i in 0..words {
        // SAFETY: word `i` is within both (the same length); see `rewrite` on alignment.
        unsafe { to.add(i).write(from.add(i).read()) }
    }
}

/// The 16-bit big-endian word at the start of `at` (2 bytes or more).
#[inline(always)]
fn get(at: &[u8]) -> u16 {
    // SAFETY: as in `put`.
    u16::from_be(unsafe { at.as_ptr().cast::<u16>().read() })
}

/// Writes `value` big-endian over the first 2 bytes of `at`.
#[inline(always)]
fn set(at: &mut [u8], value: u16) {
    // SAFETY: as in `put`.
    unsafe { at.as_mut_ptr().cast::<u16>().write(value.to_be()) }
}

/// `old` checksum plus `delta` (RFC 1624 eqn. 3). A UDP checksum of 0 means none, and a
/// computed 0 is sent as 0xffff.
#[inline(always)]
fn add(old: u16, delta: u16, udp: bool) -> u16 {
    if udp && old == 0 {
        return 0;
    }
    let mut sum = u32::from(!old) + u32::from(delta);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let new = !(sum as u16);
    if udp && new == 0 { 0xffff } else { new }
}
