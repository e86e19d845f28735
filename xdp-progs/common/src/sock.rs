//! Socket-LB: the maps of `skiff_sock`, the cgroup socket programs that translate a service
//! address to a backend when a socket connects (or sends a datagram), so the node's own
//! connections, and pods', need no per-packet NAT.
//!
//! A frontend ([`SockKey4`], [`SockKey6`]) names a [`SockService`]: its id, and how many
//! slots ([`SlotKey`]) list the backends a new connection may take, each backend as often as
//! its weight. NodePorts also have a wildcard entry (address all zero) that connects to any
//! node's address ([`SOCK_NODES_V4`](crate::maps::SOCK_NODES_V4)) or, from the node itself,
//! to loopback use.

code_enum! {
    /// What the socket programs count, per CPU ([`SOCK_COUNTS`](crate::maps::SOCK_COUNTS)).
    pub enum SockCounter: u8, fn from_u8 {
        Translated = 0, "translated", "A connect or datagram to a service went to a backend.";
        Refused = 1, "refused", "A connect or datagram to a service without backends was refused (ECONNREFUSED).";
    }
}

/// An IPv4 frontend as a socket names it: the key of `SOCK_SVC_V4`. `vip` and `dport`
/// are network byte order; `proto` is IANA's number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockKey4 {
    pub vip: [u8; 4],
    pub dport: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<SockKey4>() == 8 && align_of::<SockKey4>() == 2);

/// An IPv6 frontend: the key of `SOCK_SVC_V6`, laid out as [`SockKey4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockKey6 {
    pub vip: [u8; 16],
    pub dport: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<SockKey6>() == 20 && align_of::<SockKey6>() == 2);

/// A service as connects see it (host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockService {
    /// Names its slots and its clients' affinity.
    pub id: u32,
    /// Slots `0..slots` list its backends; 0: no backend, connects are refused.
    pub slots: u32,
    /// `sessionAffinity: ClientIP`: seconds a client keeps its backend; 0: no affinity.
    pub affinity_timeout: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SockService>() == 16 && align_of::<SockService>() == 4);

/// One slot of a service: the key of `SOCK_SLOTS` (value: a `BackendId`), and of
/// `SOCK_MEMBERS` with `slot` holding a backend id (value: 1, the backend takes new
/// connections of that service).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SlotKey {
    pub service: u32,
    pub slot: u32,
}
const _: () = assert!(size_of::<SlotKey>() == 8);

/// A backend: the value of `SOCK_BACKENDS` by `BackendId`. `addr` holds an IPv4 address in
/// its first 4 bytes; `addr` and `port` are network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockBackend {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<SockBackend>() == 20 && align_of::<SockBackend>() == 2);

/// A client's affinity to a service: the key of `SOCK_AFFINITY`. The client is a network
/// namespace (its cookie): a socket has no source address yet when it connects.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AffinityKey {
    pub netns: u64,
    pub service: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<AffinityKey>() == 16);

/// The backend a client last got, and when (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AffinityValue {
    pub at_ns: u64,
    pub backend: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

/// A translated socket's backend: the key of `SOCK_REV_V4`, whose value is the
/// [`SockKey4`] it connected to (replies and `getpeername` get it back).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ReverseKey4 {
    pub cookie: u64,
    pub addr: [u8; 4],
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<ReverseKey4>() == 16);

/// As [`ReverseKey4`], for IPv6 (value: a [`SockKey6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ReverseKey6 {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<ReverseKey6>() == 32);

/// The socket programs' settings: one slot of `SOCK_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockConfig {
    /// The node's own network namespace (its cookie): loopback NodePorts are its alone.
    pub host_netns: u64,
    /// [`SockConfig::HOST_NAMESPACE_ONLY`].
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SockConfig>() == 16);

impl SockConfig {
    /// Translate only the node's own sockets (`--socket-lb-host-namespace-only`): pods'
    /// traffic keeps the service address, for meshes whose sidecars must see it.
    pub const HOST_NAMESPACE_ONLY: u32 = 1;
}

pod!(
    SockKey4,
    SockKey6,
    SockService,
    SlotKey,
    SockBackend,
    AffinityKey,
    AffinityValue,
    ReverseKey4,
    ReverseKey6,
    SockConfig
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters() {
        SockCounter::assert_well_formed();
    }
}
