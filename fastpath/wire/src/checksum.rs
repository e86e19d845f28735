//! The Internet checksum (RFC 1071): full sums with IPv4/IPv6 pseudo-headers, and incremental
//! updates (RFC 1624) for rewriting an address, a port or a TTL without reading the payload.

use core::net::{Ipv4Addr, Ipv6Addr};

/// The 32-bit one's-complement accumulator, folded to 16 bits by [`fold`].
/// Sums of partial buffers combine by plain addition as long as every part but the last has
/// an even length.
pub fn sum(data: &[u8]) -> u32 {
    // Add 16-bit big-endian words in a 64-bit accumulator, 8 bytes at a time: no carries are
    // lost and the loop vectorises.
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold64(acc)
}

fn fold64(mut acc: u64) -> u32 {
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    // Truncation is the point: the high half was folded into the low half above.
    #[allow(clippy::cast_possible_truncation)]
    let acc = acc as u32;
    acc
}

/// Folds an accumulator to 16 bits (without the final complement).
pub const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    // After two folds the value fits in 16 bits.
    #[allow(clippy::cast_possible_truncation)]
    let folded = acc as u16;
    folded
}

/// The checksum field value for data whose accumulator is `acc`.
pub const fn finish(acc: u32) -> u16 {
    !fold(acc)
}

/// Accumulator of the IPv4 pseudo-header (RFC 793).
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u32 {
    let (s, d) = (src.octets(), dst.octets());
    u32::from(u16::from_be_bytes([s[0], s[1]]))
        + u32::from(u16::from_be_bytes([s[2], s[3]]))
        + u32::from(u16::from_be_bytes([d[0], d[1]]))
        + u32::from(u16::from_be_bytes([d[2], d[3]]))
        + u32::from(protocol)
        + u32::from(len)
}

/// Accumulator of the IPv6 pseudo-header (RFC 8200 §8.1).
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: u32) -> u32 {
    sum(&src.octets()) + sum(&dst.octets()) + (len >> 16) + (len & 0xffff) + u32::from(next_header)
}

/// The pseudo-header of either family, so L4 code is written once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpPair {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl IpPair {
    /// Accumulator of this pair's pseudo-header for an L4 segment of `len` bytes.
    pub fn pseudo(self, protocol: u8, len: usize) -> u32 {
        match self {
            // Callers only build segments that fit their IP header's length field.
            #[allow(clippy::cast_possible_truncation)]
            IpPair::V4(s, d) => pseudo_v4(s, d, protocol, len as u16),
            #[allow(clippy::cast_possible_truncation)]
            IpPair::V6(s, d) => pseudo_v6(s, d, protocol, len as u32),
        }
    }
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word changed from `old` to `new`:
/// HC' = ~(~HC + ~m + m').
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(acc)
}

/// The new checksum after a 32-bit field (an IPv4 address) changed.
pub const fn update32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let acc = (!check) as u32
        + (!u16::from_be_bytes([old[0], old[1]])) as u32
        + (!u16::from_be_bytes([old[2], old[3]])) as u32
        + u16::from_be_bytes([new[0], new[1]]) as u32
        + u16::from_be_bytes([new[2], new[3]]) as u32;
    !fold(acc)
}

/// The new checksum after an even-length field (an IPv6 address) changed from `old` to `new`.
/// Both slices must have the same even length.
pub fn update_bytes(check: u16, old: &[u8], new: &[u8]) -> u16 {
    !fold(u32::from(!check) + change(old, new))
}

/// What replacing the words of `old` by those of `new` adds to a one's-complement sum
/// (unfolded): ~m + m' for each word. Both slices must have the same even length.
pub fn change(old: &[u8], new: &[u8]) -> u32 {
    debug_assert!(old.len() == new.len() && old.len().is_multiple_of(2));
    old.chunks_exact(2)
        .zip(new.chunks_exact(2))
        .map(|(o, n)| {
            u32::from(!u16::from_be_bytes([o[0], o[1]])) + u32::from(u16::from_be_bytes([n[0], n[1]]))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §3 example: the sum of these words is 0xddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(fold(sum(&[1, 2, 3, 4, 5])), 0x0102 + 0x0304 + 0x0500);
    }

    /// A real IPv4 header (from a lab capture) verifies: its sum is 0xffff.
    #[test]
    fn ipv4_header_from_a_capture_verifies() {
        let header = [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0xb1, 0xe6, 0xac, 0x10, 0x0a, 0x63,
            0xac, 0x10, 0x0a, 0x0c,
        ];
        assert_eq!(fold(sum(&header)), 0xffff);
    }

    #[test]
    fn update_matches_recompute() {
        let mut header = [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0xac, 0x10, 0x0a, 0x63,
            0xac, 0x10, 0x0a, 0x0c,
        ];
        let check = finish(sum(&header));
        let new_dst = [198, 18, 128, 10];
        let updated = update32(check, [0xac, 0x10, 0x0a, 0x0c], new_dst);
        header[16..20].copy_from_slice(&new_dst);
        assert_eq!(updated, finish(sum(&header)));
    }
}
