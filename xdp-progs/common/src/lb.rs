//! Service load balancing: frontends (service IP, port, protocol), backends, and the Maglev
//! tables that pick a backend for each flow.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::addr;

code_enum! {
    /// Which clients a service entry answers, as in Cilium's two-scope lookup: with a `Local`
    /// traffic policy, clients outside and inside the cluster see different backends.
    pub enum ServiceScope: u8, fn from_u8 {
        External = 0, "external", "Clients outside the cluster; externalTrafficPolicy applies.";
        Internal = 1, "internal", "Pods and nodes of the cluster; internalTrafficPolicy applies.";
    }
}

/// An IPv4 service frontend: the key of [`SERVICES_V4`](crate::maps::SERVICES_V4). `vip` and
/// `dport` are network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceKey4 {
    pub vip: [u8; 4],
    pub dport: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// A [`ServiceScope`] code.
    pub scope: u8,
}
const _: () = assert!(size_of::<ServiceKey4>() == 8 && align_of::<ServiceKey4>() == 2);

/// An IPv6 service frontend: the key of [`SERVICES_V6`](crate::maps::SERVICES_V6), laid out as
/// [`ServiceKey4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceKey6 {
    pub vip: [u8; 16],
    pub dport: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// A [`ServiceScope`] code.
    pub scope: u8,
}
const _: () = assert!(size_of::<ServiceKey6>() == 20 && align_of::<ServiceKey6>() == 2);

impl ServiceKey4 {
    /// The key for `vip:port` (`port` in host order).
    pub const fn new(vip: Ipv4Addr, port: u16, proto: u8, scope: ServiceScope) -> Self {
        ServiceKey4 { vip: vip.octets(), dport: port.to_be(), proto, scope: scope.code() }
    }

    /// The port, in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

impl ServiceKey6 {
    /// The key for `[vip]:port` (`port` in host order).
    pub const fn new(vip: Ipv6Addr, port: u16, proto: u8, scope: ServiceScope) -> Self {
        ServiceKey6 { vip: vip.octets(), dport: port.to_be(), proto, scope: scope.code() }
    }

    /// The port, in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

/// What a service frontend leads to: the value of `SERVICES_V4` and `SERVICES_V6` (host byte
/// order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceValue {
    /// Ready backends; 0 means the service drops with `ServiceWithoutBackends`.
    pub backend_count: u16,
    /// `ServiceValue::CLUSTER_IP` and the other `ServiceValue` flag constants.
    pub flags: u16,
    /// Identifies the frontend in conntrack entries, to restore it in replies.
    pub rev_nat_index: u16,
    pub _pad: [u8; 2],
    /// Session affinity timeout in seconds (with `SESSION_AFFINITY`).
    pub affinity_timeout_s: u32,
    /// This service's table in [`MAGLEV`](crate::maps::MAGLEV): a flow with hash `h` uses slot
    /// `maglev_table * table_size + h % table_size`, as Katran lays out its rings.
    pub maglev_table: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 16 && align_of::<ServiceValue>() == 4);

impl ServiceValue {
    /// The frontend is a ClusterIP.
    pub const CLUSTER_IP: u16 = 1 << 0;
    /// The frontend is a NodePort on a node address.
    pub const NODE_PORT: u16 = 1 << 1;
    /// The frontend is a LoadBalancer ingress IP.
    pub const LOAD_BALANCER: u16 = 1 << 2;
    /// The frontend is one of the service's externalIPs.
    pub const EXTERNAL_IP: u16 = 1 << 3;
    /// sessionAffinity ClientIP: a client keeps its backend for `affinity_timeout_s`.
    pub const SESSION_AFFINITY: u16 = 1 << 4;
    /// externalTrafficPolicy Local: only this node's backends serve the external scope.
    pub const EXT_LOCAL: u16 = 1 << 5;
    /// internalTrafficPolicy Local: only this node's backends serve the internal scope.
    pub const INT_LOCAL: u16 = 1 << 6;
    /// An internal-scope entry exists too: clients in the cluster look that one up.
    pub const TWO_SCOPES: u16 = 1 << 7;
}

/// Identifies a backend: the key of [`BACKENDS`](crate::maps::BACKENDS) (host byte order).
/// 0 means no backend, such as an unfilled Maglev slot.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BackendId(pub u32);
const _: () = assert!(size_of::<BackendId>() == 4 && align_of::<BackendId>() == 4);

impl BackendId {
    /// No backend.
    pub const NONE: BackendId = BackendId(0);
}

code_enum! {
    /// Whether a backend takes flows. Codes are Cilium's backend states.
    pub enum BackendState: u8, fn from_u8 {
        Active = 0, "active", "Takes new flows.";
        Terminating = 1, "terminating", "Keeps its flows but takes no new ones.";
        Quarantined = 2, "quarantined", "Failed health checks; takes no new flows.";
    }
}

/// A backend of a service, for both families: the value of `BACKENDS`. `addr` and `port` are
/// network byte order (IPv4 in the first 4 bytes, as in [`crate::addr`]); the rest host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Backend {
    pub addr: [u8; 16],
    pub port: u16,
    /// Relative share of the Maglev table.
    pub weight: u16,
    /// An [`addr::Family`] code.
    pub family: u8,
    /// A [`BackendState`] code.
    pub state: u8,
    /// `Backend::NODE_LOCAL`.
    pub flags: u8,
    pub _pad: [u8; 1],
}
const _: () = assert!(size_of::<Backend>() == 24 && align_of::<Backend>() == 2);

