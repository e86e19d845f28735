//! The BPF filesystem that pinned maps live in.

use std::{ffi::CString, io, path::Path};

/// The mount point of bpffs.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// Mounts bpffs on [`BPFFS`] unless it is mounted there already (as Cilium's agent does on
/// hosts that do not mount it at boot).
pub fn ensure_mounted() -> io::Result<()> {
    let path = CString::new(BPFFS).expect("no NUL");
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `fs` is a valid statfs to fill.
    let stat = unsafe { libc::statfs(path.as_ptr(), &raw mut fs) };
    if stat == 0 && fs.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    let (source, kind, options) = (c"bpf", c"bpf", c"mode=0700");
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc =
        unsafe { libc::mount(source.as_ptr(), path.as_ptr(), kind.as_ptr(), 0, options.as_ptr().cast()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("mounting bpffs on {BPFFS}: {e}")));
    }
    Ok(())
}

/// Removes a pin folder and the pins in it (maps stay alive while a program uses them).
pub fn remove_pins(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
