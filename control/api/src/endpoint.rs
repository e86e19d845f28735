//! Endpoints: the pods skiff gives a network (through `skiff-cni`), their addresses, and how
//! the datapath serves them.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use skiff_common::config::XdpMode;

/// An attachment as CNI names it: a container and the interface made for it inside.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// The pod an attachment is for (CNI_ARGS' `K8S_POD_NAMESPACE` and `K8S_POD_NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the agent gives an attachment before its interfaces are made: an address of each
/// family the node has pod CIDRs for, the gateway of each, and the MTU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressing {
    /// Host prefixes: /32 and /128.
    pub addresses: Vec<IpNet>,
    /// The node's router address in each family: the pods' default gateway.
    pub gateways: Vec<IpAddr>,
    pub mtu: u32,
    /// Queues each way on the veth: one per worker, as on a multi-queue NIC.
    pub queues: u16,
}

/// What `skiff-cni` tells the agent once the interfaces exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub attachment: Attachment,
    pub pod: Option<PodRef>,
    /// The container's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The host side of the veth pair.
    pub host_ifname: String,
    pub addresses: Vec<IpAddr>,
}

/// How the datapath serves an endpoint's host-side interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AttachMode {
    /// skiff's XDP program and an AF_XDP socket per worker.
    AfXdp { xdp_mode: XdpMode },
    /// AF_PACKET sockets and nftables steering.
    AfPacket,
    /// No datapath (`--io none`): the interfaces exist, nothing is attached.
    None,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachMode::AfXdp { xdp_mode } => write!(f, "af-xdp/{xdp_mode}"),
            AttachMode::AfPacket => f.write_str("af-packet"),
            AttachMode::None => f.write_str("none"),
        }
    }
}

/// Where an endpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    /// Served by the datapath, its labels known.
    Ready,
    /// Served, but its Pod has not been seen: it has the `init` identity.
    WaitingForLabels,
    /// The datapath could not attach to its interface (see the agent's log).
    NotAttached,
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointState::Ready => "ready",
            EndpointState::WaitingForLabels => "waiting-for-labels",
            EndpointState::NotAttached => "not-attached",
        })
    }
}

/// An endpoint as `skiff endpoint list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// The agent's number for it, stable while it exists.
    pub id: u32,
    pub attachment: Attachment,
    pub pod: Option<PodRef>,
    /// Its Pod's labels, the namespace's included (`io.kubernetes.pod.namespace`).
    pub labels: BTreeMap<String, String>,
    /// Its security identity: Cilium's `init` (5) until its Pod is known.
    pub identity: u32,
    pub addresses: Vec<IpAddr>,
    pub netns: PathBuf,
    pub host_ifname: String,
    pub attach: AttachMode,
    pub state: EndpointState,
    /// Whether policy governs its ingress, and its egress (filled by the agent's policy).
    #[serde(default)]
    pub policy: (bool, bool),
}

/// A security identity as `skiff identity list` shows it: its number and the labels it
/// stands for, with their source as Cilium prints them (`reserved:host`, `k8s:app=web`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    pub id: u32,
    pub labels: Vec<String>,
}

/// The addresses the agent hands out, and to whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamView {
    /// `kubernetes` (the Node's podCIDRs) or `cluster-pool` (given to the agent).
    pub mode: String,
    pub pools: Vec<PoolView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub cidr: IpNet,
    pub gateway: IpAddr,
    /// Addresses pods can get (the network, gateway and broadcast addresses excluded).
    pub capacity: u128,
    pub allocated: BTreeMap<IpAddr, Attachment>,
}
