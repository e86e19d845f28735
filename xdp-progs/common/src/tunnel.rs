//! Overlay tunnels: the UDP ports VXLAN and Geneve arrive on, and skiff's Geneve option.

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
