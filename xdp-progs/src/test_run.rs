//! `BPF_PROG_TEST_RUN` for XDP programs: runs a loaded program on a frame in the kernel, without
//! an interface. aya 0.14 has no API for it, so this wraps the syscall.

use std::{io, os::fd::RawFd};

/// What one test run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The XDP action (`xdp_action`: 1 drop, 2 pass, 3 tx, 4 redirect).
    pub action: u32,
    /// The frame as the program left it (decapsulated, rewritten).
    pub output: Vec<u8>,
    /// The metadata the program wrote in front of the frame (`bpf_xdp_adjust_meta`).
    pub meta: Vec<u8>,
    /// Average nanoseconds per run, over `repeat` runs.
    pub duration_ns: u32,
}

/// `union bpf_attr`'s `test` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` as a test-run context: which queue and interface the frame "arrived" on.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: frames go out for real (redirects happen).
const LIVE_FRAMES: u32 = 1 << 1;
/// Room for frames the program grows (it may only shrink them today).
const OUTPUT_ROOM: usize = 256;

/// Runs program `prog_fd` on `frame` `repeat` times (at least once).
pub fn test_run(prog_fd: RawFd, frame: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut output = vec![0u8; frame.len() + OUTPUT_ROOM];
    let ctx = XdpMd { data_end: u32::try_from(frame.len()).map_err(io::Error::other)?, ..XdpMd::default() };
    // After the run the kernel sets `data` to the metadata's length (data - data_meta).
    let mut ctx_out = XdpMd::default();
    let mut attr = TestAttr {
        prog_fd: u32::try_from(prog_fd).map_err(io::Error::other)?,
        data_size_in: u32::try_from(frame.len()).map_err(io::Error::other)?,
        data_size_out: u32::try_from(output.len()).map_err(io::Error::other)?,
        data_in: frame.as_ptr() as u64,
        data_out: output.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ctx_size_in: u32::try_from(size_of::<XdpMd>()).map_err(io::Error::other)?,
        ctx_in: (&raw const ctx) as u64,
        ctx_size_out: u32::try_from(size_of::<XdpMd>()).map_err(io::Error::other)?,
        ctx_out: (&raw mut ctx_out) as u64,
        ..TestAttr::default()
    };
    let attr_size = libc::c_uint::try_from(size_of::<TestAttr>()).map_err(io::Error::other)?;
    // SAFETY: `attr` is a valid `bpf_attr.test` of the size passed; the buffers it points to
    // (`frame`, `output`, `ctx`, `ctx_out`) outlive the call and have the lengths given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &raw mut attr, attr_size) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The output holds the metadata, then the frame.
    output.truncate(attr.data_size_out as usize);
    let frame_out = output.split_off((ctx_out.data as usize).min(output.len()));
    Ok(TestRun { action: attr.retval, output: frame_out, meta: output, duration_ns: attr.duration })
}

/// Runs program `prog_fd` `repeat` times on live frames made from `frame`: whatever the program
/// redirects is really sent (the mechanism of xdp-trafficgen). Interface indexes resolve in the
/// calling thread's network namespace.
pub fn live_frames(prog_fd: RawFd, frame: &[u8], repeat: u32) -> io::Result<()> {
    let mut attr = TestAttr {
        prog_fd: u32::try_from(prog_fd).map_err(io::Error::other)?,
        data_size_in: u32::try_from(frame.len()).map_err(io::Error::other)?,
        data_in: frame.as_ptr() as u64,
        repeat,
        flags: LIVE_FRAMES,
        ..TestAttr::default()
    };
    let attr_size = libc::c_uint::try_from(size_of::<TestAttr>()).map_err(io::Error::other)?;
    // SAFETY: `attr` is a valid `bpf_attr.test` of the size passed; `frame` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &raw mut attr, attr_size) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
