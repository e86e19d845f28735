//! Names of the programs and maps in the eBPF object, and where the maps are pinned.

/// The pin root as a literal, so `concat!` can build each map's pin path from it.
macro_rules! pin_root {
    () => {
        "/sys/fs/bpf/skiff"
    };
}

/// The folder where skiff pins its maps (bpffs): pass it to aya's
/// `EbpfLoader::map_pin_path`, which pins a `PinningType::ByName` map at `PIN_ROOT/NAME`. The
/// full paths are in [`pins`].
pub const PIN_ROOT: &str = pin_root!();

/// Names of the programs in the eBPF object.
pub mod programs {
    /// Counts every frame per CPU and passes it on.
    pub const COUNT: &str = "skiff_xdp_count";
    /// The ingress datapath: prefilter, tunnel decap, redirect to workers, pass.
    pub const INGRESS: &str = "skiff_xdp_ingress";
    /// The lab traffic generator (run with BPF_PROG_RUN and live frames).
    pub const TRAFFICGEN: &str = "skiff_trafficgen";
    /// Every frame out of another interface, untouched (the benchmarks' ceiling).
    pub const REDIRECT: &str = "skiff_xdp_redirect";
    /// Writes the kernel's tick count into the frame (run by `BPF_PROG_TEST_RUN`): the clock
    /// of the flow table's last-seen times.
    pub const CLOCK: &str = "skiff_xdp_clock";
    /// Socket-LB, one program per cgroup hook: a connect, or an unconnected datagram, to a
    /// service goes to a backend …
    pub const CONNECT4: &str = "skiff_connect4";
    pub const CONNECT6: &str = "skiff_connect6";
    pub const SENDMSG4: &str = "skiff_sendmsg4";
    pub const SENDMSG6: &str = "skiff_sendmsg6";
    /// … and its replies, and `getpeername`, show the service's address.
    pub const RECVMSG4: &str = "skiff_recvmsg4";
    pub const RECVMSG6: &str = "skiff_recvmsg6";
    pub const GETPEERNAME4: &str = "skiff_getpeer4";
    pub const GETPEERNAME6: &str = "skiff_getpeer6";
}

