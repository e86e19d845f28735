//! The counting program: counts every frame per CPU and passes it on.

use std::os::fd::{AsFd, AsRawFd};

use aya::{Ebpf, programs::Xdp};
use skiff_common::{Counter, maps, programs};

use crate::{TestRun, XdpError, XdpMode, attach, per_cpu_sum, test_run::test_run};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/count"));

/// The loaded counting program. Dropping it detaches it everywhere.
pub struct CountProgram {
    ebpf: Ebpf,
}

impl CountProgram {
    /// Loads and verifies the program.
    pub fn load() -> Result<Self, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(Box::new)?;
        let error = |source| XdpError::Program { name: programs::COUNT, source: Box::new(source) };
        let program: &mut Xdp = ebpf
            .program_mut(programs::COUNT)
            .ok_or(XdpError::MissingProgram(programs::COUNT))?
            .try_into()
            .map_err(error)?;
        crate::load(|| program.load()).map_err(error)?;
        Ok(CountProgram { ebpf })
    }

    /// Runs the program on `frame` in the kernel (`BPF_PROG_TEST_RUN`): the cost of the least
    /// an XDP program can do, as a floor for the datapath's figures.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRun, XdpError> {
        let error = |source| XdpError::Program { name: programs::COUNT, source: Box::new(source) };
        let program: &Xdp = self
            .ebpf
            .program(programs::COUNT)
            .ok_or(XdpError::MissingProgram(programs::COUNT))?
            .try_into()
            .map_err(error)?;
        let fd = program.fd().map_err(error)?;
        test_run(fd.as_fd().as_raw_fd(), frame, repeat)
            .map_err(|source| XdpError::Io { what: "BPF_PROG_TEST_RUN".into(), source })
    }

    /// Attaches to `iface`; returns the active mode.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpMode, XdpError> {
        attach(&mut self.ebpf, programs::COUNT, iface, mode).map(|(mode, _)| mode)
    }

    /// What the program has seen, summed over CPUs.
    pub fn count(&self) -> Result<Counter, XdpError> {
        per_cpu_sum(&self.ebpf, maps::COUNT, 0)
    }
}
