//! Network policy: security identities, and the verdict for each (subject, peer, port,
//! protocol, direction).

code_enum! {
    /// Which way a policy entry applies, seen from the subject endpoint.
    pub enum Direction: u8, fn from_u8 {
        Ingress = 0, "ingress", "Traffic into the subject endpoint.";
        Egress = 1, "egress", "Traffic out of the subject endpoint.";
    }
}

code_enum! {
    /// What policy does with a flow. Deny is 0 so that a zeroed entry fails closed.
    pub enum PolicyAction: u8, fn from_u8 {
        Deny = 0, "deny", "Drop the flow.";
        Allow = 1, "allow", "Let the flow through.";
        Proxy = 2, "proxy", "Let the flow through the L7 proxy listening on proxy_port.";
    }
}

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

    /// A reserved identity such as `HOST` or `WORLD` (not `UNKNOWN`).
    pub const fn is_reserved(self) -> bool {
        self.0 > Self::UNKNOWN.0 && self.0 < Self::FIRST_ALLOCATED.0
    }
}

/// A policy entry's key: the key of [`POLICY`](crate::maps::POLICY). `dport` is network byte
/// order. A zero `peer`, `dport` or `proto` is a wildcard; the lookup tries the most specific
/// key first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyKey {
    /// The local endpoint's identity, whose policy this is. One map serves every endpoint
    /// because endpoints with the same identity have the same policy.
    pub subject: Identity,
    /// The identity at the other end of the flow.
    pub peer: Identity,
    pub dport: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// A [`Direction`] code.
    pub direction: u8,
}
const _: () = assert!(size_of::<PolicyKey>() == 12 && align_of::<PolicyKey>() == 4);

impl PolicyKey {
    /// The key for a flow on `dport` (host order).
    pub const fn new(subject: Identity, peer: Identity, dport: u16, proto: u8, direction: Direction) -> Self {
        PolicyKey { subject, peer, dport: dport.to_be(), proto, direction: direction.code() }
    }
}

/// A policy entry's verdict: the value of `POLICY`. `proxy_port` is network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyVerdict {
    /// A [`PolicyAction`] code.
    pub action: u8,
    pub _pad: [u8; 1],
    /// The L7 proxy's port, with `PolicyAction::Proxy`.
    pub proxy_port: u16,
    /// The compiled rule that produced the entry (host order), so flows can name it.
    pub rule_id: u32,
}
const _: () = assert!(size_of::<PolicyVerdict>() == 8 && align_of::<PolicyVerdict>() == 4);

impl PolicyVerdict {
    /// The action; `None` for a code this version does not know.
    pub const fn action(&self) -> Option<PolicyAction> {
        PolicyAction::from_u8(self.action)
    }
}

pod!(Identity, PolicyKey, PolicyVerdict);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums() {
        Direction::assert_well_formed();
        PolicyAction::assert_well_formed();
        assert_eq!(PolicyVerdict::default().action(), Some(PolicyAction::Deny), "fails closed");
    }

    #[test]
    fn reserved_identities() {
        assert_eq!((Identity::HOST.0, Identity::WORLD.0, Identity::REMOTE_NODE.0), (1, 2, 6));
        assert!(Identity::HOST.is_reserved() && Identity::WORLD_IPV6.is_reserved());
        assert!(!Identity::UNKNOWN.is_reserved() && !Identity::FIRST_ALLOCATED.is_reserved());
    }

    #[test]
    fn key_port_is_network_order() {
        let key = PolicyKey::new(Identity(300), Identity::WORLD, 443, 6, Direction::Egress);
        assert_eq!((key.dport.to_ne_bytes(), key.direction), ([1, 0xbb], 1));
    }
}