/// Declares each map's name (the same as the constant's, which is the name of the `static` in
/// `skiff-xdp-ebpf`) and its pin path.
macro_rules! map_names {
    ($($(#[doc = $doc:literal])+ $name:ident;)+) => {
        /// Names of the maps in the eBPF object: each is the name of the `static` in
        /// `skiff-xdp-ebpf`, which is how the loader finds it.
        pub mod maps {
            $($(#[doc = $doc])+ pub const $name: &str = stringify!($name);)+
        }

        /// Pin path of each map: [`PIN_ROOT`]`/NAME`.
        pub mod pins {
            $(
                #[doc = concat!(
                    "Pin path of [`", stringify!($name), "`](crate::maps::", stringify!($name), ")."
                )]
                pub const $name: &str = concat!(pin_root!(), "/", stringify!($name));
            )+
        }

        // The kernel keeps 15 bytes of a map name (BPF_OBJ_NAME_LEN with the NUL); a longer one
        // would show cut short in bpftool.
        $(const _: () = assert!(maps::$name.len() <= 15);)+
    };
}

map_names! {
    /// `PerCpuArray<Counter>` with one slot: what `skiff_xdp_count` saw.
    COUNT;
    /// `DevMap` with one slot: where `skiff_xdp_redirect` sends every frame.
    REDIRECT_TO;
    /// `PerCpuArray<Counter>` indexed by [`XdpAction`](crate::XdpAction) code.
    ACTION_COUNTS;
    /// `PerCpuArray<Counter>` indexed by [`DropReason`](crate::DropReason) code.
    DROP_COUNTS;
    /// `LpmTrie<[u8; 4], DenyEntry>` ([`LpmKey4`](crate::lpm::LpmKey4) layout): source
    /// prefixes dropped on arrival.
    DENY_V4;
    /// `LpmTrie<[u8; 16], DenyEntry>` ([`LpmKey6`](crate::lpm::LpmKey6) layout): source
    /// prefixes dropped on arrival.
    DENY_V6;
    /// `Array<u64>` of [`DENY_FREE_WORDS`](crate::lpm::DENY_FREE_WORDS), a bit per source slot
    /// ([`deny_slot_v4`](crate::lpm::deny_slot_v4), `_v6`): set while no denied prefix covers
    /// the slot, whose sources then skip the deny tries.
    DENY_FREE;
    /// `HashMap<ServiceKey4, ServiceValue>`: IPv4 service frontends.
    SERVICES_V4;
    /// `HashMap<ServiceKey6, ServiceValue>`: IPv6 service frontends.
    SERVICES_V6;
    /// `HashMap<CtKey4, CtEntry>`: the flow table, each direction of the tracked IPv4 flows
    /// as it arrives (to the worker, or forwarded at the NIC), but those in `FLOW_CACHE_V4`.
    CT_V4;
    /// `HashMap<CtKey6, CtEntry>`: as `CT_V4`, for IPv6.
    CT_V6;
    /// `Array<CachedFlow<CtKey4>>` of [`FLOW_CACHE_SLOTS`](crate::conntrack::FLOW_CACHE_SLOTS),
    /// memory-mapped by the workers: directions of the flow table, each in its key's slot.
    FLOW_CACHE_V4;
    /// `Array<CachedFlow<CtKey6>>`: as `FLOW_CACHE_V4`, for IPv6.
    FLOW_CACHE_V6;
    /// `PerCpuArray<Counter>` indexed by [`FlowPath`](crate::conntrack::FlowPath) code.
    FLOW_COUNTS;
    /// `DevMapHash` keyed by interface index: the interfaces that take frames the XDP program
    /// forwards itself.
    TX_PORTS;
    /// `XskMap` indexed by `slot * XSK_QUEUES_PER_IF + queue`: the AF_XDP socket of each
    /// (interface, receive queue)'s worker.
    XSKS;
    /// `HashMap<u32, u32>`: interface index → its slot in `XSKS`.
    IF_SLOTS;
    /// `HashMap<[u8; 4], EndpointInfo>`: local IPv4 pods whose traffic goes to a worker.
    ENDPOINTS_V4;
    /// `HashMap<[u8; 16], EndpointInfo>`: local IPv6 pods whose traffic goes to a worker.
    ENDPOINTS_V6;
    /// `HashMap<u32, PodSources>`: a pod veth's interface index → the addresses its pod may
    /// send from.
    POD_SOURCES;
    /// `Array<XdpConfig>` with one slot: the ingress program's settings.
    CONFIG;
    /// `Array<u64>`, [`HOST_PORT_WORDS`](crate::config::HOST_PORT_WORDS) per protocol
    /// ([`host_port_slot`](crate::config::host_port_slot)), a bit per port: the ports of the
    /// node's own addresses that need more than the kernel (NodePorts, frontends on them,
    /// masquerading's, the tunnel's).
    HOST_PORTS;
    /// `HashMap<[u8; 4], u8>`: the other nodes' IPv4 underlay addresses (tunnel frames are
    /// decapsulated only from them).
    NODES_V4;
    /// `HashMap<[u8; 16], u8>`: the other nodes' IPv6 underlay addresses.
    NODES_V6;
    /// `LpmTrie<[u8; 4], u8>`: the other nodes' IPv4 pod CIDRs, whose frames a worker
    /// encapsulates.
    REMOTE_PODS_V4;
    /// `LpmTrie<[u8; 16], u8>`: the other nodes' IPv6 pod CIDRs.
    REMOTE_PODS_V6;
    /// `LpmTrie<[u8; 4], Identity>`: the ipcache, every IPv4 prefix's security identity (pods
    /// here and on other nodes, nodes, CIDR identities; world when none): a tunnel frame is
    /// decapsulated only when it carries its inner source's identity.
    IPCACHE_V4;
    /// `LpmTrie<[u8; 16], Identity>`: the ipcache of IPv6 prefixes.
    IPCACHE_V6;
    /// `LpmTrie<[u8; 4], u8>`: the cluster's IPv4 prefixes (pod CIDRs, node addresses, native
    /// routing CIDRs): a pod's traffic elsewhere is masqueraded.
    CLUSTER_V4;
    /// `LpmTrie<[u8; 16], u8>`: the cluster's IPv6 prefixes.
    CLUSTER_V6;
    /// `PerCpuArray<Counter>` with one slot: frames that needed a worker but found no AF_XDP
    /// socket on their queue, and went to the kernel instead.
    NO_WORKER;
    /// `RingBuf` of [`XdpEvent`](crate::event::XdpEvent).
    EVENTS;
    /// `Array<SockConfig>` with one slot: the socket programs' settings.
    SOCK_CONFIG;
    /// `PerCpuArray<u64>` indexed by [`SockCounter`](crate::sock::SockCounter) code.
    SOCK_COUNTS;
    /// `HashMap<SockKey4, SockService>`: IPv4 frontends as sockets name them.
    SOCK_SVC_V4;
    /// `HashMap<SockKey6, SockService>`: IPv6 frontends as sockets name them.
    SOCK_SVC_V6;
    /// `HashMap<SlotKey, BackendId>`: each service's slots.
    SOCK_SLOTS;
    /// `HashMap<SlotKey, u8>`: (service, backend id) for each backend a service's new
    /// connections may take (an affinity holds only while its backend is one).
    SOCK_MEMBERS;
    /// `HashMap<BackendId, SockBackend>`: where each backend is.
    SOCK_BACKENDS;
    /// `LruHashMap<AffinityKey, AffinityValue>`: session affinity of network namespaces.
    SOCK_AFFINITY;
    /// `LruHashMap<ReverseKey4, SockKey4>`: the service each translated IPv4 socket
    /// connected to.
    SOCK_REV_V4;
    /// `LruHashMap<ReverseKey6, SockKey6>`: as `SOCK_REV_V4`, for IPv6.
    SOCK_REV_V6;
    /// `HashMap<[u8; 4], u8>`: every node's IPv4 addresses, where NodePorts answer.
    SOCK_NODES_V4;
    /// `HashMap<[u8; 16], u8>`: every node's IPv6 addresses.
    SOCK_NODES_V6;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_pins() {
        assert_eq!(maps::COUNT, "COUNT");
        assert_eq!(maps::CT_V4, "CT_V4");
        assert_eq!(pins::CT_V4, "/sys/fs/bpf/skiff/CT_V4");
        assert_eq!(pins::EVENTS.strip_prefix(PIN_ROOT), Some("/EVENTS"));
    }
}
