//! skiff-xdp: loads skiff's XDP programs (embedded at build time), attaches them to
//! interfaces in native or generic mode, and gives typed access to their maps.
//!
//! - [`CountProgram`]: per-CPU packet counter, passes everything (the toolchain check).
//! - [`Ingress`]: the datapath's first line (prefilter, tunnel decap, redirect to AF_XDP).
//! - [`TrafficGen`]: the lab's traffic generator (benchmarks).
//!
//! Interface names resolve in the network namespace of the calling thread: attach from a
//! thread inside the namespace that owns the interface.

pub mod bpffs;
mod count;
mod ingress;
mod test_run;
mod trafficgen;

use aya::programs::{Xdp, XdpMode as AyaMode};
pub use count::CountProgram;
pub use ingress::{DropCount, Ingress, TrackedFlows, pinned_drops};
/// How a program is attached (defined with the shared types, for the local API).
pub use skiff_common::config::XdpMode;
pub use test_run::TestRun;
pub use trafficgen::TrafficGen;

/// Loads (verifies) a program. The verifier gives up with EAGAIN when a signal arrives while
/// it works (a test harness's SIGCHLD, say): retried, as libbpf does, a few times.
fn load(program: &mut Xdp) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 0;
    loop {
        match program.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the eBPF object into the kernel: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: Box<aya::programs::ProgramError> },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: Box<aya::maps::MapError> },
    #[error("attaching {program} to {iface} in {mode} mode: {source}")]
    Attach { program: &'static str, iface: String, mode: XdpMode, source: Box<aya::programs::ProgramError> },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

impl XdpError {
    fn map(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> XdpError {
        move |source| XdpError::Map { name, source: Box::new(source) }
    }
}

/// Verifies and loads program `name` of `ebpf` (once) and attaches it to `iface` through a
/// bpf_link. Returns the mode that is active (never `Auto`) and the link.
fn attach(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    iface: &str,
    mode: XdpMode,
) -> Result<(XdpMode, aya::programs::xdp::XdpLinkId), XdpError> {
    let program_error = |source| XdpError::Program { name, source: Box::new(source) };
    let program: &mut Xdp =
        ebpf.program_mut(name).ok_or(XdpError::MissingProgram(name))?.try_into().map_err(program_error)?;
    if program.fd().is_err() {
        load(program).map_err(program_error)?;
    }
    let attach_in = |program: &mut Xdp, mode: XdpMode| {
        let aya_mode = if mode == XdpMode::Native { AyaMode::Driver } else { AyaMode::Skb };
        program.attach(iface, aya_mode).map(|link| (mode, link)).map_err(|source| XdpError::Attach {
            program: name,
            iface: iface.to_owned(),
            mode,
            source: Box::new(source),
        })
    };
    match mode {
        XdpMode::Auto => {
            attach_in(program, XdpMode::Native).or_else(|_| attach_in(program, XdpMode::Generic))
        }
        explicit => attach_in(program, explicit),
    }
}

/// Sums a per-CPU counter slot over CPUs.
fn per_cpu_sum(ebpf: &aya::Ebpf, name: &'static str, index: u32) -> Result<skiff_common::Counter, XdpError> {
    let map = ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
    let array =
        aya::maps::PerCpuArray::<_, skiff_common::Counter>::try_from(map).map_err(XdpError::map(name))?;
    let per_cpu = array.get(&index, 0).map_err(XdpError::map(name))?;
    Ok(per_cpu.iter().fold(skiff_common::Counter::default(), |sum, cpu| sum.plus(*cpu)))
}
