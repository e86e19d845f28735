//! `skiff`: the command line to a running skiff-agent, modelled on `cilium-dbg`. Tables for
//! people, `-o json` for scripts; an error from the agent is printed as one and exits 1.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;
use skiff_api::{Client, DEFAULT_SOCKET, EndpointView, IdentityView, IpamView, ServiceView, Status};

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
    Status,
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
    /// Pod addresses: the pools and who holds each address.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
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
        Command::Status => show(cli.output, &client.status()?, print_status),
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
        Command::Ipam { command: IpamCommand::List } => show(cli.output, &client.ipam()?, print_ipam),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "skiff", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn show<T: Serialize + ?Sized>(output: Output, value: &T, table: impl FnOnce(&T)) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => table(value),
    }
    Ok(())
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

fn print_status(s: &Status) {
    let mut t = table(&[]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![format!("{k}:"), v]);
    };
    row("Health", s.health.to_string());
    row("Agent", format!("skiff-agent {} on node {}", s.version, s.node));
    let connected = if s.connected { "connected" } else { "NOT connected, tables kept" };
    row("Source", format!("{} ({connected})", s.source));
    row("Datapath", s.datapath.to_string());
    let objects: Vec<String> = s.objects.iter().map(|(k, n)| format!("{n} {k}")).collect();
    row("Objects", if objects.is_empty() { "none".into() } else { objects.join(", ") });
    row("Services", format!("{} frontends, {} backends, {} next hops", s.frontends, s.backends, s.next_hops));
    row("Identities", format!("{} (distinct pod label sets)", s.identities));
    row(
        "Policies",
        match s.policies {
            0 => "0".into(),
            n => format!("{n} (accepted, NOT ENFORCED yet)"),
        },
    );
    row("Tunnels", s.tunnels.len().to_string());
    for tunnel in &s.tunnels {
        row("", format!("{} via {} ({})", tunnel.pod_cidr, tunnel.endpoint, tunnel.node));
    }
    let last_apply = s.last_apply.as_ref().map_or_else(
        || "none yet".into(),
        |a| format!("#{}: {}, {:.1} ms after the change", s.applies, a.report, a.micros as f64 / 1000.0),
    );
    row("Last apply", last_apply);
    if let Some(w) = &s.workers {
        row(
            "Workers",
            format!(
                "{} received, {} forwarded, {} replied, {} dropped, {} handed to their flow's worker",
                w.received, w.forwarded, w.replied, w.dropped, w.handed_off
            ),
        );
        for (reason, n) in &w.drops {
            row("", format!("{n:>10} {reason}"));
        }
    }
    if !s.ignored.is_empty() {
        row("Ignored", format!("{} of kinds skiff does not read: {}", s.ignored.len(), s.ignored.join(", ")));
    }
    match s.rejections.len() {
        0 => row("Rejections", "none".into()),
        n => row("Rejections", format!("{n} (the last good version of each keeps running)")),
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

fn print_services(services: &[ServiceView]) {
    let mut t = table(&["FRONTEND", "TYPE", "SERVICE", "POLICY", "ALGORITHM", "BACKENDS"]);
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
    let mut t = table(&["ENDPOINT", "IDENTITY", "LABELS", "IPv4", "IPv6", "INTERFACE", "ATTACH", "STATE"]);
    for e in endpoints {
        t.add_row(vec![
            e.id.to_string(),
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
        t.add_row(vec![format!("{k}:"), v]);
    };
    row("Endpoint", e.id.to_string());
    row("Pod", e.pod.as_ref().map_or_else(|| "(not named by the runtime)".into(), ToString::to_string));
    row("Container", e.attachment.to_string());
    row("Network namespace", e.netns.display().to_string());
    row("Identity", e.identity.to_string());
    row("Labels", labels(e));
    row("IPv4", addresses(e, true));
    row("IPv6", addresses(e, false));
    row("Host interface", e.host_ifname.clone());
    row("Attach", e.attach.to_string());
    row("State", e.state.to_string());
    println!("{}", t.trim_fmt());
}

fn print_identities(identities: &[IdentityView]) {
    let mut t = table(&["ID", "LABELS"]);
    for i in identities {
        t.add_row(vec![i.id.to_string(), i.labels.join("\n")]);
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
