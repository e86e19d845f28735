//! `cargo xtask <command>`: the project's own automation. Every command that builds or runs
//! anything first runs `setup`, so a fresh machine needs nothing installed by hand.

mod bench;
mod demo;
mod fuzz;
mod image;
mod kube;
mod setup;
mod test;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

  setup               install what a fresh machine lacks (apt packages, rust-src, bpf-linker,
                      the tests' kube-apiserver and kubectl); logs in target/setup/
  build [--release]   setup, then build the workspace and the XDP programs (--release: the
                      installed binaries alone, optimised: skiff-agent, skiff-cni, skiff)
  test                setup, build, run every test (the privileged lab tests too)
  image               setup, build, build the container image with podman as the tests do
  bench               setup, run the benchmarks, write target/bench-report/*.json
  demo                setup, build, run the demo in a lab of network namespaces
  fuzz [TARGET] [SECS] run the wire fuzz targets (all, 60 s each by default)
  lab up [PODS]       bring up a lab (a node, a client, PODS pods serving HTTP; default 3)
  lab status          list the lab namespaces and their addresses
  lab down            remove every lab namespace (also what a crashed run left)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match dispatch(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[&str]) -> Result<ExitCode> {
    match args {
        ["setup"] => setup::setup(setup::Purpose::Test)?,
        ["build"] => {
            setup::setup(setup::Purpose::Run)?;
            build()?;
        }
        ["build", "--release"] => {
            setup::setup(setup::Purpose::Run)?;
            run(cargo().args(RELEASE))?;
        }
        ["test"] => return test::test(),
        ["image"] => {
            setup::setup(setup::Purpose::Test)?;
            build()?;
            image::build()?;
        }
        ["bench"] => bench::bench()?,
        ["demo"] => demo::demo()?,
        ["fuzz"] => fuzz::fuzz(None, 60)?,
        ["fuzz", target] => fuzz::fuzz(Some(target), 60)?,
        ["fuzz", target, secs] => {
            let target = (*target != "all").then_some(*target);
            fuzz::fuzz(target, secs.parse().context("SECONDS must be a number")?)?
        }
        ["lab", "up"] => lab_up(3)?,
        ["lab", "up", pods] => lab_up(pods.parse().context("PODS must be a number")?)?,
        ["lab", "status"] => lab_status()?,
        ["lab", "down"] => lab_down()?,
        ["help" | "--help" | "-h"] => println!("{USAGE}"),
        _ => {
            eprintln!("{USAGE}");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What an installation runs, optimised: the image's binaries.
const RELEASE: &[&str] = &["build", "--release", "--locked", "--bins", "-p", "skiff-control", "-p", "skiff"];

/// Builds every default member with its tests and examples (the loader's build script
/// builds the eBPF object).
fn build() -> Result<()> {
    run(cargo().args(["build", "--all-targets"]))
}

fn lab_up(pods: usize) -> Result<()> {
    let mut lab = skiff_lab::Topology::new().pods(pods).build_named("lab")?;
    for pod in lab.pods().to_vec() {
        lab.serve_http(&pod, 80)?;
    }
    println!(
        "lab up: node {} ({}), client {} ({})",
        lab.node().netns.name(),
        lab.node().ipv4,
        lab.client().netns.name(),
        lab.client().ipv4
    );
    for pod in lab.pods() {
        println!("  {} {} {} serving HTTP on port 80", pod.name, pod.netns.name(), pod.ipv4);
    }
    println!(
        "try: ip netns exec {} curl http://{}/",
        lab.client().netns.name(),
        lab.pods().first().map_or(lab.node().ipv4, |p| p.ipv4)
    );
    println!("remove with: cargo xtask lab down");
    lab.persist();
    Ok(())
}

fn lab_status() -> Result<()> {
    let names = skiff_lab::list(None)?;
    if names.is_empty() {
        println!("no lab namespaces");
    }
    for name in names {
        let out = Command::new("ip").args(["-n", &name, "-br", "addr"]).output()?;
        println!("{name}\n{}", String::from_utf8_lossy(&out.stdout).trim_end());
    }
    Ok(())
}

fn lab_down() -> Result<()> {
    let removed = skiff_lab::remove(None)?;
    println!("lab down: removed {} namespace(s) {}", removed.len(), removed.join(" "));
    Ok(())
}

/// `cargo` from the toolchain running this xtask, at the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command with inherited output; a non-zero exit is an error naming it.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout; a non-zero exit is an error quoting its stderr.
fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
