//! skiff-agent's command line.

use std::{net::IpAddr, ops::RangeInclusive, path::PathBuf};

use anyhow::{Result, bail};
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use skiff_api::DEFAULT_SOCKET;
use skiff_common::{
    config::XdpMode,
    lb::{MAGLEV_TABLE_SIZE, MAGLEV_TABLE_SIZES},
    names::PIN_ROOT,
};
use skiff_engine::tunnel::TunnelProtocol;
use skiff_fastpath::datapath::Io;

use crate::{
    compile::{LbAlgorithm, Masquerade},
    endpoints::{EndpointConfig, cni_conf::CniInstall, ipam::IpamMode},
    overlay::Routing,
    policy::Enforcement,
};

#[derive(Parser, Debug)]
#[command(
    name = "skiff-agent",
    version,
    about = "skiff's node daemon: Kubernetes objects to an XDP/AF_XDP datapath"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CRDs skiff reads (CiliumNetworkPolicy, …) as YAML.
    Crds,
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Uninstall skiff's datapath from this node: detach the XDP program and remove its
    /// pinned attachments and maps (a stopped agent leaves them, so that a restart loses no
    /// flow).
    Cleanup {
        /// Where the maps and attachments are pinned.
        #[arg(long, value_name = "DIR", default_value = PIN_ROOT)]
        pin_dir: PathBuf,
    },
}

impl Cli {
    /// The command line, with the settings of `--config-dir` (a ConfigMap's folder) for the
    /// options it leaves out. Exits as clap does on a bad command line or `--help`.
    pub fn load() -> Result<Cli> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let matches = Cli::command().get_matches_from(&args);
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let Some(dir) = &cli.options.config_dir else { return Ok(cli) };
        let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        let from_dir = super::config_dir::args(dir, &Cli::command(), given)?;
        let all = args.iter().take(1).chain(&from_dir).chain(args.iter().skip(1));
        Ok(Cli::try_parse_from(all)?)
    }
}

