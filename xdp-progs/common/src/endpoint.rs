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

pod!(EndpointInfo);
