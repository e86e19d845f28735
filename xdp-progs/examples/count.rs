//! Attaches `skiff_xdp_count` to an interface of the current network namespace and reports
//! its counter: one line `packets=N bytes=N` for every line read on stdin. Detaches at EOF.
//!
//! usage: count IFACE [auto|native|generic]

use std::io::{BufRead, Write};

use skiff_xdp::{CountProgram, XdpMode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let iface = args.next().ok_or("usage: count IFACE [auto|native|generic]")?;
    let mode: XdpMode = args.next().as_deref().unwrap_or("auto").parse()?;
    let mut object = CountProgram::load()?;
    let active = object.attach(&iface, mode)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "attached skiff_xdp_count to {iface} in {active} mode")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
        let c = object.count()?;
        writeln!(out, "packets={} bytes={}", c.packets, c.bytes)?;
        out.flush()?;
    }
    Ok(())
}
