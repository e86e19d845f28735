//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Each backend walks its own permutation of the table's slots (offset and skip from two
//! hashes of its address and port) and takes the next free slot on its turn, until the table
//! is full. A backend of weight `w` takes `w` turns every `max weight` rounds, so its share of
//! slots follows its weight. Removing a backend frees only its slots, and the others keep
//! nearly all of theirs: few flows move (`disruption` in the tests).

use std::net::IpAddr;

use skiff_common::lb::{BackendId, MAGLEV_TABLE_SIZE_MAX, MAGLEV_TABLE_SIZES};

use super::Backend;
use crate::hash::hash64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not one of the allowed primes {MAGLEV_TABLE_SIZES:?}")]
    TableSize(u32),
    #[error("{0} backends: a Maglev table holds at most 65536")]
    TooManyBackends(usize),
}

/// A filled Maglev table: slot → backend. Slots hold an index into `backends` (2 bytes, not
/// the 4 of an id): 32 KiB a table at M = 16381, which halves the memory of 10k services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    slots: Vec<u16>,
    backends: Vec<BackendId>,
}

const SEED_OFFSET: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SEED_SKIP: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

impl Maglev {
    /// Fills a table of `size` slots (a prime from `MAGLEV_TABLE_SIZES`). With no backend of
    /// non-zero weight the table is empty and [`Maglev::pick`] returns `None`.
    pub fn build<'a>(
        backends: impl IntoIterator<Item = &'a Backend>,
        size: u32,
    ) -> Result<Maglev, MaglevError> {
        if !MAGLEV_TABLE_SIZES.contains(&size) || size > MAGLEV_TABLE_SIZE_MAX {
            return Err(MaglevError::TableSize(size));
        }
        let mut active: Vec<(Backend, [u8; 18])> =
            backends.into_iter().filter(|b| b.weight > 0).map(|b| (*b, key(b))).collect();
        if active.is_empty() {
            return Ok(Maglev { slots: Vec::new(), backends: Vec::new() });
        }
        if active.len() > usize::from(u16::MAX) + 1 {
            return Err(MaglevError::TooManyBackends(active.len()));
        }
        // The table depends only on the set of backends, not on the order they came in.
        active.sort_by_key(|(_, k)| *k);
        let m = u64::from(size);
        // (position, skip): a backend's permutation is offset, offset + skip, … (mod m),
        // walked by adding, not by a division per probe.
        let mut walk: Vec<(u64, u64)> = active
            .iter()
            .map(|(_, k)| (hash64(k, SEED_OFFSET) % m, hash64(k, SEED_SKIP) % (m - 1) + 1))
            .collect();
        let max_weight = active.iter().map(|(b, _)| b.weight).max().unwrap_or(1);
        let mut slots = vec![0u16; size as usize];
        let mut taken = vec![0u64; slots.len().div_ceil(64)];
        let mut filled = 0u64;
        'fill: for round in 0u64.. {
            for (i, ((backend, _), (position, skip))) in active.iter().zip(walk.iter_mut()).enumerate() {
                if round % u64::from(max_weight) >= u64::from(backend.weight) {
                    continue;
                }
                // The backend's next preferred slot that is still free (there is one: the
                // table is not full, and a permutation visits every slot).
                loop {
                    let slot = index(*position);
                    *position += *skip;
                    if *position >= m {
                        *position -= m;
                    }
                    // A bitmap of taken slots (2 KB at M = 16381) stays in L1 while the
                    // probes jump around the table.
                    let (word, bit) = (slot / 64, 1u64 << (slot % 64));
                    if taken[word] & bit == 0 {
                        taken[word] |= bit;
                        // i < 65536, checked above.
                        slots[slot] = u16::try_from(i).unwrap_or(u16::MAX);
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
        Ok(Maglev { slots, backends: active.iter().map(|(b, _)| b.id).collect() })
    }

    /// The backend for a flow hash; `None` when the table is empty.
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> Option<BackendId> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = self.slots[index(flow_hash % self.slots.len() as u64)];
        self.backends.get(usize::from(slot)).copied()
    }

    /// The backend of every slot (the XDP `MAGLEV` map's layout); none when empty.
    pub fn slots(&self) -> impl ExactSizeIterator<Item = BackendId> + '_ {
        self.slots.iter().map(|&i| self.backends[usize::from(i)])
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// A value below the table size (at most 131 071) as an index: it fits any `usize`.
#[allow(clippy::cast_possible_truncation)]
const fn index(below_table_size: u64) -> usize {
    below_table_size as usize
}

/// What a backend's permutation hashes: its address (IPv4 mapped into 16 bytes) and port.
fn key(b: &Backend) -> [u8; 18] {
    let mut k = [0u8; 18];
    let addr = match b.addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    k[..16].copy_from_slice(&addr);
    k[16..].copy_from_slice(&b.port.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use skiff_common::lb::MAGLEV_TABLE_SIZE;

    use super::*;

    fn backends(n: u32) -> Vec<Backend> {
        (1..=n)
            .map(|i| Backend {
                id: BackendId(i),
                addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 9)) + i).into(),
                port: 8080,
                weight: 1,
                local: true,
            })
            .collect()
    }

    fn share(table: &Maglev, id: BackendId) -> f64 {
        table.slots().filter(|s| *s == id).count() as f64 / table.slots().len() as f64
    }

    /// A table depends on nothing but its backends and size: every node and every version
    /// builds this one (pinned slot for slot), so a flow lands on the same backend whichever
    /// node balances it.
    #[test]
    fn the_same_backends_give_the_same_table_everywhere() {
        let table = Maglev::build(&backends(3), 251).unwrap();
        let first: Vec<u32> = table.slots().take(24).map(|id| id.0).collect();
        assert_eq!(first, GOLDEN_251_FIRST_24);
        let counts: Vec<usize> = (1..=3).map(|i| table.slots().filter(|s| s.0 == i).count()).collect();
        assert_eq!(counts, GOLDEN_251_COUNTS);
    }

    const GOLDEN_251_FIRST_24: [u32; 24] =
        [2, 2, 1, 3, 3, 3, 3, 2, 2, 2, 3, 3, 3, 3, 3, 2, 3, 3, 1, 1, 1, 1, 1, 2];
    const GOLDEN_251_COUNTS: [usize; 3] = [84, 84, 83];

    #[test]
    fn fills_every_slot_evenly() {
        let table = Maglev::build(&backends(10), MAGLEV_TABLE_SIZE).unwrap();
        assert!(table.slots().all(|s| s != BackendId::NONE));
        for i in 1..=10 {
            let s = share(&table, BackendId(i));
            assert!((s - 0.1).abs() < 0.01, "backend {i} has {s:.4} of the table");
        }
    }

    #[test]
    fn weights_set_the_share() {
        let mut b = backends(2);
        b[1].weight = 3;
        let table = Maglev::build(&b, MAGLEV_TABLE_SIZE).unwrap();
        assert!((share(&table, BackendId(1)) - 0.25).abs() < 0.01);
        assert!((share(&table, BackendId(2)) - 0.75).abs() < 0.01);
        b[0].weight = 0;
        assert_eq!(share(&Maglev::build(&b, MAGLEV_TABLE_SIZE).unwrap(), BackendId(2)), 1.0);
    }

    #[test]
    fn the_order_of_backends_does_not_matter() {
        let b = backends(7);
        let mut reversed = b.clone();
        reversed.reverse();
        assert_eq!(Maglev::build(&b, 251).unwrap(), Maglev::build(&reversed, 251).unwrap());
    }

    /// Removing one of 10 backends moves at most 1.2 × the ideal 10% of 10 000 flows.
    #[test]
    fn removing_a_backend_disrupts_little() {
        let all = backends(10);
        let before = Maglev::build(&all, MAGLEV_TABLE_SIZE).unwrap();
        let after = Maglev::build(&[&all[..3], &all[4..]].concat(), MAGLEV_TABLE_SIZE).unwrap();
        let flows = 10_000u64;
        let moved: Vec<u64> = (0..flows)
            .map(|f| hash64(&f.to_le_bytes(), 7))
            .filter(|h| before.pick(*h) != after.pick(*h))
            .collect();
        let ideal = flows as f64 / 10.0;
        assert!(moved.len() as f64 <= 1.2 * ideal, "{} of {flows} flows moved; ideal {ideal}", moved.len());
        // Nearly all that moved were on the removed backend.
        let collateral = moved.iter().filter(|h| before.pick(**h) != Some(BackendId(4))).count();
        assert!(collateral as f64 <= 0.02 * flows as f64, "{collateral} flows of other backends moved");
    }

    #[test]
    fn sizes_must_be_allowed_primes_and_empty_is_empty() {
        assert_eq!(Maglev::build(&backends(2), 1000), Err(MaglevError::TableSize(1000)));
        assert_eq!(Maglev::build(&[], MAGLEV_TABLE_SIZE).unwrap().pick(42), None);
        assert!(Maglev::build(&backends(3), MAGLEV_TABLE_SIZE_MAX).is_ok());
    }
}
