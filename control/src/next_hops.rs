//! Next hops from the kernel of the node's network namespace: which device and MACs reach an
//! address. Neighbour entries with a link-layer address on the datapath's devices are taken
//! as they are (clients on the uplink, pods on their veths); an address the kernel routes
//! through a gateway is reached through the gateway's entry; the default route's gateway
//! becomes the entry for the unspecified address, the fallback for any other destination.
//! Until the slow path resolves neighbours itself, the kernel's table is the source.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use skiff_fastpath::engine::Neighbor;

#[derive(Deserialize)]
struct NeighEntry {
    dst: IpAddr,
    dev: String,
    lladdr: Option<String>,
}

#[derive(Deserialize)]
struct RouteEntry {
    #[serde(default)]
    dst: String,
    gateway: Option<IpAddr>,
    dev: Option<String>,
}

/// Reads the next hops for `devices` (a next hop's `port` is its device's index) and for the
/// `wanted` addresses the kernel routes through a gateway on one of them.
pub fn read(devices: &[String], wanted: impl IntoIterator<Item = IpAddr>) -> Result<HashMap<IpAddr, Neighbor>> {
    let macs: Vec<[u8; 6]> = devices.iter().map(|d| device_mac(d)).collect::<Result<_>>()?;
    let port_of = |dev: &str| devices.iter().position(|d| d == dev);
    let mut hops = HashMap::new();
    let mut by_addr = HashMap::new();
    for family in ["-4", "-6"] {
        let entries: Vec<NeighEntry> = ip_json(&[family, "neigh", "show"])?;
        for e in entries {
            let (Some(port), Some(mac)) = (port_of(&e.dev), e.lladdr.as_deref().and_then(parse_mac)) else { continue };
            let hop = Neighbor { port, src_mac: macs[port], dst_mac: mac };
            hops.insert(e.dst, hop);
            by_addr.insert((e.dst, port), hop);
        }
        let routes: Vec<RouteEntry> = ip_json(&[family, "route", "show", "default"])?;
        for r in routes.iter().filter(|r| r.dst == "default") {
            let gateway_hop = r.gateway.zip(r.dev.as_deref().and_then(port_of)).and_then(|k| by_addr.get(&k));
            if let Some(&hop) = gateway_hop {
                let any = if family == "-4" { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
                hops.insert(any, hop);
            }
        }
    }
    for addr in wanted {
        if hops.contains_key(&addr) {
            continue;
        }
        let route: Vec<RouteEntry> = ip_json(&["route", "get", &addr.to_string()]).unwrap_or_default();
        let Some(r) = route.first() else { continue };
        let via = r.gateway.zip(r.dev.as_deref().and_then(port_of));
        if let Some(&hop) = via.and_then(|k| by_addr.get(&k)) {
            hops.insert(addr, hop);
        }
    }
    Ok(hops)
}

fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<Vec<T>> {
    let out = Command::new("ip").arg("-j").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing `ip -j {}`", args.join(" ")))
}

pub fn device_mac(device: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{device}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_mac(text.trim()).with_context(|| format!("{path}: {text:?} is not a MAC"))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
