//! Attaches `skiff_xdp_ingress` to an interface of the current network namespace (maps pinned
//! in PIN_DIR, removed at exit) and takes commands on stdin, one per line:
//!   deny CIDR     drop every packet from CIDR on arrival
//!   node ADDR ID CIDR  accept tunnel frames from ADDR (a node) whose inner sources in CIDR
//!                      have identity ID (their VNI)
//!   stats         print the action and drop counters, and the sampled drop events
//! Each answer ends with a line holding only ".". Detaches at EOF. What `cargo xtask demo`
//! drives inside the lab's node namespace.
//!
//! usage: ingress IFACE TUNNEL_IPV4 PIN_DIR [auto|native|generic]

use std::{
    io::{BufRead, Write},
    net::{IpAddr, Ipv4Addr},
};

use skiff_common::{config::XdpConfig, event::Decision, identity::Identity};
use skiff_wire::layers;
use skiff_xdp::{Ingress, XdpMode};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [iface, tunnel, pin_dir, rest @ ..] = args.as_slice() else {
        return Err("usage: ingress IFACE TUNNEL_IPV4 PIN_DIR [auto|native|generic]".into());
    };
    let mode: XdpMode = rest.first().map_or("auto", String::as_str).parse()?;
    let mut ingress = Ingress::load(pin_dir)?;
    let mut config = XdpConfig::DEFAULT;
    config.tunnel_v4 = tunnel.parse::<Ipv4Addr>()?.octets();
    config.drop_sample_every = 1;
    ingress.set_config(&config)?;
    let active = ingress.attach(iface, mode)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "attached skiff_xdp_ingress to {iface} in {active} mode (tunnel endpoint {tunnel})")?;
    out.flush()?;
    let result = serve(&mut ingress, &mut out);
    ingress.remove_pins()?;
    result
}

fn serve(ingress: &mut Ingress, out: &mut impl Write) -> Result<()> {
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["deny", cidr] => {
                let (addr, len) = cidr.split_once('/').ok_or("deny takes ADDR/LEN")?;
                ingress.deny(addr.parse::<IpAddr>()?, len.parse()?, 1)?;
                writeln!(out, "denied {cidr}")?;
            }
            ["node", addr, identity, cidr] => {
                let (net, len) = cidr.split_once('/').ok_or("node takes ADDR ID CIDR")?;
                ingress.set_overlay(&[addr.parse()?], &[])?;
                ingress.set_ipcache(&[(net.parse()?, len.parse()?, Identity(identity.parse()?))])?;
                writeln!(out, "tunnel frames from {addr} with VNI {identity} from {cidr} are decapsulated")?;
            }
            ["stats"] => stats(ingress, out)?,
            other => writeln!(out, "unknown command {other:?}")?,
        }
        writeln!(out, ".")?;
        out.flush()?;
    }
    Ok(())
}

fn stats(ingress: &mut Ingress, out: &mut impl Write) -> Result<()> {
    writeln!(out, "{:<10} {:>9} {:>10}", "action", "packets", "bytes")?;
    for (action, c) in ingress.actions()? {
        writeln!(out, "{:<10} {:>9} {:>10}", action.name(), c.packets, c.bytes)?;
    }
    writeln!(out, "(passed for want of a worker: {})", ingress.no_worker()?.packets)?;
    writeln!(out, "{:<26} {:>9}", "drop reason", "packets")?;
    for d in ingress.drops()? {
        writeln!(out, "{:<26} {:>9}", d.reason.name(), d.count.packets)?;
    }
    let events = ingress.event_ring()?.drain();
    let drops: Vec<_> = events.iter().filter(|e| e.decision() == Some(Decision::Dropped)).collect();
    writeln!(out, "sampled drop events: {}", drops.len())?;
    for e in drops.iter().take(3) {
        let flow = layers::parse(e.headers()).ok().and_then(|p| p.flow(e.headers()));
        let what = flow.map_or("?".into(), |f| {
            format!("{}:{} -> {}:{} proto {}", f.src, f.src_port, f.dst, f.dst_port, f.protocol.0)
        });
        writeln!(out, "  {} ({} bytes): {what}", e.reason().map_or("?", |r| r.name()), e.len)?;
    }
    Ok(())
}
