//! The counting program: counts every frame per CPU and passes it on.

use aya::Ebpf;
use skiff_common::{Counter, maps, programs};

use crate::{TestRun, XdpError, XdpMode, attach, per_cpu_sum};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/count"));

/// The loaded counting program. Dropping it detaches it everywhere.
pub struct CountProgram {
    ebpf: Ebpf,
}

impl CountProgram {
    /// Loads and verifies the program.
    pub fn load() -> Result<Self, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(Box::new)?;
        crate::load_xdp(&mut ebpf, programs::COUNT)?;
        Ok(CountProgram { ebpf })
    }

    /// Runs the program on `frame` in the kernel (`BPF_PROG_TEST_RUN`): the cost of the least
    /// an XDP program can do, as a floor for the datapath's figures.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRun, XdpError> {
        crate::run_xdp(&self.ebpf, programs::COUNT, frame, repeat)
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
