//! `skiff_sock` (socket-LB) from userspace: load with pinned maps, attach its eight programs
//! to a cgroup v2, and fill its tables from the services.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use skiff_common::{
    lb::{BackendId, FrontendKind},
    maps, programs,
    proto::ip,
    sock::{SlotKey, SockBackend, SockConfig, SockCounter, SockKey4, SockKey6, SockService},
};

use crate::{XdpError, bpffs, prune, sync, upsert};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock"));

/// Every program, one per hook.
const PROGRAMS: [&str; 8] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::RECVMSG4,
    programs::RECVMSG6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
];

/// A service frontend as socket-LB serves it: where sockets connect, and the backends a new
/// connection from inside the cluster may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketFrontend {
    pub addr: IpAddr,
    pub port: u16,
    /// IANA's number; only TCP and UDP sockets are translated.
    pub protocol: u8,
    /// A NodePort answers on every node's address too.
    pub kind: FrontendKind,
    /// Its address is one of this node's.
    pub on_this_node: bool,
    pub backends: Vec<SocketBackend>,
    /// `sessionAffinity: ClientIP`, in seconds.
    pub affinity_timeout: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketBackend {
    pub id: BackendId,
    pub addr: IpAddr,
    pub port: u16,
    /// How many slots it gets (0: it takes no new connection).
    pub weight: u16,
}

impl SocketFrontend {
    /// Whether socket-LB translates connects to it.
    pub fn served(&self) -> bool {
        SocketFrontend::serves(self.kind, self.protocol, self.on_this_node)
    }

    /// Whether socket-LB translates connects to a frontend of `kind` and `protocol`: TCP and
    /// UDP ones, but an external IP only when it is this node's own address, as Cilium's
    /// socket-LB (CVE-2020-8554: a Service may claim any address as external, and would take
    /// the node's own connects to it). Pods' traffic to the others still meets the workers.
    pub fn serves(kind: FrontendKind, protocol: u8, on_this_node: bool) -> bool {
        (protocol == ip::TCP || protocol == ip::UDP) && (kind != FrontendKind::ExternalIp || on_this_node)
    }

