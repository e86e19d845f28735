//! skiff's container image as `cargo xtask` builds it here (docker/Dockerfile, with podman)
//! and the tests run it: where podman keeps it, and the names of the image and its two bases,
//! which are made from Debian's packages since no registry is reachable.

use std::{path::Path, process::Command};

/// podman's storage, configuration and build caches: a cache, like the Kubernetes binaries
/// beside it.
pub const STORAGE: &str = "/var/cache/skiff/containers";
/// The image the Dockerfile makes.
pub const IMAGE: &str = "localhost/skiff:latest";
/// The Dockerfile's `RUNTIME`: Debian 12 with what the binaries need at run time.
pub const RUNTIME_BASE: &str = "localhost/skiff-runtime";
/// The Dockerfile's `BUILDER`: Debian 12 with the build's packages and this machine's Rust
/// toolchains and bpf-linker.
pub const BUILDER_BASE: &str = "localhost/skiff-builder";

/// podman on skiff's own storage (overlay), with runc and cgroupfs (crun and systemd do not
/// take this machine's hybrid cgroups), and open-file and process limits a container may
/// have (runc cannot give it podman's default, the host's own limit).
pub fn podman() -> Command {
    let storage = Path::new(STORAGE);
    let conf = storage.join("containers.conf");
    // Written each time: a cache folder may be emptied by hand.
    let _ = std::fs::create_dir_all(storage);
    let _ = std::fs::write(
        &conf,
        "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
         [containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
    );
    // Build caches (the Dockerfile's target folder) go under TMPDIR: kept with the rest.
    let tmp = storage.join("tmp");
    let _ = std::fs::create_dir_all(&tmp);
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", conf).env("TMPDIR", tmp).arg("--root").arg(storage.join("storage")).args([
        "--runroot",
        "/run/skiff-containers",
        "--storage-driver",
        "overlay",
    ]);
    cmd
}

/// A root filesystem of Debian's static busybox (`/bin/busybox` and the applets tests use),
/// as a tar in `dir`, for images made without a registry.
pub fn busybox_tar(dir: &Path) -> Result<std::path::PathBuf, crate::LabError> {
    let io = |what: &'static str| move |source| crate::LabError::Io { what: what.into(), source };
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).map_err(io("making a rootfs"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .map_err(io("copying busybox (busybox-static)"))?;
    for applet in ["sh", "httpd", "wget", "ip", "sleep", "mkdir", "echo", "cat", "hostname", "timeout", "nc"]
    {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).map_err(io("linking a busybox applet"))?;
        }
    }
    let tar = dir.join("rootfs.tar");
    crate::checked(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."))?;
    Ok(tar)
}
