//! The counting program: counts every frame per CPU and passes it on.

use aya::Ebpf;
use skiff_common::{Counter, maps, programs};

use crate::{XdpError, XdpMode, attach, per_cpu_sum};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/count"));

/// The loaded counting program. Dropping it detaches it everywhere.
pub struct CountProgram {
    ebpf: Ebpf,
}

impl CountProgram {
    pub fn load() -> Result<Self, XdpError> {
        Ok(CountProgram { ebpf: Ebpf::load(OBJECT).map_err(Box::new)? })
    }

    /// Attaches to `iface`; returns the active mode.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpMode, XdpError> {
        attach(&mut self.ebpf, programs::COUNT, iface, mode)
    }

    /// What the program has seen, summed over CPUs.
    pub fn count(&self) -> Result<Counter, XdpError> {
        per_cpu_sum(&self.ebpf, maps::COUNT, 0)
    }
}
