//! Packet rates in the lab (perf/README.md): the live-frames generator pinned to CPU 0, the
//! node's receive processing in a threaded NAPI pinned to CPU 1, packets counted at one point
//! that does not depend on the datapath measured, the two datapaths compared in ABBA rounds,
//! medians with every round kept.

use std::{net::SocketAddrV4, time::Duration};

use skiff_lab::{Host, Netns};
use skiff_testkit::eth;
use skiff_wire::ethernet::Mac;
use skiff_xdp::TrafficGen;

use crate::Figure;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Frames per generator call (~20 ms of setup per call, so many).
pub const FRAMES: u32 = 1 << 24;

/// The interface's index in its namespace.
pub fn ifindex(ns: &Netns, iface: &str) -> Result<u32> {
    let out = ns.exec("cat", &[&format!("/sys/class/net/{iface}/ifindex")])?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// The first 64 bytes of a `len`-byte UDP frame (`len` ≥ 64) from `from` to `to`, out of
/// `client`'s interface to the node: what [`generate_sized`] repeats, padded to `len`.
pub fn udp_frame(client: &Host, from: SocketAddrV4, to: SocketAddrV4, len: usize) -> Result<[u8; 64]> {
    const HEADERS: usize = 14 + 20 + 8;
    let frame = eth()
        .src_mac(Mac(client.mac))
        .dst_mac(Mac(client.node_mac))
        .ipv4(*from.ip(), *to.ip())
        .udp(from.port(), to.port())
        .payload(&vec![0; len.saturating_sub(HEADERS)])
        .build();
    Ok(frame.get(..64).ok_or("a UDP frame shorter than 64 bytes")?.try_into()?)
}

/// Sends `frames` copies of `frame` out of interface `ifindex` of `ns`, from CPU 0; returns how
/// long it took. The interface's peer must have an XDP program attached.
pub fn generate(ns: &Netns, frame: [u8; 64], ifindex: u32, frames: u32) -> Result<Duration> {
    generate_sized(ns, frame, 64, ifindex, frames)
}

/// [`generate`] with frames of `len` bytes: `frame` is their first 64 (its IP and UDP lengths
/// must say `len`), zeros follow.
pub fn generate_sized(
    ns: &Netns,
    frame: [u8; 64],
    len: usize,
    ifindex: u32,
    frames: u32,
) -> Result<Duration> {
    let sent = ns.run(move || -> std::result::Result<Duration, String> {
        set_affinity(0, 0).map_err(|e| e.to_string())?;
        let generator = TrafficGen::load(frame, ifindex).map_err(|e| e.to_string())?.with_len(len);
        generator.send(frames).map_err(|e| e.to_string())
    })?;
    Ok(sent?)
}

/// The veth's receive processing in a threaded NAPI, pinned to CPU 1 (the generator has CPU 0).
/// A veth has NAPI only while an XDP program is attached: call it after each attach.
pub fn split_layout(node: &Netns, iface: &str) -> Result<()> {
    node.exec("sh", &["-c", &format!("echo 1 > /sys/class/net/{iface}/threaded")])?;
    let name = format!("napi/{iface}-");
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Some(pid) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.starts_with(&name)) {
            set_affinity(pid, 1)?;
            pinned += 1;
        }
    }
    if pinned == 0 {
        return Err(format!("no {name}* NAPI thread found").into());
    }
    Ok(())
}

/// Pins thread `pid` (0: the caller) to `cpu`.
pub fn set_affinity(pid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data (all-zero is empty); CPU_SET and sched_setaffinity only
    // touch the set passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Applies an nftables script in `ns`.
pub fn nft(ns: &Netns, script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = ns.command("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn()?;
    child.stdin.take().ok_or("nft stdin")?.write_all(script.as_bytes())?;
    if !child.wait()?.success() {
        return Err(format!("nft refused:\n{script}").into());
    }
    Ok(())
}

/// A counting drop rule for frames from `source` at `iface`'s netdev ingress, in table
/// `table` of `ns`.
pub fn nft_drop_rule(ns: &Netns, table: &str, iface: &str, source: std::net::Ipv4Addr) -> Result<()> {
    nft(
        ns,
        &format!(
            "table netdev {table} {{\n  chain ingress {{\n    type filter hook ingress device \"{iface}\" priority 0; policy accept;\n    ip saddr {source} counter drop\n  }}\n}}\n"
        ),
    )
}

/// The packets table `table`'s counter has seen (its first counter).
pub fn nft_counter(ns: &Netns, family: &str, table: &str) -> Result<u64> {
    let out = ns.exec("nft", &["-j", "list", "table", family, table])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    fn counter(v: &serde_json::Value) -> Option<u64> {
        match v {
            serde_json::Value::Object(m) => {
                m.get("counter").and_then(|c| c["packets"].as_u64()).or_else(|| m.values().find_map(counter))
            }
            serde_json::Value::Array(a) => a.iter().find_map(counter),
            _ => None,
        }
    }
    counter(&json).ok_or_else(|| format!("no counter in nftables table {family} {table}").into())
}

/// Rounds of each side of a lab comparison.
pub const ROUNDS: usize = 5;

/// Measures `a` and `b` `rounds` times each in ABBA order (a b, b a, a b, …), so that a drift
/// of the machine during the run weighs on both alike; every round's figure is kept.
pub fn abba(
    rounds: usize,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<(Figure, Figure)> {
    let mut figures = alternate(rounds, &mut [&mut a, &mut b])?.into_iter();
    Ok((figures.next().ok_or("side a")?, figures.next().ok_or("side b")?))
}

/// [`abba`] for any number of sides: forwards in even rounds, backwards in odd ones (a b c,
/// c b a, …); a figure per side, in their order.
pub fn alternate(rounds: usize, sides: &mut [&mut dyn FnMut() -> Result<f64>]) -> Result<Vec<Figure>> {
    let mut values = vec![Vec::new(); sides.len()];
    for round in 0..rounds {
        for k in 0..sides.len() {
            let side = if round % 2 == 0 { k } else { sides.len() - 1 - k };
            values[side].push(sides[side]()?);
        }
    }
    Ok(values.into_iter().map(Figure::rounds).collect())
}

/// Frames the XDP hook of `iface` (a veth in `ns`) has taken off its receive ring, whatever
/// the program then did with them: a count that does not depend on the datapath measured.
pub fn xdp_received(ns: &Netns, iface: &str) -> Result<u64> {
    let out = ns.exec("ethtool", &["-S", iface])?;
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("rx_queue_").and_then(|l| l.split_once("_xdp_packets: ")))
        .map(|(_, n)| n.trim().parse::<u64>().map_err(Into::into))
        .sum()
}
