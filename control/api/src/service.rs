//! Service frontends and their backends, as `skiff service list` shows them.

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};
use skiff_common::{
    lb::{Algorithm, FrontendKind, TrafficPolicy},
    proto::ip,
};

/// A service port's transport protocol (Kubernetes' names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => ip::TCP,
            Protocol::Udp => ip::UDP,
            Protocol::Sctp => ip::SCTP,
        }
    }

    pub fn from_number(number: u8) -> Option<Protocol> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].into_iter().find(|p| p.number() == number)
    }

    /// The protocol Kubernetes calls `name` (`TCP`, `UDP`, `SCTP`).
    pub fn from_name(name: &str) -> Option<Protocol> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].into_iter().find(|p| p.to_string() == name)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// Which service port a frontend belongs to; a service port's frontends share its backends.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name ("" for a single unnamed port).
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// A frontend (address, port, protocol) of a service port, and its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: FrontendKind,
    pub service: ServicePort,
    pub algorithm: Algorithm,
    pub traffic_policy: TrafficPolicy,
    /// With `sessionAffinity: ClientIP`: how long a client keeps its backend.
    pub affinity_timeout_seconds: Option<u64>,
    pub backends: Vec<BackendView>,
    /// Socket-LB translates the node's connects to it (on, and a TCP or UDP frontend).
    #[serde(default)]
    pub socket_lb: bool,
}

impl ServiceView {
    /// `address:port/protocol`, the address bracketed when IPv6.
    pub fn frontend(&self) -> String {
        format!("{}/{}", socket(self.address, self.port), self.protocol)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    /// The datapath's id (0 until published).
    pub id: u32,
    pub address: IpAddr,
    pub port: u16,
    /// 0: terminating, kept for the flows it has.
    pub weight: u16,
    /// On this node.
    pub local: bool,
}

impl BackendView {
    /// `address:port`, the address bracketed when IPv6.
    pub fn endpoint(&self) -> String {
        socket(self.address, self.port)
    }
}

fn socket(address: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}
