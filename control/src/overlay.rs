//! Between nodes: the routing mode (Cilium's `routingMode` and `tunnelProtocol`) and what it
//! makes of the other Nodes. In tunnel mode the workers encapsulate frames for another node's
//! pod CIDRs towards its InternalIP (the overlay); in native mode the network routes them, and
//! with `--auto-direct-node-routes` the agent adds a route to each other node's pod CIDRs via
//! its InternalIP.

use std::{net::IpAddr, sync::Arc};

use skiff_api::Tunnel;
use skiff_common::tunnel::{GENEVE_PORT, VXLAN_PORT};
use skiff_engine::{
    prefix::PrefixMap,
    tunnel::{Overlay, TunnelProtocol},
};

/// How pods on different nodes reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Encapsulated between nodes (Cilium's default: VXLAN on 8472).
    Tunnel { protocol: TunnelProtocol, port: u16 },
    /// Routed by the network, or with `auto_direct_node_routes` by a route per node.
    Native { auto_direct_node_routes: bool },
}

impl Default for Routing {
    fn default() -> Routing {
        Routing::Tunnel { protocol: TunnelProtocol::Vxlan, port: VXLAN_PORT }
    }
}

impl Routing {
    /// Tunnel mode over `protocol` on `port`, or on the protocol's usual port.
    pub fn tunnel(protocol: TunnelProtocol, port: Option<u16>) -> Routing {
        let usual = match protocol {
            TunnelProtocol::Vxlan => VXLAN_PORT,
            TunnelProtocol::Geneve => GENEVE_PORT,
        };
        Routing::Tunnel { protocol, port: port.unwrap_or(usual) }
    }

    /// What the pods' MTU gives up to the tunnel (nothing in native routing).
    pub fn mtu_overhead(self, v6_underlay: bool) -> u32 {
        match self {
            Routing::Tunnel { protocol, .. } => {
                u32::try_from(protocol.mtu_overhead(v6_underlay)).expect("a few dozen bytes")
            }
            Routing::Native { .. } => 0,
        }
    }

    /// How `skiff status` names it: `tunnel (vxlan, port 8472)`, `native`, …
    pub fn describe(self) -> String {
        match self {
            Routing::Tunnel { protocol: TunnelProtocol::Vxlan, port } => {
                format!("tunnel (vxlan, port {port})")
            }
            Routing::Tunnel { protocol: TunnelProtocol::Geneve, port } => {
                format!("tunnel (geneve, port {port})")
            }
            Routing::Native { auto_direct_node_routes: true } => "native (auto-direct-node-routes)".into(),
            Routing::Native { auto_direct_node_routes: false } => "native".into(),
        }
    }
}

/// The overlay the workers use in tunnel mode: the other nodes' pod CIDRs towards their
/// tunnel endpoints, and this node's underlay address of each family (its first of
/// `node_addresses`).
pub fn overlay(
    routing: Routing,
    tunnels: &[Tunnel],
    node_addresses: &[IpAddr],
    mtu: u16,
) -> Option<Arc<Overlay>> {
    let Routing::Tunnel { protocol, port } = routing else { return None };
    let mut remote = PrefixMap::default();
    for t in tunnels {
        remote.insert(t.pod_cidr, t.endpoint);
    }
    let local_v4 = node_addresses.iter().find_map(|a| match a {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    });
    let local_v6 = node_addresses.iter().find_map(|a| match a {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    });
    Some(Arc::new(Overlay { protocol, port, local_v4, local_v6, remote, mtu }))
}
