//! `skiff_xdp_ingress` from userspace: load with pinned maps, attach, fill its tables, read
//! its counters and drop events, and run it on test frames.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, LpmTrie, MapData, RingBuf, XskMap, lpm_trie::Key},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use skiff_common::{
    Counter, DropReason, XdpAction,
    config::{HOST_PORT_WORDS, XSK_INTERFACES, XSK_QUEUES_PER_IF, XdpConfig, XdpMode, host_port_slot},
    conntrack::FlowPath,
    endpoint::{EndpointInfo, PodSources},
    event::XdpEvent,
    identity::Identity,
    lb::{FrontendKind, ServiceKey4, ServiceKey6, ServiceScope, ServiceValue},
    lpm::{DENY_FREE_WORDS, DenyEntry, LpmKey4, LpmKey6},
    maps, programs,
};

use crate::{
    FlowTable, TestRun, XdpError, attach, bpffs,
    deny_free::{self, DenyFree, Prefix},
    per_cpu_sum, sync,
    test_run::test_run,
};

/// A pair of prefix tries: IPv4, IPv6.
type Tries = (&'static str, &'static str);
const DENY: Tries = (maps::DENY_V4, maps::DENY_V6);
const REMOTE_PODS: Tries = (maps::REMOTE_PODS_V4, maps::REMOTE_PODS_V6);
const CLUSTER: Tries = (maps::CLUSTER_V4, maps::CLUSTER_V6);
const IPCACHE: Tries = (maps::IPCACHE_V4, maps::IPCACHE_V6);

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress"));

/// A drop reason and what it dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropCount {
    pub reason: DropReason,
    pub count: Counter,
}

/// The loaded ingress program (verified by the kernel) with its maps pinned in one folder,
/// and its attachments pinned beside them (`links/<interface>@<mode>`): the program stays
/// attached and its maps keep their state when the agent stops or dies, and the next load
/// adopts them ([`Ingress::adopted`]), until [`Ingress::remove_pins`] (an uninstall).
pub struct Ingress {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// The program's bpf_links, each pinned.
    links: Vec<Attachment>,
    restored: Restored,
    /// What `HOST_PORTS` holds, once read: a change writes only the words that differ.
    host_ports: Option<Vec<u64>>,
    /// The denied prefixes behind `DENY_FREE`, once read.
    deny_free: Option<DenyFree>,
}

/// An interface the program is attached to.
struct Attachment {
    iface: String,
    mode: XdpMode,
    /// Dropping it closes this process's handle: the pin keeps the program attached.
    link: XdpLink,
}

/// What a load found of an earlier one in its pin folder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The interfaces whose pinned attachment now runs this program (BPF_LINK_UPDATE, in
    /// place: no frame meets the interface without a program).
    pub interfaces: Vec<String>,
    /// Attachments of interfaces gone meanwhile, unpinned.
    pub gone: Vec<String>,
    /// The pinned maps were of another layout and were removed, not misread.
    pub maps_rebuilt: bool,
}

impl Ingress {
    /// Loads the program, pinning its maps in `pin_dir` (a folder on bpffs, created if needed;
    /// maps already pinned there are reused with their contents, unless their layout is
    /// another version's), verifies it, and adopts the attachments pinned there: each runs
    /// this program from now on.
    pub fn load(pin_dir: impl Into<PathBuf>) -> Result<Self, XdpError> {
        let pin_dir = pin_dir.into();
        let (ebpf, maps_rebuilt) = crate::load_pinned(OBJECT, &pin_dir)?;
        let restored = Restored { maps_rebuilt, ..Restored::default() };
        let mut ingress =
            Ingress { ebpf, pin_dir, links: Vec::new(), restored, host_ports: None, deny_free: None };
        let program = ingress.program_mut()?;
        crate::load(|| program.load()).map_err(program_error)?;
        ingress.adopt()?;
        Ok(ingress)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// What this load found of an earlier one.
    pub fn adopted(&self) -> &Restored {
        &self.restored
    }

    /// Takes over the attachments an earlier load pinned; unpins those whose interface went.
    fn adopt(&mut self) -> Result<(), XdpError> {
        let dir = self.pin_dir.join(LINKS);
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            entries => entries
                .map_err(|source| XdpError::Io { what: format!("reading {}", dir.display()), source })?,
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed =
                name.rsplit_once('@').and_then(|(iface, mode)| Some((iface.to_owned(), mode.parse().ok()?)));
            let link = PinnedLink::from_pin(entry.path())
                .ok()
                .and_then(|pinned| XdpLink::try_from(FdLink::from(pinned)).ok());
            let adopted = match (parsed, link) {
                (Some((iface, mode)), Some(link)) => {
                    let program = self.program_mut()?;
                    // A link whose interface was deleted refuses the update (ENOLINK).
                    let id = program.attach_to_link(link).ok();
                    id.and_then(|id| program.take_link(id).ok()).map(|link| Attachment { iface, mode, link })
                }
                _ => None,
            };
            match adopted {
                Some(a) => {
                    self.restored.interfaces.push(a.iface.clone());
                    self.links.push(a);
                }
                None => {
                    let _ = std::fs::remove_file(entry.path());
                    self.restored.gone.push(name);
                }
            }
        }
        Ok(())
    }

