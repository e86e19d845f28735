//! `cargo xtask test`: setup, build (the fuzz targets too, and the image), formatting and
//! lints, the workspace's tests, then the privileged lab tests.
//!
//! Privileged tests (they need root: network namespaces, XDP, AF_XDP) live in a module named
//! `privileged` inside integration tests, so the two stages select them by path. They never
//! skip themselves: without root they fail. The last line is `N passed, N failed`.

use std::{
    io::{BufRead, BufReader},
    process::{ExitCode, Stdio},
};

use anyhow::{Context, Result};

use crate::{build, cargo, setup};

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

pub fn test() -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    if let Err(e) = setup::setup(setup::Purpose::Test)
        .and_then(|()| build())
        .and_then(|()| build_fuzz_targets())
        .and_then(|()| crate::image::build())
    {
        eprintln!("xtask: {e:#}");
        tally.failed += 1;
    } else {
        lints(&mut tally);
        println!("== workspace tests");
        stage(&mut tally, &["test", "--no-fail-fast", "--", "--skip", "privileged::"])?;
        println!("== privileged lab tests");
        let lab = skiff_lab::list(None)?;
        stage(&mut tally, &["test", "--no-fail-fast", "--tests", "privileged::"])?;
        let left: Vec<_> = skiff_lab::list(None)?.into_iter().filter(|n| !lab.contains(n)).collect();
        if !left.is_empty() {
            eprintln!("xtask: the tests left lab namespaces behind: {}", left.join(" "));
            tally.failed += 1;
        }
    }
    println!("test time {:.0} s", started.elapsed().as_secs_f64());
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The code as the project keeps it: formatted, and clippy (with the workspace's lints)
/// silent. Each that complains counts as a failure.
fn lints(tally: &mut Tally) {
    println!("== formatting and lints");
    let checks: [(&str, &[&str]); 2] = [
        ("cargo fmt --check", &["fmt", "--all", "--check"]),
        ("cargo clippy -D warnings", &["clippy", "-q", "--all-targets", "--", "-D", "warnings"]),
    ];
    for (what, args) in checks {
        if crate::run(cargo().args(args)).is_err() {
            eprintln!("xtask: {what} failed");
            tally.failed += 1;
        }
    }
}

/// The cargo-fuzz targets, outside the workspace (cargo fuzz builds them with nightly and
/// sanitizers): built here with the stable toolchain, so a change that breaks one fails the
/// tests (their checks run as `skiff-wire`'s `fuzz_seeds` test).
fn build_fuzz_targets() -> Result<()> {
    println!("== fuzz targets (fastpath/wire/fuzz)");
    crate::run(cargo().args(["build", "-q", "--bins", "--manifest-path", "fastpath/wire/fuzz/Cargo.toml"]))
}

/// Runs one `cargo test` invocation, echoing its output and adding up libtest's
/// `test result:` lines. A run that fails without a failed test (a build error) counts as one
/// failure, so it can never pass unnoticed.
fn stage(tally: &mut Tally, args: &[&str]) -> Result<()> {
    let mut child = cargo().args(args).stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    let failed_before = tally.failed;
    for line in stdout.lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            tally.passed += count(result, " passed");
            tally.failed += count(result, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == failed_before {
        eprintln!("xtask: `cargo {}` failed ({status}) without a failing test", args.join(" "));
        tally.failed += 1;
    }
    Ok(())
}

/// The number before `what` in a libtest summary such as `ok. 3 passed; 0 failed; …`.
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(what.trim())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_libtest_summaries() {
        let ok = "ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!((count(ok, " passed"), count(ok, " failed")), (3, 0));
        let bad = "FAILED. 2 passed; 5 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s";
        assert_eq!((count(bad, " passed"), count(bad, " failed")), (2, 5));
    }
}
