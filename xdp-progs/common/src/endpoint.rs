//! Local endpoints (pods on this node) whose traffic the XDP program hands to the workers, and
//! the node's own addresses.

use crate::identity::Identity;

/// The value of [`ENDPOINTS_V4`](crate::maps::ENDPOINTS_V4) and
/// [`ENDPOINTS_V6`](crate::maps::ENDPOINTS_V6), keyed by the pod's address (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EndpointInfo {
    pub identity: Identity,
    /// `EndpointInfo::POLICY_ENFORCED`, `EndpointInfo::HOST`.
    pub flags: u32,
}
const _: () = assert!(size_of::<EndpointInfo>() == 8);

impl EndpointInfo {
    /// Network policy selects this pod: packets to and from it go to a worker for a verdict.
    pub const POLICY_ENFORCED: u32 = 1 << 0;
    /// One of the node's own addresses: packets to it pass to the kernel (a worker could not
    /// hand them up), also from pods under policy.
    pub const HOST: u32 = 1 << 1;
}

/// The value of [`POD_SOURCES`](crate::maps::POD_SOURCES), keyed by the interface index of a
/// pod's host-side veth: the addresses (network order) the pod may send from. A frame from
/// that pod with another source is dropped (`SpoofedSource`), so no pod can take another's
/// identity; IPv6 link-local and unspecified sources (neighbour discovery) pass. Zero: the pod
/// has no address of that family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PodSources {
    pub v4: [u8; 4],
    pub v6: [u8; 16],
}
const _: () = assert!(size_of::<PodSources>() == 20);

impl PodSources {
    /// Whether an IPv6 source is one neighbour discovery uses (link-local `fe80::/10`, or `::`).
    pub fn neighbour_discovery_v6(src: &[u8; 16]) -> bool {
        (src[0] == 0xfe && src[1] & 0xc0 == 0x80) || *src == [0; 16]
    }
}

pod!(EndpointInfo, PodSources);
