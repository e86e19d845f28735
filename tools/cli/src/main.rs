//! `skiff`: the command line to a running skiff-agent, modelled on `cilium-dbg`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Result, bail};
use skiff_control::api::{self, ServiceView, Status};

const USAGE: &str = "usage: skiff [--socket PATH] [-o json] <command>

  status          the agent: source, datapath, objects, rejections, last apply, counters
  service list    every service frontend with its backends";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let mut socket = PathBuf::from(api::DEFAULT_SOCKET);
    let mut json = false;
    let mut words = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = args.next().map(PathBuf::from).unwrap_or(socket),
            "-o" | "--output" => match args.next().as_deref() {
                Some("json") => json = true,
                other => bail!("-o {other:?}: json is the only other output"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => words.push(arg),
        }
    }
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["status"] => {
            let status: Status = api::request(&socket, "status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        ["service", "list"] => {
            let services: Vec<ServiceView> = api::request(&socket, "services")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&services)?);
            } else {
                print_services(&services);
            }
        }
        _ => bail!("{USAGE}"),
    }
    Ok(())
}

fn print_status(s: &Status) {
    let row = |k: &str, v: String| println!("{:<16}{v}", format!("{k}:"));
    row("Health", s.health.clone());
    row("Agent", format!("skiff-agent {} on node {}", s.version, s.node));
    row("Source", format!("{} ({})", s.source, if s.connected { "connected" } else { "NOT connected, tables kept" }));
    row("Datapath", s.datapath.clone());
    let objects: Vec<String> = s.objects.iter().map(|(k, n)| format!("{n} {k}")).collect();
    row("Objects", if objects.is_empty() { "none".into() } else { objects.join(", ") });
    row(
        "Services",
        format!("{} frontends, {} backends, {} next hops", s.frontends, s.backends, s.next_hops),
    );
    row("Identities", format!("{} (distinct pod label sets)", s.identities));
    row("Policies", s.policies.to_string());
    row("Tunnels", format!("{}", s.tunnels.len()));
    for t in &s.tunnels {
        println!("{:<16}  {} via {} ({})", "", t.pod_cidr, t.endpoint, t.node);
    }
    match &s.last_apply {
        Some(a) => row(
            "Last apply",
            format!(
                "#{}: +{} ~{} -{} ={} frontends, {} pools built, {:.1} ms after the change",
                s.applies,
                a.report.added,
                a.report.changed,
                a.report.removed,
                a.report.unchanged,
                a.report.pools_built,
                a.micros as f64 / 1000.0
            ),
        ),
        None => row("Last apply", "none yet".into()),
    }
    if let Some(w) = &s.workers {
        row(
            "Workers",
            format!(
                "{} received, {} forwarded, {} replied, {} dropped, {} handed to their flow's worker",
                w.received, w.forwarded, w.replied, w.dropped, w.handed_off
            ),
        );
        for (reason, n) in &w.drops {
            println!("{:<16}  {n:>10} {reason}", "");
        }
    }
    if s.rejections.is_empty() {
        row("Rejections", "none".into());
    } else {
        row("Rejections", format!("{} (the last good version of each keeps running)", s.rejections.len()));
        for r in &s.rejections {
            println!("  {} ({})", r.object, r.origin);
            for e in &r.errors {
                println!("      {e}");
            }
        }
    }
}

fn print_services(services: &[ServiceView]) {
    println!("{:<26} {:<13} {:<24} {:<8} {:<14} BACKENDS", "FRONTEND", "TYPE", "SERVICE", "POLICY", "ALGORITHM");
    for s in services {
        let mut backends = s.backends.iter().map(|b| {
            let state = if b.weight == 0 { "terminating" } else { "active" };
            format!("{} => {} ({state}{})", b.id, b.address, if b.local { ", local" } else { "" })
        });
        let first = backends.next().unwrap_or_else(|| "(none: answered with RST / ICMP unreachable)".into());
        let policy = match s.affinity_seconds {
            Some(t) => format!("{} ClientIP/{t}s", s.traffic_policy),
            None => s.traffic_policy.clone(),
        };
        println!("{:<26} {:<13} {:<24} {:<8} {:<14} {first}", s.frontend, s.kind, s.service, policy, s.algorithm);
        for b in backends {
            println!("{:<26} {:<13} {:<24} {:<8} {:<14} {b}", "", "", "", "", "");
        }
    }
}
