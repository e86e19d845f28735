//! `skiff`: the command line to a running skiff-agent, modelled on `cilium-dbg`. Tables for
//! people, `-o json` for scripts; an error from the agent is printed as one and exits 1.

mod observe;

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;
use skiff_api::{
    Client, DEFAULT_SOCKET, EndpointView, FlowView, IdentityView, IpamView, MapView, MetricSample, NodeView,
    PodRef, PolicyView, PrefilterView, Protocol, Request, RuleView, ServiceView, Status, TraceEnd, TraceView,
    WorkerCounters,
};

#[derive(Parser)]
#[command(name = "skiff", version, about = "Ask a running skiff-agent what it does")]
struct Cli {
    /// The agent's local API socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The agent: health, source, datapath, objects, rejections, last apply, counters.
    Status {
        /// Every counter: the XDP program's verdicts, each worker, the observer.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Services.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Endpoints: the pods skiff-cni gave a network.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Security identities: the reserved ones, and one per distinct pod label set.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// The cluster's nodes: addresses, pod CIDRs, tunnel endpoints and health.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Network policy: the compiled rules, and the verdict on a flow.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The NIC prefilter: source prefixes dropped on arrival (kept across restarts).
    Prefilter {
        #[command(subcommand)]
        command: PrefilterCommand,
    },
    /// Pod addresses: the pools and who holds each address.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// Connection tracking: the flows the node tracks, and where each is forwarded.
    Ct {
        #[command(subcommand)]
        command: CtCommand,
    },
    /// NAT: the tracked flows the node masquerades, with the address and port each holds.
    Nat {
        #[command(subcommand)]
        command: NatCommand,
    },
    /// The BPF maps pinned by the datapath, with entries and capacity.
    Map {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// The agent's metrics, as Prometheus scrapes them.
    Metrics {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// The flows the datapath decides (forwarded, translated, judged, dropped; at the NIC
    /// or by a worker), as `hubble observe` shows them.
    Observe(observe::Observe),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Every service frontend with its backends.
    List,
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Every endpoint: id, identity, labels, addresses, interface, attach mode, state.
    List,
    /// One endpoint in full.
    Get { id: u32 },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Every identity with its labels.
    List,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Every node, this one first.
    List,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Every compiled rule with the object it came from.
    Get,
    /// The verdict on a new flow, from the tables the workers use, and the rule that decided
    /// (as `cilium policy trace`).
    Trace {
        /// The source pod, NAMESPACE/NAME.
        #[arg(long, value_name = "NS/NAME", required_unless_present = "src_ip")]
        src_pod: Option<String>,
        #[arg(long, value_name = "IP", conflicts_with = "src_pod")]
        src_ip: Option<IpAddr>,
        /// The destination pod, NAMESPACE/NAME.
        #[arg(long, value_name = "NS/NAME", required_unless_present = "dst_ip")]
        dst_pod: Option<String>,
        #[arg(long, value_name = "IP", conflicts_with = "dst_pod")]
        dst_ip: Option<IpAddr>,
        /// The destination port and protocol: 80, 80/TCP, 53/UDP.
        #[arg(long, value_name = "PORT[/PROTO]")]
        dport: String,
    },
}

#[derive(Subcommand)]
enum PrefilterCommand {
    /// The prefixes dropped, with their rule numbers.
    List,
    /// Drops these source prefixes from now on.
    Update {
        #[arg(long = "cidr", value_name = "CIDR", required = true)]
        cidrs: Vec<ipnet::IpNet>,
    },
    /// No longer drops these source prefixes.
    Delete {
        #[arg(long = "cidr", value_name = "CIDR", required = true)]
        cidrs: Vec<ipnet::IpNet>,
    },
}

#[derive(Subcommand)]
enum CtCommand {
    /// The tracked flows (from the XDP program's flow table), as the client sent them and as
    /// the replies come, with the backend and whether the NIC forwards them.
    List {
        /// Only flows with this address at either end, before or after NAT.
        #[arg(long, value_name = "IP")]
        address: Option<IpAddr>,
        /// Only flows with this port at either end, before or after NAT.
        #[arg(long, value_name = "PORT")]
        port: Option<u16>,
        /// Only flows of this protocol (TCP, UDP, ICMP, ICMPv6).
        #[arg(long, value_name = "PROTO")]
        protocol: Option<String>,
    },
}

#[derive(Subcommand)]
enum NatCommand {
    /// Masqueraded flows: the source each had, and the node's address and port it leaves
    /// with.
    List,
}

#[derive(Subcommand)]
enum ListCommand {
    List,
}

#[derive(Subcommand)]
enum IpamCommand {
    /// The pools and their allocations.
    List,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.socket);
    match cli.command {
        Command::Status { verbose } => show(cli.output, &client.status()?, |s| print_status(s, verbose)),
        Command::Nat { command: NatCommand::List } => {
            // A flow is masqueraded when its replies come to another address or port than
            // its client sent from.
            let nat: Vec<FlowView> =
                client.flows()?.into_iter().filter(|f| f.reply_destination != f.source).collect();
            show(cli.output, &nat, |f| print_nat(f))
        }
        Command::Map { command: ListCommand::List } => show(cli.output, &client.maps()?, |m| print_maps(m)),
        Command::Metrics { command: ListCommand::List } => {
            show(cli.output, &client.metrics()?, |m| print_metrics(m))
        }
        Command::Service { command: ServiceCommand::List } => {
            show(cli.output, &client.services()?, |s| print_services(s))
        }
        Command::Endpoint { command: EndpointCommand::List } => {
            show(cli.output, &client.endpoints()?, |e| print_endpoints(e))
        }
        Command::Endpoint { command: EndpointCommand::Get { id } } => {
            show(cli.output, &client.endpoint(id)?, print_endpoint)
        }
        Command::Identity { command: IdentityCommand::List } => {
            show(cli.output, &client.identities()?, |ids| print_identities(ids))
        }
        Command::Node { command: NodeCommand::List } => {
            show(cli.output, &client.nodes()?, |n| print_nodes(n))
        }
        Command::Policy { command: PolicyCommand::Get } => show(cli.output, &client.policy()?, print_policy),
        Command::Policy { command: PolicyCommand::Trace { src_pod, src_ip, dst_pod, dst_ip, dport } } => {
            let (port, protocol) = port_and_protocol(&dport)?;
            let (src, dst) = (end(src_pod, src_ip)?, end(dst_pod, dst_ip)?);
            show(cli.output, &client.trace(src, dst, port, protocol)?, print_trace)
        }
        Command::Prefilter { command } => {
            let request = match command {
                PrefilterCommand::List => Request::PrefilterList,
                PrefilterCommand::Update { cidrs } => Request::PrefilterUpdate { cidrs },
                PrefilterCommand::Delete { cidrs } => Request::PrefilterDelete { cidrs },
            };
            show(cli.output, &client.prefilter(&request)?, print_prefilter)
        }
        Command::Ipam { command: IpamCommand::List } => show(cli.output, &client.ipam()?, print_ipam),
        Command::Ct { command: CtCommand::List { address, port, protocol } } => {
            let flows: Vec<FlowView> = client
                .flows()?
                .into_iter()
                .filter(|f| address.is_none_or(|a| f.has_address(a)))
                .filter(|f| port.is_none_or(|p| f.has_port(p)))
                .filter(|f| protocol.as_ref().is_none_or(|p| f.protocol.eq_ignore_ascii_case(p)))
                .collect();
            show(cli.output, &flows, |f| print_flows(f))
        }
        Command::Observe(observe) => observe.run(&client, cli.output),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "skiff", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// `80`, `80/TCP`, `53/udp`.
fn port_and_protocol(text: &str) -> Result<(u16, Protocol)> {
    let (port, protocol) = text.split_once('/').unwrap_or((text, "TCP"));
    let port = port.parse().with_context(|| format!("--dport {text}: {port:?} is not a port 0-65535"))?;
    let Some(protocol) = Protocol::from_name(&protocol.to_uppercase()) else {
        bail!("--dport {text}: {protocol:?} is not TCP, UDP or SCTP");
    };
    Ok((port, protocol))
}

fn end(pod: Option<String>, ip: Option<IpAddr>) -> Result<TraceEnd> {
    match (pod, ip) {
        (_, Some(ip)) => Ok(TraceEnd::Ip(ip)),
        (Some(pod), None) => match pod.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                Ok(TraceEnd::Pod(PodRef { namespace: namespace.into(), name: name.into() }))
            }
            _ => bail!("{pod:?}: a pod is NAMESPACE/NAME"),
        },
        (None, None) => bail!("a pod or an address is needed"),
    }
}

fn show<T: Serialize + ?Sized>(output: Output, value: &T, table: impl FnOnce(&T)) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => table(value),
    }
    Ok(())
}

