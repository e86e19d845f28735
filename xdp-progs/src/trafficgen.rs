//! The lab's traffic generator: `skiff_trafficgen` driven by `BPF_PROG_RUN` with live frames.

use std::{
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::{Ebpf, maps::Array, programs::Xdp};
use skiff_common::{config::TrafficGen as Job, programs};

use crate::{XdpError, test_run::live_frames};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trafficgen"));

/// Sends one frame, many times, out of one interface: 64 bytes, or longer with
/// [`TrafficGen::with_len`].
pub struct TrafficGen {
    ebpf: Ebpf,
    /// What each call starts from: the template, then zeros up to the frame's length.
    frame: Vec<u8>,
}

impl TrafficGen {
    /// Loads the generator for `frame` out of interface `ifindex` (an index in the network
    /// namespace [`TrafficGen::send`] will run in).
    pub fn load(frame: [u8; 64], ifindex: u32) -> Result<Self, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(Box::new)?;
        let name = "GEN";
        let mut job: Array<_, Job> =
            ebpf.map_mut(name).ok_or(XdpError::MissingMap(name))?.try_into().map_err(XdpError::map(name))?;
        job.set(0, Job { frame, ifindex }, 0).map_err(XdpError::map(name))?;
        crate::load_xdp(&mut ebpf, programs::TRAFFICGEN)?;
        Ok(TrafficGen { ebpf, frame: frame.to_vec() })
    }

    /// Frames of `len` bytes (at least 64): the 64-byte template (whose IP and UDP lengths
    /// must say `len`), then zeros.
    pub fn with_len(mut self, len: usize) -> Self {
        self.frame.resize(len.max(64), 0);
        self
    }

    /// Sends `frames` frames from the calling thread (which must be in the interface's network
    /// namespace) and returns how long it took. One call has ~20 ms of setup: send millions.
    pub fn send(&self, frames: u32) -> Result<Duration, XdpError> {
        let error = |source| XdpError::Program { name: programs::TRAFFICGEN, source: Box::new(source) };
        let program: &Xdp = self
            .ebpf
            .program(programs::TRAFFICGEN)
            .ok_or(XdpError::MissingProgram(programs::TRAFFICGEN))?
            .try_into()
            .map_err(error)?;
        let fd = program.fd().map_err(error)?;
        let started = Instant::now();
        live_frames(fd.as_fd().as_raw_fd(), &self.frame, frames)
            .map_err(|source| XdpError::Io { what: "BPF_PROG_RUN (live frames)".into(), source })?;
        Ok(started.elapsed())
    }
}
