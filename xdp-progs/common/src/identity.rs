//! Security identities: the number Cilium gives every set of endpoints sharing
//! security-relevant labels, and its reserved numbers.

/// The security identity of a set of endpoints sharing labels (host byte order). Numbered as
/// Cilium numbers them, so reserved identities in CiliumNetworkPolicy mean the same here.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Identity(pub u32);
const _: () = assert!(size_of::<Identity>() == 4 && align_of::<Identity>() == 4);

impl Identity {
    /// Not known yet; as a policy peer, any identity.
    pub const UNKNOWN: Identity = Identity(0);
    /// The local node.
    pub const HOST: Identity = Identity(1);
    /// Anything outside the cluster.
    pub const WORLD: Identity = Identity(2);
    /// Pods not managed by the datapath.
    pub const UNMANAGED: Identity = Identity(3);
    /// Health-check endpoints.
    pub const HEALTH: Identity = Identity(4);
    /// Endpoints whose identity is still being resolved.
    pub const INIT: Identity = Identity(5);
    /// Other nodes of the cluster.
    pub const REMOTE_NODE: Identity = Identity(6);
    /// The Kubernetes API server.
    pub const KUBE_APISERVER: Identity = Identity(7);
    /// The ingress proxy.
    pub const INGRESS: Identity = Identity(8);
    /// IPv4 addresses outside the cluster, in dual-stack clusters.
    pub const WORLD_IPV4: Identity = Identity(9);
    /// IPv6 addresses outside the cluster, in dual-stack clusters.
    pub const WORLD_IPV6: Identity = Identity(10);
    /// The first identity allocated for labels; those below are reserved.
    pub const FIRST_ALLOCATED: Identity = Identity(256);

    /// A reserved identity's name, as Cilium's `reserved:` label gives it.
    pub const fn reserved_name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "host",
            2 => "world",
            3 => "unmanaged",
            4 => "health",
            5 => "init",
            6 => "remote-node",
            7 => "kube-apiserver",
            8 => "ingress",
            9 => "world-ipv4",
            10 => "world-ipv6",
            _ => return None,
        })
    }

    /// A reserved identity such as `HOST` or `WORLD` (not `UNKNOWN`).
    pub const fn is_reserved(self) -> bool {
        self.0 > Self::UNKNOWN.0 && self.0 < Self::FIRST_ALLOCATED.0
    }
}

pod!(Identity);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_identities() {
        assert_eq!((Identity::HOST.0, Identity::WORLD.0, Identity::REMOTE_NODE.0), (1, 2, 6));
        assert!(Identity::HOST.is_reserved() && Identity::WORLD_IPV6.is_reserved());
        assert!(!Identity::UNKNOWN.is_reserved() && !Identity::FIRST_ALLOCATED.is_reserved());
        assert_eq!(Identity::REMOTE_NODE.reserved_name(), Some("remote-node"));
        assert_eq!((Identity::UNKNOWN.reserved_name(), Identity(11).reserved_name()), (None, None));
    }
}