/// A row's label: `Key:`, or nothing on a row that goes on the one above.
fn label(key: &str) -> String {
    if key.is_empty() { String::new() } else { format!("{key}:") }
}

/// A borderless table, as cilium-dbg prints them (print it with `trim_fmt`).
fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING);
    if !header.is_empty() {
        table.set_header(header.to_vec());
    }
    table
}

fn print_status(s: &Status, verbose: bool) {
    let mut t = table(&[]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![label(k), v]);
    };
    row("Health", s.health.to_string());
    row("Agent", format!("skiff-agent {} on node {}", s.version, s.node));
    let connected = if s.connected { "connected" } else { "NOT connected, tables kept" };
    row("Source", format!("{} ({connected})", s.source));
    row("Datapath", s.datapath.to_string());
    let connects =
        s.workers.as_ref().map(|w| &w.socket_lb).filter(|c| !c.is_empty()).map_or(String::new(), |c| {
            let counts: Vec<String> = c.iter().map(|(what, n)| format!("{n} {what}")).collect();
            format!(": connects {}", counts.join(", "))
        });
    row("Socket-LB", format!("{}{connects}", s.datapath.socket_lb));
    let objects: Vec<String> = s.objects.iter().map(|(k, n)| format!("{n} {k}")).collect();
    row("Objects", if objects.is_empty() { "none".into() } else { objects.join(", ") });
    row("Services", format!("{} frontends, {} backends, {} next hops", s.frontends, s.backends, s.next_hops));
    row("Identities", format!("{} (distinct pod label sets), {}", s.identities, s.identity_allocation));
    let (ingress, egress) = s.enforced;
    row(
        "Policies",
        format!(
            "{} (enforcement {}): {ingress} endpoints with ingress policy, {egress} with egress policy",
            s.policies, s.policy_enforcement
        ),
    );
    if egress > 0 {
        // Said where the figure is read: egress policy does not cover the node itself.
        row("", "not enforced: a pod's traffic to this node's own addresses (no host policy yet)".to_owned());
    }
    row("Prefilter", format!("{} source prefixes dropped at the NIC", s.prefilter));
    let nodes: std::collections::BTreeSet<&str> = s.tunnels.iter().map(|t| t.node.as_str()).collect();
    row("Routing", format!("{}: {} pod CIDRs of {} other nodes", s.routing, s.tunnels.len(), nodes.len()));
    row("Masquerading", format!("pods' traffic out of the cluster: {}", s.masquerading));
    for tunnel in &s.tunnels {
        row("", format!("{} via {} ({})", tunnel.pod_cidr, tunnel.endpoint, tunnel.node));
    }
    let last_apply = s.last_apply.as_ref().map_or_else(
        || "none yet".into(),
        |a| format!("#{}: {}, {:.1} ms after the change", s.applies, a.report, a.micros as f64 / 1000.0),
    );
    row("Last apply", last_apply);
    if let Some(w) = &s.workers {
        worker_rows(w, &mut row);
    }
    if !s.on_node_addresses.is_empty() {
        row(
            "Node addresses",
            "services on this node's own addresses: its connects to them go to their backends".into(),
        );
        for f in &s.on_node_addresses {
            row("", f.clone());
        }
    }
    if !s.ignored.is_empty() {
        row("Ignored", format!("{} of kinds skiff does not read: {}", s.ignored.len(), s.ignored.join(", ")));
    }
    match s.rejections.len() {
        0 => row("Rejections", "none".into()),
        n => row("Rejections", format!("{n} (the last good version of each keeps running)")),
    }
    if verbose {
        verbose_rows(s, &mut row);
    }
    println!("{}", t.trim_fmt());
    for r in &s.rejections {
        let object = r.key.as_ref().map_or_else(|| "(document)".into(), ToString::to_string);
        println!("  {object} ({})", r.origin);
        for e in &r.errors {
            println!("      {e}");
        }
    }
}

