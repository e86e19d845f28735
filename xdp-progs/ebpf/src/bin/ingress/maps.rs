//! The maps of `skiff_xdp_ingress`, named as in `skiff_common::maps` and pinned by name under
//! the loader's pin folder, so a restarted agent finds them with their state.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, RingBuf, XskMap},
};
use skiff_common::{
    Counter, DropReason, XdpAction,
    config::{HOST_PORT_WORDS, XSK_INTERFACES, XSK_QUEUES_PER_IF, XdpConfig},
    conntrack::{CT_CAPACITY, CachedFlow, CtEntry, CtKey4, CtKey6, FLOW_CACHE_SLOTS, FlowPath},
    endpoint::{EndpointInfo, PodSources},
    identity::Identity,
    lb::{ServiceKey4, ServiceKey6, ServiceValue},
    lpm::{DENY_FREE_WORDS, DenyEntry},
};

#[map]
pub static CONFIG: Array<XdpConfig> = Array::pinned(1, 0);
#[map]
pub static HOST_PORTS: Array<u64> = Array::pinned(2 * HOST_PORT_WORDS, 0);
#[map]
pub static ACTION_COUNTS: PerCpuArray<Counter> = PerCpuArray::pinned(XdpAction::COUNT as u32, 0);
#[map]
pub static DROP_COUNTS: PerCpuArray<Counter> = PerCpuArray::pinned(DropReason::COUNT as u32, 0);
#[map]
pub static DENY_V4: LpmTrie<[u8; 4], DenyEntry> = LpmTrie::pinned(1 << 17, 0);
#[map]
pub static DENY_V6: LpmTrie<[u8; 16], DenyEntry> = LpmTrie::pinned(1 << 17, 0);
#[map]
pub static DENY_FREE: Array<u64> = Array::pinned(DENY_FREE_WORDS, 0);
#[map]
pub static SERVICES_V4: HashMap<ServiceKey4, ServiceValue> = HashMap::pinned(1 << 16, 0);
#[map]
pub static SERVICES_V6: HashMap<ServiceKey6, ServiceValue> = HashMap::pinned(1 << 16, 0);
#[map]
pub static ENDPOINTS_V4: HashMap<[u8; 4], EndpointInfo> = HashMap::pinned(1 << 16, 0);
#[map]
pub static ENDPOINTS_V6: HashMap<[u8; 16], EndpointInfo> = HashMap::pinned(1 << 16, 0);
#[map]
pub static POD_SOURCES: HashMap<u32, PodSources> = HashMap::pinned(1 << 12, 0);
#[map]
pub static NODES_V4: HashMap<[u8; 4], u8> = HashMap::pinned(1 << 14, 0);
#[map]
pub static NODES_V6: HashMap<[u8; 16], u8> = HashMap::pinned(1 << 14, 0);
#[map]
pub static REMOTE_PODS_V4: LpmTrie<[u8; 4], u8> = LpmTrie::pinned(1 << 14, 0);
#[map]
pub static REMOTE_PODS_V6: LpmTrie<[u8; 16], u8> = LpmTrie::pinned(1 << 14, 0);
#[map]
pub static CLUSTER_V4: LpmTrie<[u8; 4], u8> = LpmTrie::pinned(1 << 14, 0);
#[map]
pub static CLUSTER_V6: LpmTrie<[u8; 16], u8> = LpmTrie::pinned(1 << 14, 0);
/// Room for Cilium's default of 512k entries across both families.
#[map]
pub static IPCACHE_V4: LpmTrie<[u8; 4], Identity> = LpmTrie::pinned(1 << 18, 0);
#[map]
pub static IPCACHE_V6: LpmTrie<[u8; 16], Identity> = LpmTrie::pinned(1 << 18, 0);
/// Not an LRU: the workers own their flows and remove them; a full table leaves new flows'
/// directions on the worker path rather than evict a live one. Allocated as flows come.
#[map]
pub static CT_V4: HashMap<CtKey4, CtEntry> = HashMap::pinned(CT_CAPACITY, BPF_F_NO_PREALLOC);
#[map]
pub static CT_V6: HashMap<CtKey6, CtEntry> = HashMap::pinned(CT_CAPACITY, BPF_F_NO_PREALLOC);
/// Memory-mapped: a worker writes a slot in place under its sequence lock, where a map
/// update would copy it under the reader.
#[map]
pub static FLOW_CACHE_V4: Array<CachedFlow<CtKey4>> = Array::pinned(FLOW_CACHE_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static FLOW_CACHE_V6: Array<CachedFlow<CtKey6>> = Array::pinned(FLOW_CACHE_SLOTS, BPF_F_MMAPABLE);
/// Where a cache slot is copied while it is read: room the BPF stack lacks.
#[map]
pub static COPY: PerCpuArray<CtEntry> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static FLOW_COUNTS: PerCpuArray<Counter> = PerCpuArray::pinned(FlowPath::COUNT as u32, 0);
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::pinned(XSK_INTERFACES, 0);
#[map]
pub static NO_WORKER: PerCpuArray<Counter> = PerCpuArray::pinned(1, 0);
#[map]
pub static XSKS: XskMap = XskMap::pinned(XSK_INTERFACES * XSK_QUEUES_PER_IF, 0);
#[map]
pub static IF_SLOTS: HashMap<u32, u32> = HashMap::pinned(XSK_INTERFACES, 0);
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);
