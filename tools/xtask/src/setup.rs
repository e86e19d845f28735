//! `cargo xtask setup`: installs what a fresh machine of this kind lacks, idempotently.
//! Every step first checks cheaply whether its work is already done, so a second run takes
//! about a second.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{output_of, run};

/// Debian packages: the lab and tests (iproute2 … python3), the C build of xsk-rs' libxdp and
/// libbpf (m4 … libpcap-dev: libxdp's configure stops without pcap/dlt.h), and Debian's
/// LLVM 22, which bpf-linker links against.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "procps",
    "nftables",
    "iptables",
    "curl",
    "tcpdump",
    "tshark",
    "python3",
    "m4",
    "clang",
    "llvm",
    "pkg-config",
    "libelf-dev",
    "zlib1g-dev",
    "libpcap-dev",
    "llvm-22-dev",
    // A real API server for the control plane's tests: Go and the reflect2 fix to build
    // kube-apiserver from Debian's source package (dpkg-dev unpacks it), etcd, openssl for
    // its certificates.
    "golang-go",
    "golang-github-modern-go-reflect2-dev",
    "dpkg-dev",
    "rsync",
    "etcd-server",
    "etcd-client",
    "openssl",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The toolchain aya-build compiles the eBPF crate with (`rustup run nightly`).
const EBPF_TOOLCHAIN: &str = "nightly";

pub fn setup() -> Result<()> {
    let started = Instant::now();
    step("apt packages", apt_packages)?;
    step("nightly rust-src (eBPF build-std)", rust_src)?;
    step(&format!("bpf-linker {BPF_LINKER_VERSION}"), bpf_linker)?;
    step("kube-apiserver v1.20.2 (from Debian's source)", || {
        Ok(if crate::kube::ensure()? { Done::Installed } else { Done::Cached })
    })?;
    println!("setup: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one step, printing what it did (`cached` when nothing was needed) or why it failed.
fn step(name: &str, f: impl FnOnce() -> Result<Done>) -> Result<()> {
    let started = Instant::now();
    match f() {
        Ok(Done::Cached) => println!("setup: {name}: cached"),
        Ok(Done::Installed) => {
            println!("setup: {name}: installed in {:.1} s", started.elapsed().as_secs_f64())
        }
        Err(e) => {
            println!("setup: {name}: FAILED");
            return Err(e.context(format!("setup step '{name}' failed")));
        }
    }
    Ok(())
}

enum Done {
    Cached,
    Installed,
}

fn apt_packages() -> Result<Done> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(Done::Cached);
    }
    println!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"])).context("apt-get update")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get install")?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("apt-get reported success but these are still missing: {}", still.join(" "));
    }
    Ok(Done::Installed)
}

fn missing_packages() -> Result<Vec<String>> {
    // dpkg-query exits non-zero when some package is unknown, yet still prints the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\n"])
        .args(APT_PACKAGES)
        .output()
        .context("running dpkg-query (is this a Debian machine?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(APT_PACKAGES
        .iter()
        .filter(|pkg| !text.lines().any(|l| l == format!("{pkg} installed")))
        .map(|pkg| pkg.to_string())
        .collect())
}

fn rust_src() -> Result<Done> {
    let has_toolchain = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_toolchain {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok(Done::Installed);
    }
    let sysroot =
        output_of(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"]))?;
    let core_src = PathBuf::from(sysroot.trim()).join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core_src.exists() {
        return Ok(Done::Cached);
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN]))?;
    Ok(Done::Installed)
}

/// cargo-fuzz, only for `cargo xtask fuzz` (tests do not need it).
pub fn cargo_fuzz(version: &str) -> Result<()> {
    step(&format!("cargo-fuzz {version}"), || {
        let installed = Command::new("cargo").args(["fuzz", "--version"]).output();
        if installed.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
        {
            return Ok(Done::Cached);
        }
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--force",
            "--version",
            version,
        ]))?;
        Ok(Done::Installed)
    })
}

fn bpf_linker() -> Result<Done> {
    // `--version` also fails when the LLVM it was linked against has gone away.
    let installed = Command::new("bpf-linker").arg("--version").output();
    if installed
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
    {
        return Ok(Done::Cached);
    }
    // Plain `cargo install bpf-linker` wants LLVM 23; link against Debian's LLVM 22 instead
    // (the nightly's LLVM is 22 too). See shared/notes/toolchain.md.
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    Ok(Done::Installed)
}
