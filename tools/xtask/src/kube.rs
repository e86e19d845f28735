//! A real kube-apiserver for the control plane's integration tests: Kubernetes 1.20.2, built
//! once from Debian's source package and cached (the steps are those of `ensure`). No
//! registry ships the binary, and there is no Docker engine for kind.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::setup::Log;

const VERSION: &str = "v1.20.2";
/// Where the binary is cached; tests find it through `SKIFF_KUBE_APISERVER`.
pub const CACHE: &str = "/var/cache/skiff/kube-apiserver-v1.20.2";
/// Debian ships the 1.20.2 tree under this version.
const SOURCE_PACKAGE: &str = "kubernetes";
const SOURCES: &str = "deb-src http://deb.debian.org/debian bookworm main\n\
                       deb-src http://deb.debian.org/debian-security bookworm-security main\n";

pub fn binary() -> PathBuf {
    Path::new(CACHE).join("kube-apiserver")
}

/// Builds kube-apiserver unless the cached binary is there and runs. Returns whether it built.
pub fn ensure(log: &mut Log) -> Result<bool> {
    let bin = binary();
    let works = Command::new(&bin).arg("--version").output();
    if works.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(VERSION)) {
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
    log.run(
        Command::new("make")
            .current_dir(&src)
            .arg("WHAT=cmd/kube-apiserver")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env("KUBE_GIT_VERSION", VERSION),
    )
    .context("building kube-apiserver")?;
    let built = src.join("_output/bin/kube-apiserver");
    if !built.exists() {
        bail!("the build left no {}", built.display());
    }
    std::fs::copy(&built, binary()).context("caching kube-apiserver")?;
    // 2.2 GB of tree; the binary is all the tests need.
    std::fs::remove_dir_all(&work)?;
    Ok(true)
}
