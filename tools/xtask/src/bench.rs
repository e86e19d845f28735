//! `cargo xtask bench`: runs the criterion benches and writes `target/bench-report/*.json`
//! (records `{name, value, unit, baseline, ratio}`), printing each table.

use anyhow::Result;

use crate::{cargo, run, setup, workspace_root};

pub fn bench() -> Result<()> {
    setup::setup()?;
    run(cargo().args(["bench", "-p", "skiff-perf", "--bench", "wire"]))?;
    let target = workspace_root().join("target");
    run(cargo()
        .args(["run", "--release", "-q", "-p", "skiff-perf", "--bin", "bench-report", "--"])
        .arg(target))
}
