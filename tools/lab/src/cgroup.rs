//! A cgroup v2 of the lab's own: a lab agent attaches socket-LB there, and the lab's
//! node-local clients run inside it, so no test touches the machine's own cgroups.
//!
//! The cgroup is a child of the machine's cgroup2 mount; `ip netns exec` gives its commands a
//! fresh `/sys` without that mount, so the cgroup is also bind-mounted at
//! `/tmp/skiff-cgroup-<name>`, where the agent (`--cgroup-root`) finds it.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{Answers, LabError, Netns, PREFIX};

#[derive(Debug)]
pub struct Cgroup {
    /// In the machine's cgroup2 hierarchy.
    dir: PathBuf,
    /// The bind mount of `dir`, seen from lab namespaces.
    mount: PathBuf,
    /// Made by this value, which removes it when dropped (a restarted agent's handle on the
    /// same cgroup is not).
    owned: bool,
}

impl Cgroup {
    /// The lab cgroup `skiff-<name>`, made (and bind-mounted) unless it exists.
    pub fn new(name: &str) -> Result<Cgroup, LabError> {
        let io = |what: String| move |source| LabError::Spawn { command: what, source };
        let root = cgroup2_mount()?;
        let dir = root.join(format!("{PREFIX}{name}"));
        let mount = PathBuf::from(format!("/tmp/{PREFIX}cgroup-{name}"));
        if is_cgroup2(&mount) {
            return Ok(Cgroup { dir, mount, owned: false });
        }
        std::fs::create_dir_all(&dir).map_err(io(format!("mkdir {}", dir.display())))?;
        let cgroup = Cgroup { dir, mount, owned: true };
        std::fs::create_dir_all(&cgroup.mount).map_err(io(format!("mkdir {}", cgroup.mount.display())))?;
        crate::checked(Command::new("mount").arg("--bind").arg(&cgroup.dir).arg(&cgroup.mount))?;
        if !is_cgroup2(&cgroup.mount) {
            return Err(LabError::Parse {
                what: "a cgroup2 bind mount".into(),
                text: cgroup.mount.display().to_string(),
            });
        }
        Ok(cgroup)
    }

    /// Where lab namespaces see it: what `--cgroup-root` names.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// As [`Netns::http_get`], from inside this cgroup.
    pub fn http_get(&self, netns: &Netns, url: &str, n: usize, timeout_s: u32) -> Result<Answers, LabError> {
        crate::netns::curl(self.command(netns, "curl"), url, n, timeout_s)
    }

    /// `program` inside `netns` and this cgroup (it joins the cgroup, then `ip netns exec`).
    pub fn command(&self, netns: &Netns, program: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"echo $$ > "$0" && exec "$@""#]).arg(self.dir.join("cgroup.procs")).args([
            "ip",
            "netns",
            "exec",
            netns.name(),
            program,
        ]);
        cmd
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned {
            remove_cgroup(&self.dir, &self.mount);
        }
    }
}

/// Removes every lab cgroup a crashed run left (`lab down`).
pub(crate) fn remove_all() -> Result<(), LabError> {
    let root = cgroup2_mount()?;
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        remove_cgroup(&entry.path(), Path::new(&format!("/tmp/{PREFIX}cgroup-{name}")));
    }
    Ok(())
}

/// Stops the processes the lab left in the cgroup, unmounts its bind mount and removes both.
fn remove_cgroup(dir: &Path, mount: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a process in the lab's own cgroup, which only the lab fills.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(path) = CString::new(mount.as_os_str().as_bytes()) {
        // SAFETY: a NUL-terminated path; a lazy unmount of the lab's own bind mount.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir(mount);
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!("skiff-lab: removing cgroup {}: {e}", dir.display());
    }
}

/// The machine's cgroup2 mount (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified`
/// on a hybrid one).
fn cgroup2_mount() -> Result<PathBuf, LabError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|source| LabError::Spawn { command: "reading /proc/self/mounts".into(), source })?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2") && f.get(1).is_some_and(|p| p.starts_with("/sys/fs/cgroup")))
        .map(|f| PathBuf::from(f[1]))
        .ok_or_else(|| LabError::Parse {
            what: "a cgroup2 mount under /sys/fs/cgroup".into(),
            text: mounts.clone(),
        })
}

fn is_cgroup2(path: &Path) -> bool {
    crate::is_filesystem(path, "cgroup2fs")
}
