//! Overlay tunnels: the UDP ports VXLAN and Geneve arrive on, skiff's Geneve option, and
//! the identity a tunnel frame claims.

use crate::identity::Identity;

/// VXLAN's UDP port: the Linux and Cilium default rather than IANA's 4789, to interoperate
/// with their nodes (host order).
pub const VXLAN_PORT: u16 = 8472;
/// Geneve's UDP port (IANA; host order).
pub const GENEVE_PORT: u16 = 6081;
/// The Geneve option class skiff uses (RFC 8926 reserves 0xFFF0–0xFFFF for experiments).
pub const GENEVE_OPT_CLASS: u16 = 0xfff0;
/// Option type carrying the source security identity (4 bytes, host order); not critical.
pub const GENEVE_OPT_IDENTITY: u8 = 0x01;
/// The VXLAN flags byte's I bit: the VNI is valid (RFC 7348).
pub const VXLAN_FLAG_VNI: u8 = 0x08;

/// The sender's identity a tunnel frame claims: skiff's Geneve option (`option`, unknown
/// when absent), else the VNI. Another node's host is a remote node here.
pub const fn claimed_identity(vni: u32, option: Identity) -> Identity {
    let identity = if option.0 == Identity::UNKNOWN.0 { Identity(vni) } else { option };
    if identity.0 == Identity::HOST.0 { Identity::REMOTE_NODE } else { identity }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_outranks_the_vni_and_a_host_is_a_remote_node() {
        assert_eq!(claimed_identity(42, Identity::UNKNOWN), Identity(42));
        assert_eq!(claimed_identity(42, Identity(4242)), Identity(4242));
        assert_eq!(claimed_identity(1, Identity::UNKNOWN), Identity::REMOTE_NODE);
        assert_eq!(claimed_identity(42, Identity::HOST), Identity::REMOTE_NODE);
    }
}