/// The workers' counters, and what the XDP program dropped.
fn worker_rows(w: &WorkerCounters, row: &mut impl FnMut(&str, String)) {
    row(
        "Workers",
        format!(
            "{} received, {} forwarded, {} replied, {} dropped, {} handed to their flow's worker, {} new service flows (DNAT)",
            w.received, w.forwarded, w.replied, w.dropped, w.handed_off, w.service_flows
        ),
    );
    for (reason, n) in &w.drops {
        row("", format!("{n:>10} {reason}"));
    }
    if w.offloaded + w.flow_table_full > 0 || !w.flow_paths.is_empty() {
        row(
            "Flow table",
            format!(
                "{} flows offloaded to the NIC, {} taken back, {} found it full; packets of tracked flows:",
                w.offloaded, w.taken_back, w.flow_table_full
            ),
        );
        for (path, n) in &w.flow_paths {
            row("", format!("{n:>10} {path}"));
        }
    }
    if !w.xdp_drops.is_empty() {
        row("XDP drops", format!("{} at the NIC", w.xdp_drops.values().sum::<u64>()));
        for (reason, n) in &w.xdp_drops {
            row("", format!("{n:>10} {reason}"));
        }
    }
}

fn print_services(services: &[ServiceView]) {
    let mut t = table(&["FRONTEND", "TYPE", "SERVICE", "POLICY", "ALGORITHM", "SOCKET-LB", "BACKENDS"]);
    for s in services {
        let policy = match s.affinity_timeout_seconds {
            Some(timeout) => format!("{} ClientIP/{timeout}s", s.traffic_policy),
            None => s.traffic_policy.to_string(),
        };
        let backends: Vec<String> = s
            .backends
            .iter()
            .map(|b| {
                let state = if b.weight == 0 { "terminating" } else { "active" };
                format!("{} => {} ({state}{})", b.id, b.endpoint(), if b.local { ", local" } else { "" })
            })
            .collect();
        let backends = if backends.is_empty() {
            "(none: answered with RST / ICMP unreachable)".into()
        } else {
            backends.join("\n")
        };
        t.add_row(vec![
            s.frontend(),
            s.kind.to_string(),
            s.service.to_string(),
            policy,
            s.algorithm.to_string(),
            if s.socket_lb { "yes" } else { "no" }.to_owned(),
            backends,
        ]);
    }
    println!("{}", t.trim_fmt());
}

