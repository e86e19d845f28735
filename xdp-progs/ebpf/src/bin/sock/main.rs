//! `skiff_sock`: socket-LB, cgroup socket programs that translate a service address to a
//! backend once per socket instead of once per packet, as Cilium's `bpf_sock.c` does.
//!
//! - `connect4/6` (TCP, connected UDP) and `sendmsg4/6` (each unconnected UDP datagram): a
//!   destination that is a service frontend becomes one of its backends. A NodePort answers
//!   on every node's address, and on loopback for the node's own sockets. A service without
//!   backends refuses the connect with ECONNREFUSED at once.
//! - `recvmsg4/6` and `getpeername4/6`: a translated socket sees the service's address as its
//!   peer, from the reverse map the forward hooks fill (keyed by socket cookie).
//!
//! The backend: with `sessionAffinity: ClientIP`, the one the client's network namespace last
//! got while it still takes new connections; otherwise a slot drawn at random for TCP, and by
//! socket cookie for UDP so an unconnected socket's datagrams keep one backend. A connect has
//! no flow to hash that another node would see (the connection never appears untranslated),
//! so Maglev's consistency has nothing to keep here; the slots carry each backend as often as
//! its weight, which is the share its Maglev table gives it.
//!
//! IPv4-mapped IPv6 destinations (a dual-stack socket connecting to an IPv4 service) use the
//! IPv4 tables. Anything else is left as it is.
#![no_std]
#![no_main]

mod maps;

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use skiff_common::{
    proto::ip,
    sock::{
        AffinityKey, AffinityValue, ReverseKey4, ReverseKey6, SlotKey, SockBackend, SockConfig, SockCounter,
        SockKey4, SockKey6, SockService,
    },
};
use skiff_xdp_ebpf as _;

use crate::maps::{
    SOCK_AFFINITY, SOCK_BACKENDS, SOCK_CONFIG, SOCK_COUNTS, SOCK_MEMBERS, SOCK_NODES_V4, SOCK_NODES_V6,
    SOCK_REV_V4, SOCK_REV_V6, SOCK_SLOTS, SOCK_SVC_V4, SOCK_SVC_V6,
};

/// The hook lets the call go on.
const ALLOW: i32 = 1;
/// The hook fails the call with the error set by `bpf_set_retval`.
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4(ctx: SockAddrContext) -> i32 {
    forward4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward4(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn skiff_getpeer4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn skiff_connect6(ctx: SockAddrContext) -> i32 {
    forward6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn skiff_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward6(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn skiff_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn skiff_getpeer6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx);
    ALLOW
}

/// The context's fields are read and written one 4-byte word at a time: the verifier refuses
/// wider loads of `bpf_sock_addr`, which a plain copy of `user_ip6` could compile to.
#[inline(always)]
fn sock_addr(ctx: &SockAddrContext) -> *mut bpf_sock_addr {
    ctx.sock_addr
}

#[inline(always)]
fn read_ip4(sa: *mut bpf_sock_addr) -> [u8; 4] {
    // SAFETY: the kernel's context of this hook; a 4-byte field read whole.
    unsafe { read_volatile(addr_of!((*sa).user_ip4)) }.to_ne_bytes()
}

#[inline(always)]
fn read_ip6(sa: *mut bpf_sock_addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: the kernel's context of this hook; one 4-byte word of `user_ip6`.
        let word = unsafe { read_volatile(addr_of!((*sa).user_ip6[i])) }.to_ne_bytes();
        out[i * 4..i * 4 + 4].copy_from_slice(&word);
        i += 1;
    }
    out
}

/// The destination port as the key holds it (network byte order in memory).
#[inline(always)]
fn read_port(sa: *mut bpf_sock_addr) -> u16 {
    // SAFETY: the kernel's context; `user_port` holds the port in network order in its low
    // 16 bits.
    unsafe { read_volatile(addr_of!((*sa).user_port)) as u16 }
}

#[inline(always)]
fn write_ip4_port(sa: *mut bpf_sock_addr, addr: [u8; 4], port: u16) {
    // SAFETY: the kernel's context of a hook that may rewrite the address: 4-byte writes.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(addr));
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(port));
    }
}

/// Writes the last word of `user_ip6` (an IPv4-mapped address keeps its prefix) and the port.
#[inline(always)]
fn write_mapped_port(sa: *mut bpf_sock_addr, addr: [u8; 4], port: u16) {
    // SAFETY: as `write_ip4_port`.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), u32::from_ne_bytes(addr));
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(port));
    }
}

#[inline(always)]
fn write_ip6_port(sa: *mut bpf_sock_addr, addr: [u8; 16], port: u16) {
    let mut i = 0;
    while i < 4 {
        let word = [addr[i * 4], addr[i * 4 + 1], addr[i * 4 + 2], addr[i * 4 + 3]];
        // SAFETY: as `write_ip4_port`.
        unsafe { write_volatile(addr_of_mut!((*sa).user_ip6[i]), u32::from_ne_bytes(word)) };
        i += 1;
    }
    // SAFETY: as `write_ip4_port`.
    unsafe { write_volatile(addr_of_mut!((*sa).user_port), u32::from(port)) };
}

