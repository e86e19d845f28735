//! skiff-wire: zero-copy, panic-free views of the packets skiff handles, in the style of
//! smoltcp. `no_std`, no allocation.
//!
//! Each protocol has a `Packet<T: AsRef<[u8]>>` (or `Frame`) view whose `new_checked` validates
//! untrusted bytes so that no accessor can panic afterwards, setters where `T: AsMut<[u8]>`,
//! and a `Repr` with `parse` and `emit`. Fields are read from bytes, never by casting a slice
//! to a struct. Every error names the layer and what was wrong ([`Error`]).
//! [`layers::parse`] walks a whole frame to the flow key the datapath needs.
#![no_std]

pub mod arp;
pub mod checksum;
mod error;
pub mod ethernet;
pub mod geneve;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod layers;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use error::{Error, Layer, Problem, Result};
use skiff_common::proto::ip;

/// An IP protocol number (also an IPv6 next-header value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    pub const HOP_BY_HOP: IpProtocol = IpProtocol(ip::HOP_BY_HOP);
    pub const ICMP: IpProtocol = IpProtocol(ip::ICMP);
    pub const TCP: IpProtocol = IpProtocol(ip::TCP);
    pub const UDP: IpProtocol = IpProtocol(ip::UDP);
    pub const ROUTING: IpProtocol = IpProtocol(ip::ROUTING);
    pub const FRAGMENT: IpProtocol = IpProtocol(ip::FRAGMENT);
    pub const ICMPV6: IpProtocol = IpProtocol(ip::ICMPV6);
    pub const NO_NEXT_HEADER: IpProtocol = IpProtocol(ip::NO_NEXT_HEADER);
    pub const DST_OPTS: IpProtocol = IpProtocol(ip::DST_OPTS);

    /// The IPv6 extension headers [`ipv6::walk_extension_headers`] follows.
    pub const fn is_ipv6_extension(self) -> bool {
        matches!(self.0, ip::HOP_BY_HOP | ip::ROUTING | ip::FRAGMENT | ip::DST_OPTS)
    }
}

/// Reads a big-endian u16 from the first two bytes (callers pass exact ranges).
#[inline(always)]
pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[inline(always)]
pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Copies an exact-length slice into an array.
#[inline(always)]
pub(crate) fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&s[..N]);
    a
}
