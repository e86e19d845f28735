//! skiff's container image (docker/Dockerfile), built here with podman and no registry. The
//! Dockerfile's two bases are made from Debian's packages by mmdebstrap, a setup step cached
//! by each base's recipe; the builder holds this machine's Rust toolchains and bpf-linker, so
//! the build runs with no network at all, its crates from this machine's cargo registry.

use std::{
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};
use skiff_lab::image::{BUILDER_BASE, IMAGE, RUNTIME_BASE, STORAGE, podman};

use crate::{output_of, setup::Log, workspace_root};

const DEBIAN: [&str; 3] = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];
/// What the binaries need at run time (the Dockerfile installs the same where a base lacks
/// them).
const RUNTIME_PACKAGES: &[&str] = &["libelf1", "zlib1g", "nftables"];

/// One of the Dockerfile's bases.
struct Base {
    name: &'static str,
    packages: Vec<&'static str>,
    /// With this machine's Rust toolchains and cargo binaries (bpf-linker).
    toolchains: bool,
}

fn bases() -> [Base; 2] {
    // `cargo xtask build --release` checks that setup's packages are there, so the builder
    // has them all, with a C toolchain.
    let builder = [&["build-essential", "ca-certificates"][..], crate::setup::APT_RUN].concat();
    [
        Base { name: RUNTIME_BASE, packages: RUNTIME_PACKAGES.to_vec(), toolchains: false },
        Base { name: BUILDER_BASE, packages: builder, toolchains: true },
    ]
}

/// Makes the bases whose recipe changed (a setup step). Returns whether it made one.
pub fn ensure_bases(log: &mut Log) -> Result<bool> {
    let mut made = false;
    for base in bases() {
        made |= base.ensure(log)?;
    }
    Ok(made)
}

impl Base {
    /// What mmdebstrap runs in the finished tree: the builder gets this machine's toolchains
    /// without their documentation (1.7 of their 3 GB, which every build of the base would
    /// copy twice more: into the tar, then into podman's storage).
    fn hooks(&self) -> Option<String> {
        let (rustup, cargo) = homes();
        self.toolchains.then(|| {
            format!(
                "mkdir -p \"$1/usr/local/rustup\" \"$1/usr/local/cargo/bin\" \
                 && tar -C {} --exclude='./toolchains/*/share/doc' -c . | tar -C \"$1/usr/local/rustup\" -x \
                 && cp -a {}/. \"$1/usr/local/cargo/bin\"",
                rustup.display(),
                cargo.join("bin").display()
            )
        })
    }

    /// `name:tag`, the tag a digest of its recipe: its packages and, for the builder, how it
    /// copies the toolchains and their versions.
    fn image(&self) -> Result<String> {
        let mut recipe = self.packages.join(" ");
        recipe.extend(self.hooks());
        if self.toolchains {
            for cmd in [
                &["rustc", "--version"][..],
                &["rustup", "run", "nightly", "rustc", "--version"],
                &["bpf-linker", "--version"],
            ] {
                recipe += &output_of(Command::new(cmd[0]).args(&cmd[1..]))?;
            }
        }
        let mut hasher = std::hash::DefaultHasher::new();
        recipe.hash(&mut hasher);
        Ok(format!("{}:{:016x}", self.name, hasher.finish()))
    }

    fn ensure(&self, log: &mut Log) -> Result<bool> {
        let image = self.image()?;
        if podman().args(["image", "exists", &image]).status().is_ok_and(|s| s.success()) {
            return Ok(false);
        }
        let tar = Path::new(STORAGE).join("base.tar");
        let mut mmdebstrap = Command::new("mmdebstrap");
        mmdebstrap.args(["--variant=minbase", &format!("--include={}", self.packages.join(","))]).args(
            ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*"]
                .map(|p| format!("--dpkgopt=path-exclude={p}")),
        );
        let mut import = podman();
        import.arg("import");
        mmdebstrap.args(self.hooks().map(|hook| format!("--customize-hook={hook}")));
        if self.toolchains {
            // As Rust's own images lay them out; offline: crates come from a volume.
            for env in [
                "RUSTUP_HOME=/usr/local/rustup",
                "CARGO_HOME=/usr/local/cargo",
                "PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "CARGO_NET_OFFLINE=true",
            ] {
                import.args(["--change", &format!("ENV {env}")]);
            }
        }
        log.run(mmdebstrap.args(["--format=tar", "bookworm"]).arg(&tar).args(DEBIAN))
            .with_context(|| format!("making {image} with mmdebstrap"))?;
        let imported = log.run(import.arg(&tar).arg(&image));
        let _ = std::fs::remove_file(&tar);
        imported.with_context(|| format!("importing {image}"))?;
        // An older recipe's image goes.
        let all = output_of(podman().args(["images", "--format", "{{.Repository}}:{{.Tag}}", self.name]))?;
        for old in all.lines().filter(|i| *i != image) {
            log.run(podman().args(["rmi", old]))?;
        }
        Ok(true)
    }
}

/// Where this machine's rustup and cargo keep their toolchains and binaries.
fn homes() -> (PathBuf, PathBuf) {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let or =
        |var: &str, default: &str| std::env::var_os(var).map_or_else(|| home.join(default), PathBuf::from);
    (or("RUSTUP_HOME", ".rustup"), or("CARGO_HOME", ".cargo"))
}

/// Builds [`IMAGE`] from this tree with podman, offline, after the workspace's build (which
/// fetched its crates). The Dockerfile keeps its target folder as a cache, so an unchanged
/// tree builds again in seconds.
pub fn build() -> Result<()> {
    println!("== the image (docker/Dockerfile)");
    let started = Instant::now();
    let [runtime, builder] = bases().map(|b| b.image());
    let registry = homes().1.join("registry");
    let mut log = Log::open("image")?;
    log.run(
        podman()
            .current_dir(workspace_root())
            .args(["build", "--network", "none", "-f", "docker/Dockerfile", "-t", IMAGE])
            .arg("--volume")
            .arg(format!("{}:/usr/local/cargo/registry", registry.display()))
            .arg(format!("--build-arg=BUILDER={}", builder?))
            .arg(format!("--build-arg=RUNTIME={}", runtime?))
            .arg("."),
    )
    .context("building the image")?;
    // The layers the last build replaced.
    log.run(podman().args(["image", "prune", "-f"]))?;
    let bytes = output_of(podman().args(["image", "inspect", "--format", "{{.Size}}", IMAGE]))?;
    let mb = bytes.trim().parse::<f64>().unwrap_or(0.0) / 1e6;
    println!("image: {IMAGE}, {mb:.0} MB, built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
