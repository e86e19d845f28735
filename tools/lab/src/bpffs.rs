//! A bpffs of a lab agent's own, mounted at `/tmp/skiff-bpf-<name>` in the machine's mount
//! namespace. `ip netns exec` gives the agent a fresh `/sys`: a bpffs it mounted there would
//! die with its mount namespace, and with it the pinned attachments (detaching XDP) and maps.
//! This one outlives the agent, as a node's `/sys/fs/bpf` outlives an agent's pod, so a
//! restarted agent finds what the last one left.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{LabError, PREFIX};

#[derive(Debug)]
pub struct Bpffs {
    mount: PathBuf,
    /// Mounted by this value, which unmounts it when dropped (a restarted agent's handle on
    /// the same mount is not).
    owned: bool,
}

impl Bpffs {
    /// The lab bpffs `name`, mounted unless it is.
    pub fn new(name: &str) -> Result<Bpffs, LabError> {
        let mount = PathBuf::from(format!("/tmp/{PREFIX}bpf-{name}"));
        if is_bpffs(&mount) {
            return Ok(Bpffs { mount, owned: false });
        }
        std::fs::create_dir_all(&mount)
            .map_err(|source| LabError::Spawn { command: format!("mkdir {}", mount.display()), source })?;
        crate::checked(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&mount))?;
        Ok(Bpffs { mount, owned: true })
    }

    /// The agent's `--pin-dir` on it.
    pub fn pins(&self) -> PathBuf {
        self.mount.join("skiff")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if self.owned {
            unmount(&self.mount);
        }
    }
}

/// Unmounts every lab bpffs (what a crashed run left): their pins go, detaching XDP.
pub(crate) fn remove_all() {
    let Ok(entries) = std::fs::read_dir("/tmp") else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(&format!("{PREFIX}bpf-"))) {
            unmount(&entry.path());
        }
    }
}

/// Removes the pins (the attachments detach), then the mount.
fn unmount(mount: &Path) {
    if is_bpffs(mount) {
        let _ = std::fs::remove_dir_all(mount.join("skiff"));
        if let Ok(path) = CString::new(mount.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path; a lazy unmount of the lab's own bpffs.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _ = std::fs::remove_dir(mount);
}

fn is_bpffs(path: &Path) -> bool {
    crate::is_filesystem(path, "bpf_fs")
}
