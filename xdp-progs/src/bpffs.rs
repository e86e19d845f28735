//! The BPF filesystem that pinned maps live in, and the cgroup2 one socket-LB attaches to:
//! each mounted by the agent where the host has not.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

/// The mount point of bpffs.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;

/// Mounts bpffs on [`BPFFS`] unless it is mounted there already (as Cilium's agent does on
/// hosts that do not mount it at boot).
pub fn ensure_mounted() -> io::Result<()> {
    ensure(Path::new(BPFFS), BPF_FS_MAGIC, c"bpf", c"mode=0700")
}

/// Mounts cgroup2 on `path` (created if needed) unless a cgroup2 is there already: the host's
/// hierarchy, or a part of it bind-mounted (as Cilium's `cgroup.autoMount`).
pub fn ensure_cgroup2(path: &Path) -> io::Result<()> {
    if !has_magic(path, CGROUP2_SUPER_MAGIC) {
        std::fs::create_dir_all(path)?;
    }
    ensure(path, CGROUP2_SUPER_MAGIC, c"cgroup2", c"")
}

/// Mounts a filesystem of type `kind` on `path` unless one with `magic` is there.
fn ensure(
    path: &Path,
    magic: libc::c_long,
    kind: &std::ffi::CStr,
    options: &std::ffi::CStr,
) -> io::Result<()> {
    if has_magic(path, magic) {
        return Ok(());
    }
    let target = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc =
        unsafe { libc::mount(kind.as_ptr(), target.as_ptr(), kind.as_ptr(), 0, options.as_ptr().cast()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let kind = kind.to_string_lossy();
        return Err(io::Error::new(e.kind(), format!("mounting {kind} on {}: {e}", path.display())));
    }
    Ok(())
}

fn has_magic(path: &Path, magic: libc::c_long) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `fs` is a valid statfs to fill.
    unsafe { libc::statfs(path.as_ptr(), &raw mut fs) == 0 && fs.f_type == magic }
}

/// Makes `dir` a pin folder of map layout `version`: when it holds pins of another version
/// (or of one before versions were kept), they are removed, all but the pinned attachments
/// (`links/`), and the folder is marked `layout-<version>`. Returns whether pins were
/// removed.
pub fn keep_layout(dir: &Path, version: u32) -> io::Result<bool> {
    let marker = format!("layout-{version}");
    if dir.join(&marker).is_dir() {
        return Ok(false);
    }
    let mut removed = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == "links" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        removed = true;
    }
    std::fs::create_dir(dir.join(marker))?;
    Ok(removed)
}

/// Removes a pin folder and the pins in it (maps stay alive while a program uses them).
pub fn remove_pins(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A map pinned in a pin folder, as `skiff map list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedMap {
    pub name: String,
    pub kind: String,
    /// Keys present; `None` for arrays (every slot exists).
    pub entries: Option<u64>,
    pub capacity: u32,
}

/// The maps pinned directly in `dir`, by name.
pub fn pinned_maps(dir: &Path) -> io::Result<Vec<PinnedMap>> {
    let mut maps = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let other = |e: aya::maps::MapError| io::Error::other(format!("{}: {e}", path.display()));
        let info = aya::maps::MapInfo::from_pin(&path).map_err(other)?;
        let kind = info.map_type().map_or_else(|_| "unknown".to_owned(), |t| format!("{t:?}"));
        let keyed = !kind.contains("Array") && !kind.contains("RingBuf");
        let entries = if keyed { Some(count_keys(&info, &path)?) } else { None };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        maps.push(PinnedMap { name, kind, entries, capacity: info.max_entries() });
    }
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(maps)
}

/// Walks a map's keys (`BPF_MAP_GET_NEXT_KEY`, as `bpftool map dump` does) of any key size:
/// aya's key iterators want the key's type.
fn count_keys(info: &aya::maps::MapInfo, path: &Path) -> io::Result<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    /// `enum bpf_cmd` of <linux/bpf.h>.
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let fd = info.fd().map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
    let size = info.key_size() as usize;
    let (mut key, mut next) = (vec![0u8; size], vec![0u8; size]);
    let mut count = 0u64;
    loop {
        // `union bpf_attr` for BPF_MAP_GET_NEXT_KEY: map_fd, then key and next_key pointers
        // (8-byte aligned); a null key asks for the first.
        let mut attr = [0u64; 3];
        attr[0] = u64::from(fd.as_fd().as_raw_fd().cast_unsigned());
        attr[1] = if count == 0 { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        // SAFETY: `attr` is a valid bpf_attr prefix for this command; `key` and `next` hold
        // `key_size` bytes each and outlive the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, attr.as_mut_ptr(), size_of_val(&attr))
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) { Ok(count) } else { Err(e) };
        }
        std::mem::swap(&mut key, &mut next);
        count += 1;
    }
}
