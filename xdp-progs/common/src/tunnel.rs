//! Overlay tunnels: which node hosts a remote pod CIDR, and how to encapsulate towards it.

use core::net::IpAddr;

use crate::{
    addr,
    lpm::{LpmKey4, LpmKey6},
};

/// VXLAN's UDP port: the Linux and Cilium default rather than IANA's 4789, to interoperate
/// with their nodes (host order; the packet and [`TunnelEndpoint`] carry it big-endian).
pub const VXLAN_PORT: u16 = 8472;
/// Geneve's UDP port (IANA; host order).
pub const GENEVE_PORT: u16 = 6081;
/// The largest VNI: VXLAN and Geneve carry 24 bits.
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// The Geneve option class skiff uses (RFC 8926 reserves 0xFFF0–0xFFFF for experiments).
pub const GENEVE_OPT_CLASS: u16 = 0xfff0;
/// Option type carrying the source security identity (4 bytes, host order); not critical.
pub const GENEVE_OPT_IDENTITY: u8 = 0x01;

/// An IPv4 pod CIDR: the key of [`TUNNEL_EP_V4`](crate::maps::TUNNEL_EP_V4).
pub type TunnelKey4 = LpmKey4;
/// An IPv6 pod CIDR: the key of [`TUNNEL_EP_V6`](crate::maps::TUNNEL_EP_V6).
pub type TunnelKey6 = LpmKey6;

code_enum! {
    /// How frames to a remote node are encapsulated. 0 is left unused, so a zeroed
    /// endpoint is recognisably unset.
    pub enum EncapType: u8, fn from_u8 {
        Vxlan = 1, "vxlan", "VXLAN (RFC 7348) over UDP.";
        Geneve = 2, "geneve", "Geneve (RFC 8926) over UDP.";
    }
}

impl EncapType {
    /// The UDP destination port, in host order.
    pub const fn port(self) -> u16 {
        match self {
            EncapType::Vxlan => VXLAN_PORT,
            EncapType::Geneve => GENEVE_PORT,
        }
    }
}

/// The node that hosts a pod CIDR, as the underlay reaches it: the value of `TUNNEL_EP_V4` and
/// `TUNNEL_EP_V6`. `remote` and `dst_port` are network byte order; `vni` is host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TunnelEndpoint {
    /// The remote node's underlay address; IPv4 in the first 4 bytes, as in [`crate::addr`].
    pub remote: [u8; 16],
    /// The VNI for the outer header; at most [`VNI_MAX`].
    pub vni: u32,
    pub dst_port: u16,
    /// An [`addr::Family`] code for `remote`.
    pub family: u8,
    /// An [`EncapType`] code.
    pub encap: u8,
}
const _: () = assert!(size_of::<TunnelEndpoint>() == 24 && align_of::<TunnelEndpoint>() == 4);

impl TunnelEndpoint {
    /// An endpoint on the encapsulation's standard port; `None` if `vni` is over [`VNI_MAX`].
    pub const fn new(remote: IpAddr, encap: EncapType, vni: u32) -> Option<Self> {
        if vni > VNI_MAX {
            return None;
        }
        let (family, remote) = addr::encode(remote);
        Some(TunnelEndpoint {
            remote,
            vni,
            dst_port: encap.port().to_be(),
            family: family.code(),
            encap: encap.code(),
        })
    }

    /// The remote node's address; `None` if the family code is unknown.
    pub fn remote(&self) -> Option<IpAddr> {
        addr::decode(self.family, self.remote)
    }

    /// The encapsulation; `None` for a code this version does not know.
    pub const fn encap(&self) -> Option<EncapType> {
        EncapType::from_u8(self.encap)
    }
}

pod!(TunnelEndpoint);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encap_types() {
        EncapType::assert_well_formed();
        assert_eq!(EncapType::from_u8(0), None);
        assert_eq!((EncapType::Vxlan.port(), EncapType::Geneve.port()), (8472, 6081));
    }

    #[test]
    fn endpoint_round_trip() {
        let node: IpAddr = "198.18.0.2".parse().unwrap();
        let endpoint = TunnelEndpoint::new(node, EncapType::Geneve, 42).unwrap();
        assert_eq!(endpoint.remote(), Some(node));
        assert_eq!(endpoint.encap(), Some(EncapType::Geneve));
        assert_eq!(endpoint.dst_port.to_ne_bytes(), 6081u16.to_be_bytes());
        assert_eq!(TunnelEndpoint::new(node, EncapType::Vxlan, VNI_MAX + 1), None);
        assert_eq!(TunnelEndpoint::default().encap(), None);
    }
}