#[derive(Args, Debug)]
pub struct Options {
    /// Settings from a folder holding one file per option (a ConfigMap mounted as a volume,
    /// as cilium-agent's `--config-dir`): the file's name is the option's long name or its
    /// Cilium alias, its content the value. The command line wins.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Kubernetes YAML in a folder, watched for changes.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub state_dir: Option<PathBuf>,
    /// A Kubernetes API server (in a pod, without either flag: the in-cluster config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// In a pod: the API server's address, as Cilium's: no kube-proxy serves the
    /// `kubernetes` Service before skiff runs (default: KUBERNETES_SERVICE_HOST).
    #[arg(long, value_name = "HOST")]
    pub k8s_service_host: Option<String>,
    /// In a pod: the API server's port, with --k8s-service-host.
    #[arg(long, value_name = "PORT", default_value_t = 443)]
    pub k8s_service_port: u16,
    /// Leave the CRDs skiff reads to the user: without this, the agent installs them or
    /// updates its own older ones, as cilium-agent does.
    #[arg(long, value_name = "BOOL", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub skip_crd_creation: bool,
    /// skiff replaces kube-proxy, always: `false` (kube-proxy serves Services) is refused
    /// rather than run both.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub kube_proxy_replacement: bool,
    /// How a Service's backend is chosen unless its `service.cilium.io/lb-algorithm`
    /// annotation says, as Cilium's bpf-lb-algorithm: maglev (every node and restart picks
    /// the same) or random.
    #[arg(long, value_name = "ALGORITHM", value_enum, default_value_t = LbAlgorithm::Maglev)]
    pub bpf_lb_algorithm: LbAlgorithm,
    /// This node's Node object.
    #[arg(long, value_name = "NAME", default_value_t = hostname())]
    pub node_name: String,
    /// NodePorts also listen here (repeatable).
    #[arg(long = "node-address", value_name = "IP")]
    pub node_addresses: Vec<IpAddr>,
    /// A device the datapath serves (repeatable or comma-separated, uplink first).
    #[arg(long = "device", visible_alias = "devices", value_name = "IFACE", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// How packets reach the workers (none: tables only).
    #[arg(long, value_enum, default_value_t = IoMode::Afxdp)]
    pub io: IoMode,
    /// auto: native where the driver has it, else generic (and says which); native; generic.
    #[arg(long, value_name = "MODE", default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,
    /// Workers, one per receive queue.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,
    /// Connection-tracking entries per worker (the table is allocated up front; it becomes
    /// resident as flows touch it: about 0.4 KiB per entry at most).
    #[arg(long, value_name = "N", default_value_t = 512 * 1024, value_parser = clap::value_parser!(u64).range(1024..=16 << 20))]
    pub ct_capacity: u64,
    /// Serve Prometheus metrics (`/metrics`) and `/healthz` here: `:9962` (every address) or
    /// `ADDR:PORT`; off unless given, as Cilium's.
    #[arg(long, value_name = "[ADDR]:PORT", value_parser = serve_addr)]
    pub prometheus_serve_addr: Option<std::net::SocketAddr>,
    /// With an API server: how long a CiliumIdentity whose labels no pod has stays before it
    /// is deleted (Cilium operator's `identity-heartbeat-timeout`): `30m`, `90s`, …
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = duration)]
    pub identity_heartbeat_timeout: std::time::Duration,
    /// Record what the datapath decides for `skiff observe` (drops sampled at the NIC are
    /// recorded either way).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub flow_events: bool,
    /// Observed flows the agent keeps for `skiff observe --last`.
    #[arg(long, visible_alias = "hubble-event-buffer-capacity", value_name = "N", default_value_t = crate::observer::DEFAULT_CAPACITY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    pub flow_buffer: usize,
    /// Slots of every service's Maglev table: a prime of 251..=131071.
    #[arg(long, visible_alias = "bpf-lb-maglev-table-size", value_name = "M", default_value_t = MAGLEV_TABLE_SIZE, value_parser = maglev_table_size)]
    pub maglev_table_size: u32,
    /// The cluster's NodePort range.
    #[arg(long, value_name = "A-B", default_value = "30000-32767", value_parser = port_range)]
    pub node_port_range: RangeInclusive<i32>,
    /// The local API's unix socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where the XDP program's maps and attachments are pinned (bpffs): they stay when the
    /// agent stops, for the next start (`skiff-agent cleanup` removes them).
    #[arg(long, value_name = "DIR", default_value = PIN_ROOT)]
    pub pin_dir: PathBuf,
    /// How log lines are written (to stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Where pods' addresses come from: their Node's spec.podCIDRs, or --pod-cidr.
    #[arg(long, value_enum, default_value_t = IpamArg::Kubernetes)]
    pub ipam: IpamArg,
    /// This node's pod CIDR of a family, for --ipam cluster-pool (repeatable: IPv4, IPv6).
    #[arg(long = "pod-cidr", value_name = "CIDR")]
    pub pod_cidrs: Vec<IpNet>,
    /// The pods' MTU (default: the first device's).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1280..=9000))]
    pub mtu: Option<u32>,
    /// Where endpoints, address allocations and identities are kept across restarts.
    #[arg(long, value_name = "DIR", default_value = "/run/skiff/state")]
    pub data_dir: PathBuf,
    /// Install skiff-cni and its conflist for the node's container runtime, once the node
    /// has a pod CIDR.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub cni_install: bool,
    /// Where the runtime finds CNI plugins.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_path: PathBuf,
    /// Where the runtime reads CNI configurations.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_path: PathBuf,
    /// The conflist's file name (runtimes take the first in name order).
    #[arg(long, value_name = "NAME", default_value = "05-skiff.conflist")]
    pub cni_conf_name: String,
    /// Move the other CNI configurations aside (renamed *.skiff_bak).
    #[arg(long, value_name = "BOOL", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub cni_exclusive: bool,
    /// Install this conflist instead of skiff's (its first plugin must be skiff-cni).
    #[arg(long, visible_alias = "read-cni-conf", value_name = "FILE")]
    pub cni_custom_conf: Option<PathBuf>,
    /// How endpoints come under network policy, as Cilium's policyEnforcementMode: once a
    /// policy selects them (default), always (what no rule allows is denied, also with no
    /// policy), or never.
    #[arg(long, visible_alias = "enable-policy", value_name = "MODE", value_enum, default_value_t = Enforcement::Default)]
    pub policy_enforcement: Enforcement,
    /// How pods on different nodes reach each other, as Cilium's routingMode: through a
    /// tunnel to the node hosting the pod CIDR (needs --io afxdp), or routed natively.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = RoutingMode::Tunnel)]
    pub routing_mode: RoutingMode,
    /// The tunnel's encapsulation, as Cilium's tunnelProtocol.
    #[arg(long, value_name = "PROTOCOL", value_enum, default_value_t = TunnelArg::Vxlan)]
    pub tunnel_protocol: TunnelArg,
    /// The tunnel's UDP port [default: 8472 for VXLAN, 6081 for Geneve, as Cilium's].
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub tunnel_port: Option<u16>,
    /// In native routing, add a route to each other node's pod CIDRs via its InternalIP (the
    /// nodes share a link), and remove it when the Node goes.
    #[arg(long, value_name = "BOOL", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub auto_direct_node_routes: bool,
    /// Pods' IPv4 traffic out of the cluster (its pod CIDRs, node addresses and native
    /// routing CIDR) leaves with the node's address (needs --io afxdp).
    #[arg(long, value_name = "BOOL", default_value_t = false, action = ArgAction::Set)]
    pub enable_ipv4_masquerade: bool,
    /// The same for IPv6.
    #[arg(long, value_name = "BOOL", default_value_t = false, action = ArgAction::Set)]
    pub enable_ipv6_masquerade: bool,
    /// IPv4 destinations the network routes for pods as they are: never masqueraded.
    #[arg(long, value_name = "CIDR")]
    pub ipv4_native_routing_cidr: Option<ipnet::Ipv4Net>,
    /// IPv6 destinations the network routes for pods as they are: never masqueraded.
    #[arg(long, value_name = "CIDR")]
    pub ipv6_native_routing_cidr: Option<ipnet::Ipv6Net>,
    /// Socket-LB, as Cilium's bpf-lb-sock: the node's sockets (and pods') connect to a
    /// service's backend directly, translated at connect time by cgroup socket programs.
    /// Where the kernel or the cgroup refuses them, the agent runs without and says why.
    #[arg(long, visible_alias = "bpf-lb-sock", value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub socket_lb: bool,
    /// Translate only the node's own sockets (Cilium's socketLB.hostNamespaceOnly): pods'
    /// connections keep the service address for the workers (or a mesh's sidecar).
    #[arg(long, visible_alias = "bpf-lb-sock-hostns-only", value_name = "BOOL", default_value_t = false, action = ArgAction::Set)]
    pub socket_lb_host_namespace_only: bool,
    /// The node's procfs, where the agent sets forwarding on, as Cilium's `procfs`: in a
    /// container, where /proc/sys is read-only, the host's /proc/sys/net mounted beneath it
    /// (`/host/proc`).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub procfs: PathBuf,
    /// The cgroup v2 whose sockets socket-LB serves (Cilium's cgroup.hostRoot): cgroup2 is
    /// mounted there unless it is already.
    #[arg(long, value_name = "DIR", default_value = "/run/skiff/cgroupv2")]
    pub cgroup_root: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoutingMode {
    /// VXLAN or Geneve between nodes (--tunnel-protocol).
    Tunnel,
    /// No encapsulation: the network (or --auto-direct-node-routes) routes pod CIDRs.
    Native,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TunnelArg {
    Vxlan,
    Geneve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IpamArg {
    /// The Node object's spec.podCIDRs (Kubernetes' node IPAM).
    Kubernetes,
    /// The CIDRs given with --pod-cidr.
    ClusterPool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoMode {
    /// AF_XDP sockets behind skiff's XDP program.
    Afxdp,
    /// AF_PACKET sockets with nftables steering (no AF_XDP needed).
    Afpacket,
    /// No datapath: the tables are compiled and shown, nothing forwards.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

fn maglev_table_size(text: &str) -> Result<u32, String> {
    text.parse()
        .ok()
        .filter(|m| MAGLEV_TABLE_SIZES.contains(m))
        .ok_or_else(|| format!("one of {MAGLEV_TABLE_SIZES:?}"))
}

fn port_range(text: &str) -> Result<RangeInclusive<i32>, String> {
    let range =
        text.split_once('-').and_then(|(a, b)| Some((a.parse::<i32>().ok()?, b.parse::<i32>().ok()?)));
    match range {
        Some((a, b)) if 1 <= a && a <= b && b <= 65535 => Ok(a..=b),
        _ => Err("A-B with 1 <= A <= B <= 65535".into()),
    }
}

/// `30m`, `90s`, `1h 30m`.
fn duration(text: &str) -> Result<std::time::Duration, String> {
    let d: jiff::SignedDuration = text.parse().map_err(|e| format!("{text:?}: {e} (as 30m or 90s)"))?;
    std::time::Duration::try_from(d).map_err(|_| format!("{text:?}: not a positive duration"))
}

/// `:9962` (every IPv4 address, as Cilium writes it) or `ADDR:PORT`.
fn serve_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    let full = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_owned() };
    full.parse().map_err(|_| format!("{text:?}: :PORT or ADDR:PORT"))
}

/// Where the objects come from.
pub(super) enum SourceArg {
    StateDir(PathBuf),
    /// A kubeconfig, or the in-cluster configuration.
    Kubernetes(Option<PathBuf>),
}

impl Options {
    /// Refuses what skiff cannot be: anything but kube-proxy's replacement.
    pub(super) fn check(&self) -> Result<()> {
        if !self.kube_proxy_replacement {
            bail!(
                "kube-proxy-replacement=false: skiff always serves Services itself; remove kube-proxy and this setting"
            );
        }
        Ok(())
    }

    pub(super) fn source(&self) -> Result<SourceArg> {
        Ok(match (&self.state_dir, &self.kubeconfig) {
            (Some(dir), _) => SourceArg::StateDir(dir.clone()),
            (None, Some(file)) => SourceArg::Kubernetes(Some(file.clone())),
            (None, None)
                if self.k8s_service_host.is_some()
                    || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() =>
            {
                SourceArg::Kubernetes(None)
            }
            (None, None) => bail!("no source: --state-dir DIR or --kubeconfig FILE"),
        })
    }

    pub(super) fn endpoints(&self) -> Result<EndpointConfig> {
        let ipam = match (self.ipam, self.pod_cidrs.is_empty()) {
            (IpamArg::Kubernetes, true) => IpamMode::Kubernetes,
            (IpamArg::Kubernetes, false) => bail!("--pod-cidr is for --ipam cluster-pool"),
            (IpamArg::ClusterPool, true) => bail!("--ipam cluster-pool needs --pod-cidr CIDR"),
            (IpamArg::ClusterPool, false) => IpamMode::ClusterPool(self.pod_cidrs.clone()),
        };
        // The tunnel's headers come out of the underlay's MTU (over IPv6 when the node's
        // addresses are all IPv6).
        let v6_underlay = !self.node_addresses.is_empty() && self.node_addresses.iter().all(IpAddr::is_ipv6);
        let overhead = self.routing().mtu_overhead(v6_underlay);
        let underlay = self.underlay_mtu().map_or(1500, u32::from);
        Ok(EndpointConfig {
            dir: self.data_dir.clone(),
            ipam,
            mtu: self.mtu.unwrap_or(underlay - overhead),
            queues: self.workers,
            node: self.node_name.clone(),
        })
    }

    pub(super) fn cni(&self) -> Option<CniInstall> {
        self.cni_install.then(|| CniInstall {
            bin_dir: self.cni_bin_path.clone(),
            conf_dir: self.cni_conf_path.clone(),
            conf_name: self.cni_conf_name.clone(),
            exclusive: self.cni_exclusive,
            custom_conf: self.cni_custom_conf.clone(),
            socket: self.socket.clone(),
        })
    }

    pub(super) fn routing(&self) -> Routing {
        match self.routing_mode {
            RoutingMode::Tunnel => Routing::tunnel(
                match self.tunnel_protocol {
                    TunnelArg::Vxlan => TunnelProtocol::Vxlan,
                    TunnelArg::Geneve => TunnelProtocol::Geneve,
                },
                self.tunnel_port,
            ),
            RoutingMode::Native => Routing::Native { auto_direct_node_routes: self.auto_direct_node_routes },
        }
    }

    /// The first device's MTU, if it has one.
    pub(super) fn underlay_mtu(&self) -> Option<u16> {
        let first = self.devices.first()?;
        std::fs::read_to_string(format!("/sys/class/net/{first}/mtu")).ok()?.trim().parse().ok()
    }

    pub(super) fn masquerade(&self) -> Masquerade {
        let v4 = self.ipv4_native_routing_cidr.map(IpNet::V4);
        let v6 = self.ipv6_native_routing_cidr.map(IpNet::V6);
        Masquerade {
            v4: self.enable_ipv4_masquerade,
            v6: self.enable_ipv6_masquerade,
            native_routing_cidrs: v4.into_iter().chain(v6).collect(),
        }
    }

    pub(super) fn io(&self) -> Result<Option<Io>> {
        let io = match self.io {
            IoMode::Afxdp => Some(Io::AfXdp(self.xdp_mode)),
            IoMode::Afpacket => Some(Io::AfPacket),
            IoMode::None => None,
        };
        if self.io == IoMode::Afpacket && self.routing_mode == RoutingMode::Tunnel {
            // Refused rather than started with pods that cannot reach other nodes.
            bail!(
                "--routing-mode tunnel needs --io afxdp (skiff's XDP program decapsulates); with AF_PACKET use --routing-mode native"
            );
        }
        if self.io == IoMode::Afpacket && (self.enable_ipv4_masquerade || self.enable_ipv6_masquerade) {
            bail!(
                "masquerading pods' traffic needs --io afxdp (skiff's XDP program steers it to the workers)"
            );
        }
        if self.auto_direct_node_routes && self.routing_mode == RoutingMode::Tunnel {
            bail!("--auto-direct-node-routes is for --routing-mode native");
        }
        if io.is_some() && self.devices.is_empty() {
            bail!("the datapath needs at least one --device (or --io none)");
        }
        Ok(io)
    }
}
