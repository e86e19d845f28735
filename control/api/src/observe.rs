//! Observed flows, as `skiff observe` streams them: one record per decision of the XDP
//! program or a worker, in the shape of Hubble's flow JSON (its field names, its verdicts,
//! its event types) so that `jq` habits carry over; and the filters `hubble observe` users
//! reach for.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// One observed flow (Hubble's `Flow`, the fields skiff has).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub time: jiff::Timestamp,
    pub verdict: Verdict,
    /// The drop's reason in Hubble's style (`POLICY_DENIED`, `DENIED_CIDR`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<String>,
    /// As the packet arrived.
    #[serde(rename = "IP")]
    pub ip: Ip,
    pub l4: L4,
    pub source: Endpoint,
    pub destination: Endpoint,
    #[serde(rename = "Type")]
    pub flow_type: FlowType,
    pub node_name: String,
    pub event_type: EventType,
    pub traffic_direction: TrafficDirection,
    /// Where the decision was taken, as Hubble names observation points (`FROM_NETWORK`: the
    /// XDP program at the NIC; `TO_ENDPOINT`, `TO_STACK`: a worker's forward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_observation_point: Option<String>,
    pub is_reply: bool,
    /// The service a flow to a frontend (or a reply from its backend) belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<Service>,
    /// The policy rule that decided, for a policy verdict (Hubble's `*_allowed_by` and
    /// `*_denied_by`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_allowed_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allowed_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<Policy>,
    /// skiff's own: the packet as it left the node, where the node translated it (DNAT to a
    /// backend, SNAT, reverse NAT from the frontend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translated: Option<Translation>,
    /// skiff's own: which part of the datapath decided (`xdp`, `worker`).
    pub decided_by: DecidedBy,
    /// An ended flow's packets and bytes, both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
    #[serde(rename = "Summary")]
    pub summary: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Forwarded,
    Dropped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowType {
    #[serde(rename = "L3_L4")]
    L3L4,
}

/// Hubble's event type: Cilium's monitor message type (1 drop, 4 trace, 5 policy verdict).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventType {
    #[serde(rename = "type")]
    pub kind: i32,
    #[serde(default)]
    pub sub_type: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrafficDirection {
    Ingress,
    Egress,
    TrafficDirectionUnknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecidedBy {
    Xdp,
    Worker,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    pub source: IpAddr,
    pub destination: IpAddr,
    #[serde(rename = "ipVersion")]
    pub ip_version: String,
}

/// The transport header, as Hubble nests it (`{"TCP": {...}}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum L4 {
    #[serde(rename = "TCP")]
    Tcp { source_port: u16, destination_port: u16 },
    #[serde(rename = "UDP")]
    Udp { source_port: u16, destination_port: u16 },
    /// ICMP, by its echo identifier: flows are keyed by it, not by the message's type.
    #[serde(rename = "ICMPv4")]
    Icmpv4 { identifier: u16 },
    #[serde(rename = "ICMPv6")]
    Icmpv6 { identifier: u16 },
    /// Another protocol, by number.
    #[serde(rename = "other")]
    Other { protocol: u8 },
}

impl L4 {
    /// `TCP`, `UDP`, `ICMPv4`, `ICMPv6`, or the protocol's number.
    pub fn protocol(&self) -> String {
        match self {
            L4::Tcp { .. } => "TCP".into(),
            L4::Udp { .. } => "UDP".into(),
            L4::Icmpv4 { .. } => "ICMPv4".into(),
            L4::Icmpv6 { .. } => "ICMPv6".into(),
            L4::Other { protocol } => protocol.to_string(),
        }
    }

    /// (source, destination) ports; none for ICMP and other protocols.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match *self {
            L4::Tcp { source_port, destination_port } | L4::Udp { source_port, destination_port } => {
                Some((source_port, destination_port))
            }
            _ => None,
        }
    }
}

/// One end of a flow, with what the node knows of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The numeric security identity (0: unknown).
    pub identity: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `k8s:key=value`, or `reserved:world` and the like.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
}

/// A policy rule as a flow names it: its object, and skiff's rule number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub kind: String,
    pub rule: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Translation {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

/// Hubble's event types that `--type` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Drop,
    Trace,
    PolicyVerdict,
}

impl EventKind {
    /// Cilium's monitor message type.
    pub fn code(self) -> i32 {
        match self {
            EventKind::Drop => 1,
            EventKind::Trace => 4,
            EventKind::PolicyVerdict => 5,
        }
    }
}

/// What `skiff observe` asks for: a flow matches when it passes every filter given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    /// A pod at either end, `[namespace/]name` (a name prefix, as `hubble observe --pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_pod: Option<String>,
    /// Either end in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ip: Option<IpAddr>,
    /// `TCP`, `UDP`, `ICMPv4`, `ICMPv6` (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Either end's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventKind>,
}

/// The protocols a filter may name.
pub const PROTOCOLS: [&str; 4] = ["TCP", "UDP", "ICMPv4", "ICMPv6"];

impl FlowFilter {
    /// Why the filter can select nothing, if it cannot (a protocol skiff does not name).
    pub fn check(&self) -> Result<(), String> {
        match &self.protocol {
            Some(p) if !PROTOCOLS.iter().any(|known| known.eq_ignore_ascii_case(p)) => {
                Err(format!("protocol {p:?}: not one of {}", PROTOCOLS.join(", ")))
            }
            _ => Ok(()),
        }
    }

    pub fn matches(&self, f: &Flow) -> bool {
        let pod = |filter: &Option<String>, e: &Endpoint| filter.as_deref().is_none_or(|p| pod_matches(p, e));
        let ports = f.l4.ports();
        pod(&self.from_pod, &f.source)
            && pod(&self.to_pod, &f.destination)
            && (self.pod.is_none() || pod(&self.pod, &f.source) || pod(&self.pod, &f.destination))
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| f.source.namespace == n || f.destination.namespace == n)
            && self.from_ip.is_none_or(|ip| f.ip.source == ip)
            && self.to_ip.is_none_or(|ip| f.ip.destination == ip)
            && self.protocol.as_deref().is_none_or(|p| f.l4.protocol().eq_ignore_ascii_case(p))
            && self.port.is_none_or(|port| ports.is_some_and(|(s, d)| s == port || d == port))
            && self.verdict.is_none_or(|v| f.verdict == v)
            && self.event_type.is_none_or(|t| f.event_type.kind == t.code())
    }
}

/// `namespace/prefix`, or `prefix` in the `default` namespace, as `hubble observe` reads
/// them (`kube-system/`: every pod of the namespace).
fn pod_matches(filter: &str, e: &Endpoint) -> bool {
    let (namespace, prefix) = filter.split_once('/').unwrap_or(("default", filter));
    !e.pod_name.is_empty() && e.namespace == namespace && e.pod_name.starts_with(prefix)
}

/// Flows the agent could not show: Hubble's `LostEvent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvents {
    /// `OBSERVER_EVENTS_QUEUE` (the datapath's queues to the agent) or `HUBBLE_RING_BUFFER`
    /// (this consumer fell behind the agent's ring).
    pub source: String,
    pub num_events_lost: u64,
}