    /// What shares one service entry: the frontend itself, or for a NodePort its port on
    /// every address of the family (the wildcard key's address).
    fn group(&self) -> (IpAddr, u16, u8) {
        let addr = match (self.kind == FrontendKind::NodePort, self.addr) {
            (false, addr) => addr,
            (true, IpAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
            (true, IpAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
        };
        (addr, self.port, self.protocol)
    }
}

/// The loaded socket programs (verified) with their maps pinned in one folder. Dropping it
/// detaches them; the pinned maps stay for a restarted agent (`skiff-agent cleanup` removes
/// them).
pub struct SocketLb {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    ids: ServiceIds,
    /// What the maps hold since the last [`SocketLb::set_services`]: a publish that changes
    /// no service (the kernel's next hops moved) writes nothing.
    written: Option<(Tables, Vec<IpAddr>)>,
}

/// Service ids by [`SocketFrontend::group`], kept while the group exists so a client's
/// affinity survives publishes.
#[derive(Default)]
struct ServiceIds {
    ids: StdHashMap<(IpAddr, u16, u8), u32>,
    next: u32,
}

impl SocketLb {
    /// Loads the programs, pinning their maps in `pin_dir` (created if needed; maps already
    /// pinned there are reused with their contents), and verifies them.
    pub fn load(pin_dir: impl Into<PathBuf>) -> Result<SocketLb, XdpError> {
        let pin_dir = pin_dir.into();
        let (mut ebpf, _) = crate::load_pinned(OBJECT, &pin_dir)?;
        for name in PROGRAMS {
            let program = program(&mut ebpf, name)?;
            crate::load(|| program.load())
                .map_err(|source| XdpError::Program { name, source: Box::new(source) })?;
        }
        Ok(SocketLb { ebpf, pin_dir, ids: ServiceIds::default(), written: None })
    }

    /// Attaches every program to the cgroup v2 folder `cgroup`, mounting cgroup2 there unless
    /// one is (through bpf_links: they go when this value does). All or nothing: on an error
    /// none stays attached.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), XdpError> {
        bpffs::ensure_cgroup2(cgroup).map_err(|source| XdpError::Io {
            what: format!("no cgroup v2 at {}, and mounting one", cgroup.display()),
            source,
        })?;
        let file = File::open(cgroup).map_err(|source| XdpError::Io {
            what: format!("opening cgroup {}", cgroup.display()),
            source,
        })?;
        let mut attached = Vec::new();
        for name in PROGRAMS {
            let program = program(&mut self.ebpf, name)?;
            match program.attach(&file, CgroupAttachMode::Single) {
                Ok(link) => attached.push((name, link)),
                Err(source) => {
                    for (name, link) in attached {
                        let _ = self::program(&mut self.ebpf, name).map(|p| p.detach(link));
                    }
                    return Err(XdpError::Attach {
                        program: name,
                        iface: format!("cgroup {}", cgroup.display()),
                        mode: skiff_common::config::XdpMode::Auto,
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Tells the programs which network namespace is the node's (the caller's) and whether
    /// only its sockets are translated.
    pub fn set_config(&mut self, host_namespace_only: bool) -> Result<(), XdpError> {
        let config = SockConfig {
            host_netns: own_netns_cookie().map_err(|source| XdpError::Io {
                what: "reading the network namespace's cookie".into(),
                source,
            })?,
            flags: if host_namespace_only { SockConfig::HOST_NAMESPACE_ONLY } else { 0 },
            _pad: 0,
        };
        let mut array: Array<_, SockConfig> = self.map_mut(maps::SOCK_CONFIG)?;
        array.set(0, config, 0).map_err(XdpError::map(maps::SOCK_CONFIG))
    }

    /// Makes the tables serve exactly `frontends`, with NodePorts on every address in `nodes`
    /// (every node's). A connect never meets a half-written service: its backends and slots
    /// are written before the frontend that counts them, and removed after.
    pub fn set_services(&mut self, frontends: &[SocketFrontend], nodes: &[IpAddr]) -> Result<(), XdpError> {
        let want = Tables::of(frontends, &mut self.ids);
        if self.written.as_ref().is_some_and(|(tables, n)| *tables == want && n == nodes) {
            return Ok(());
        }
        self.written = None;
        upsert(&mut self.map_mut(maps::SOCK_BACKENDS)?, &want.backends, maps::SOCK_BACKENDS)?;
        upsert(&mut self.map_mut(maps::SOCK_SLOTS)?, &want.slots, maps::SOCK_SLOTS)?;
        upsert(&mut self.map_mut(maps::SOCK_MEMBERS)?, &want.members, maps::SOCK_MEMBERS)?;
        sync(self.map_mut(maps::SOCK_SVC_V4)?, &want.services4, maps::SOCK_SVC_V4)?;
        sync(self.map_mut(maps::SOCK_SVC_V6)?, &want.services6, maps::SOCK_SVC_V6)?;
        prune(&mut self.map_mut(maps::SOCK_MEMBERS)?, &want.members, maps::SOCK_MEMBERS)?;
        prune(&mut self.map_mut(maps::SOCK_SLOTS)?, &want.slots, maps::SOCK_SLOTS)?;
        prune(&mut self.map_mut(maps::SOCK_BACKENDS)?, &want.backends, maps::SOCK_BACKENDS)?;
        let (mut nodes4, mut nodes6) = (StdHashMap::new(), StdHashMap::new());
        for node in nodes {
            match node {
                IpAddr::V4(a) => nodes4.insert(a.octets(), 1u8),
                IpAddr::V6(a) => nodes6.insert(a.octets(), 1u8),
            };
        }
        sync(self.map_mut(maps::SOCK_NODES_V4)?, &nodes4, maps::SOCK_NODES_V4)?;
        sync(self.map_mut(maps::SOCK_NODES_V6)?, &nodes6, maps::SOCK_NODES_V6)?;
        self.written = Some((want, nodes.to_vec()));
        Ok(())
    }

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, XdpError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        crate::map_mut(&mut self.ebpf, name)
    }
}

/// The maps' wanted contents.
#[derive(Default, PartialEq)]
struct Tables {
    services4: StdHashMap<SockKey4, SockService>,
    services6: StdHashMap<SockKey6, SockService>,
    slots: StdHashMap<SlotKey, BackendId>,
    members: StdHashMap<SlotKey, u8>,
    backends: StdHashMap<BackendId, SockBackend>,
}

impl Tables {
    /// The maps' contents for `frontends`, numbering new services.
    fn of(frontends: &[SocketFrontend], ids: &mut ServiceIds) -> Tables {
        let mut t = Tables::default();
        let mut services: StdHashMap<(IpAddr, u16, u8), SockService> = StdHashMap::new();
        for f in frontends.iter().filter(|f| f.served()) {
            let group = f.group();
            let service = *services.entry(group).or_insert_with(|| {
                let id = *ids.ids.entry(group).or_insert_with(|| {
                    ids.next += 1;
                    ids.next
                });
                let mut backends: Vec<&SocketBackend> = f.backends.iter().filter(|b| b.weight > 0).collect();
                backends.sort_by_key(|b| b.id);
                let mut slots = 0;
                for b in backends {
                    t.backends.insert(b.id, sock_backend(b));
                    t.members.insert(SlotKey { service: id, slot: b.id.0 }, 1);
                    for _ in 0..b.weight {
                        t.slots.insert(SlotKey { service: id, slot: slots }, b.id);
                        slots += 1;
                    }
                }
                let affinity_timeout =
                    f.affinity_timeout.map_or(0, |t| u32::try_from(t.max(1)).unwrap_or(u32::MAX));
                SockService { id, slots, affinity_timeout, _pad: 0 }
            });
            let addrs = [Some(f.addr), (f.kind == FrontendKind::NodePort).then_some(group.0)];
            for addr in addrs.into_iter().flatten() {
                match addr {
                    IpAddr::V4(a) => t.services4.insert(
                        SockKey4 { vip: a.octets(), dport: f.port.to_be(), proto: f.protocol, _pad: 0 },
                        service,
                    ),
                    IpAddr::V6(a) => t.services6.insert(
                        SockKey6 { vip: a.octets(), dport: f.port.to_be(), proto: f.protocol, _pad: 0 },
                        service,
                    ),
                };
            }
        }
        let live: HashSet<_> = services.keys().copied().collect();
        ids.ids.retain(|group, _| live.contains(group));
        t
    }
}

fn sock_backend(b: &SocketBackend) -> SockBackend {
    let mut addr = [0; 16];
    match b.addr {
        IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => addr = a.octets(),
    }
    SockBackend { addr, port: b.port.to_be(), _pad: 0 }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr, XdpError> {
    ebpf.program_mut(name)
        .ok_or(XdpError::MissingProgram(name))?
        .try_into()
        .map_err(|source| XdpError::Program { name, source: Box::new(source) })
}

/// The cookie of the caller's network namespace (`SO_NETNS_COOKIE`), as `bpf_get_netns_cookie`
/// reports it for sockets there.
fn own_netns_cookie() -> std::io::Result<u64> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).map_err(std::io::Error::other)?;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// What the socket programs whose maps are pinned in `pin_dir` counted, summed over CPUs (read
/// from the pin, so another part of the agent can read it).
pub fn pinned_socket_counters(pin_dir: &Path) -> Result<Vec<(SockCounter, u64)>, XdpError> {
    let name = maps::SOCK_COUNTS;
    let array: PerCpuArray<_, u64> = crate::pinned(pin_dir, name)?;
    SockCounter::ALL
        .iter()
        .map(|&c| {
            let per_cpu = array.get(&u32::from(c.code()), 0).map_err(XdpError::map(name))?;
            Ok((c, per_cpu.iter().sum()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(addr: &str, kind: FrontendKind, on_this_node: bool, weights: &[u16]) -> SocketFrontend {
        let backends = weights
            .iter()
            .zip(1..)
            .map(|(&weight, i)| SocketBackend {
                id: BackendId(i),
                addr: format!("198.18.10.{i}").parse().unwrap(),
                port: 8080,
                weight,
            })
            .collect();
        SocketFrontend {
            addr: addr.parse().unwrap(),
            port: 80,
            protocol: ip::TCP,
            kind,
            on_this_node,
            backends,
            affinity_timeout: Some(0),
        }
    }

    #[test]
    fn slots_follow_the_weights_and_node_ports_share_a_wildcard() {
        let mut ids = ServiceIds::default();
        let frontends = [
            frontend("198.19.0.10", FrontendKind::ClusterIp, false, &[1, 0, 2]),
            frontend("198.18.0.1", FrontendKind::NodePort, true, &[1]),
            frontend("198.18.0.5", FrontendKind::NodePort, true, &[1]),
            frontend("198.18.0.200", FrontendKind::ExternalIp, false, &[1]),
            SocketFrontend { protocol: 132, ..frontend("198.19.0.11", FrontendKind::ClusterIp, false, &[1]) },
        ];
        let t = Tables::of(&frontends, &mut ids);
        let key = |a: [u8; 4]| SockKey4 { vip: a, dport: 80u16.to_be(), proto: ip::TCP, _pad: 0 };
        let cluster = t.services4[&key([198, 19, 0, 10])];
        // Backend 2 is terminating (weight 0): no slot, not a member; backend 3 twice.
        assert_eq!(cluster.slots, 3);
        let slots: Vec<u32> = (0..3).map(|slot| t.slots[&SlotKey { service: cluster.id, slot }].0).collect();
        assert_eq!(slots, [1, 3, 3]);
        assert!(!t.members.contains_key(&SlotKey { service: cluster.id, slot: 2 }));
        assert_eq!(cluster.affinity_timeout, 1, "a timeout of 0 s still means affinity");
        // Both NodePort addresses and the wildcard are one service.
        let node_port = t.services4[&key([198, 18, 0, 1])];
        assert_eq!(t.services4[&key([198, 18, 0, 5])], node_port);
        assert_eq!(t.services4[&key([0; 4])], node_port);
        // Neither another address's external IP nor SCTP.
        assert_eq!(t.services4.len(), 4);
        // Ids stay while their service does.
        let again = Tables::of(&frontends[..1], &mut ids);
        assert_eq!(again.services4[&key([198, 19, 0, 10])].id, cluster.id);
        assert_eq!(ids.ids.len(), 1);
    }
}
