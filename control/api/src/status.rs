//! What `skiff status` shows: the agent's health, where its state comes from, how packets
//! reach its workers, what it applied, and the workers' counters.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use skiff_common::{DropReason, XdpAction, config::XdpMode, conntrack::FlowPath, sock::SockCounter};

use crate::object::{Kind, Rejection};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub health: Health,
    pub node: String,
    pub source: Source,
    /// Whether the source is reachable (an API server can go away; the tables stay).
    pub connected: bool,
    pub datapath: Datapath,
    /// Accepted objects by kind.
    pub objects: BTreeMap<Kind, usize>,
    pub rejections: Vec<Rejection>,
    /// Documents of kinds skiff does not read (`Deployment demo/web (web.yaml#2)`): left out.
    #[serde(default)]
    pub ignored: Vec<String>,
    /// Service frontends other than NodePorts on this node's own addresses
    /// (`default/web 198.18.0.1:8000/TCP (ExternalIP)`): the node's own connects to them go to
    /// the service's backends.
    #[serde(default)]
    pub on_node_addresses: Vec<String>,
    pub frontends: usize,
    pub backends: usize,
    /// Distinct pod label sets (the unit an identity is given for).
    pub identities: usize,
    /// Where their numbers come from (`agreed through CiliumIdentity objects`, …).
    #[serde(default)]
    pub identity_allocation: String,
    /// How pods on different nodes reach each other: `tunnel (vxlan, port 8472)`, `native`.
    #[serde(default)]
    pub routing: String,
    /// Which families of pods' traffic out of the cluster leave with the node's address:
    /// `IPv4`, `IPv4, IPv6`, `off`.
    #[serde(default)]
    pub masquerading: String,
    pub tunnels: Vec<Tunnel>,
    pub policies: usize,
    /// `default`, `always` or `never` (`--policy-enforcement`).
    #[serde(default)]
    pub policy_enforcement: String,
    /// Local endpoints whose ingress, and whose egress, is under policy.
    #[serde(default)]
    pub enforced: (usize, usize),
    /// Prefixes the NIC prefilter drops.
    #[serde(default)]
    pub prefilter: usize,
    pub next_hops: usize,
    /// Tables published so far.
    pub applies: u64,
    /// Complete listings taken from the source: a folder read, a watcher's list or relist
    /// of one kind.
    pub listings: u64,
    pub last_apply: Option<LastApply>,
    /// Live, read at each request; `None` without a datapath.
    pub workers: Option<WorkerCounters>,
    /// Live, read at each request; `None` without a datapath.
    #[serde(default)]
    pub flows: Option<FlowCounters>,
}

impl Status {
    /// Nothing applied yet.
    pub fn new(source: Source, datapath: Datapath) -> Status {
        Status {
            version: String::new(),
            health: Health::Ok,
            node: String::new(),
            source,
            connected: false,
            datapath,
            objects: BTreeMap::new(),
            rejections: Vec::new(),
            ignored: Vec::new(),
            on_node_addresses: Vec::new(),
            frontends: 0,
            backends: 0,
            identities: 0,
            identity_allocation: String::new(),
            routing: String::new(),
            masquerading: String::new(),
            tunnels: Vec::new(),
            policies: 0,
            policy_enforcement: String::new(),
            enforced: (0, 0),
            prefilter: 0,
            next_hops: 0,
            applies: 0,
            listings: 0,
            last_apply: None,
            workers: None,
            flows: None,
        }
    }
}

