//! The running datapath as the controller's sink.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use skiff_api::{AttachMode, WorkerCounters};
use skiff_common::DropReason;
use skiff_engine::tables::{Neighbor, Tables};
use skiff_fastpath::datapath::{Config, Datapath, Io};
use skiff_xdp::{Ingress, SocketLb, bpffs};

use super::{Options, socket_lb};
use crate::{
    api::LiveStats,
    controller::Sink,
    next_hops::{Changes, Kernel},
};

/// The running datapath as the controller's sink: publishes the tables with next hops from
/// the kernel, and derives them again when the kernel's tables change.
pub(super) struct DatapathSink {
    datapath: Datapath,
    kernel: Kernel,
    description: skiff_api::Datapath,
    /// The tables last published, with their next hops.
    last: Tables,
    hops: HashMap<IpAddr, Neighbor>,
    /// Where the XDP program's maps are pinned, with AF_XDP.
    pins: Option<PathBuf>,
    /// Socket-LB, when on; its maps are pinned in `--pin-dir` too.
    socket_lb: Option<SocketLb>,
}

impl DatapathSink {
    pub(super) fn start(options: &Options, io: Io) -> Result<(DatapathSink, Changes)> {
        let ingress = match io {
            Io::AfXdp(_) => {
                bpffs::ensure_mounted().context("mounting bpffs")?;
                // Its settings come with the first tables.
                Some(Ingress::load(&options.pin_dir).context("loading skiff_xdp_ingress")?)
            }
            Io::AfPacket => None,
        };
        let config = Config {
            interfaces: options.devices.clone(),
            io,
            workers: options.workers,
            ct_capacity: usize::try_from(options.ct_capacity)?,
            ..Config::default()
        };
        let datapath =
            Datapath::start(config, Tables::default(), ingress).context("starting the datapath")?;
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
        };
        tracing::info!("datapath: {description}");
        let (kernel, changes) = Kernel::connect(datapath.ports())?;
        let pins = matches!(io, skiff_api::Io::AfXdp { .. }).then(|| options.pin_dir.clone());
        let sink = DatapathSink {
            datapath,
            kernel,
            description,
            last: Tables::default(),
            hops: HashMap::new(),
            pins,
            socket_lb,
        };
        Ok((sink, changes))
    }

    /// The next hops of the devices and of every backend, from the kernel (blocking this
    /// thread of the agent's runtime while rtnetlink answers).
    fn read_hops(&mut self) -> Result<HashMap<IpAddr, Neighbor>> {
        // Each backend once, though every frontend of its service lists it (but not those
        // on other nodes' pods, reached through the tunnel), and the other nodes' tunnel
        // endpoints.
        let overlay = self.last.overlay.as_deref();
        let endpoints = overlay.into_iter().flat_map(|o| o.remote.entries()).map(|(_, node)| node);
        let backends: BTreeSet<IpAddr> = self
            .last
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

    fn publish_with_hops(&mut self) -> Result<()> {
        // Kept with its hops: `reaches` asks them as the workers do.
        self.last.next_hops = self.hops.iter().map(|(&k, &v)| (k, v)).collect();
        self.datapath.publish(self.last.clone())?;
        if let Some(lb) = &mut self.socket_lb {
            socket_lb::publish(lb, &self.last)?;
        }
        Ok(())
    }
}

impl Sink for DatapathSink {
    fn publish(&mut self, tables: Tables) -> Result<()> {
        self.last = tables;
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
            ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
            ("net.ipv6.conf.all.forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"),
        ] {
            std::fs::write(path, "1").with_context(|| format!("setting {setting}=1"))?;
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
        skiff_api::Datapath { devices, ..self.description.clone() }
    }

    fn next_hops(&self) -> usize {
        self.hops.len()
    }

    fn reaches(&self, addr: IpAddr) -> Option<bool> {
        Some(self.last.next_hop(addr).is_some())
    }

    fn stats(&self) -> Option<LiveStats> {
        let handle = self.datapath.stats_handle();
        let pins = self.pins.clone();
        let socket_pins = self.socket_lb.as_ref().map(|lb| lb.pin_dir().to_owned());
        Some(Arc::new(move || {
            let s = handle.total();
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
