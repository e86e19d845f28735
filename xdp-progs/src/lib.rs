//! skiff-xdp: loads skiff's XDP programs (embedded at build time), attaches them to
//! interfaces in native or generic mode, and reads their maps with skiff-common types.
//!
//! Interface names resolve in the network namespace of the calling thread: attach from a
//! thread inside the namespace that owns the interface.

use std::{fmt, str::FromStr};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{Xdp, XdpMode as AyaMode},
};
use skiff_common::{Counter, maps, programs};

/// The eBPF object built from `xdp-progs/ebpf` by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skiff-xdp"));

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
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("attaching {program} to {iface} in {mode} mode: {source}")]
    Attach { program: &'static str, iface: String, mode: XdpMode, source: Box<aya::programs::ProgramError> },
}

/// How to attach: `auto` tries native (driver) XDP and falls back to generic (SKB) XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

impl FromStr for XdpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            other => Err(format!("unknown XDP mode {other:?}: expected auto, native or generic")),
        }
    }
}

/// The loaded eBPF object. Dropping it detaches every program it attached.
pub struct XdpObject {
    ebpf: Ebpf,
}

impl XdpObject {
    /// Loads the embedded object (maps are created, programs not yet verified).
    pub fn load() -> Result<Self, XdpError> {
        Ok(XdpObject { ebpf: Ebpf::load(OBJECT).map_err(Box::new)? })
    }

    /// Verifies and loads the counting program and attaches it to `iface`. Returns the mode
    /// that is active: never `Auto`.
    pub fn attach_count(&mut self, iface: &str, mode: XdpMode) -> Result<XdpMode, XdpError> {
        let name = programs::COUNT;
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(XdpError::MissingProgram(name))?
            .try_into()
            .map_err(|source| XdpError::Program { name, source: Box::new(source) })?;
        if program.fd().is_err() {
            program.load().map_err(|source| XdpError::Program { name, source: Box::new(source) })?;
        }
        let attach = |program: &mut Xdp, mode: XdpMode| {
            let aya_mode = if mode == XdpMode::Native { AyaMode::Driver } else { AyaMode::Skb };
            program.attach(iface, aya_mode).map(|_| mode).map_err(|source| XdpError::Attach {
                program: name,
                iface: iface.to_owned(),
                mode,
                source: Box::new(source),
            })
        };
        match mode {
            XdpMode::Auto => attach(program, XdpMode::Native).or_else(|_| attach(program, XdpMode::Generic)),
            explicit => attach(program, explicit),
        }
    }

    /// What the counting program has seen, summed over CPUs.
    pub fn count(&self) -> Result<Counter, XdpError> {
        let name = maps::COUNT;
        let map = self.ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
        let array =
            PerCpuArray::<_, Counter>::try_from(map).map_err(|source| XdpError::Map { name, source })?;
        let per_cpu = array.get(&0, 0).map_err(|source| XdpError::Map { name, source })?;
        Ok(per_cpu.iter().fold(Counter::default(), |sum, cpu| sum.plus(*cpu)))
    }
}
