//! The running datapath as the controller's sink.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use skiff_api::{AttachMode, FlowView, MapView, WorkerCounters};
use skiff_common::{DropReason, conntrack::FlowPath};
use skiff_engine::{
    flow::unmap,
    offload,
    tables::{Neighbor, Tables},
};
use skiff_fastpath::datapath::{Config, Datapath, Io};
use skiff_xdp::{EventRing, FlowTable, Ingress, Restored, SocketLb, bpffs};

use super::{Options, socket_lb};
use crate::{
    api::{LiveFlows, LiveMaps, LiveStats},
    controller::Sink,
    next_hops::{Changes, Kernel},
};

/// The running datapath as the controller's sink: publishes the tables with next hops from
/// the kernel, and derives them again when the kernel's tables change.
pub(super) struct DatapathSink {
    datapath: Datapath,
    kernel: Kernel,
    description: skiff_api::Datapath,
    /// The tables last published, with their next hops; `None` before the first apply.
    last: Option<Tables>,
    hops: HashMap<IpAddr, Neighbor>,
    /// Where the XDP program's maps are pinned, with AF_XDP.
    pins: Option<PathBuf>,
    /// Socket-LB, when on; its maps are pinned in `--pin-dir` too.
    socket_lb: Option<SocketLb>,
    /// Where the node's procfs is (`--procfs`): its sysctls are written there.
    procfs: PathBuf,
}

impl DatapathSink {
    pub(super) fn start(options: &Options, io: Io) -> Result<(DatapathSink, Changes)> {
        let ingress = match io {
            Io::AfXdp(_) => {
                bpffs::ensure_mounted().context("mounting bpffs")?;
                // Its settings come with the first tables.
                let ingress = Ingress::load(&options.pin_dir).context("loading skiff_xdp_ingress")?;
                log_restored(ingress.adopted(), &options.pin_dir);
                Some(ingress)
            }
            Io::AfPacket => None,
        };
        let config = Config {
            interfaces: options.devices.clone(),
            io,
            workers: options.workers,
            ct_capacity: usize::try_from(options.ct_capacity)?,
            flow_events: options.flow_events,
            ..Config::default()
        };
        let datapath = Datapath::start(config, None, ingress).context("starting the datapath")?;
        let adopted = datapath.adopted();
        if adopted.flows > 0 {
            tracing::info!(
                "adopted {} flows from the pinned flow table ({} forwarded at the NIC)",
                adopted.flows,
                adopted.at_nic
            );
        }
        if adopted.torn > 0 {
            tracing::warn!("freed {} flow-table directions the last agent left half written", adopted.torn);
        }
        let io = match (io, datapath.xdp_mode()) {
            (Io::AfXdp(requested), mode) => skiff_api::Io::AfXdp { xdp_mode: mode.unwrap_or(requested) },
            (Io::AfPacket, _) => skiff_api::Io::AfPacket,
        };
        let (socket_lb, socket_lb_state) = socket_lb::start(options);
        let description = skiff_api::Datapath {
            io,
            devices: options.devices.clone(),
            workers: options.workers,
            socket_lb: socket_lb_state,
            xdp_modes: BTreeMap::new(),
        };
        tracing::info!("datapath: {description}");
        let (kernel, changes) = Kernel::connect(datapath.ports())?;
        let pins = matches!(io, skiff_api::Io::AfXdp { .. }).then(|| options.pin_dir.clone());
        let procfs = options.procfs.clone();
        let sink = DatapathSink {
            datapath,
            kernel,
            description,
            last: None,
            hops: HashMap::new(),
            pins,
            socket_lb,
            procfs,
        };
        Ok((sink, changes))
    }

    /// What observers read: the workers' records and, with XDP, the program's sampled
    /// decisions.
    pub(super) fn observed(
        &self,
    ) -> Result<(crossbeam_channel::Receiver<skiff_engine::event::Event>, Option<EventRing>)> {
        let ring = self.pins.as_deref().map(EventRing::open).transpose()?;
        Ok((self.datapath.events.clone(), ring))
    }