impl Backend {
    /// The backend runs on this node (for the `Local` traffic policies).
    pub const NODE_LOCAL: u8 = 1 << 0;

    /// An active backend at `addr:port` (`port` in host order) with weight 1 and no flags.
    pub const fn new(addr: IpAddr, port: u16) -> Self {
        let (family, addr) = addr::encode(addr);
        Backend {
            addr,
            port: port.to_be(),
            weight: 1,
            family: family.code(),
            state: BackendState::Active.code(),
            flags: 0,
            _pad: [0],
        }
    }

    /// The address; `None` if the family code is unknown.
    pub fn ip(&self) -> Option<IpAddr> {
        addr::decode(self.family, self.addr)
    }

    /// The port, in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port)
    }

    /// The state; `None` for a code this version does not know.
    pub const fn state(&self) -> Option<BackendState> {
        BackendState::from_u8(self.state)
    }
}

/// One slot of a Maglev table: the value of [`MAGLEV`](crate::maps::MAGLEV).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct MaglevSlot {
    pub backend_id: BackendId,
}
const _: () = assert!(size_of::<MaglevSlot>() == 4 && align_of::<MaglevSlot>() == 4);

/// The table sizes Maglev accepts, as Cilium's `--bpf-lb-maglev-table-size`: primes, so that
/// every backend's permutation visits every slot.
pub const MAGLEV_TABLE_SIZES: [u32; 10] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];
/// Slots per Maglev table unless configured. Maglev balances well with at least 100 slots per
/// backend, so this suits services of up to about 160 backends.
pub const MAGLEV_TABLE_SIZE: u32 = 16381;
/// The largest Maglev table.
pub const MAGLEV_TABLE_SIZE_MAX: u32 = 131071;

pod!(ServiceKey4, ServiceKey6, ServiceValue, BackendId, Backend, MaglevSlot);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums() {
        ServiceScope::assert_well_formed();
        BackendState::assert_well_formed();
        assert_eq!((ServiceScope::External.code(), ServiceScope::Internal.code()), (0, 1));
        assert_eq!(BackendState::Quarantined.code(), 2);
    }

    #[test]
    fn service_keys_hold_network_order() {
        let key = ServiceKey4::new(Ipv4Addr::new(198, 18, 0, 10), 8080, 6, ServiceScope::Internal);
        assert_eq!(key.vip, [198, 18, 0, 10]);
        assert_eq!(key.dport.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!((key.port(), key.scope), (8080, 1));
        let key = ServiceKey6::new("fd00::10".parse().unwrap(), 443, 17, ServiceScope::External);
        assert_eq!((key.vip[0], key.vip[15], key.dport.to_ne_bytes()), (0xfd, 0x10, [1, 0xbb]));
        assert_eq!(key.port(), 443);
    }

    #[test]
    fn backend_round_trip() {
        for ip in ["198.18.1.2".parse().unwrap(), "fd00::2".parse().unwrap()] {
            let backend = Backend::new(ip, 80);
            assert_eq!((backend.ip(), backend.port()), (Some(ip), 80));
            assert_eq!(backend.port.to_ne_bytes(), [0, 80]);
            assert_eq!(backend.state(), Some(BackendState::Active));
        }
    }

    #[test]
    fn maglev_sizes_are_prime() {
        let is_prime = |n: u32| n > 1 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
        assert!(MAGLEV_TABLE_SIZES.iter().all(|n| is_prime(*n)));
        assert!(MAGLEV_TABLE_SIZES.is_sorted());
        assert!(MAGLEV_TABLE_SIZES.contains(&MAGLEV_TABLE_SIZE));
        assert_eq!(MAGLEV_TABLE_SIZES.last(), Some(&MAGLEV_TABLE_SIZE_MAX));
    }
}
