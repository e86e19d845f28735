//! `skiff observe`: the flows the datapath decided, as `hubble observe` shows them: filtered
//! by the agent, one compact line each for people, or Hubble's JSON (`{"flow": {...}}` per
//! line) for `jq`.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
};

use anyhow::Result;
use clap::{Args, ValueEnum};
use skiff_api::{
    Answer, Client,
    observe::{
        DecidedBy, Endpoint, EventKind, Flow, FlowFilter, LostEvents, PROTOCOLS, TrafficDirection, Verdict,
    },
};

use crate::Output;

#[derive(Args)]
pub struct Observe {
    /// Flows from or to this pod: `[namespace/]name-prefix` (the `default` namespace unless
    /// given; `ns/` for every pod of `ns`).
    #[arg(long, value_name = "POD")]
    pod: Option<String>,
    #[arg(long, value_name = "POD")]
    from_pod: Option<String>,
    #[arg(long, value_name = "POD")]
    to_pod: Option<String>,
    /// Flows from or to a pod of this namespace.
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Option<String>,
    #[arg(long, value_name = "IP")]
    from_ip: Option<IpAddr>,
    #[arg(long, value_name = "IP")]
    to_ip: Option<IpAddr>,
    /// TCP, UDP, ICMPv4 or ICMPv6.
    #[arg(long, value_name = "PROTO", value_parser = protocol)]
    protocol: Option<String>,
    /// Either end's port.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    #[arg(long, value_enum, ignore_case = true)]
    verdict: Option<VerdictArg>,
    /// drop, trace or policy-verdict.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    event_type: Option<TypeArg>,
    /// The last N flows kept (then the new ones, with --follow).
    #[arg(long, value_name = "N", default_value_t = 20)]
    last: usize,
    /// Keep printing flows as they come.
    #[arg(long, short = 'f')]
    follow: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum VerdictArg {
    #[value(name = "FORWARDED")]
    Forwarded,
    #[value(name = "DROPPED")]
    Dropped,
}

#[derive(Clone, Copy, ValueEnum)]
enum TypeArg {
    Drop,
    Trace,
    PolicyVerdict,
}

fn protocol(text: &str) -> Result<String, String> {
    match PROTOCOLS.iter().find(|p| p.eq_ignore_ascii_case(text)) {
        Some(p) => Ok((*p).to_owned()),
        None => Err(format!("not one of {}", PROTOCOLS.join(", "))),
    }
}

impl Observe {
    fn filter(&self) -> FlowFilter {
        FlowFilter {
            pod: self.pod.clone(),
            from_pod: self.from_pod.clone(),
            to_pod: self.to_pod.clone(),
            namespace: self.namespace.clone(),
            from_ip: self.from_ip,
            to_ip: self.to_ip,
            protocol: self.protocol.clone(),
            port: self.port,
            verdict: self.verdict.map(|v| match v {
                VerdictArg::Forwarded => Verdict::Forwarded,
                VerdictArg::Dropped => Verdict::Dropped,
            }),
            event_type: self.event_type.map(|t| match t {
                TypeArg::Drop => EventKind::Drop,
                TypeArg::Trace => EventKind::Trace,
                TypeArg::PolicyVerdict => EventKind::PolicyVerdict,
            }),
        }
    }

    pub fn run(&self, client: &Client, output: Output) -> Result<()> {
        let mut out = std::io::stdout().lock();
        let mut failed = None;
        client.observe(self.filter(), Some(self.last), self.follow, |answer| {
            let line = match (&answer, output) {
                (Answer::Flow(flow), Output::Table) => compact(flow),
                (Answer::Lost(lost), Output::Table) => lost_line(lost),
                (Answer::Flow(flow), Output::Json) => json("flow", flow),
                (Answer::Lost(lost), Output::Json) => json("lost_events", lost),
                _ => return true,
            };
            // A closed pipe (`| head`) ends the stream.
            match writeln!(out, "{line}").and_then(|()| out.flush()) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        match failed {
            Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// `{"flow": {...}}`, as `hubble observe -o json` prints each response.
fn json<T: serde::Serialize>(key: &str, value: &T) -> String {
    serde_json::json!({ key: value }).to_string()
}

fn lost_line(lost: &LostEvents) -> String {
    format!("EVENTS LOST: {} {}", lost.source, lost.num_events_lost)
}

/// One end: `ns/pod:port (ID:n)`, else `address:port (ID:n)`.
fn end(ip: IpAddr, port: Option<u16>, e: &Endpoint) -> String {
    let at = match (e.pod_name.is_empty(), port) {
        (true, Some(p)) => SocketAddr::new(ip, p).to_string(),
        (true, None) => ip.to_string(),
        (false, Some(p)) => format!("{}/{}:{p}", e.namespace, e.pod_name),
        (false, None) => format!("{}/{}", e.namespace, e.pod_name),
    };
    format!("{at} (ID:{})", e.identity)
}

/// Hubble's compact form: `TIME [NODE]: SRC -> DST POINT VERDICT (SUMMARY)`, with the
/// service and the translation skiff applied.
pub fn compact(f: &Flow) -> String {
    let time = f.time.strftime("%b %e %H:%M:%S%.3f");
    let ports = f.l4.ports();
    let mut dst = end(f.ip.destination, ports.map(|p| p.1), &f.destination);
    if let Some(s) = &f.destination_service {
        dst.push_str(&format!(" [{}/{}]", s.namespace, s.name));
    }
    if let Some(t) = &f.translated {
        if f.is_reply {
            dst.push_str(&format!(" from {}", t.source));
        } else {
            dst.push_str(&format!(" => {}", t.destination));
        }
    }
    let point = match f.event_type.kind {
        1 => "drop".to_owned(),
        5 => match f.traffic_direction {
            TrafficDirection::Ingress => "policy-verdict:INGRESS".into(),
            TrafficDirection::Egress => "policy-verdict:EGRESS".into(),
            TrafficDirection::TrafficDirectionUnknown => "policy-verdict".into(),
        },
        _ => f.trace_observation_point.as_deref().unwrap_or("trace").to_lowercase().replace('_', "-"),
    };
    let verdict = match (&f.verdict, &f.drop_reason_desc) {
        (Verdict::Dropped, Some(reason)) => format!("DROPPED {reason}"),
        (Verdict::Dropped, None) => "DROPPED".into(),
        (Verdict::Forwarded, _) => "FORWARDED".into(),
    };
    let by = match f.decided_by {
        DecidedBy::Xdp => "xdp",
        DecidedBy::Worker => "worker",
    };
    format!(
        "{time} [{}/{by}]: {} {} -> {dst} {point} {verdict} ({})",
        f.node_name,
        f.l4.protocol(),
        end(f.ip.source, ports.map(|p| p.0), &f.source),
        f.summary
    )
}
