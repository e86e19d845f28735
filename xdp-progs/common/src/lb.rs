//! Service load balancing: frontends (service IP, port, protocol) and how each balances its
//! backends: the XDP program's service maps, and the kinds, traffic policies and algorithms
//! that the engine, the local API and the control plane share.

use core::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

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

/// How a frontend exposes its service (Kubernetes' names). Traffic to a ClusterIP follows
/// the service's internalTrafficPolicy; traffic from outside the cluster to the others follows
/// its externalTrafficPolicy and is masqueraded when it goes to another node's backend.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum FrontendKind {
    #[default]
    #[cfg_attr(feature = "serde", serde(rename = "ClusterIP"))]
    ClusterIp = 0,
    NodePort = 1,
    LoadBalancer = 2,
    #[cfg_attr(feature = "serde", serde(rename = "ExternalIP"))]
    ExternalIp = 3,
}

impl FrontendKind {
    pub const ALL: [FrontendKind; 4] = [
        FrontendKind::ClusterIp,
        FrontendKind::NodePort,
        FrontendKind::LoadBalancer,
        FrontendKind::ExternalIp,
    ];

    /// The code [`ServiceValue::kind`] holds.
    pub const fn code(self) -> u8 {
        self as u8
    }

    pub const fn from_u8(code: u8) -> Option<FrontendKind> {
        match code {
            0 => Some(FrontendKind::ClusterIp),
            1 => Some(FrontendKind::NodePort),
            2 => Some(FrontendKind::LoadBalancer),
            3 => Some(FrontendKind::ExternalIp),
            _ => None,
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "ExternalIP",
        })
    }
}

/// Kubernetes' traffic policies: `Local` sends the flows it governs only to this node's
/// backends (and keeps the client's address: no masquerading).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        })
    }
}

/// How a new flow's backend is chosen (Cilium's `bpf-lb-algorithm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "name", rename_all = "lowercase"))]
pub enum Algorithm {
    /// Consistent hashing of the flow over a table of `table_size` slots (a prime from
    /// [`MAGLEV_TABLE_SIZES`]): every worker and node picks the same backend for a flow, and
    /// a change of backends moves few flows.
    Maglev { table_size: u32 },
    /// A weighted random draw per new flow: no table to build.
    Random,
}

impl Default for Algorithm {
    fn default() -> Algorithm {
        Algorithm::Maglev { table_size: MAGLEV_TABLE_SIZE }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Algorithm::Maglev { table_size } => write!(f, "maglev/{table_size}"),
            Algorithm::Random => f.write_str("random"),
        }
    }
}

/// What a service frontend is: the value of `SERVICES_V4` and `SERVICES_V6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceValue {
    /// A [`FrontendKind`] code.
    pub kind: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ServiceValue>() == 4 && align_of::<ServiceValue>() == 1);

impl ServiceValue {
    pub const fn new(kind: FrontendKind) -> Self {
        ServiceValue { kind: kind.code(), _pad: [0; 3] }
    }
}

/// Identifies a backend of this node's services (host byte order), stable while the backend
/// exists. 0 means no backend.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BackendId(pub u32);
const _: () = assert!(size_of::<BackendId>() == 4 && align_of::<BackendId>() == 4);

impl BackendId {
    /// No backend.
    pub const NONE: BackendId = BackendId(0);
}

/// The table sizes Maglev accepts, as Cilium's `--bpf-lb-maglev-table-size`: primes, so that
/// every backend's permutation visits every slot.
pub const MAGLEV_TABLE_SIZES: [u32; 10] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];
/// Slots per Maglev table unless configured. Maglev balances well with at least 100 slots per
/// backend, so this suits services of up to about 160 backends.
pub const MAGLEV_TABLE_SIZE: u32 = 16381;
/// The largest Maglev table.
pub const MAGLEV_TABLE_SIZE_MAX: u32 = 131071;

pod!(ServiceKey4, ServiceKey6, ServiceValue, BackendId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums() {
        ServiceScope::assert_well_formed();
        assert_eq!((ServiceScope::External.code(), ServiceScope::Internal.code()), (0, 1));
        for kind in FrontendKind::ALL {
            assert_eq!(FrontendKind::from_u8(kind.code()), Some(kind));
        }
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
    fn maglev_sizes_are_prime() {
        let is_prime = |n: u32| n > 1 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
        assert!(MAGLEV_TABLE_SIZES.iter().all(|n| is_prime(*n)));
        assert!(MAGLEV_TABLE_SIZES.is_sorted());
        assert!(MAGLEV_TABLE_SIZES.contains(&MAGLEV_TABLE_SIZE));
        assert_eq!(MAGLEV_TABLE_SIZES.last(), Some(&MAGLEV_TABLE_SIZE_MAX));
    }
}
