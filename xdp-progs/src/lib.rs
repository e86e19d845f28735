//! skiff-xdp: loads skiff's XDP programs (embedded at build time), attaches them to
//! interfaces in native or generic mode, and gives typed access to their maps.
//!
//! - [`CountProgram`]: per-CPU packet counter, passes everything (the toolchain check).
//! - [`Ingress`]: the datapath's first line (prefilter, tunnel decap, redirect to AF_XDP).
//! - [`SocketLb`]: socket-LB, cgroup socket programs translating services at connect time.
//! - [`TrafficGen`]: the lab's traffic generator (benchmarks).
//! - [`RedirectProgram`]: every frame out of another interface (the benchmarks' ceiling).
//! - [`Jiffies`]: the kernel's tick count, the flow table's clock, told in CLOCK_MONOTONIC.
//!
//! Interface names resolve in the network namespace of the calling thread: attach from a
//! thread inside the namespace that owns the interface.

pub mod bpffs;
mod clock;
mod count;
mod deny_free;
mod features;
mod flow_table;
mod ingress;
mod redirect;
mod sock;
mod test_run;
mod trafficgen;

use std::{collections::HashMap as StdHashMap, hash::Hash};

use aya::{
    maps::{HashMap, MapData},
    programs::{Xdp, XdpMode as AyaMode},
};
pub use clock::{Jiffies, monotonic_ns};
pub use count::CountProgram;
pub use features::takes_xdp_frames;
pub use flow_table::FlowTable;
pub use ingress::{DropCount, EventRing, Ingress, Restored, pinned_actions, pinned_drops, pinned_flow_paths};
pub use redirect::RedirectProgram;
/// How a program is attached (defined with the shared types, for the local API).
pub use skiff_common::config::XdpMode;
pub use sock::{SocketBackend, SocketFrontend, SocketLb, pinned_socket_counters};
pub use test_run::TestRun;
pub use trafficgen::TrafficGen;

/// Loads (verifies) a program with `load`. The verifier gives up with EAGAIN when a signal
/// arrives while it works (a test harness's SIGCHLD, say): retried, as libbpf does, a few
/// times.
fn load(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 0;
    loop {
        match load() {
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
        load(|| program.load()).map_err(program_error)?;
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

/// Makes `map` exactly `want`: removes the stale keys and writes the missing or changed
/// entries (one syscall per change, none for an unchanged entry).
fn sync<K: aya::Pod + Eq + Hash, V: aya::Pod + PartialEq>(
    mut map: HashMap<&mut MapData, K, V>,
    want: &StdHashMap<K, V>,
    name: &'static str,
) -> Result<(), XdpError> {
    prune(&mut map, want, name)?;
    upsert(&mut map, want, name)
}

/// Writes the entries of `want` that `map` lacks or holds with another value.
fn upsert<K: aya::Pod + Eq + Hash, V: aya::Pod + PartialEq>(
    map: &mut HashMap<&mut MapData, K, V>,
    want: &StdHashMap<K, V>,
    name: &'static str,
) -> Result<(), XdpError> {
    let present: StdHashMap<K, V> = map.iter().collect::<Result<_, _>>().map_err(XdpError::map(name))?;
    for (k, v) in want.iter().filter(|(k, v)| present.get(k) != Some(v)) {
        map.insert(k, *v, 0).map_err(XdpError::map(name))?;
    }
    Ok(())
}

/// Removes the keys of `map` that `want` lacks.
fn prune<K: aya::Pod + Eq + Hash, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    want: &StdHashMap<K, V>,
    name: &'static str,
) -> Result<(), XdpError> {
    let stale: Vec<K> = map.keys().collect::<Result<Vec<K>, _>>().map_err(XdpError::map(name))?;
    for k in stale.iter().filter(|k| !want.contains_key(k)) {
        map.remove(k).map_err(XdpError::map(name))?;
    }
    Ok(())
}

/// The layout of every map skiff pins: raise it with any change to a pinned map's type, key,
/// value or size. A pin folder holds its version as an empty folder, `layout-<N>`.
/// 3: `XdpConfig` gained `trace_sample_every`; the event ring carries every decision.
/// 4: the ipcache tries (`IPCACHE_V4`, `IPCACHE_V6`) replace `IDENTITIES`.
/// 5: `XdpConfig` names the node's addresses and host interfaces; `HOST_PORTS`.
/// 6: `CtEntry::last_seen` is the kernel's tick count, no longer nanoseconds.
/// 7: the flow caches (`FLOW_CACHE_V4`, `FLOW_CACHE_V6`) in front of `CT_V4` and `CT_V6`.
pub const MAP_LAYOUT: u32 = 7;

/// Loads `object`, pinning its maps in `pin_dir` (created if needed, on bpffs, mounted if it
/// is not). Maps already pinned there are reused with their contents if their layout is this
/// version's; another version's are removed first, so that nothing misreads them (returns
/// `true` then). Pinned attachments (`links/`) stay.
fn load_pinned(object: &[u8], pin_dir: &std::path::Path) -> Result<(aya::Ebpf, bool), XdpError> {
    let io = |what: &str| {
        let what = format!("{what} {}", pin_dir.display());
        move |source| XdpError::Io { what, source }
    };
    bpffs::ensure_mounted().map_err(io("mounting bpffs for"))?;
    std::fs::create_dir_all(pin_dir).map_err(io("creating the pin folder"))?;
    let rebuilt =
        bpffs::keep_layout(pin_dir, MAP_LAYOUT).map_err(io("checking the layout of the maps in"))?;
    let ebpf = aya::EbpfLoader::new().default_map_pin_directory(pin_dir).load(object).map_err(Box::new)?;
    Ok((ebpf, rebuilt))
}

/// A typed handle on map `name` of `ebpf`.
fn map_mut<'a, M>(ebpf: &'a mut aya::Ebpf, name: &'static str) -> Result<M, XdpError>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(XdpError::MissingMap(name))?;
    M::try_from(map).map_err(XdpError::map(name))
}

/// Verifies and loads XDP program `name` of `ebpf`.
fn load_xdp(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<(), XdpError> {
    let error = |source| XdpError::Program { name, source: Box::new(source) };
    let program: &mut Xdp =
        ebpf.program_mut(name).ok_or(XdpError::MissingProgram(name))?.try_into().map_err(error)?;
    load(|| program.load()).map_err(error)
}

/// Runs loaded XDP program `name` of `ebpf` on `frame` in the kernel (`BPF_PROG_TEST_RUN`).
fn run_xdp(ebpf: &aya::Ebpf, name: &'static str, frame: &[u8], repeat: u32) -> Result<TestRun, XdpError> {
    use std::os::fd::{AsFd, AsRawFd};
    let error = |source| XdpError::Program { name, source: Box::new(source) };
    let program: &Xdp =
        ebpf.program(name).ok_or(XdpError::MissingProgram(name))?.try_into().map_err(error)?;
    let fd = program.fd().map_err(error)?;
    test_run::test_run(fd.as_fd().as_raw_fd(), frame, repeat)
        .map_err(|source| XdpError::Io { what: "BPF_PROG_TEST_RUN".into(), source })
}

/// A typed handle on map `name` pinned in `pin_dir` (opened by another part of the agent than
/// the one that loaded its program).
fn pinned<M>(pin_dir: &std::path::Path, name: &'static str) -> Result<M, XdpError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(pin_dir.join(name)).map_err(XdpError::map(name))?;
    let map = aya::maps::Map::from_map_data(data).map_err(XdpError::map(name))?;
    M::try_from(map).map_err(XdpError::map(name))
}