/// Whether the agent does what its objects ask.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Health {
    #[default]
    Ok,
    /// Forwarding goes on with the last good tables, for these reasons.
    Degraded { problems: Vec<Problem> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum Problem {
    /// The source (folder or API server) cannot be read; the tables stay as they are.
    SourceUnreachable,
    /// The last apply failed; it is retried whole.
    ApplyFailed { error: String },
    /// Nothing is published until every kind's first list has arrived.
    WaitingForFirstList { kinds: Vec<Kind> },
    /// The API server does not serve these kinds (their CRDs are not installed): their
    /// objects are not read; every other kind is applied.
    NotServed { kinds: Vec<Kind> },
    /// Rules accepted but not enforced as written (L7, FQDNs, host policies, …): each says
    /// what skiff does instead (it denies what they would govern, or, for host policies,
    /// nothing yet).
    RulesNotEnforced { rules: Vec<String> },
    /// `--policy-enforcement never`: no policy is enforced.
    PolicyEnforcementOff { policies: usize },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::SourceUnreachable => f.write_str("the source is not reachable"),
            Problem::ApplyFailed { error } => write!(f, "the last apply failed: {error}"),
            Problem::WaitingForFirstList { kinds } => {
                let kinds: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
                write!(f, "waiting for the first list of {}", kinds.join(", "))
            }
            Problem::RulesNotEnforced { rules } => {
                write!(f, "{} policy rules are not enforced as written:", rules.len())?;
                rules.iter().try_for_each(|r| write!(f, "\n    {r}"))
            }
            Problem::PolicyEnforcementOff { policies } => write!(
                f,
                "policy enforcement is off (--policy-enforcement never): {policies} policies are NOT ENFORCED"
            ),
            Problem::NotServed { kinds } => {
                let kinds: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
                write!(
                    f,
                    "the API server does not serve {} (CRD not installed): not read, the other kinds are applied",
                    kinds.join(", ")
                )
            }
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Ok => f.write_str("Ok"),
            Health::Degraded { problems } => {
                f.write_str("Degraded: ")?;
                for (i, p) in problems.iter().enumerate() {
                    write!(f, "{}{p}", if i == 0 { "" } else { "; " })?;
                }
                Ok(())
            }
        }
    }
}

/// Where the cluster state comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Source {
    /// A folder of YAML, watched.
    StateDir { path: PathBuf },
    /// An API server.
    Kubernetes { server: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::StateDir { path } => write!(f, "state-dir {}", path.display()),
            Source::Kubernetes { server } => write!(f, "kubernetes {server}"),
        }
    }
}

/// How packets reach the workers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datapath {
    pub io: Io,
    pub devices: Vec<String>,
    pub workers: u16,
    #[serde(default)]
    pub socket_lb: SocketLb,
    /// The mode the XDP program got on each device (with AF_XDP: auto resolves per device).
    #[serde(default)]
    pub xdp_modes: BTreeMap<String, XdpMode>,
}

/// Socket-LB: services translated when a socket connects, by cgroup socket programs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum SocketLb {
    /// Attached to the cgroup v2 at `cgroup`: its sockets, and its descendants', are served.
    On {
        cgroup: PathBuf,
        /// Only the node's own network namespace (`--socket-lb-host-namespace-only`).
        host_namespace_only: bool,
    },
    /// Not running, and why.
    Off { reason: String },
}

impl SocketLb {
    pub fn is_on(&self) -> bool {
        matches!(self, SocketLb::On { .. })
    }
}

impl Default for SocketLb {
    fn default() -> SocketLb {
        SocketLb::Off { reason: "no datapath".into() }
    }
}

impl fmt::Display for SocketLb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketLb::On { cgroup, host_namespace_only } => {
                let whose = if *host_namespace_only { "the node's namespace only" } else { "all namespaces" };
                write!(f, "on at cgroup {} ({whose})", cgroup.display())
            }
            SocketLb::Off { reason } => write!(f, "off: {reason}"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Io {
    /// AF_XDP sockets behind skiff's XDP program, attached in this mode.
    AfXdp { xdp_mode: XdpMode },
    /// AF_PACKET sockets with nftables steering.
    AfPacket,
    /// Tables only: nothing forwards.
    #[default]
    None,
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.io {
            Io::AfXdp { xdp_mode } => write!(f, "AF_XDP ({xdp_mode} XDP)")?,
            Io::AfPacket => f.write_str("AF_PACKET")?,
            Io::None => return f.write_str("none (tables recorded, not forwarded)"),
        }
        let plural = if self.workers == 1 { "" } else { "s" };
        // A node serves a veth per pod: the first few name the rest.
        let devices = match self.devices.len() {
            n if n > 4 => format!("{}, … ({n} devices)", self.devices[..3].join(", ")),
            _ => self.devices.join(", "),
        };
        write!(f, " on {devices} ({} worker{plural})", self.workers)
    }
}

/// Another node's pod network, reached through a tunnel to its address (or, in native
/// routing, routed via it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tunnel {
    pub node: String,
    pub pod_cidr: IpNet,
    pub endpoint: IpAddr,
}

/// A node of the cluster as `skiff node list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// This agent's node.
    pub local: bool,
    /// Its InternalIPs and ExternalIPs.
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    /// Where frames for its pods go: its InternalIP (none for this node, or a node without
    /// one).
    pub tunnel_endpoint: Option<IpAddr>,
    /// `local`; `reachable` when the datapath has a next hop to its endpoint, `no next hop`
    /// when it has none (its pods cannot be reached); `no InternalIP`; `unknown` without a
    /// datapath.
    pub health: String,
}

