//! The redirecting program: every frame out of one other interface, untouched (the ceiling
//! of forwarding at the NIC, for benchmarks).

use aya::{Ebpf, maps::DevMap};
use skiff_common::{maps, programs};

use crate::{XdpError, XdpMode, attach};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect"));

/// The loaded redirecting program. Dropping it detaches it everywhere.
pub struct RedirectProgram {
    ebpf: Ebpf,
}

impl RedirectProgram {
    /// Loads and verifies the program, sending frames out of interface `ifindex` (in the
    /// network namespace of the calling thread).
    pub fn load(ifindex: u32) -> Result<Self, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(Box::new)?;
        let mut to: DevMap<_> = crate::map_mut(&mut ebpf, maps::REDIRECT_TO)?;
        to.set(0, ifindex, None, 0)
            .map_err(|e| XdpError::Invalid(format!("map {}: {e}", maps::REDIRECT_TO)))?;
        crate::load_xdp(&mut ebpf, programs::REDIRECT)?;
        Ok(RedirectProgram { ebpf })
    }

    /// Attaches to `iface`; returns the active mode.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpMode, XdpError> {
        attach(&mut self.ebpf, programs::REDIRECT, iface, mode).map(|(mode, _)| mode)
    }
}
