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

/// Source slots per family in [`DENY_FREE`](crate::maps::DENY_FREE): a trie walk is a call
/// into the kernel on every packet, a slot's bit an array read. A set bit promises that no
/// denied prefix covers an address of the slot; a clear one (a new map's) sends the source to
/// the trie, so the shortcut can only be slow, never let a denied source through.
pub const DENY_SLOTS: u32 = 1 << 16;
/// Words of `DENY_FREE`: IPv4's slots, then IPv6's.
pub const DENY_FREE_WORDS: u32 = 2 * DENY_SLOTS / 64;

/// An IPv4 source's slot: its first 16 bits.
#[inline(always)]
pub const fn deny_slot_v4(addr: [u8; 4]) -> u32 {
    u16::from_be_bytes([addr[0], addr[1]]) as u32
}

/// An IPv6 source's slot: its first 48 bits (where providers' and sites' prefixes end)
/// folded to 16.
#[inline(always)]
pub const fn deny_slot_v6(a: [u8; 16]) -> u32 {
    let folded = u16::from_be_bytes([a[0], a[1]])
        ^ u16::from_be_bytes([a[2], a[3]])
        ^ u16::from_be_bytes([a[4], a[5]]);
    DENY_SLOTS + folded as u32
}

impl LpmKey4 {
    /// The slots holding an address of the prefix.
    pub fn deny_slots(self) -> impl Iterator<Item = u32> {
        spread(deny_slot_v4(self.addr), self.prefix_len, 16)
    }
}

impl LpmKey6 {
    /// The slots holding an address of the prefix.
    pub fn deny_slots(self) -> impl Iterator<Item = u32> {
        spread(deny_slot_v6(self.addr), self.prefix_len, 48)
    }
}

/// The slots of a prefix of `len` bits whose first address (host bits clear) is in slot
/// `first`, slots being made of an address's first `bits`: one when the prefix fixes them all;
/// when it leaves the last `k` of them free (at most 16, those the fold ends with), the
/// `2^k` slots `first ^ i`; else every slot of the family.
fn spread(first: u32, len: u32, bits: u32) -> impl Iterator<Item = u32> {
    let span = match bits.saturating_sub(len) {
        free if free <= 16 => 1 << free,
        _ => DENY_SLOTS,
    };
    (0..span).map(move |i| first ^ i)
}

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

    #[test]
    fn a_prefix_covers_the_slots_of_its_addresses() {
        let v4 = |a: [u8; 4], len| LpmKey4::new(a.into(), len).unwrap().deny_slots().collect::<Vec<_>>();
        assert_eq!(v4([198, 19, 128, 7], 32), [deny_slot_v4([198, 19, 0, 0])]);
        assert_eq!(v4([198, 18, 0, 0], 15), [deny_slot_v4([198, 18, 0, 0]), deny_slot_v4([198, 19, 0, 0])]);
        let mut slash8 = v4([10, 0, 0, 0], 8);
        slash8.sort();
        assert_eq!(slash8, (0..=255).map(|b| deny_slot_v4([10, b, 0, 0])).collect::<Vec<_>>());
        assert_eq!(v4([0; 4], 0).len(), DENY_SLOTS as usize);

        let v6 =
            |a: &str, len| LpmKey6::new(a.parse().unwrap(), len).unwrap().deny_slots().collect::<Vec<_>>();
        assert_eq!(
            v6("fd00:1:2:3::9", 64),
            [deny_slot_v6(LpmKey6::new("fd00:1:2::".parse().unwrap(), 48).unwrap().addr)]
        );
        // A /40 leaves 8 folded bits free: every address of it lands in one of 256 slots.
        let slash40 = v6("fd00:1:200::", 40);
        assert_eq!(slash40.len(), 256);
        for third in [0x200u16, 0x2ff, 0x2a5] {
            let addr = std::net::Ipv6Addr::new(0xfd00, 1, third, 0, 0, 0, 0, 1).octets();
            assert!(slash40.contains(&deny_slot_v6(addr)), "{third:x}");
        }
        let short = v6("fd00::", 20);
        assert_eq!(short.len(), DENY_SLOTS as usize);
        assert!(short.iter().all(|&s| (DENY_SLOTS..2 * DENY_SLOTS).contains(&s)));
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
