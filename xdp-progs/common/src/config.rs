//! The ingress program's settings: one slot of [`CONFIG`](crate::maps::CONFIG), written by the
//! agent before it attaches the program.

code_enum! {
    /// How an XDP program is attached to an interface.
    pub enum XdpMode: u8, fn from_u8 {
        Auto = 0, "auto", "Native where the driver supports it, generic otherwise.";
        Native = 1, "native", "In the driver, before an skb exists (fastest).";
        Generic = 2, "generic", "In the kernel's receive path, after the skb (any driver).";
    }
}

/// Receive queues per interface that can have a worker socket (`XSKS` slots per interface).
pub const XSK_QUEUES_PER_IF: u32 = 16;
/// Interfaces that can have worker sockets: the uplinks and a veth per pod (kubelet allows
/// 110 pods per node by default; this leaves room above that).
pub const XSK_INTERFACES: u32 = 256;

/// The node's own addresses per family, and its host interfaces, that the program compares
/// instead of looking up; those beyond take the lookups.
pub const HOST_ADDRESSES: usize = 4;
pub const HOST_INTERFACES: usize = 4;

/// Words of [`HOST_PORTS`](crate::maps::HOST_PORTS) per protocol: a bit per port.
pub const HOST_PORT_WORDS: u32 = 65536 / 64;

/// The slot of `protocol`'s bits in `HOST_PORTS` (TCP, UDP); other protocols have none.
pub const fn host_port_slot(protocol: u8) -> Option<u32> {
    match protocol {
        crate::proto::ip::TCP => Some(0),
        crate::proto::ip::UDP => Some(1),
        _ => None,
    }
}

/// What `skiff_xdp_ingress` needs to know about this node. Addresses are in network byte
/// order; ports and counts in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct XdpConfig {
    /// This node's tunnel (underlay) IPv6 address; all zero: no IPv6 tunnel endpoint.
    pub tunnel_v6: [u8; 16],
    /// This node's tunnel (underlay) IPv4 address; all zero: no IPv4 tunnel endpoint.
    pub tunnel_v4: [u8; 4],
    /// UDP port of VXLAN ([`VXLAN_PORT`](crate::tunnel::VXLAN_PORT) by default); 0 turns it off.
    pub vxlan_port: u16,
    /// UDP port of Geneve ([`GENEVE_PORT`](crate::tunnel::GENEVE_PORT) by default); 0 turns it off.
    pub geneve_port: u16,
    /// Send one drop in this many to the event ring (per CPU and reason; 1: every drop; 0:
    /// none).
    pub drop_sample_every: u32,
    /// Send one frame passed, redirected or forwarded in this many to the event ring (per
    /// CPU and action; 0: none): the NIC's decisions, sampled so its path stays fast.
    pub trace_sample_every: u32,
    /// [`XdpConfig::MASQUERADE_V4`], [`XdpConfig::MASQUERADE_V6`].
    pub flags: u32,
    /// The node's own addresses (zeros: none). TCP or UDP to one of them, on a host
    /// interface, to a port no worker serves (`HOST_PORTS`), passes without a lookup: the
    /// node's own traffic costs the program next to nothing.
    pub host_v6: [[u8; 16]; HOST_ADDRESSES],
    pub host_v4: [[u8; 4]; HOST_ADDRESSES],
    /// Interfaces no pod is behind (the uplinks; 0: none): their frames need no source check.
    pub host_interfaces: [u32; HOST_INTERFACES],
}
const _: () = assert!(size_of::<XdpConfig>() == 132 && align_of::<XdpConfig>() == 4);

impl XdpConfig {
    /// The defaults: tunnels on their usual ports, no tunnel address yet, drops sampled one in
    /// 16, other decisions one in 4096.
    pub const DEFAULT: XdpConfig = XdpConfig {
        tunnel_v6: [0; 16],
        tunnel_v4: [0; 4],
        vxlan_port: crate::tunnel::VXLAN_PORT,
        geneve_port: crate::tunnel::GENEVE_PORT,
        drop_sample_every: 16,
        trace_sample_every: 4096,
        flags: 0,
        host_v6: [[0; 16]; HOST_ADDRESSES],
        host_v4: [[0; 4]; HOST_ADDRESSES],
        host_interfaces: [0; HOST_INTERFACES],
    };
    /// Pods' IPv4 traffic out of the cluster (outside `CLUSTER_V4`) goes to a worker, which
    /// masquerades it.
    pub const MASQUERADE_V4: u32 = 1 << 0;
    /// The same for IPv6 (`CLUSTER_V6`).
    pub const MASQUERADE_V6: u32 = 1 << 1;
}

/// The lab traffic generator's job (`skiff_trafficgen`): the 64-byte frame to send and the
/// interface to send it from (its index in the generator's network namespace).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TrafficGen {
    pub frame: [u8; 64],
    pub ifindex: u32,
}
const _: () = assert!(size_of::<TrafficGen>() == 68);

// `Default` is derived only for arrays up to 32 elements.
impl Default for TrafficGen {
    fn default() -> Self {
        TrafficGen { frame: [0; 64], ifindex: 0 }
    }
}

pod!(XdpConfig, TrafficGen);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_modes() {
        XdpMode::assert_well_formed();
        assert_eq!("generic".parse(), Ok(XdpMode::Generic));
        let error = "fast".parse::<XdpMode>().unwrap_err();
        assert_eq!(error.to_string(), "expected one of: auto native generic");
    }
}
