//! Longest-prefix-match keys (CIDRs), and the value of the prefilter deny tries.
//!
//! The layout is the kernel's `struct bpf_lpm_trie_key`: the prefix length (host order, a
//! `u32`) then the address (network byte order). aya's `lpm_trie::Key<[u8; 4]>` and
//! `Key<[u8; 16]>` have the same bytes, so the eBPF side declares its tries with those; these
//! types give userspace prefixes with the host bits cleared, so equal CIDRs make equal keys.

use core::{
    mem::offset_of,
    net::{Ipv4Addr, Ipv6Addr},
};

/// An IPv4 prefix: `prefix_len` (host order) then `addr` (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LpmKey4 {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<LpmKey4>() == 8 && align_of::<LpmKey4>() == 4);
const _: () = assert!(offset_of!(LpmKey4, addr) == 4);

/// An IPv6 prefix: `prefix_len` (host order) then `addr` (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LpmKey6 {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<LpmKey6>() == 20 && align_of::<LpmKey6>() == 4);
const _: () = assert!(offset_of!(LpmKey6, addr) == 4);

impl LpmKey4 {
    /// The key for `addr/prefix_len`, host bits cleared; `None` if `prefix_len` is over 32.
    pub const fn new(addr: Ipv4Addr, prefix_len: u32) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        Some(LpmKey4 { prefix_len, addr: masked(addr.octets(), prefix_len) })
    }

    /// The prefix's address.
    pub const fn addr(&self) -> Ipv4Addr {
        let [a, b, c, d] = self.addr;
        Ipv4Addr::new(a, b, c, d)
    }
}

impl LpmKey6 {
    /// The key for `addr/prefix_len`, host bits cleared; `None` if `prefix_len` is over 128.
    pub const fn new(addr: Ipv6Addr, prefix_len: u32) -> Option<Self> {
        if prefix_len > 128 {
            return None;
        }
        Some(LpmKey6 { prefix_len, addr: masked(addr.octets(), prefix_len) })
    }

    /// The prefix's address.
    pub fn addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.addr)
    }
}

/// `bytes` with every bit after the first `prefix_len` cleared.
const fn masked<const N: usize>(mut bytes: [u8; N], prefix_len: u32) -> [u8; N] {
    let mut i = 0;
    let mut kept = prefix_len;
    while i < N {
        bytes[i] &= if kept >= 8 { 0xff } else { !(0xff >> kept) };
        kept = kept.saturating_sub(8);
        i += 1;
    }
    bytes
}

#[cfg(feature = "user")]
mod aya_keys {
    use aya::maps::lpm_trie::Key;

    use super::{LpmKey4, LpmKey6};

    const _: () = assert!(size_of::<Key<[u8; 4]>>() == size_of::<LpmKey4>());
    const _: () = assert!(size_of::<Key<[u8; 16]>>() == size_of::<LpmKey6>());

    impl From<LpmKey4> for Key<[u8; 4]> {
        fn from(key: LpmKey4) -> Self {
            Key::new(key.prefix_len, key.addr)
        }
    }

    impl From<Key<[u8; 4]>> for LpmKey4 {
        fn from(key: Key<[u8; 4]>) -> Self {
            LpmKey4 { prefix_len: key.prefix_len(), addr: key.data() }
        }
    }

    impl From<LpmKey6> for Key<[u8; 16]> {
        fn from(key: LpmKey6) -> Self {
            Key::new(key.prefix_len, key.addr)
        }
    }

    impl From<Key<[u8; 16]>> for LpmKey6 {
        fn from(key: Key<[u8; 16]>) -> Self {
            LpmKey6 { prefix_len: key.prefix_len(), addr: key.data() }
        }
    }
}

/// Why a prefix is in [`DENY_V4`](crate::maps::DENY_V4) or `DENY_V6`: the id of the CIDR rule
/// that put it there (host order), so a `DeniedCidr` drop can name its rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct DenyEntry {
    pub rule_id: u32,
}
const _: () = assert!(size_of::<DenyEntry>() == 4 && align_of::<DenyEntry>() == 4);

pod!(LpmKey4, LpmKey6, DenyEntry);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bits_are_cleared() {
        let key = LpmKey4::new(Ipv4Addr::new(198, 18, 201, 77), 17).unwrap();
        assert_eq!((key.prefix_len, key.addr), (17, [198, 18, 128, 0]));
        assert_eq!(key.addr(), Ipv4Addr::new(198, 18, 128, 0));
        assert_eq!(LpmKey4::new(Ipv4Addr::new(198, 18, 0, 1), 32).unwrap().addr, [198, 18, 0, 1]);
        assert_eq!(LpmKey4::new(Ipv4Addr::BROADCAST, 0).unwrap().addr, [0; 4]);
        assert_eq!(LpmKey4::new(Ipv4Addr::BROADCAST, 33), None);

        let key = LpmKey6::new("fd00:1:2:3:4::1".parse().unwrap(), 52).unwrap();
        assert_eq!(key.addr(), "fd00:1:2::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(LpmKey6::new(Ipv6Addr::LOCALHOST, 128).unwrap().addr(), Ipv6Addr::LOCALHOST);
        assert_eq!(LpmKey6::new(Ipv6Addr::LOCALHOST, 129), None);
    }

    #[cfg(feature = "user")]
    #[test]
    fn converts_to_aya_keys() {
        use aya::maps::lpm_trie::Key;

        let key = LpmKey4::new(Ipv4Addr::new(198, 18, 0, 0), 15).unwrap();
        let aya_key = Key::<[u8; 4]>::from(key);
        assert_eq!((aya_key.prefix_len(), aya_key.data()), (15, [198, 18, 0, 0]));
        assert_eq!(LpmKey4::from(aya_key), key);

        let key = LpmKey6::new("fd00::".parse().unwrap(), 8).unwrap();
        assert_eq!(LpmKey6::from(Key::<[u8; 16]>::from(key)), key);
    }
}