    /// The next hops of the devices and of every backend, from the kernel (blocking this
    /// thread of the agent's runtime while rtnetlink answers).
    fn read_hops(&mut self) -> Result<HashMap<IpAddr, Neighbor>> {
        // Each backend once, though every frontend of its service lists it (but not those
        // on other nodes' pods, reached through the tunnel), and the other nodes' tunnel
        // endpoints.
        let Some(last) = &self.last else { return Ok(HashMap::new()) };
        let overlay = last.overlay.as_deref();
        let endpoints = overlay.into_iter().flat_map(|o| o.remote.entries()).map(|(_, node)| node);
        let backends: BTreeSet<IpAddr> = last
            .services
            .values()
            .flat_map(|s| s.backends().map(|b| b.addr))
            .filter(|&b| overlay.is_none_or(|o| o.remote_node(b).is_none()))
            .chain(endpoints)
            .collect();
        let kernel = &mut self.kernel;
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(kernel.next_hops(backends)))
    }

    /// The next hops through the ports served now.
    fn ports_changed(&mut self) -> Result<()> {
        self.kernel.set_devices(self.datapath.ports());
        self.hops = self.read_hops()?;
        self.publish_with_hops()
    }

    /// Publishes the last tables with the hops known now; nothing before the first apply:
    /// empty tables would take back the flows the workers adopted, and clear what the last
    /// agent's tables left in the XDP program's maps.
    fn publish_with_hops(&mut self) -> Result<()> {
        let Some(last) = &mut self.last else { return Ok(()) };
        // Kept with its hops: `reaches` asks them as the workers do.
        last.next_hops = self.hops.iter().map(|(&k, &v)| (k, v)).collect();
        self.datapath.publish(last.clone())?;
        if let Some(lb) = &mut self.socket_lb {
            socket_lb::publish(lb, last)?;
        }
        Ok(())
    }
}

/// A tracked flow as `skiff ct list` shows it.
fn flow_view(f: &offload::Pinned) -> FlowView {
    let v6 = std::net::Ipv6Addr::from(f.original.src).to_ipv4_mapped().is_none();
    let end = |addr: [u8; 16], port: u16| std::net::SocketAddr::new(unmap(addr, v6), port);
    let (o, r) = (&f.original, &f.reply);
    FlowView {
        protocol: match o.protocol {
            1 => "ICMP".into(),
            6 => "TCP".into(),
            17 => "UDP".into(),
            58 => "ICMPv6".into(),
            n => n.to_string(),
        },
        source: end(o.src, o.src_port),
        destination: end(o.dst, o.dst_port),
        reply_source: end(r.src, r.src_port),
        reply_destination: end(r.dst, r.dst_port),
        backend: f.backend.0,
        at_nic: f.offloaded,
        nic_packets: f.packets,
        nic_bytes: f.bytes,
    }
}

/// Says what an earlier agent left that this one took over.
fn log_restored(restored: &Restored, pin_dir: &std::path::Path) {
    if restored.maps_rebuilt {
        tracing::warn!(
            "the maps pinned in {} had another layout: removed and made anew (their flows are lost)",
            pin_dir.display()
        );
    }
    if !restored.interfaces.is_empty() {
        tracing::info!(
            "XDP attachments adopted, now running this program: {}",
            restored.interfaces.join(", ")
        );
    }
    if !restored.gone.is_empty() {
        tracing::info!("attachments of interfaces gone meanwhile unpinned: {}", restored.gone.join(", "));
    }
}

impl Sink for DatapathSink {
    fn publish(&mut self, tables: Tables) -> Result<()> {
        self.last = Some(tables);
        self.hops = self.read_hops()?;
        self.publish_with_hops()
    }

    fn refresh(&mut self) -> Result<bool> {
        self.kernel.changed();
        let hops = self.read_hops()?;
        if hops == self.hops {
            return Ok(false);
        }
        self.hops = hops;
        self.publish_with_hops()?;
        Ok(true)
    }

    fn attach(&mut self, iface: &str, sources: &[IpAddr]) -> Result<AttachMode> {
        let attached = self.datapath.attach(iface, sources).with_context(|| format!("serving {iface}"))?;
        self.ports_changed()?;
        Ok(match attached.xdp_mode {
            Some(xdp_mode) => AttachMode::AfXdp { xdp_mode },
            None => AttachMode::AfPacket,
        })
    }

    fn detach(&mut self, iface: &str) -> Result<()> {
        self.datapath.detach(iface).with_context(|| format!("no longer serving {iface}"))?;
        self.ports_changed()
    }

