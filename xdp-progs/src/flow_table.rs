//! The XDP program's flow table as the workers write it: each direction in its key's slot of
//! the flow cache (an array the program reads without a call), or, when another direction
//! holds that slot, in the flow table's hash map. Never in both.

use std::{
    path::Path,
    ptr::{self, NonNull},
    sync::atomic::{AtomicU32, Ordering, fence},
};

use aya::maps::{HashMap, MapData, MapError};
use skiff_common::{
    conntrack::{CachedFlow, CtEntry, CtKey, CtKey4, CtKey6, FLOW_CACHE_SLOTS, cache_slot},
    maps,
};

use crate::{Jiffies, XdpError};

/// The XDP program's flow table (each direction of the flows workers track, as it arrives:
/// to the worker, or forwarded at the NIC), opened from its pins: each worker holds its own
/// handle, and writes only its own flows' directions.
pub struct FlowTable {
    v4: Family<CtKey4>,
    v6: Family<CtKey6>,
    clock: Jiffies,
}

/// A key of one family's flow table.
trait Key: aya::Pod + Default + PartialEq {}
impl Key for CtKey4 {}
impl Key for CtKey6 {}

/// One family's flow cache and hash map.
struct Family<K: Key> {
    cache: FlowCache<K>,
    table: HashMap<MapData, K, CtEntry>,
    name: &'static str,
}

impl FlowTable {
    pub fn open(pin_dir: &Path) -> Result<FlowTable, XdpError> {
        Ok(FlowTable {
            v4: Family::open(pin_dir, maps::FLOW_CACHE_V4, maps::CT_V4)?,
            v6: Family::open(pin_dir, maps::FLOW_CACHE_V6, maps::CT_V6)?,
            clock: Jiffies::get()?,
        })
    }

    /// When (CLOCK_MONOTONIC, ns) the XDP program last forwarded a packet of `entry`'s
    /// direction, if it has.
    pub fn seen_ns(&self, entry: &CtEntry) -> Option<u64> {
        (entry.last_seen != 0).then(|| self.clock.monotonic_ns(entry.last_seen))
    }

    /// Sets a direction's entry. Fails when the table is full (its hash map holds
    /// `CT_CAPACITY` and the key's cache slot another's) and the key new.
    pub fn insert(&mut self, key: CtKey, entry: &CtEntry) -> Result<(), XdpError> {
        match key {
            CtKey::V4(k) => self.v4.insert(k, entry),
            CtKey::V6(k) => self.v6.insert(k, entry),
        }
    }

    /// Every entry of both families (a restarted agent's workers adopt the flows).
    pub fn entries(&self) -> Vec<(CtKey, CtEntry)> {
        let v4 = self.v4.entries().map(|(k, e)| (CtKey::V4(k), e));
        let v6 = self.v6.entries().map(|(k, e)| (CtKey::V6(k), e));
        v4.chain(v6).collect()
    }

    /// A direction's entry, with the time and counts the XDP program recorded.
    pub fn get(&self, key: CtKey) -> Option<CtEntry> {
        match key {
            CtKey::V4(k) => self.v4.get(&k),
            CtKey::V6(k) => self.v6.get(&k),
        }
    }

    /// Forgets a direction. A key already gone is not an error.
    pub fn remove(&mut self, key: CtKey) -> Result<(), XdpError> {
        match key {
            CtKey::V4(k) => self.v4.remove(&k),
            CtKey::V6(k) => self.v6.remove(&k),
        }
    }

    /// Frees the cache slots a writer left half written (an agent killed in a write): their
    /// directions are lost, as flows that ended. Only while no worker writes, before adopting.
    pub fn settle(&mut self) -> usize {
        self.v4.cache.settle() + self.v6.cache.settle()
    }
}

impl<K: Key> Family<K> {
    fn open(pin_dir: &Path, cache: &'static str, table: &'static str) -> Result<Family<K>, XdpError> {
        Ok(Family {
            cache: FlowCache::open(pin_dir, cache)?,
            table: crate::pinned(pin_dir, table)?,
            name: table,
        })
    }

    fn insert(&mut self, key: K, entry: &CtEntry) -> Result<(), XdpError> {
        // A direction stays where it is; a new one takes its cache slot if free.
        let in_table = self.cache.get(&key).is_none() && self.table.get(&key, 0).is_ok();
        if !in_table && self.cache.write(&key, entry) {
            return Ok(());
        }
        self.table.insert(key, entry, 0).map_err(XdpError::map(self.name))
    }

    fn get(&self, key: &K) -> Option<CtEntry> {
        self.cache.get(key).or_else(|| self.table.get(key, 0).ok())
    }

    fn remove(&mut self, key: &K) -> Result<(), XdpError> {
        if self.cache.clear(key) {
            return Ok(());
        }
        match self.table.remove(key) {
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(XdpError::map(self.name)),
        }
    }

    fn entries(&self) -> impl Iterator<Item = (K, CtEntry)> {
        self.cache.entries().chain(self.table.iter().filter_map(Result::ok))
    }
}

/// A flow cache, memory-mapped: its slots written in place under their sequence locks
/// ([`CachedFlow`]).
struct FlowCache<K> {
    slots: NonNull<CachedFlow<K>>,
    len: usize,
}

// SAFETY: the mapping is shared memory whose every access goes through the sequence lock.
unsafe impl<K: Send> Send for FlowCache<K> {}

/// Reads of a slot another writes that may be retried before giving up (a writer holds a
/// slot for a few hundred nanoseconds).
const READ_TRIES: usize = 1000;

/// Waits a little for a slot another writer holds: spins, then yields (to a writer that
/// lost its CPU while it held the slot).
fn back_off(tries: &mut usize) {
    if *tries < 100 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    *tries += 1;
}