/// What an apply changed, in frontends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub unchanged: usize,
    /// Backend pools (Maglev tables) built by this apply.
    pub pools_built: usize,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.added == 0 && self.removed == 0 && self.changed == 0
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{} ~{} -{} ={} frontends, {} pools built",
            self.added, self.changed, self.removed, self.unchanged, self.pools_built
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastApply {
    pub report: ApplyReport,
    /// From the change's arrival to the tables' publication.
    pub micros: u64,
    pub unix_seconds: u64,
}

/// The workers' counters, summed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounters {
    pub received: u64,
    pub forwarded: u64,
    /// Answers sent back (RSTs and ICMP errors for services without backends).
    pub replied: u64,
    pub dropped: u64,
    /// Frames a worker received for a flow another owns, and handed to it.
    pub handed_off: u64,
    /// Drops by reason (only reasons that occurred).
    pub drops: BTreeMap<DropReason, u64>,
    /// What the XDP program dropped at the NIC, by reason (with AF_XDP).
    #[serde(default)]
    pub xdp_drops: BTreeMap<DropReason, u64>,
    /// New flows the workers translated to a service's backend (DNAT).
    #[serde(default)]
    pub service_flows: u64,
    /// What socket-LB did at connect time (with socket-LB on).
    #[serde(default)]
    pub socket_lb: BTreeMap<SockCounter, u64>,
    /// Established flows the workers handed to the NIC's flow table, took back (closing,
    /// backend gone), and could not hand (the table full).
    #[serde(default)]
    pub offloaded: u64,
    #[serde(default)]
    pub taken_back: u64,
    #[serde(default)]
    pub flow_table_full: u64,
    /// Packets of tracked flows by where the XDP program sent them (with AF_XDP).
    #[serde(default)]
    pub flow_paths: BTreeMap<FlowPath, u64>,
    /// Flow events the workers' queues to the agent had no room for.
    #[serde(default)]
    pub events_lost: u64,
    #[serde(default)]
    pub forwarded_bytes: u64,
    /// Bytes the flow table at the NIC forwarded (with AF_XDP).
    #[serde(default)]
    pub nic_forwarded_bytes: u64,
    /// Frames by XDP action (with AF_XDP): packets and bytes.
    #[serde(default)]
    pub xdp_actions: BTreeMap<XdpAction, (u64, u64)>,
    /// Tracked flows (IPv4, IPv6), and NAT ports in use (masqueraded flows).
    #[serde(default)]
    pub conntrack: (u64, u64),
    #[serde(default)]
    pub nat_ports: (u64, u64),
    /// Each worker's part of the last second spent at work, in thousandths.
    #[serde(default)]
    pub busy_permille: Vec<u16>,
}

/// The agent's observed flows (`skiff observe`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCounters {
    /// Flows observed since the agent started.
    pub seen: u64,
    /// Kept for `--last`, of `capacity` (`--flow-buffer`).
    pub kept: usize,
    pub capacity: usize,
    /// Flows followers missed by falling behind.
    pub lost_to_followers: u64,
    /// Followers now.
    pub followers: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What scripts read: enums by name, drops keyed by reason name.
    #[test]
    fn the_json_reads_as_it_prints() {
        let counters =
            WorkerCounters { drops: [(DropReason::TtlExceeded, 3)].into(), ..WorkerCounters::default() };
        let json = serde_json::to_value(&counters).unwrap();
        assert_eq!(json["drops"], serde_json::json!({"ttl-exceeded": 3}));
        assert_eq!(serde_json::from_value::<WorkerCounters>(json).unwrap(), counters);
        let health = Health::Degraded {
            problems: vec![
                Problem::ApplyFailed { error: "busy".into() },
                Problem::WaitingForFirstList { kinds: vec![Kind::Pod] },
            ],
        };
        assert_eq!(
            serde_json::to_value(&health).unwrap(),
            serde_json::json!({"state": "degraded", "problems": [
                {"problem": "apply-failed", "error": "busy"},
                {"problem": "waiting-for-first-list", "kinds": ["Pod"]},
            ]})
        );
        assert_eq!(
            health.to_string(),
            "Degraded: the last apply failed: busy; waiting for the first list of Pod"
        );
        let io = Io::AfXdp { xdp_mode: XdpMode::Generic };
        assert_eq!(
            serde_json::to_value(io).unwrap(),
            serde_json::json!({"type": "af-xdp", "xdp_mode": "generic"})
        );
    }
}