    /// Forwarding on, and each pod gateway on the loopback device, so that a pod's packets to
    /// its gateway reach the node.
    fn prepare_node(&mut self, gateways: &[IpAddr]) -> Result<()> {
        for (setting, path) in [
            ("net.ipv4.ip_forward", "ipv4/ip_forward"),
            ("net.ipv6.conf.all.forwarding", "ipv6/conf/all/forwarding"),
        ] {
            let path = self.procfs.join("sys/net").join(path);
            std::fs::write(&path, "1")
                .with_context(|| format!("setting {setting}=1 in {}", path.display()))?;
        }
        let kernel = &self.kernel;
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(kernel.add_to_loopback(gateways))
        })
    }

    fn set_node_routes(&mut self, routes: &[(IpNet, IpAddr)]) -> Result<()> {
        let kernel = &self.kernel;
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(kernel.set_node_routes(routes))
        })
    }

    fn describe(&self) -> skiff_api::Datapath {
        let devices = self.datapath.ports().into_iter().map(|(_, name)| name).collect();
        let xdp_modes = self.datapath.xdp_modes().into_iter().collect();
        skiff_api::Datapath { devices, xdp_modes, ..self.description.clone() }
    }

    fn next_hops(&self) -> usize {
        self.hops.len()
    }

    fn reaches(&self, addr: IpAddr) -> Option<bool> {
        Some(self.last.as_ref().is_some_and(|t| t.next_hop(addr).is_some()))
    }

    fn flows(&self) -> Option<LiveFlows> {
        let pins = self.pins.clone()?;
        Some(Arc::new(move || {
            let table = FlowTable::open(&pins).map_err(|e| e.to_string())?;
            let (flows, _) = offload::pinned_flows(&table.entries(), |e| table.seen_ns(e));
            Ok(flows.iter().map(flow_view).collect())
        }))
    }

    fn maps(&self) -> Option<LiveMaps> {
        let dirs: Vec<PathBuf> = self
            .pins
            .iter()
            .cloned()
            .chain(self.socket_lb.as_ref().map(|lb| lb.pin_dir().to_owned()))
            .collect();
        Some(Arc::new(move || {
            let mut maps: Vec<MapView> = Vec::new();
            for dir in &dirs {
                let found = bpffs::pinned_maps(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let new = found.into_iter().filter(|m| !maps.iter().any(|known| known.name == m.name));
                let views: Vec<MapView> = new
                    .map(|m| MapView { name: m.name, kind: m.kind, entries: m.entries, capacity: m.capacity })
                    .collect();
                maps.extend(views);
            }
            Ok(maps)
        }))
    }

    fn stats(&self) -> Option<LiveStats> {
        let handle = self.datapath.stats_handle();
        let pins = self.pins.clone();
        let socket_pins = self.socket_lb.as_ref().map(|lb| lb.pin_dir().to_owned());
        Some(Arc::new(move || {
            let each = handle.each();
            let s = handle.total();
            let paths =
                pins.as_deref().and_then(|dir| skiff_xdp::pinned_flow_paths(dir).ok()).unwrap_or_default();
            let drops =
                DropReason::ALL.into_iter().map(|r| (r, s.drops_of(r))).filter(|&(_, n)| n > 0).collect();
            let xdp = pins.as_deref().and_then(|dir| skiff_xdp::pinned_drops(dir).ok()).unwrap_or_default();
            WorkerCounters {
                received: s.received,
                forwarded: s.forwarded,
                replied: s.replied,
                dropped: s.dropped,
                handed_off: s.handed_off,
                drops,
                xdp_drops: xdp.into_iter().map(|d| (d.reason, d.count.packets)).collect(),
                service_flows: s.service_flows,
                offloaded: s.offloaded,
                taken_back: s.taken_back,
                flow_table_full: s.flow_table_full,
                events_lost: s.events_lost,
                forwarded_bytes: s.forwarded_bytes,
                xdp_actions: pins
                    .as_deref()
                    .and_then(|dir| skiff_xdp::pinned_actions(dir).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(action, c)| (action, (c.packets, c.bytes)))
                    .collect(),
                conntrack: (s.census.flows[0], s.census.flows[1]),
                nat_ports: (s.census.nat_ports[0], s.census.nat_ports[1]),
                busy_permille: each.iter().map(|w| w.busy_permille).collect(),
                nic_forwarded_bytes: paths
                    .iter()
                    .find(|(path, _)| *path == FlowPath::Forwarded)
                    .map_or(0, |(_, c)| c.bytes),
                flow_paths: paths
                    .iter()
                    .filter(|(_, c)| c.packets > 0)
                    .map(|(path, c)| (*path, c.packets))
                    .collect(),
                socket_lb: socket_pins
                    .as_deref()
                    .and_then(|dir| skiff_xdp::pinned_socket_counters(dir).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            }
        }))
    }
}