impl<K: Key> FlowCache<K> {
    fn open(pin_dir: &Path, name: &'static str) -> Result<FlowCache<K>, XdpError> {
        use std::os::fd::{AsFd, AsRawFd};
        let data = MapData::from_pin(pin_dir.join(name)).map_err(XdpError::map(name))?;
        let len = FLOW_CACHE_SLOTS as usize * size_of::<CachedFlow<K>>();
        // SAFETY: a shared mapping of the map's own memory (BPF_F_MMAPABLE), its size; the
        // mapping outlives the descriptor.
        let at = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            let source = std::io::Error::last_os_error();
            return Err(XdpError::Io { what: format!("mapping {name}"), source });
        }
        let slots = NonNull::new(at.cast()).ok_or(XdpError::Invalid(format!("{name} mapped at 0")))?;
        Ok(FlowCache { slots, len })
    }

    fn slot(&self, index: u32) -> *mut CachedFlow<K> {
        // SAFETY: the remainder is below FLOW_CACHE_SLOTS, the mapping's length in slots.
        unsafe { self.slots.as_ptr().add(index as usize % FLOW_CACHE_SLOTS as usize) }
    }

    /// The slot's sequence lock.
    fn seq(&self, slot: *mut CachedFlow<K>) -> &AtomicU32 {
        // SAFETY: an aligned u32 of the mapping (a slot from `slot`), which lives as long as
        // `self`, accessed only atomically here (and by the kernel's volatile reads).
        unsafe { AtomicU32::from_ptr(&raw mut (*slot).seq) }
    }

    /// A consistent copy of the slot: `None` after `READ_TRIES` writes seen under way.
    fn read(&self, slot: *mut CachedFlow<K>) -> Option<(K, CtEntry)> {
        let seq = self.seq(slot);
        let mut tries = 0;
        while tries < READ_TRIES {
            let before = seq.load(Ordering::Acquire);
            // SAFETY: the slot is in the mapping; a torn read is discarded by the check.
            let (key, entry) = unsafe {
                (ptr::read_volatile(&raw const (*slot).key), ptr::read_volatile(&raw const (*slot).entry))
            };
            fence(Ordering::Acquire);
            if before & 1 == 0 && seq.load(Ordering::Relaxed) == before {
                return Some((key, entry));
            }
            back_off(&mut tries);
        }
        None
    }

    fn get(&self, key: &K) -> Option<CtEntry> {
        self.read(self.slot(cache_slot(key))).and_then(|(k, e)| (k == *key).then_some(e))
    }

    /// Writes `key`'s entry into its slot if the slot is free or `key`'s; `false` if another
    /// direction holds it.
    fn write(&mut self, key: &K, entry: &CtEntry) -> bool {
        self.locked(key, |slot, held| {
            if held != *key && held != K::default() {
                return false;
            }
            // SAFETY: the slot is in the mapping and locked by us.
            unsafe { fill(slot, key, entry) };
            true
        })
    }

    /// Frees `key`'s slot if `key` holds it.
    fn clear(&mut self, key: &K) -> bool {
        self.locked(key, |slot, held| {
            if held != *key {
                return false;
            }
            // SAFETY: as in `write`.
            unsafe { fill(slot, &K::default(), &CtEntry::default()) };
            true
        })
    }

    /// Runs `f` on `key`'s slot and the key it holds, the slot's sequence odd meanwhile. Waits
    /// for another worker writing the slot: a worker holds it only while it writes, and one
    /// killed then took the agent with it (the next one settles the slot before writing).
    fn locked(&mut self, key: &K, f: impl FnOnce(*mut CachedFlow<K>, K) -> bool) -> bool {
        let slot = self.slot(cache_slot(key));
        let seq = self.seq(slot);
        let mut tries = 0;
        let before = loop {
            let now = seq.load(Ordering::Relaxed);
            if now & 1 == 0
                && seq.compare_exchange_weak(now, now + 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                break now;
            }
            back_off(&mut tries);
        };
        // The odd sequence is visible before anything written under it.
        fence(Ordering::Release);
        // SAFETY: the slot is in the mapping and locked by us.
        let held = unsafe { ptr::read_volatile(&raw const (*slot).key) };
        let done = f(slot, held);
        seq.store(before.wrapping_add(2), Ordering::Release);
        done
    }

    /// Every direction the cache holds.
    fn entries(&self) -> impl Iterator<Item = (K, CtEntry)> {
        (0..FLOW_CACHE_SLOTS).filter_map(|i| self.read(self.slot(i))).filter(|(k, _)| *k != K::default())
    }

    /// Frees every slot left locked; returns how many.
    fn settle(&mut self) -> usize {
        let mut freed = 0;
        for i in 0..FLOW_CACHE_SLOTS {
            let slot = self.slot(i);
            let seq = self.seq(slot);
            let now = seq.load(Ordering::Acquire);
            if now & 1 != 0 {
                // SAFETY: the slot is in the mapping; no worker writes (the caller's promise).
                unsafe { fill(slot, &K::default(), &CtEntry::default()) };
                seq.store(now.wrapping_add(1), Ordering::Release);
                freed += 1;
            }
        }
        freed
    }
}

/// Writes `key` and `entry` into `slot` (the default key and entry: frees it).
///
/// # Safety
/// `slot` is in the mapping, and its writer holds it (its sequence odd, or no worker runs).
unsafe fn fill<K: Key>(slot: *mut CachedFlow<K>, key: &K, entry: &CtEntry) {
    // SAFETY: the caller's.
    unsafe {
        ptr::write_volatile(&raw mut (*slot).key, *key);
        ptr::write_volatile(&raw mut (*slot).entry, *entry);
    }
}

impl<K> Drop for FlowCache<K> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len) };
    }
}
