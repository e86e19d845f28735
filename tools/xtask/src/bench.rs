//! `cargo xtask bench`: runs the benches and writes `target/bench-report/*.json` (records
//! `{name, value, unit, baseline, ratio}`), printing each table: `wire` and `fastpath`
//! (criterion; `fastpath` also gets the lab's NAT packet rate against nftables from the `nat`
//! bench), `xdp` (BPF_PROG_TEST_RUN costs, and XDP_DROP against nftables in a lab), `overlay`
//! (a pod-to-remote-pod flow through skiff's VXLAN against the kernel's), `control`
//! (10k services × 10 endpoints to tables), `policy` (1000 policies over 10k pods to tables,
//! one pod's label change), `cni` (a pod's ADD and DEL against the reference
//! plugins, the agent's memory at 0 and 110 pods), `socket_lb` (connections and round trips
//! to a ClusterIP with socket-LB against the per-packet path and kube-proxy's iptables
//! rules). The lab benches need root.

use anyhow::Result;

use crate::{cargo, run, setup, workspace_root};

pub fn bench() -> Result<()> {
    setup::setup(setup::Purpose::Run)?;
    run(cargo().args(["bench", "-p", "skiff-perf", "--bench", "wire"]))?;
    run(cargo().args(["bench", "-p", "skiff-perf", "--bench", "fastpath"]))?;
    run(cargo().args(["bench", "-p", "skiff-perf", "--bench", "xdp"]))?;
    run(cargo().args(["bench", "-p", "skiff-perf", "--bench", "nat"]))?;
    run(cargo().args(["bench", "-p", "skiff-perf", "--bench", "overlay"]))?;
    run(cargo().args(["bench", "-p", "skiff-perf", "--bench", "control"]))?;
    run(cargo().args(["bench", "-p", "skiff-perf", "--bench", "policy"]))?;
    run(cargo().args(["bench", "-p", "skiff-perf", "--bench", "observe"]))?;
    // The CNI and socket-LB benches run skiff-agent and skiff-cni as a node runs them:
    // release binaries.
    run(cargo().args(["build", "--release", "-p", "skiff-control", "--bins"]))?;
    for suite in ["cni", "socket_lb"] {
        run(cargo().env("SKIFF_BIN_DIR", workspace_root().join("target/release")).args([
            "bench",
            "-p",
            "skiff-perf",
            "--bench",
            suite,
        ]))?;
    }
    let target = workspace_root().join("target");
    run(cargo()
        .args(["run", "--release", "-q", "-p", "skiff-perf", "--bin", "bench-report", "--"])
        .arg(target))
}
