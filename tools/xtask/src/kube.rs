//! Real Kubernetes parts for the integration tests: kube-apiserver for the control plane's,
//! kubectl to apply skiff's manifests as an operator does, and a node's kubelet with its
//! controller-manager and scheduler. Kubernetes 1.20.2, built once from
//! Debian's source package and cached (the steps are those of `ensure`). No registry ships
//! the binaries, Debian's kubectl package may clash with one a machine has already, and there
//! is no Docker engine for kind.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::setup::Log;

const VERSION: &str = "v1.20.2";
/// Where the binaries are cached; the lab finds them there (`skiff_lab::apiserver`).
pub const CACHE: &str = "/var/cache/skiff/kubernetes-v1.20.2";
/// What is built, and the arguments that make each print its version.
const BINARIES: [(&str, &[&str]); 5] = [
    ("kube-apiserver", &["--version"]),
    ("kubectl", &["version", "--client"]),
    ("kubelet", &["--version"]),
    ("kube-controller-manager", &["--version"]),
    ("kube-scheduler", &["--version"]),
];
/// Debian ships the 1.20.2 tree under this version.
const SOURCE_PACKAGE: &str = "kubernetes";
const SOURCES: &str = "deb-src http://deb.debian.org/debian bookworm main\n\
                       deb-src http://deb.debian.org/debian-security bookworm-security main\n";

/// Builds the binaries unless every cached one is there and runs. Returns whether it built.
pub fn ensure(log: &mut Log) -> Result<bool> {
    let works = |(name, args): &(&str, &[&str])| {
        let out = Command::new(Path::new(CACHE).join(name)).args(*args).output();
        out.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(VERSION))
    };
    if BINARIES.iter().all(works) {
        return Ok(false);
    }
    let work = Path::new(CACHE).join("build");
    // A tree left by an interrupted build is not trusted.
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("lists/partial")).context("creating the build folder")?;
    std::fs::create_dir_all(work.join("cache/archives/partial"))?;
    std::fs::write(work.join("sources.list"), SOURCES)?;
    // A private apt configuration, so the system's sources stay untouched.
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.current_dir(&work)
            .arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", work.join("sources.list").display()))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", work.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", work.join("cache").display()))
            .args(args);
        cmd
    };
    log.run(&mut apt(&["update", "-q"])).context("apt-get update (deb-src)")?;
    log.run(&mut apt(&["source", "--download-only", "-q", SOURCE_PACKAGE]))
        .context("fetching the kubernetes source")?;
    let dsc = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "dsc"))
        .context("apt-get source left no .dsc")?;
    log.run(Command::new("dpkg-source").current_dir(&work).args(["-x"]).arg(&dsc).arg("src"))?;
    let src = work.join("src");
    // The vendored reflect2 1.0.1 crashes under Go >= 1.18 ("fatal error: fault" in
    // mapiterinit); Debian's 1.0.2 is a drop-in.
    let reflect2 = src.join("vendor/github.com/modern-go/reflect2");
    std::fs::remove_dir_all(&reflect2).context("removing the vendored reflect2")?;
    log.run(
        Command::new("cp")
            .arg("-r")
            .arg("/usr/share/gocode/src/github.com/modern-go/reflect2")
            .arg(&reflect2),
    )?;
    let what: Vec<String> = BINARIES.iter().map(|(name, _)| format!("cmd/{name}")).collect();
    log.run(
        Command::new("make")
            .current_dir(&src)
            .arg(format!("WHAT={}", what.join(" ")))
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env("KUBE_GIT_VERSION", VERSION),
    )
    .context("building Kubernetes")?;
    for (name, _) in BINARIES {
        let built = src.join("_output/bin").join(name);
        if !built.exists() {
            bail!("the build left no {}", built.display());
        }
        std::fs::copy(&built, Path::new(CACHE).join(name)).with_context(|| format!("caching {name}"))?;
    }
    // 2.2 GB of tree; the binaries are all the tests need.
    std::fs::remove_dir_all(&work)?;
    Ok(true)
}
