//! `DENY_FREE` from userspace: which source slots no denied prefix covers
//! (`skiff_common::lpm::DENY_SLOTS`), kept in step with the deny tries.

use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use skiff_common::lpm::{DENY_SLOTS, LpmKey4, LpmKey6};

/// A denied prefix: its address (host bits clear) and length.
pub type Prefix = (IpAddr, u8);

/// The denied prefixes, how many cover each slot, and the map's words.
pub struct DenyFree {
    prefixes: HashSet<Prefix>,
    covering: Vec<u32>,
    words: Vec<u64>,
    /// The words whose slots' counts changed since [`DenyFree::changes`].
    touched: BTreeSet<u32>,
}

impl DenyFree {
    /// From the tries' prefixes and the words the map holds now.
    pub fn new(prefixes: impl IntoIterator<Item = Prefix>, words: Vec<u64>) -> Self {
        let touched = (0..).zip(&words).map(|(i, _)| i).collect();
        let covering = vec![0; 2 * DENY_SLOTS as usize];
        let mut free = DenyFree { prefixes: HashSet::new(), covering, words, touched };
        for prefix in prefixes {
            free.add(prefix);
        }
        free
    }

    /// Counts a prefix the tries now hold (again: nothing changes).
    pub fn add(&mut self, prefix: Prefix) {
        if self.prefixes.insert(prefix) {
            for s in slots(prefix) {
                self.covering[s as usize] += 1;
                self.touched.insert(s / 64);
            }
        }
    }

    /// Forgets a prefix the tries no longer hold.
    pub fn remove(&mut self, prefix: Prefix) {
        if self.prefixes.remove(&prefix) {
            for s in slots(prefix) {
                self.covering[s as usize] -= 1;
                self.touched.insert(s / 64);
            }
        }
    }

    /// The words that must change for the map to say which slots are free, as
    /// (index, value); taken as written.
    pub fn changes(&mut self) -> Vec<(u32, u64)> {
        let mut changed = Vec::new();
        for i in std::mem::take(&mut self.touched) {
            let covering = &self.covering[i as usize * 64..][..64];
            let want = covering.iter().enumerate().fold(0u64, |w, (bit, &n)| w | u64::from(n == 0) << bit);
            if self.words[i as usize] != want {
                self.words[i as usize] = want;
                changed.push((i, want));
            }
        }
        changed
    }
}

/// `addr/len` with its host bits cleared, if `len` fits the family.
pub fn prefix(addr: IpAddr, len: u8) -> Option<Prefix> {
    Some(match addr {
        IpAddr::V4(a) => (LpmKey4::new(a, len.into())?.addr().into(), len),
        IpAddr::V6(a) => (LpmKey6::new(a, len.into())?.addr().into(), len),
    })
}

/// The slots a valid prefix covers.
fn slots((addr, len): Prefix) -> Box<dyn Iterator<Item = u32>> {
    match addr {
        IpAddr::V4(a) => Box::new(LpmKey4::new(a, len.into()).into_iter().flat_map(|k| k.deny_slots())),
        IpAddr::V6(a) => Box::new(LpmKey6::new(a, len.into()).into_iter().flat_map(|k| k.deny_slots())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_free_while_no_prefix_covers_it() {
        let mut free = DenyFree::new([], vec![0; 2 * DENY_SLOTS as usize / 64]);
        let all = free.changes();
        assert_eq!(all.len(), 2048, "a new map's words all become free");
        assert!(all.iter().all(|&(_, w)| w == u64::MAX));
        let slash8 = ("10.0.0.0".parse().unwrap(), 8);
        let inside = ("10.1.2.0".parse().unwrap(), 24);
        free.add(slash8);
        free.add(inside);
        // 10.0/16 .. 10.255/16: slots 0x0a00..0x0aff, four words.
        assert_eq!(free.changes(), [(40, 0), (41, 0), (42, 0), (43, 0)]);
        free.remove(slash8);
        // 10.1/16 (slot 0x0a01) is still covered by the /24.
        assert_eq!(free.changes(), [(40, !2), (41, u64::MAX), (42, u64::MAX), (43, u64::MAX)]);
        free.remove(slash8);
        free.add(inside);
        assert_eq!(free.changes(), [], "counted once");
        free.remove(inside);
        assert_eq!(free.changes(), [(40, u64::MAX)]);
    }
}