/// Labels as Cilium prints them: `k8s:key=value`, one per line.
fn labels(e: &EndpointView) -> String {
    if e.labels.is_empty() {
        return "reserved:init".into();
    }
    e.labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect::<Vec<_>>().join("\n")
}

fn addresses(e: &EndpointView, v4: bool) -> String {
    let found: Vec<String> =
        e.addresses.iter().filter(|a| a.is_ipv4() == v4).map(ToString::to_string).collect();
    found.join("\n")
}

fn print_endpoints(endpoints: &[EndpointView]) {
    let mut t = table(&[
        "ENDPOINT",
        "POLICY (ingress)",
        "POLICY (egress)",
        "IDENTITY",
        "LABELS",
        "IPv4",
        "IPv6",
        "INTERFACE",
        "ATTACH",
        "STATE",
    ]);
    for e in endpoints {
        t.add_row(vec![
            e.id.to_string(),
            enabled(e.policy.0).into(),
            enabled(e.policy.1).into(),
            e.identity.to_string(),
            labels(e),
            addresses(e, true),
            addresses(e, false),
            e.host_ifname.clone(),
            e.attach.to_string(),
            e.state.to_string(),
        ]);
    }
    println!("{}", t.trim_fmt());
}

fn print_endpoint(e: &EndpointView) {
    let mut t = table(&[]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![label(k), v]);
    };
    row("Endpoint", e.id.to_string());
    row("Pod", e.pod.as_ref().map_or_else(|| "(not named by the runtime)".into(), ToString::to_string));
    row("Container", e.attachment.to_string());
    row("Network namespace", e.netns.display().to_string());
    row("Identity", e.identity.to_string());
    row("Policy", format!("ingress {}, egress {}", enabled(e.policy.0), enabled(e.policy.1)));
    row("Labels", labels(e));
    row("IPv4", addresses(e, true));
    row("IPv6", addresses(e, false));
    row("Host interface", e.host_ifname.clone());
    row("Attach", e.attach.to_string());
    row("State", e.state.to_string());
    println!("{}", t.trim_fmt());
}

