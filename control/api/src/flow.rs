//! Tracked flows, as `skiff ct list` shows them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A flow the node tracks, read from the XDP program's flow table (every flow a worker
/// tracks has an entry there, and it outlives an agent's restart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    /// `TCP`, `UDP`, `ICMP`, `ICMPv6`, or the protocol's number.
    pub protocol: String,
    /// As its first packet had it.
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// As its replies have it (after NAT: from the backend, to a masquerading port).
    pub reply_source: SocketAddr,
    pub reply_destination: SocketAddr,
    /// The service backend's id; 0 for a flow that is no service's.
    pub backend: u32,
    /// Forwarded at the NIC by the XDP program (established), else by a worker.
    pub at_nic: bool,
    /// What the NIC forwarded of it, both directions.
    pub nic_packets: u64,
    pub nic_bytes: u64,
}

impl FlowView {
    /// Whether any of the flow's addresses is `addr`.
    pub fn has_address(&self, addr: std::net::IpAddr) -> bool {
        [self.source, self.destination, self.reply_source, self.reply_destination]
            .iter()
            .any(|s| s.ip() == addr)
    }

    /// Whether any of the flow's ports is `port`.
    pub fn has_port(&self, port: u16) -> bool {
        [self.source, self.destination, self.reply_source, self.reply_destination]
            .iter()
            .any(|s| s.port() == port)
    }
}