/// The IPv4 address inside `::ffff:a.b.c.d`.
#[inline(always)]
fn v4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let prefix = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    (addr[..12] == prefix).then(|| [addr[12], addr[13], addr[14], addr[15]])
}

/// TCP or UDP, as the key's protocol; anything else is not translated.
#[inline(always)]
fn protocol(sa: *mut bpf_sock_addr) -> Option<u8> {
    // SAFETY: the kernel's context; a 4-byte field.
    let proto = unsafe { read_volatile(addr_of!((*sa).protocol)) };
    (proto == u32::from(ip::TCP) || proto == u32::from(ip::UDP)).then_some(proto as u8)
}

#[inline(always)]
fn count(counter: SockCounter) {
    if let Some(slot) = SOCK_COUNTS.get_ptr_mut(u32::from(counter.code())) {
        // SAFETY: a per-CPU slot from a successful lookup. (A task switched in between the
        // load and the store could lose one count; the bpfel target has no atomic add.)
        unsafe { *slot += 1 };
    }
}

/// Fails the call with ECONNREFUSED, counted.
#[inline(always)]
fn refuse() -> i32 {
    count(SockCounter::Refused);
    // SAFETY: a helper taking a plain value.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// Whose socket this is: its network namespace, and whether socket-LB serves it.
struct Client {
    netns: u64,
    host: bool,
}

#[inline(always)]
fn client(ctx: &SockAddrContext) -> Option<Client> {
    let config = SOCK_CONFIG.get(0).copied().unwrap_or_default();
    // SAFETY: a helper on this hook's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let host = netns == config.host_netns;
    (host || config.flags & SockConfig::HOST_NAMESPACE_ONLY == 0).then_some(Client { netns, host })
}

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: a helper on this hook's context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The service at `key`, or the NodePort at its port when `key` is a node's address (or
/// loopback, for the node's own sockets), with the client it serves. A destination that is
/// no service's costs two lookups, no helper call.
#[inline(always)]
fn service4(ctx: &SockAddrContext, key: &SockKey4) -> Option<(SockService, Client)> {
    // SAFETY: map values are plain data, copied out at once.
    if let Some(s) = unsafe { SOCK_SVC_V4.get(key) }.copied() {
        return Some((s, client(ctx)?));
    }
    // SAFETY: as above.
    let node = unsafe { SOCK_NODES_V4.get(key.vip) }.is_some();
    if !node && key.vip[0] != 127 {
        return None;
    }
    let client = client(ctx)?;
    if !node && !client.host {
        return None;
    }
    // SAFETY: as above.
    let s = unsafe { SOCK_SVC_V4.get(SockKey4 { vip: [0; 4], ..*key }) }.copied()?;
    Some((s, client))
}

#[inline(always)]
fn service6(ctx: &SockAddrContext, key: &SockKey6) -> Option<(SockService, Client)> {
    // SAFETY: map values are plain data, copied out at once.
    if let Some(s) = unsafe { SOCK_SVC_V6.get(key) }.copied() {
        return Some((s, client(ctx)?));
    }
    let loopback = key.vip == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    // SAFETY: as above.
    let node = unsafe { SOCK_NODES_V6.get(key.vip) }.is_some();
    if !node && !loopback {
        return None;
    }
    let client = client(ctx)?;
    if !node && !client.host {
        return None;
    }
    // SAFETY: as above.
    let s = unsafe { SOCK_SVC_V6.get(SockKey6 { vip: [0; 16], ..*key }) }.copied()?;
    Some((s, client))
}

/// The backend for a new socket of `service` (`None`: none takes new connections).
#[inline(always)]
fn pick(ctx: &SockAddrContext, service: &SockService, proto: u8, client: &Client) -> Option<SockBackend> {
    if service.slots == 0 {
        return None;
    }
    // With affinity only: the client's key and the clock.
    let affinity = (service.affinity_timeout != 0).then(|| {
        // SAFETY: a helper without arguments.
        (AffinityKey { netns: client.netns, service: service.id, _pad: 0 }, unsafe { bpf_ktime_get_ns() })
    });
    if let Some((affinity, now)) = affinity {
        // SAFETY: map values are plain data, copied out at once.
        if let Some(last) = unsafe { SOCK_AFFINITY.get(affinity) }.copied() {
            let fresh = now.wrapping_sub(last.at_ns) <= u64::from(service.affinity_timeout) * 1_000_000_000;
            let member = SlotKey { service: service.id, slot: last.backend };
            // SAFETY: as above.
            if fresh && unsafe { SOCK_MEMBERS.get(member) }.is_some() {
                // SAFETY: as above.
                if let Some(backend) = unsafe { SOCK_BACKENDS.get(skiff_common::lb::BackendId(last.backend)) }
                {
                    let _ = SOCK_AFFINITY.insert(affinity, AffinityValue { at_ns: now, ..last }, 0);
                    return Some(*backend);
                }
            }
        }
    }
    let draw = if proto == ip::TCP {
        // SAFETY: a helper without arguments.
        unsafe { bpf_get_prandom_u32() }
    } else {
        (socket_cookie(ctx).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
    };
    let slot = SlotKey { service: service.id, slot: draw % service.slots };
    // SAFETY: as above.
    let id = *unsafe { SOCK_SLOTS.get(slot) }?;
    // SAFETY: as above.
    let backend = *unsafe { SOCK_BACKENDS.get(id) }?;
    if let Some((affinity, now)) = affinity {
        let _ = SOCK_AFFINITY.insert(affinity, AffinityValue { at_ns: now, backend: id.0, _pad: 0 }, 0);
    }
    Some(backend)
}

#[inline(always)]
fn forward4(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    let Some(proto) = protocol(sa) else { return ALLOW };
    let key = SockKey4 { vip: read_ip4(sa), dport: read_port(sa), proto, _pad: 0 };
    let Some((service, client)) = service4(ctx, &key) else { return ALLOW };
    let Some((addr, port)) = translate4(ctx, &key, &service, &client) else { return refuse() };
    write_ip4_port(sa, addr, port);
    ALLOW
}

#[inline(always)]
fn forward6(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    let Some(proto) = protocol(sa) else { return ALLOW };
    let (vip, dport) = (read_ip6(sa), read_port(sa));
    if let Some(vip) = v4_mapped(&vip) {
        let key = SockKey4 { vip, dport, proto, _pad: 0 };
        let Some((service, client)) = service4(ctx, &key) else { return ALLOW };
        let Some((addr, port)) = translate4(ctx, &key, &service, &client) else { return refuse() };
        write_mapped_port(sa, addr, port);
        return ALLOW;
    }
    let key = SockKey6 { vip, dport, proto, _pad: 0 };
    let Some((service, client)) = service6(ctx, &key) else { return ALLOW };
    let Some(backend) = pick(ctx, &service, proto, &client) else { return refuse() };
    let reverse =
        ReverseKey6 { cookie: socket_cookie(ctx), addr: backend.addr, port: backend.port, _pad: [0; 6] };
    let _ = SOCK_REV_V6.insert(reverse, key, 0);
    count(SockCounter::Translated);
    write_ip6_port(sa, backend.addr, backend.port);
    ALLOW
}

/// Picks the backend of an IPv4 service and remembers the socket's service for its replies:
/// the backend's address and port.
#[inline(always)]
fn translate4(
    ctx: &SockAddrContext,
    key: &SockKey4,
    service: &SockService,
    client: &Client,
) -> Option<([u8; 4], u16)> {
    let backend = pick(ctx, service, key.proto, client)?;
    let addr = [backend.addr[0], backend.addr[1], backend.addr[2], backend.addr[3]];
    let reverse = ReverseKey4 { cookie: socket_cookie(ctx), addr, port: backend.port, _pad: 0 };
    let _ = SOCK_REV_V4.insert(reverse, *key, 0);
    count(SockCounter::Translated);
    Some((addr, backend.port))
}

/// A reply's source (or the peer `getpeername` reports) back to the service the socket
/// connected to, if it was translated.
#[inline(always)]
fn reverse4(ctx: &SockAddrContext) {
    let sa = sock_addr(ctx);
    let key = ReverseKey4 { cookie: socket_cookie(ctx), addr: read_ip4(sa), port: read_port(sa), _pad: 0 };
    // SAFETY: map values are plain data, copied out at once.
    if let Some(service) = unsafe { SOCK_REV_V4.get(key) }.copied() {
        write_ip4_port(sa, service.vip, service.dport);
    }
}

#[inline(always)]
fn reverse6(ctx: &SockAddrContext) {
    let sa = sock_addr(ctx);
    let (addr, port) = (read_ip6(sa), read_port(sa));
    let cookie = socket_cookie(ctx);
    if let Some(addr) = v4_mapped(&addr) {
        // SAFETY: as above.
        if let Some(service) =
            unsafe { SOCK_REV_V4.get(ReverseKey4 { cookie, addr, port, _pad: 0 }) }.copied()
        {
            write_mapped_port(sa, service.vip, service.dport);
        }
        return;
    }
    // SAFETY: as above.
    if let Some(service) =
        unsafe { SOCK_REV_V6.get(ReverseKey6 { cookie, addr, port, _pad: [0; 6] }) }.copied()
    {
        write_ip6_port(sa, service.vip, service.dport);
    }
}
