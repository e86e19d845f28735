//! The one hash of the engine: stable across processes, versions and machines (Maglev tables
//! and flow-to-backend choices must not change when an agent restarts), well mixed, and cheap.
//! FNV-1a over the bytes, finished with the splitmix64 mixer.

/// Hashes `bytes` with `seed` (different seeds give independent hashes).
#[inline]
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The splitmix64 finaliser: every input bit affects every output bit.
#[inline]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is two published algorithms, checked against their published vectors (not
    /// against this code): a change to either would reshuffle every Maglev table and flow
    /// owner in a cluster of mixed versions.
    #[test]
    fn the_hash_is_fnv1a_then_splitmix64_as_published() {
        // splitmix64 (Steele, Lea, Flood), seed 0: its first three outputs.
        let mut x = 0u64;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix64(x)
        };
        assert_eq!(
            [next(), next(), next()],
            [0xe220_a839_7b1d_cdaf, 0x6e78_9e6a_a1b9_65f4, 0x06c4_5d18_8009_454f]
        );
        // FNV-1a 64 of "", "a", "foobar" (the FNV reference test vectors), finished by mix64.
        assert_eq!(hash64(b"", 0), mix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash64(b"a", 0), mix64(0xaf63_dc4c_8601_ec8c));
        assert_eq!(hash64(b"foobar", 0), mix64(0x8594_4171_f739_67e8));
    }

    #[test]
    fn seeds_give_independent_hashes() {
        assert_ne!(hash64(b"198.18.128.10:8080", 0), hash64(b"198.18.128.10:8080", 1));
        assert_ne!(hash64(b"198.18.128.10:8080", 0), hash64(b"198.18.128.11:8080", 0));
        assert_eq!(mix64(0), 0);
    }
}
