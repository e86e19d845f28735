//! `cargo xtask setup`: installs what a fresh machine of this kind lacks, idempotently. Every
//! step first checks cheaply whether its work is already done, so a second run takes about a
//! second. Each step prints one line (ticking while it works, on a terminal); the long output
//! of apt, cargo and Go goes to `target/setup/<step>.log`, whose tail is printed if the step
//! fails.

use std::{
    fs::File,
    io::{IsTerminal, Write},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{output_of, workspace_root};

/// What the command that asks for setup will do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Build and run skiff: the demo, the benches, the fuzzers.
    Run,
    /// Also the tests' real parts: kube-apiserver and kubectl built from Debian's source, and
    /// etcd.
    Test,
}

/// Debian packages: the lab (iproute2 … python3), the C build of xsk-rs' libxdp and libbpf
/// (m4 … libpcap-dev: libxdp's configure stops without pcap/dlt.h), Debian's LLVM 22, which
/// bpf-linker links against, the reference CNI plugins (the CNI bench's baseline, chained
/// after skiff-cni in the tests), and iptables (kube-proxy's rules, the benches' baseline;
/// the portmap plugin chained in the tests).
pub const APT_RUN: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "procps",
    "nftables",
    "curl",
    "python3",
    "m4",
    "clang",
    "llvm",
    "pkg-config",
    "libelf-dev",
    "zlib1g-dev",
    "libpcap-dev",
    "llvm-22-dev",
    "containernetworking-plugins",
    "iptables",
];
/// The tests' real parts: Go and the reflect2 fix to build kube-apiserver from Debian's
/// source package (dpkg-dev unpacks it), etcd, openssl for its certificates; scapy, the
/// independent VXLAN and Geneve encoder (it installs for /usr/bin/python3 only); tcpdump and
/// tshark to capture and dissect lab traffic (`fastpath/wire/tests/captures/capture.sh`); a
/// real container runtime calling skiff-cni (podman with runc: crun refuses this machine's
/// hybrid cgroups), busybox-static for the image the runtime test builds, iperf3 for the
/// long TCP streams an agent's restart must not stall, a real Prometheus server to scrape
/// the agent (its service is not started: the test runs it in a lab namespace), and
/// mmdebstrap, which makes the image's Debian bases without a registry, and containerd, the
/// real node's runtime (its service is not started: the test runs it in a lab namespace).
const APT_TEST: &[&str] = &[
    "tcpdump",
    "tshark",
    "golang-go",
    "golang-github-modern-go-reflect2-dev",
    "dpkg-dev",
    "rsync",
    "etcd-server",
    "etcd-client",
    "openssl",
    "python3-scapy",
    "podman",
    "runc",
    "busybox-static",
    "iperf3",
    "prometheus",
    "mmdebstrap",
    "containerd",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The toolchain aya-build compiles the eBPF crate with (`rustup run nightly`).
const EBPF_TOOLCHAIN: &str = "nightly";

pub fn setup(purpose: Purpose) -> Result<()> {
    let started = Instant::now();
    let packages: Vec<&str> = match purpose {
        Purpose::Run => APT_RUN.to_vec(),
        Purpose::Test => [APT_RUN, APT_TEST].concat(),
    };
    let count = if purpose == Purpose::Test { 5 } else { 3 };
    let name = |i: usize, what: &str| format!("[{i}/{count}] {what}");
    step(name(1, "apt packages"), "apt", true, move |log| apt_packages(log, &packages))?.report()?;
    step(name(2, "nightly rust-src (eBPF build-std)"), "rust-src", true, rust_src)?.report()?;
    step(name(3, &format!("bpf-linker {BPF_LINKER_VERSION}")), "bpf-linker", true, bpf_linker)?.report()?;
    if purpose == Purpose::Test {
        // The bases are mostly downloads and copies, the Kubernetes build is compiling: both
        // at once take little longer than the build alone (the bases copy the toolchains, so
        // they start after steps 2 and 3). The bases' line follows the build's.
        let bases = name(5, "the image's Debian bases (mmdebstrap, ~3–8 min once)");
        let bases = std::thread::spawn(move || {
            step(bases, "image-bases", false, |log| crate::image::ensure_bases(log).map(Done::made))
        });
        let kube = name(
            4,
            "Kubernetes v1.20.2: kube-apiserver, kubectl, kubelet, … (from Debian's source, ~5–13 min once)",
        );
        let built = step(kube, "kube-apiserver", true, |log| crate::kube::ensure(log).map(Done::made))
            .and_then(Step::report);
        let made = bases.join().map_err(|_| anyhow::anyhow!("the image bases' thread panicked"))?;
        built?;
        made?.report()?;
    }
    println!("setup: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

enum Done {
    Cached,
    Installed,
}

impl Done {
    /// `Installed` when the step made something, else `Cached`.
    fn made(made: bool) -> Done {
        if made { Done::Installed } else { Done::Cached }
    }
}

/// A step's log file; the commands it runs write there.
pub struct Log {
    path: PathBuf,
    file: File,
}

impl Log {
    pub fn open(name: &str) -> Result<Log> {
        let dir = workspace_root().join("target/setup");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.log"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Log { path, file })
    }

    /// Runs `cmd` with its output in the log; a non-zero exit is an error naming it.
    pub fn run(&mut self, cmd: &mut Command) -> Result<()> {
        writeln!(self.file, "$ {cmd:?}")?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(self.file.try_clone()?)
            .stderr(self.file.try_clone()?)
            .status()
            .with_context(|| format!("could not start {cmd:?}"))?;
        if !status.success() {
            bail!("{cmd:?} failed: {status} (see {})", self.path.display());
        }
        Ok(())
    }

    /// The log's last `n` lines.
    fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A step's work done: what it was, its log, and how it went, to be reported on one line.
struct Step {
    name: String,
    log: Log,
    took: Duration,
    outcome: Result<Done>,
}

/// Runs one step (with the seconds ticking on a terminal when `tick`).
fn step(name: String, log: &str, tick: bool, f: impl FnOnce(&mut Log) -> Result<Done>) -> Result<Step> {
    let mut log = Log::open(log)?;
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let ticker = (tick && std::io::stdout().is_terminal()).then(|| {
        let (done, name) = (done.clone(), name.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                print!("\rsetup: {name}: working {:.0} s ", started.elapsed().as_secs_f64());
                let _ = std::io::stdout().flush();
            }
        })
    });
    let outcome = f(&mut log);
    done.store(true, Ordering::Relaxed);
    if let Some(ticker) = ticker {
        let _ = ticker.join();
        print!("\r\x1b[K");
    }
    Ok(Step { name, log, took: started.elapsed(), outcome })
}

impl Step {
    /// One line: what it is, then `cached`, or how long the install took, or FAILED and the
    /// tail of its log.
    fn report(self) -> Result<()> {
        let Step { name, log, took, outcome } = self;
        match outcome {
            Ok(Done::Cached) => println!("setup: {name}: cached"),
            Ok(Done::Installed) => println!("setup: {name}: installed in {:.1} s", took.as_secs_f64()),
            Err(e) => {
                println!("setup: {name}: FAILED; the end of {}:", log.path.display());
                println!("{}", log.tail(30));
                return Err(e.context(format!("setup step '{name}' failed")));
            }
        }
        Ok(())
    }
}

fn apt_packages(log: &mut Log, packages: &[&str]) -> Result<Done> {
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        return Ok(Done::Cached);
    }
    writeln!(log.file, "missing: {}", missing.join(" "))?;
    log.run(Command::new("apt-get").args(["update", "-q"])).context("apt-get update")?;
    log.run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install")?;
    let still = missing_packages(packages)?;
    if !still.is_empty() {
        bail!("apt-get reported success but these are still missing: {}", still.join(" "));
    }
    Ok(Done::Installed)
}

fn missing_packages(packages: &[&str]) -> Result<Vec<String>> {
    // dpkg-query exits non-zero when some package is unknown, yet still prints the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\n"])
        .args(packages)
        .output()
        .context("running dpkg-query (is this a Debian machine?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(packages
        .iter()
        .filter(|pkg| !text.lines().any(|l| l == format!("{pkg} installed")))
        .map(|pkg| pkg.to_string())
        .collect())
}

fn rust_src(log: &mut Log) -> Result<Done> {
    let has_toolchain = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_toolchain {
        log.run(Command::new("rustup").args([
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
    log.run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN]))?;
    Ok(Done::Installed)
}

/// cargo-fuzz, only for `cargo xtask fuzz` (tests do not need it).
pub fn cargo_fuzz(version: &str) -> Result<()> {
    step(format!("cargo-fuzz {version}"), "cargo-fuzz", true, |log| {
        let installed = Command::new("cargo").args(["fuzz", "--version"]).output();
        if installed.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
        {
            return Ok(Done::Cached);
        }
        log.run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--force",
            "--version",
            version,
        ]))?;
        Ok(Done::Installed)
    })?
    .report()
}

fn bpf_linker(log: &mut Log) -> Result<Done> {
    // `--version` also fails when the LLVM it was linked against has gone away.
    let installed = Command::new("bpf-linker").arg("--version").output();
    if installed
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
    {
        return Ok(Done::Cached);
    }
    // Plain `cargo install bpf-linker` wants LLVM 23; link against Debian's LLVM 22 instead
    // (the nightly's LLVM is 22 too). A debug build: the linking is LLVM's (Debian's
    // optimised library), bpf-linker is its thin driver, and it installs in 41 s instead of
    // 76 s on a fresh machine.
    log.run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--debug",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    Ok(Done::Installed)
}