    /// Attaches to `iface` (in the calling thread's network namespace) and pins the
    /// attachment; returns the mode. An interface it is attached to already (adopted) keeps
    /// its attachment.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpMode, XdpError> {
        if let Some(a) = self.links.iter().find(|a| a.iface == iface) {
            return Ok(a.mode);
        }
        let (mode, id) = attach(&mut self.ebpf, programs::INGRESS, iface, mode)?;
        let link = self.program_mut()?.take_link(id).map_err(program_error)?;
        let link = self.pin(iface, mode, link)?;
        self.links.push(Attachment { iface: iface.to_owned(), mode, link });
        Ok(mode)
    }

    /// Pins `link` as the attachment to `iface`.
    fn pin(&self, iface: &str, mode: XdpMode, link: XdpLink) -> Result<XdpLink, XdpError> {
        let dir = self.pin_dir.join(LINKS);
        std::fs::create_dir_all(&dir)
            .map_err(|source| XdpError::Io { what: format!("creating {}", dir.display()), source })?;
        let pin_error = |e: String| XdpError::Invalid(format!("pinning the attachment to {iface}: {e}"));
        let fd = FdLink::try_from(link).map_err(|e| pin_error(e.to_string()))?;
        let pinned = fd.pin(link_pin(&self.pin_dir, iface, mode)).map_err(|e| pin_error(e.to_string()))?;
        XdpLink::try_from(FdLink::from(pinned)).map_err(|e| pin_error(e.to_string()))
    }

    /// Detaches from `iface` and unpins the attachment (a device already deleted has no
    /// program to detach: nothing to do but forget its link).
    pub fn detach(&mut self, iface: &str) {
        let Some(i) = self.links.iter().position(|a| a.iface == iface) else { return };
        let a = self.links.swap_remove(i);
        let _ = std::fs::remove_file(link_pin(&self.pin_dir, &a.iface, a.mode));
    }

    /// Moves every attachment of this program to `next` in place: each bpf_link is updated
    /// (BPF_LINK_UPDATE), so no frame meets an interface without a program (an upgrade), and
    /// its pin moves to `next`'s folder. `next` must be loaded; this program is left attached
    /// nowhere.
    pub fn hand_over(&mut self, next: &mut Ingress) -> Result<(), XdpError> {
        for Attachment { iface, mode, link } in std::mem::take(&mut self.links) {
            let program = next.program_mut()?;
            let id = program.attach_to_link(link).map_err(program_error)?;
            let link = program.take_link(id).map_err(program_error)?;
            let (from, to) = (link_pin(&self.pin_dir, &iface, mode), link_pin(&next.pin_dir, &iface, mode));
            let moved = to
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::rename(&from, &to));
            moved.map_err(|source| XdpError::Io {
                what: format!("moving {} to {}", from.display(), to.display()),
                source,
            })?;
            next.links.push(Attachment { iface, mode, link });
        }
        Ok(())
    }

    /// Detaches everywhere, then removes the pinned maps and attachments and their folder.
    pub fn remove_pins(self) -> Result<(), XdpError> {
        let dir = self.pin_dir.clone();
        drop(self);
        bpffs::remove_pins(&dir)
            .map_err(|source| XdpError::Io { what: format!("removing {}", dir.display()), source })
    }

    pub fn set_config(&mut self, config: &XdpConfig) -> Result<(), XdpError> {
        let mut array: Array<_, XdpConfig> = self.map_mut(maps::CONFIG)?;
        array.set(0, *config, 0).map_err(XdpError::map(maps::CONFIG))
    }

    /// Makes the ports of the node's own addresses that a worker serves exactly `ports`
    /// (protocol, port; TCP and UDP): the node's other TCP and UDP traffic passes to the
    /// kernel without a lookup (see [`XdpConfig::host_v4`]).
    pub fn set_host_ports(&mut self, ports: impl IntoIterator<Item = (u8, u16)>) -> Result<(), XdpError> {
        let mut want = vec![0u64; 2 * HOST_PORT_WORDS as usize];
        for (protocol, port) in ports {
            if let Some(slot) = host_port_slot(protocol) {
                want[(slot * HOST_PORT_WORDS + u32::from(port / 64)) as usize] |= 1 << (port % 64);
            }
        }
        let known = match self.host_ports.take() {
            Some(known) => known,
            None => self.words(maps::HOST_PORTS, 2 * HOST_PORT_WORDS)?,
        };
        let changed = (0u32..).zip(&want).zip(&known).filter(|((_, bits), was)| bits != was);
        self.write_words(maps::HOST_PORTS, changed.map(|((i, &bits), _)| (i, bits)))?;
        self.host_ports = Some(want);
        Ok(())
    }

    /// The first `n` words of the `Array<u64>` `name`.
    fn words(&mut self, name: &'static str, n: u32) -> Result<Vec<u64>, XdpError> {
        let array: Array<_, u64> = self.map_mut(name)?;
        (0..n).map(|i| array.get(&i, 0)).collect::<Result<_, _>>().map_err(XdpError::map(name))
    }

    /// Writes `(index, word)`s into the `Array<u64>` `name`.
    fn write_words(
        &mut self,
        name: &'static str,
        words: impl IntoIterator<Item = (u32, u64)>,
    ) -> Result<(), XdpError> {
        let mut array: Array<_, u64> = self.map_mut(name)?;
        words.into_iter().try_for_each(|(i, word)| array.set(i, word, 0)).map_err(XdpError::map(name))
    }

    /// Brings `DENY_FREE` in step after `edit` (of the denied prefixes it tracks, built from
    /// the tries the first time).
    fn edit_deny_free(&mut self, edit: impl FnOnce(&mut DenyFree)) -> Result<(), XdpError> {
        let mut free = match self.deny_free.take() {
            Some(free) => free,
            None => {
                let prefixes = self.prefixes::<DenyEntry>(DENY)?.into_keys();
                DenyFree::new(prefixes, self.words(maps::DENY_FREE, DENY_FREE_WORDS)?)
            }
        };
        edit(&mut free);
        let changes = free.changes();
        self.deny_free = Some(free);
        self.write_words(maps::DENY_FREE, changes)
    }

    /// Drops every packet from `addr/prefix_len` on arrival, as CIDR rule `rule_id`.
    pub fn deny(&mut self, addr: IpAddr, prefix_len: u8, rule_id: u32) -> Result<(), XdpError> {
        self.edit_prefix(DENY, addr, prefix_len, Some(DenyEntry { rule_id }))
    }

    /// Removes a denied prefix.
    pub fn undeny(&mut self, addr: IpAddr, prefix_len: u8) -> Result<(), XdpError> {
        self.edit_prefix::<DenyEntry>(DENY, addr, prefix_len, None)
    }

    /// Makes the denied prefixes exactly `denied` (prefix, rule number): removes the others.
    pub fn set_deny_list(&mut self, denied: &[(IpAddr, u8, u32)]) -> Result<(), XdpError> {
        let want = denied.iter().map(|&(a, l, rule_id)| ((a, l), DenyEntry { rule_id })).collect();
        self.sync_prefixes(DENY, &want)?;
        // A new map (no slot free yet) comes in step even when the tries stay as they were.
        self.edit_deny_free(|_| {})
    }

    /// Makes the overlay's tables exactly these: the other nodes' underlay addresses (tunnel
    /// frames are decapsulated only from them) and their pod CIDRs (frames to them go to a
    /// worker, which encapsulates them).
    pub fn set_overlay(&mut self, nodes: &[IpAddr], remote_pods: &[(IpAddr, u8)]) -> Result<(), XdpError> {
        let (mut want4, mut want6) = (StdHashMap::new(), StdHashMap::new());
        for &node in nodes {
            match node {
                IpAddr::V4(a) => want4.insert(a.octets(), 1u8),
                IpAddr::V6(a) => want6.insert(a.octets(), 1u8),
            };
        }
        sync(self.map_mut(maps::NODES_V4)?, &want4, maps::NODES_V4)?;
        sync(self.map_mut(maps::NODES_V6)?, &want6, maps::NODES_V6)?;
        let want = remote_pods.iter().map(|&prefix| (prefix, 1u8)).collect();
        self.sync_prefixes(REMOTE_PODS, &want)
    }

    /// Makes the cluster's prefixes exactly `prefixes` (a pod's traffic elsewhere is
    /// masqueraded, with [`XdpConfig::MASQUERADE_V4`] or `_V6`).
    pub fn set_cluster(&mut self, prefixes: &[(IpAddr, u8)]) -> Result<(), XdpError> {
        let want = prefixes.iter().map(|&prefix| (prefix, 1u8)).collect();
        self.sync_prefixes(CLUSTER, &want)
    }

    /// Makes the ipcache exactly `entries` (prefix, its identity): a tunnel frame must claim
    /// the identity of its inner source's longest prefix (world where none is).
    pub fn set_ipcache(&mut self, entries: &[(IpAddr, u8, Identity)]) -> Result<(), XdpError> {
        let want = entries.iter().map(|&(addr, len, id)| ((addr, len), id)).collect();
        self.sync_prefixes(IPCACHE, &want)
    }

    /// Makes the prefix tries `names` (IPv4, IPv6) hold exactly `want`. A publish touches only
    /// what changed (every table publish syncs the prefilter, which may hold 100k prefixes).
    fn sync_prefixes<V: aya::Pod + PartialEq>(
        &mut self,
        names: Tries,
        want: &StdHashMap<Prefix, V>,
    ) -> Result<(), XdpError> {
        let present = self.prefixes::<V>(names)?;
        for &(addr, len) in present.keys().filter(|k| !want.contains_key(k)) {
            self.edit_prefix::<V>(names, addr, len, None)?;
        }
        for (&(addr, len), value) in want.iter().filter(|(k, v)| present.get(k) != Some(v)) {
            self.edit_prefix(names, addr, len, Some(*value))?;
        }
        Ok(())
    }

    /// What the prefix tries `names` (IPv4, IPv6) hold.
    fn prefixes<V: aya::Pod>(&mut self, names: Tries) -> Result<StdHashMap<Prefix, V>, XdpError> {
        let mut present = StdHashMap::new();
        let v4: LpmTrie<_, [u8; 4], V> = self.map_mut(names.0)?;
        for entry in v4.iter() {
            let (key, value) = entry.map_err(XdpError::map(names.0))?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(32);
            present.insert((std::net::Ipv4Addr::from(key.data()).into(), len), value);
        }
        let v6: LpmTrie<_, [u8; 16], V> = self.map_mut(names.1)?;
        for entry in v6.iter() {
            let (key, value) = entry.map_err(XdpError::map(names.1))?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(128);
            present.insert((std::net::Ipv6Addr::from(key.data()).into(), len), value);
        }
        Ok(present)
    }

    /// Inserts (`Some`) or removes (`None`) a prefix in the trie of its family. A denied
    /// prefix's slots stop skipping the tries before it is in one, and skip them again only
    /// once it is gone: no source the tries deny ever skips them.
    fn edit_prefix<V: aya::Pod>(
        &mut self,
        names: Tries,
        addr: IpAddr,
        prefix_len: u8,
        value: Option<V>,
    ) -> Result<(), XdpError> {
        let bad_prefix = || bad_prefix(addr, prefix_len);
        let denied = match names == DENY {
            true => Some(deny_free::prefix(addr, prefix_len).ok_or_else(bad_prefix)?),
            false => None,
        };
        let adding = value.is_some();
        if let Some(prefix) = denied.filter(|_| adding) {
            self.edit_deny_free(|free| free.add(prefix))?;
        }
        match addr {
            IpAddr::V4(a) => {
                let k = LpmKey4::new(a, prefix_len.into()).ok_or_else(bad_prefix)?;
                let mut trie: LpmTrie<_, [u8; 4], V> = self.map_mut(names.0)?;
                let key = Key::new(k.prefix_len, k.addr);
                match value {
                    Some(v) => trie.insert(&key, v, 0),
                    None => trie.remove(&key),
                }
                .map_err(XdpError::map(names.0))
            }
            IpAddr::V6(a) => {
                let k = LpmKey6::new(a, prefix_len.into()).ok_or_else(bad_prefix)?;
                let mut trie: LpmTrie<_, [u8; 16], V> = self.map_mut(names.1)?;
                let key = Key::new(k.prefix_len, k.addr);
                match value {
                    Some(v) => trie.insert(&key, v, 0),
                    None => trie.remove(&key),
                }
                .map_err(XdpError::map(names.1))
            }
        }?;
        if let Some(prefix) = denied.filter(|_| !adding) {
            self.edit_deny_free(|free| free.remove(prefix))?;
        }
        Ok(())
    }

    /// Makes the service frontends exactly `frontends` (address, port, protocol, kind): adds
    /// the new, updates the changed, removes the others.
    pub fn set_services(&mut self, frontends: &[(IpAddr, u16, u8, FrontendKind)]) -> Result<(), XdpError> {
        let (mut want4, mut want6) = (StdHashMap::new(), StdHashMap::new());
        for &(addr, port, proto, kind) in frontends {
            let value = ServiceValue::new(kind);
            match addr {
                IpAddr::V4(a) => {
                    want4.insert(ServiceKey4::new(a, port, proto, ServiceScope::External), value)
                }
                IpAddr::V6(a) => {
                    want6.insert(ServiceKey6::new(a, port, proto, ServiceScope::External), value)
                }
            };
        }
        sync(self.map_mut(maps::SERVICES_V4)?, &want4, maps::SERVICES_V4)?;
        sync(self.map_mut(maps::SERVICES_V6)?, &want6, maps::SERVICES_V6)
    }

    /// Makes the endpoints (pods under policy, the node's own addresses) exactly `endpoints`.
    pub fn set_endpoints(&mut self, endpoints: &[(IpAddr, EndpointInfo)]) -> Result<(), XdpError> {
        let (mut want4, mut want6) = (StdHashMap::new(), StdHashMap::new());
        for &(addr, info) in endpoints {
            match addr {
                IpAddr::V4(a) => want4.insert(a.octets(), info),
                IpAddr::V6(a) => want6.insert(a.octets(), info),
            };
        }
        sync(self.map_mut(maps::ENDPOINTS_V4)?, &want4, maps::ENDPOINTS_V4)?;
        sync(self.map_mut(maps::ENDPOINTS_V6)?, &want6, maps::ENDPOINTS_V6)
    }

    /// Lets the pod behind interface `ifindex` send only from `sources` (`None`: any more, the
    /// interface is no pod's now).
    pub fn set_pod_sources(&mut self, ifindex: u32, sources: Option<PodSources>) -> Result<(), XdpError> {
        let mut m: HashMap<_, u32, PodSources> = self.map_mut(maps::POD_SOURCES)?;
        match sources {
            Some(s) => m.insert(ifindex, s, 0),
            None if m.get(&ifindex, 0).is_ok() => m.remove(&ifindex),
            None => Ok(()),
        }
        .map_err(XdpError::map(maps::POD_SOURCES))
    }

    /// A handle on the flow table for a worker of its own (opened from the pins).
    pub fn flow_table(&self) -> Result<FlowTable, XdpError> {
        FlowTable::open(&self.pin_dir)
    }

    /// Lets the flow table send frames out of interface `ifindex` (`false`: no more), which
    /// must take XDP frames ([`crate::takes_xdp_frames`]).
    pub fn set_tx_port(&mut self, ifindex: u32, on: bool) -> Result<(), XdpError> {
        let mut ports: DevMapHash<&mut MapData> = self.map_mut(maps::TX_PORTS)?;
        if on {
            // No program of its own for the target: only the kernel's own errors.
            return ports
                .insert(ifindex, ifindex, None, 0)
                .map_err(|e| XdpError::Invalid(format!("map {}: {e}", maps::TX_PORTS)));
        }
        if ports.get(ifindex, 0).is_err() {
            return Ok(());
        }
        ports.remove(ifindex).map_err(XdpError::map(maps::TX_PORTS))
    }

    /// Hands the frames redirected on interface `ifindex`, receive queue `queue`, to the
    /// AF_XDP socket `fd` (bound to that interface and queue).
    pub fn set_worker(
        &mut self,
        ifindex: u32,
        queue: u32,
        fd: impl std::os::fd::AsRawFd,
    ) -> Result<(), XdpError> {
        if queue >= XSK_QUEUES_PER_IF {
            return Err(XdpError::Invalid(format!(
                "queue {queue}: workers serve queues 0..{XSK_QUEUES_PER_IF}"
            )));
        }
        let mut slots: HashMap<&mut MapData, u32, u32> = self.map_mut(maps::IF_SLOTS)?;
        let slot = match slots.get(&ifindex, 0) {
            Ok(slot) => slot,
            Err(_) => {
                // The lowest slot free: those of detached interfaces are given again.
                let taken: HashSet<u32> = slots.iter().filter_map(|e| e.ok().map(|(_, slot)| slot)).collect();
                let Some(slot) = (0..XSK_INTERFACES).find(|s| !taken.contains(s)) else {
                    return Err(XdpError::Invalid(format!(
                        "more than {XSK_INTERFACES} interfaces with workers"
                    )));
                };
                slots.insert(ifindex, slot, 0).map_err(XdpError::map(maps::IF_SLOTS))?;
                slot
            }
        };
        let mut xsks: XskMap<&mut MapData> = self.map_mut(maps::XSKS)?;
        xsks.set(slot * XSK_QUEUES_PER_IF + queue, fd, 0).map_err(XdpError::map(maps::XSKS))
    }

    /// Frees the slot of interface `ifindex` (detached) for the next interface. Its sockets
    /// left the XSKMAP by themselves when they were closed (the kernel removes a closed AF_XDP
    /// socket from every map).
    pub fn unset_worker(&mut self, ifindex: u32) -> Result<(), XdpError> {
        let mut slots: HashMap<&mut MapData, u32, u32> = self.map_mut(maps::IF_SLOTS)?;
        if slots.get(&ifindex, 0).is_err() {
            return Ok(());
        }
        slots.remove(&ifindex).map_err(XdpError::map(maps::IF_SLOTS))
    }

    /// Packets and bytes per XDP action, summed over CPUs.
    pub fn actions(&self) -> Result<Vec<(XdpAction, Counter)>, XdpError> {
        pinned_actions(&self.pin_dir)
    }

    /// Packets and bytes of tracked flows by where they went, summed over CPUs.
    pub fn flow_paths(&self) -> Result<Vec<(FlowPath, Counter)>, XdpError> {
        pinned_flow_paths(&self.pin_dir)
    }

    /// Frames that needed a worker but found no AF_XDP socket bound, and passed.
    pub fn no_worker(&self) -> Result<Counter, XdpError> {
        per_cpu_sum(&self.ebpf, maps::NO_WORKER, 0)
    }

    /// The reasons that dropped something, with their counts.
    pub fn drops(&self) -> Result<Vec<DropCount>, XdpError> {
        pinned_drops(&self.pin_dir)
    }

    /// The ring of sampled decisions, opened from its pin (its reader may live apart from the
    /// program's handle).
    pub fn event_ring(&self) -> Result<EventRing, XdpError> {
        EventRing::open(&self.pin_dir)
    }

    /// Runs the program on `frame` in the kernel (`BPF_PROG_TEST_RUN`), `repeat` times.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRun, XdpError> {
        let program: &Xdp = self
            .ebpf
            .program(programs::INGRESS)
            .ok_or(XdpError::MissingProgram(programs::INGRESS))?
            .try_into()
            .map_err(|source| XdpError::Program { name: programs::INGRESS, source: Box::new(source) })?;
        let fd = program
            .fd()
            .map_err(|source| XdpError::Program { name: programs::INGRESS, source: Box::new(source) })?;
        test_run(fd.as_fd().as_raw_fd(), frame, repeat)
            .map_err(|source| XdpError::Io { what: "BPF_PROG_TEST_RUN".into(), source })
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(programs::INGRESS)
            .ok_or(XdpError::MissingProgram(programs::INGRESS))?
            .try_into()
            .map_err(program_error)
    }

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, XdpError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        crate::map_mut(&mut self.ebpf, name)
    }
}