fn enabled(on: bool) -> &'static str {
    if on { "Enabled" } else { "Disabled" }
}

fn print_policy(p: &PolicyView) {
    println!("Policy enforcement: {}", p.enforcement);
    println!("Policies: {}", if p.policies.is_empty() { "none".into() } else { p.policies.join(", ") });
    let mut t = table(&["RULE", "SOURCE", "DIRECTION", "SUBJECT", "PEERS", "PORTS", "NOTE"]);
    for r in &p.rules {
        let direction = if r.deny { format!("{} DENY", r.direction) } else { r.direction.clone() };
        t.add_row(vec![
            r.id.to_string(),
            format!("{}\n{}", r.source, r.at).trim().to_owned(),
            direction,
            r.subject.replace(", ", "\n"),
            r.peers.join("\n"),
            r.ports.join("\n"),
            r.not_enforced.as_deref().map_or_else(String::new, |n| format!("NOT ENFORCED: {n}")),
        ]);
    }
    println!("{}", t.trim_fmt());
}

fn rule_line(rule: Option<&RuleView>) -> String {
    rule.map_or_else(String::new, |r| format!(" by rule {} ({} {})", r.id, r.source, r.at).replace(" )", ")"))
}

fn print_trace(t: &TraceView) {
    println!(
        "Tracing {} (identity {}) -> {} (identity {}) port {}/{}",
        t.src, t.src_identity, t.dst, t.dst_identity, t.port, t.protocol
    );
    for (what, verdict) in [("Egress of the source", &t.egress), ("Ingress of the destination", &t.ingress)] {
        match verdict {
            None => println!("{what}: not an endpoint of this node"),
            Some(v) => println!("{what}: {}{}", v.verdict, rule_line(v.rule.as_ref())),
        }
    }
    println!("Final verdict: {}", t.verdict);
}

fn print_prefilter(p: &PrefilterView) {
    let mut t = table(&["RULE", "PREFIX"]);
    for (cidr, rule) in &p.cidrs {
        t.add_row(vec![rule.to_string(), cidr.to_string()]);
    }
    println!("{}", t.trim_fmt());
}

fn print_identities(identities: &[IdentityView]) {
    let mut t = table(&["ID", "LABELS"]);
    for i in identities {
        t.add_row(vec![i.id.to_string(), i.labels.join("\n")]);
    }
    println!("{}", t.trim_fmt());
}

fn print_nodes(nodes: &[NodeView]) {
    let mut t = table(&["NAME", "ADDRESSES", "POD CIDRS", "TUNNEL ENDPOINT", "HEALTH"]);
    for n in nodes.iter().filter(|n| n.local).chain(nodes.iter().filter(|n| !n.local)) {
        let list = |items: Vec<String>| if items.is_empty() { "-".to_owned() } else { items.join("\n") };
        t.add_row(vec![
            n.name.clone(),
            list(n.addresses.iter().map(ToString::to_string).collect()),
            list(n.pod_cidrs.iter().map(ToString::to_string).collect()),
            n.tunnel_endpoint.map_or_else(|| "-".to_owned(), |e| e.to_string()),
            n.health.clone(),
        ]);
    }
    println!("{}", t.trim_fmt());
}

