//! What a pod's network costs: `skiff-cni` ADD and DEL latency with skiff-agent running
//! (veth pair, addresses, routes, and the datapath attached to the veth while running),
//! against the reference `ptp` plugin with `host-local` IPAM (a veth pair, an address, routes:
//! no datapath), both called as a runtime calls them, on the same 110 pod namespaces in the
//! same run, alternating rounds; and the agent's memory (VmRSS) with 0 and with 110 endpoints,
//! kubelet's default maximum of pods per node (aim: at most 256 MiB).
//!
//! DEL is mostly the kernel's: deleting a veth pair waits for RCU grace periods, 17–39 ms
//! with `ip link del` on a bare pair on the 2-core lab machine, against ~5 ms of skiff-agent.
//!
//! Needs skiff-agent and skiff-cni built in release beside each other (`cargo xtask bench`
//! builds them and names the folder in `SKIFF_BIN_DIR`). Root only. Writes
//! `target/bench-report/cni.json`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use skiff_lab::{
    Netns, Topology,
    agent::Agent,
    cni::{self, Call},
};
use skiff_perf::{Figure, Record, lab::Result, write_report};

/// kubelet's default `maxPods`.
const PODS: usize = 110;
/// Rounds of ADD-all then DEL-all, per plugin.
const ROUNDS: usize = 3;

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n\
                    spec: {podCIDRs: [198.18.128.0/24, 'fd00:0:0:128::/64']}\n";

/// One plugin's calls: its binary and configuration.
struct Plugin {
    binary: PathBuf,
    conf: String,
}

impl Plugin {
    /// `command` (ADD or DEL) for every pod, in round `round`: each call's latency. Every call
    /// must succeed.
    fn each(&self, command: &str, node: &Netns, pods: &[Netns], round: usize) -> Result<Vec<f64>> {
        let mut times = Vec::with_capacity(pods.len());
        for (i, pod) in pods.iter().enumerate() {
            let id = format!("bench{round}x{i}");
            let out = cni::call(node, &self.binary, &self.conf, &Call::new(command, &id, pod))?;
            if !out.success {
                return Err(
                    format!("{} {command} {id}: {} {}", self.binary.display(), out.json, out.stderr).into()
                );
            }
            times.push(ms(out.elapsed));
        }
        Ok(times)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `percent`th percentile of `samples` (nearest rank).
fn percentile(samples: &[f64], percent: usize) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() * percent).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS")?;
    let kib: f64 = line.split_whitespace().nth(1).ok_or("no VmRSS value")?.parse()?;
    Ok(kib / 1024.0)
}

/// skiff-cni as the agent installed it, and the reference `ptp` with `host-local` IPAM
/// (its state in `dir`).
fn plugins(agent: &Agent, dir: &Path) -> Result<(Plugin, Plugin)> {
    let (conflist, binary) = agent.cni_conf();
    let list: serde_json::Value = serde_json::from_slice(&std::fs::read(conflist)?)?;
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    let skiff = Plugin { binary, conf: conf.to_string() };
    let ptp = Plugin {
        binary: PathBuf::from("/usr/lib/cni/ptp"),
        conf: serde_json::json!({
            "cniVersion": "1.0.0", "name": "ptp-bench", "type": "ptp", "mtu": 1500,
            "ipam": {"type": "host-local", "dataDir": dir.join("host-local"), "ranges": [
                [{"subnet": "198.18.130.0/24"}], [{"subnet": "fd00:0:0:130::/64"}]
            ]}
        })
        .to_string(),
    };
    if !ptp.binary.exists() {
        return Err("the reference plugins (containernetworking-plugins) are not installed".into());
    }
    Ok((skiff, ptp))
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let bin =
        PathBuf::from(std::env::var("SKIFF_BIN_DIR").map_err(|_| "SKIFF_BIN_DIR: where skiff-agent is")?);
    let lab = Topology::new().cni_pods(PODS).build()?;
    let node = lab.node().netns.clone();
    let objects = std::env::temp_dir().join(format!("skiff-bench-cni-{}-objects", lab.id()));
    std::fs::create_dir_all(&objects)?;
    std::fs::write(objects.join("node.yaml"), NODE)?;
    let args: Vec<String> =
        ["--state-dir", objects.to_str().ok_or("path")?, "--node-name", "node1", "--device"]
            .into_iter()
            .map(String::from)
            .chain([lab.client().node_iface.clone()])
            .collect();
    let agent = Agent::start(&node, &bin.join("skiff-agent"), &format!("bench-cni-{}", lab.id()), &args)?;
    let (skiff, ptp) = plugins(&agent, &objects)?;
    let pid = agent.pid();
    let rss_empty = rss_mib(pid)?;
    let mut rss_full = 0.0f64;
    let pods = lab.cni_pods();
    // [ADD, DEL] latencies: skiff's, ptp's.
    let (mut ours, mut theirs) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..ROUNDS {
        // ABBA over the rounds: ptp first every other round.
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for is_skiff in order {
            let (plugin, into) = if is_skiff { (&skiff, &mut ours) } else { (&ptp, &mut theirs) };
            into[0].extend(plugin.each("ADD", &node, pods, round)?);
            if is_skiff {
                rss_full = rss_full.max(rss_mib(pid)?);
            }
            into[1].extend(plugin.each("DEL", &node, pods, round)?);
        }
    }
    let rss_after = rss_mib(pid)?;
    let mut records = Vec::new();
    for (i, op) in ["ADD", "DEL"].into_iter().enumerate() {
        for percent in [50, 99] {
            records.push(
                Record::new(
                    format!("cni {op} p{percent}, {PODS} pods × {ROUNDS} rounds"),
                    "ms",
                    Figure::one(percentile(&ours[i], percent)),
                )
                .against(
                    "ptp + host-local (reference plugins)",
                    Figure::one(percentile(&theirs[i], percent)),
                ),
            );
        }
    }
    records.push(Record::new("agent RSS, 0 endpoints", "MiB", Figure::one(rss_empty)));
    records.push(Record::new(
        format!("agent RSS, {PODS} endpoints (aim ≤ 256)"),
        "MiB",
        Figure::one(rss_full),
    ));
    let per_endpoint = (rss_full - rss_empty) / PODS as f64;
    records.push(Record::new("agent RSS per endpoint", "MiB", Figure::one(per_endpoint)));
    records.push(Record::new(
        "agent RSS, 0 endpoints again (after the rounds)",
        "MiB",
        Figure::one(rss_after),
    ));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(&dir, "cni", &records)?;
    drop(agent);
    std::fs::remove_dir_all(objects)?;
    Ok(())
}