/// The reasons the program pinned in `pin_dir` dropped something for, with their counts (read
/// from its pinned counters, so another part of the agent can read them).
pub fn pinned_drops(pin_dir: &Path) -> Result<Vec<DropCount>, XdpError> {
    let sums = pinned_sums(pin_dir, maps::DROP_COUNTS, &DropReason::ALL, |r| r.code().into())?;
    Ok(sums
        .into_iter()
        .filter(|(_, c)| c.packets > 0)
        .map(|(reason, count)| DropCount { reason, count })
        .collect())
}

/// Frames and bytes by XDP action of the program pinned in `pin_dir`, summed over CPUs.
pub fn pinned_actions(pin_dir: &Path) -> Result<Vec<(XdpAction, Counter)>, XdpError> {
    pinned_sums(pin_dir, maps::ACTION_COUNTS, &XdpAction::ALL, XdpAction::code)
}

/// The slot of each of `keys` in the per-CPU counters `name` pinned in `pin_dir`, summed over
/// CPUs.
fn pinned_sums<K: Copy>(
    pin_dir: &Path,
    name: &'static str,
    keys: &[K],
    slot: impl Fn(K) -> u32,
) -> Result<Vec<(K, Counter)>, XdpError> {
    let array: aya::maps::PerCpuArray<_, Counter> = crate::pinned(pin_dir, name)?;
    keys.iter()
        .map(|&key| {
            let per_cpu = array.get(&slot(key), 0).map_err(XdpError::map(name))?;
            Ok((key, per_cpu.iter().fold(Counter::default(), |sum, cpu| sum.plus(*cpu))))
        })
        .collect()
}