fn print_flows(flows: &[FlowView]) {
    let mut t = table(&["PROTO", "ORIGINAL", "REPLY", "BACKEND", "FORWARDED BY", "NIC PACKETS", "NIC BYTES"]);
    for f in flows {
        t.add_row(vec![
            f.protocol.clone(),
            format!("{} -> {}", f.source, f.destination),
            format!("{} -> {}", f.reply_source, f.reply_destination),
            if f.backend == 0 { "-".into() } else { f.backend.to_string() },
            if f.at_nic { "NIC (XDP)".into() } else { "worker".into() },
            f.nic_packets.to_string(),
            f.nic_bytes.to_string(),
        ]);
    }
    println!("{}", t.trim_fmt());
    println!("{} flows, {} forwarded at the NIC", flows.len(), flows.iter().filter(|f| f.at_nic).count());
}

/// What `status` leaves out: every device with its XDP mode, every XDP verdict, the flows and NAT ports, each worker's load,
/// the observer.
fn verbose_rows(s: &Status, row: &mut impl FnMut(&str, String)) {
    let d = &s.datapath;
    let mode = |name: &String| d.xdp_modes.get(name).map_or(String::new(), |m| format!(" ({m} XDP)"));
    row(
        "Devices",
        d.devices.iter().map(|name| format!("{name}{}", mode(name))).collect::<Vec<_>>().join(", "),
    );
    if let Some(w) = &s.workers {
        row("XDP verdicts", String::new());
        for (action, (packets, bytes)) in &w.xdp_actions {
            row("", format!("{packets:>10} {action} ({bytes} bytes)"));
        }
        row(
            "Tracked flows",
            format!(
                "{} IPv4, {} IPv6; NAT ports in use: {} IPv4, {} IPv6",
                w.conntrack.0, w.conntrack.1, w.nat_ports.0, w.nat_ports.1
            ),
        );
        let busy: Vec<String> = w
            .busy_permille
            .iter()
            .enumerate()
            .map(|(q, b)| format!("{q}: {:.1}%", f64::from(*b) / 10.0))
            .collect();
        row("Workers busy", busy.join(", "));
        row("Flow events", format!("{} lost in the datapath's queues", w.events_lost));
    }
    if let Some(f) = &s.flows {
        row(
            "Observer",
            format!(
                "{} flows seen, {} of {} kept, {} followers, {} lost by followers",
                f.seen, f.kept, f.capacity, f.followers, f.lost_to_followers
            ),
        );
    }
}

fn print_nat(flows: &[FlowView]) {
    let mut t = table(&["PROTO", "SOURCE", "TRANSLATED SOURCE", "DESTINATION", "FORWARDED BY"]);
    for f in flows {
        t.add_row(vec![
            f.protocol.clone(),
            f.source.to_string(),
            f.reply_destination.to_string(),
            f.reply_source.to_string(),
            if f.at_nic { "NIC (XDP)".into() } else { "worker".into() },
        ]);
    }
    println!("{}", t.trim_fmt());
}

fn print_maps(maps: &[MapView]) {
    let mut t = table(&["NAME", "TYPE", "ENTRIES", "CAPACITY"]);
    for m in maps {
        let entries = m.entries.map_or_else(|| "-".to_owned(), |n| n.to_string());
        t.add_row(vec![m.name.clone(), m.kind.clone(), entries, m.capacity.to_string()]);
    }
    println!("{}", t.trim_fmt());
}

fn print_metrics(samples: &[MetricSample]) {
    let mut t = table(&["METRIC", "LABELS", "VALUE"]);
    for m in samples {
        t.add_row(vec![m.name.clone(), m.labels.clone(), m.value.to_string()]);
    }
    println!("{}", t.trim_fmt());
}

fn print_ipam(ipam: &IpamView) {
    println!("IPAM mode: {}", ipam.mode);
    let mut t = table(&["POOL", "GATEWAY", "IN USE", "ADDRESS", "ATTACHMENT"]);
    for p in &ipam.pools {
        let (addresses, holders): (Vec<String>, Vec<String>) =
            p.allocated.iter().map(|(a, h)| (a.to_string(), h.to_string())).unzip();
        t.add_row(vec![
            p.cidr.to_string(),
            p.gateway.to_string(),
            format!("{} of {}", p.allocated.len(), p.capacity),
            addresses.join("\n"),
            holders.join("\n"),
        ]);
    }
    println!("{}", t.trim_fmt());
}
