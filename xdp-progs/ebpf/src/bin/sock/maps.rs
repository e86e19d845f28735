//! The maps of the socket programs, named as in `skiff_common::maps` and pinned by name under
//! the loader's pin folder: a restarted agent finds the affinities and the translated
//! sockets' services where it left them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use skiff_common::{
    lb::BackendId,
    sock::{
        AffinityKey, AffinityValue, ReverseKey4, ReverseKey6, SlotKey, SockBackend, SockConfig, SockCounter,
        SockKey4, SockKey6, SockService,
    },
};

#[map]
pub static SOCK_CONFIG: Array<SockConfig> = Array::pinned(1, 0);
#[map]
pub static SOCK_COUNTS: PerCpuArray<u64> = PerCpuArray::pinned(SockCounter::COUNT as u32, 0);
#[map]
pub static SOCK_SVC_V4: HashMap<SockKey4, SockService> = HashMap::pinned(1 << 16, 0);
#[map]
pub static SOCK_SVC_V6: HashMap<SockKey6, SockService> = HashMap::pinned(1 << 16, 0);
#[map]
pub static SOCK_SLOTS: HashMap<SlotKey, BackendId> = HashMap::pinned(1 << 18, 0);
#[map]
pub static SOCK_MEMBERS: HashMap<SlotKey, u8> = HashMap::pinned(1 << 18, 0);
#[map]
pub static SOCK_BACKENDS: HashMap<BackendId, SockBackend> = HashMap::pinned(1 << 16, 0);
#[map]
pub static SOCK_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(1 << 16, 0);
#[map]
pub static SOCK_REV_V4: LruHashMap<ReverseKey4, SockKey4> = LruHashMap::pinned(1 << 18, 0);
#[map]
pub static SOCK_REV_V6: LruHashMap<ReverseKey6, SockKey6> = LruHashMap::pinned(1 << 18, 0);
#[map]
pub static SOCK_NODES_V4: HashMap<[u8; 4], u8> = HashMap::pinned(1 << 14, 0);
#[map]
pub static SOCK_NODES_V6: HashMap<[u8; 16], u8> = HashMap::pinned(1 << 14, 0);