/// Packets and bytes of tracked flows by where the program pinned in `pin_dir` sent them
/// (forwarded at the NIC, or to a worker and why), summed over CPUs.
pub fn pinned_flow_paths(pin_dir: &Path) -> Result<Vec<(FlowPath, Counter)>, XdpError> {
    pinned_sums(pin_dir, maps::FLOW_COUNTS, &FlowPath::ALL, FlowPath::code)
}

/// The XDP program's sampled decisions ([`XdpEvent`]), as their ring buffer delivers them; its
/// descriptor becomes readable when records wait.
pub struct EventRing {
    ring: RingBuf<MapData>,
}

impl EventRing {
    pub fn open(pin_dir: &Path) -> Result<EventRing, XdpError> {
        Ok(EventRing { ring: crate::pinned(pin_dir, maps::EVENTS)? })
    }

    /// Every record waiting.
    pub fn drain(&mut self) -> Vec<XdpEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() == size_of::<XdpEvent>() {
                events.push(bytemuck::pod_read_unaligned(&item));
            }
        }
        events
    }
}

impl std::os::fd::AsFd for EventRing {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

/// The folder of the pinned attachments, in the pin folder.
const LINKS: &str = "links";

/// Where the attachment to `iface` in `mode` is pinned.
fn link_pin(pin_dir: &Path, iface: &str, mode: XdpMode) -> PathBuf {
    pin_dir.join(LINKS).join(format!("{iface}@{mode}"))
}

fn program_error(source: aya::programs::ProgramError) -> XdpError {
    XdpError::Program { name: programs::INGRESS, source: Box::new(source) }
}

fn bad_prefix(addr: IpAddr, prefix_len: u8) -> XdpError {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    XdpError::Invalid(format!("CIDR {addr}/{prefix_len}: the prefix length must be in 0..={max}"))
}
