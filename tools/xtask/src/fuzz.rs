//! `cargo xtask fuzz [TARGET] [SECONDS]`: runs the cargo-fuzz targets of skiff-wire (all of
//! them by default, 60 s each) from a seed corpus of captured and built frames, and prints a
//! table of executions and crashes. Fails if any target crashed.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, output_of, run, setup, workspace_root};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

struct Outcome {
    target: String,
    seconds: f64,
    runs: u64,
    corpus: u64,
    crashed: bool,
}

pub fn fuzz(target: Option<&str>, seconds: u64) -> Result<()> {
    setup::setup(setup::Purpose::Run)?;
    setup::cargo_fuzz(CARGO_FUZZ_VERSION)?;
    let root = workspace_root();
    // The targets as cargo-fuzz lists them (fastpath/wire/fuzz/Cargo.toml's bins).
    let all = output_of(
        Command::new("cargo").current_dir(root.join("fastpath/wire/fuzz")).args(["+nightly", "fuzz", "list"]),
    )?;
    let all: Vec<String> = all.lines().map(str::to_owned).collect();
    let targets: Vec<String> = match target {
        Some(t) if all.iter().any(|x| x == t) => vec![t.to_owned()],
        Some(t) => bail!("unknown target {t}; one of {}", all.join(", ")),
        None => all,
    };
    let seeds = root.join("target/fuzz-seeds");
    run(cargo().args(["run", "-q", "-p", "skiff-testkit", "--example", "fuzz-seeds", "--"]).arg(&seeds))?;
    let mut outcomes = Vec::new();
    for target in targets {
        let corpus = root.join("target/fuzz-corpus").join(&target);
        std::fs::create_dir_all(&corpus)?;
        println!("== fuzzing {target} for {seconds} s");
        let started = Instant::now();
        let mut child = Command::new("cargo")
            .current_dir(root.join("fastpath/wire"))
            .args(["+nightly", "fuzz", "run", &target])
            .arg(&corpus)
            .arg(seeds.join(&target))
            .args(["--", &format!("-max_total_time={seconds}"), "-print_final_stats=1"])
            .stderr(Stdio::piped())
            .spawn()
            .context("starting cargo fuzz")?;
        let mut outcome = Outcome { target, seconds: 0.0, runs: 0, corpus: 0, crashed: false };
        for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
            let line = line?;
            if let Some(n) = stat(&line, "stat::number_of_executed_units:") {
                outcome.runs = n;
            } else if let Some(n) = stat(&line, "stat::new_units_added:") {
                outcome.corpus = n;
            } else if line.contains("ERROR:")
                || line.contains("panicked")
                || line.contains("Test unit written")
            {
                outcome.crashed = true;
                eprintln!("{line}");
            }
        }
        outcome.crashed |= !child.wait()?.success();
        outcome.seconds = started.elapsed().as_secs_f64();
        println!(
            "   {} runs, {} new units, {}",
            outcome.runs,
            outcome.corpus,
            if outcome.crashed { "CRASHED" } else { "no crash" }
        );
        outcomes.push(outcome);
    }
    println!(
        "\n{:<10} {:>8} {:>14} {:>12} {:>10} {:>8}",
        "target", "seconds", "executions", "exec/s", "new units", "crashes"
    );
    for o in &outcomes {
        println!(
            "{:<10} {:>8.0} {:>14} {:>12.0} {:>10} {:>8}",
            o.target,
            o.seconds,
            o.runs,
            o.runs as f64 / o.seconds,
            o.corpus,
            u8::from(o.crashed)
        );
    }
    let crashed: Vec<_> = outcomes.iter().filter(|o| o.crashed).map(|o| o.target.as_str()).collect();
    if !crashed.is_empty() {
        bail!("crashes in {} (artifacts under fastpath/wire/fuzz/artifacts/)", crashed.join(", "));
    }
    Ok(())
}

fn stat(line: &str, key: &str) -> Option<u64> {
    line.strip_prefix(key).and_then(|v| v.trim().parse().ok())
}
