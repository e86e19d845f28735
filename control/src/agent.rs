//! `skiff-agent`: the node daemon. Loads the XDP program, starts the workers, runs the
//! control loop on a source (a state folder or an API server), serves the local API, and on
//! SIGTERM or SIGINT stops cleanly: workers joined, XDP detached, steering removed, pinned
//! maps removed (or kept for the next start with `--keep-pinned`).

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use skiff_common::{
    DropReason,
    config::XdpConfig,
    lb::{MAGLEV_TABLE_SIZE, MAGLEV_TABLE_SIZES},
    names::PIN_ROOT,
};
use skiff_fastpath::{
    datapath::{Config, Datapath, Io},
    engine::{Neighbor, Tables},
};
use skiff_xdp::{Ingress, XdpMode, bpffs};
use tokio::{signal::unix::SignalKind, sync::mpsc};

use crate::{
    api::{self, LiveStats, WorkerView},
    compile::NodeContext,
    controller::{Controller, Recorder, Sink},
    next_hops,
    source,
    validate::Limits,
};

pub const USAGE: &str = "usage: skiff-agent (--state-dir DIR | --kubeconfig FILE) [options]
       skiff-agent crds          print the CRDs skiff reads (CiliumNetworkPolicy, …) as YAML

  --state-dir DIR            Kubernetes YAML in a folder, watched for changes
  --kubeconfig FILE          a Kubernetes API server (in a pod: the in-cluster config)
  --node-name NAME           this node's Node object (default: the host name)
  --node-address IP          NodePorts also listen here (repeatable)
  --device IFACE             a device the datapath serves (repeatable, uplink first)
  --io afxdp|afpacket|none   how packets reach the workers (default afxdp; none: tables only)
  --xdp-mode auto|native|generic   (default auto: native, else generic, and says which)
  --workers N                one per receive queue (default 1)
  --maglev-table-size M      a prime of 251..=131071 (default 16381)
  --node-port-range A-B      (default 30000-32767)
  --socket PATH              the local API (default /run/skiff/skiff.sock)
  --pin-dir DIR              pinned maps (default /sys/fs/bpf/skiff)
  --keep-pinned              on exit, keep the pinned maps for the next start";

#[derive(Debug)]
pub enum SourceArg {
    StateDir(PathBuf),
    Kubeconfig(Option<PathBuf>),
}

#[derive(Debug)]
pub struct Options {
    pub source: SourceArg,
    pub node_name: String,
    pub node_addresses: Vec<IpAddr>,
    pub devices: Vec<String>,
    pub io: Option<Io>,
    pub workers: u16,
    pub maglev_table_size: u32,
    pub node_ports: std::ops::RangeInclusive<i32>,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub keep_pinned: bool,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options> {
        let mut source = None;
        let mut o = Options {
            source: SourceArg::Kubeconfig(None),
            node_name: hostname(),
            node_addresses: Vec::new(),
            devices: Vec::new(),
            io: Some(Io::AfXdp(XdpMode::Auto)),
            workers: 1,
            maglev_table_size: MAGLEV_TABLE_SIZE,
            node_ports: 30000..=32767,
            socket: api::DEFAULT_SOCKET.into(),
            pin_dir: PIN_ROOT.into(),
            keep_pinned: false,
        };
        let mut xdp_mode = XdpMode::Auto;
        let mut io_name = "afxdp".to_owned();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--state-dir" => source = Some(SourceArg::StateDir(value()?.into())),
                "--kubeconfig" => source = Some(SourceArg::Kubeconfig(Some(value()?.into()))),
                "--node-name" => o.node_name = value()?.clone(),
                "--node-address" => {
                    let v = value()?;
                    o.node_addresses.push(v.parse().with_context(|| format!("--node-address {v:?} is not an IP"))?)
                }
                "--device" => o.devices.push(value()?.clone()),
                "--io" => io_name = value()?.clone(),
                "--xdp-mode" => xdp_mode = value()?.parse().map_err(|e| anyhow::anyhow!("--xdp-mode: {e}"))?,
                "--workers" => {
                    o.workers = value()?.parse().ok().filter(|&n| n >= 1).context("--workers: a number >= 1")?
                }
                "--maglev-table-size" => {
                    let v = value()?;
                    o.maglev_table_size = v
                        .parse()
                        .ok()
                        .filter(|m| MAGLEV_TABLE_SIZES.contains(m))
                        .with_context(|| format!("--maglev-table-size {v}: one of {MAGLEV_TABLE_SIZES:?}"))?;
                }
                "--node-port-range" => {
                    let v = value()?;
                    let range = v.split_once('-').and_then(|(a, b)| Some((a.parse::<i32>().ok()?, b.parse::<i32>().ok()?)));
                    let (a, b) = range
                        .filter(|&(a, b)| 1 <= a && a <= b && b <= 65535)
                        .with_context(|| format!("--node-port-range {v:?}: A-B with 1 <= A <= B <= 65535"))?;
                    o.node_ports = a..=b;
                }
                "--socket" => o.socket = value()?.into(),
                "--pin-dir" => o.pin_dir = value()?.into(),
                "--keep-pinned" => o.keep_pinned = true,
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        o.io = match io_name.as_str() {
            "afxdp" => Some(Io::AfXdp(xdp_mode)),
            "afpacket" => Some(Io::AfPacket),
            "none" => None,
            other => bail!("--io {other:?}: afxdp, afpacket or none"),
        };
        o.source = match source {
            Some(s) => s,
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => SourceArg::Kubeconfig(None),
            None => bail!("no source: --state-dir DIR or --kubeconfig FILE\n{USAGE}"),
        };
        if o.io.is_some() && o.devices.is_empty() {
            bail!("the datapath needs at least one --device (or --io none)");
        }
        Ok(o)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(options: Options) -> Result<()> {
    let sink: Box<dyn Sink> = match options.io {
        None => Box::new(Recorder::default()),
        Some(io) => Box::new(DatapathSink::start(&options, io)?),
    };
    let (events_tx, mut events) = mpsc::channel(1024);
    let ctx = NodeContext {
        name: options.node_name.clone(),
        addresses: options.node_addresses.clone(),
        maglev_table_size: options.maglev_table_size,
    };
    let limits = Limits { node_ports: options.node_ports.clone() };
    let (source_name, kube_events, source_task) = match &options.source {
        SourceArg::StateDir(dir) => {
            let task = tokio::spawn(source::dir::watch(dir.clone(), events_tx));
            (format!("state-dir {}", dir.display()), None, task)
        }
        SourceArg::Kubeconfig(path) => {
            let client = kube_client(path.as_ref()).await?;
            let name = format!("kubernetes {}", client.default_namespace());
            let recorder = source::kube::Events::new(client.clone());
            (name, Some(recorder), tokio::spawn(source::kube::watch(client, events_tx)))
        }
    };
    let mut controller = Controller::new(ctx, limits, sink, source_name);
    let server = tokio::spawn({
        let (path, snapshot) = (options.socket.clone(), controller.snapshot());
        async move { api::serve(&path, snapshot).await }
    });
    println!("skiff-agent: serving the local API on {}", options.socket.display());
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else {
                    break Err(anyhow::anyhow!("the source stopped"));
                };
                let mut rejected = controller.handle(event);
                // Take every event already queued before applying: one apply per burst.
                while let Ok(event) = events.try_recv() {
                    rejected.extend(controller.handle(event));
                }
                for r in &rejected {
                    eprintln!("skiff-agent: rejected {r}");
                    if let Some(k) = &kube_events {
                        k.rejected(r).await;
                    }
                }
                match controller.reconcile() {
                    Ok(Some(report)) => println!(
                        "skiff-agent: applied: {} frontends added, {} changed, {} removed, {} unchanged ({} pools built)",
                        report.added, report.changed, report.removed, report.unchanged, report.pools_built
                    ),
                    Ok(None) => {}
                    Err(e) => eprintln!("skiff-agent: apply failed, the last tables stay: {e:#}"),
                }
            }
            _ = tick.tick() => {
                if let Err(e) = controller.tick() {
                    eprintln!("skiff-agent: {e:#}");
                }
            }
            _ = term.recv() => break Ok("SIGTERM"),
            _ = int.recv() => break Ok("SIGINT"),
        }
    };
    source_task.abort();
    server.abort();
    let _ = std::fs::remove_file(&options.socket);
    drop(controller);
    if matches!(options.io, Some(Io::AfXdp(_))) {
        if options.keep_pinned {
            println!("skiff-agent: pinned maps kept in {}", options.pin_dir.display());
        } else {
            bpffs::remove_pins(&options.pin_dir)
                .with_context(|| format!("removing the pinned maps in {}", options.pin_dir.display()))?;
        }
    }
    let signal = outcome?;
    let stopped = match options.io {
        Some(Io::AfXdp(_)) => "workers stopped, XDP detached",
        Some(Io::AfPacket) => "workers stopped, steering removed",
        None => "stopped",
    };
    println!("skiff-agent: {signal}: {stopped}");
    Ok(())
}

async fn kube_client(path: Option<&PathBuf>) -> Result<kube::Client> {
    let config = match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::incluster().context("the in-cluster configuration")?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// The running datapath as the controller's sink: publishes the tables with next hops from
/// the kernel, and re-reads the next hops every tick.
struct DatapathSink {
    datapath: Datapath,
    devices: Vec<String>,
    description: String,
    last: Tables,
    hops: HashMap<IpAddr, Neighbor>,
}

impl DatapathSink {
    fn start(options: &Options, io: Io) -> Result<DatapathSink> {
        let ingress = match io {
            Io::AfXdp(_) => {
                bpffs::ensure_mounted().context("mounting bpffs")?;
                let mut ingress = Ingress::load(&options.pin_dir).context("loading skiff_xdp_ingress")?;
                ingress.set_config(&XdpConfig::DEFAULT)?;
                Some(ingress)
            }
            Io::AfPacket => None,
        };
        let config = Config {
            interfaces: options.devices.clone(),
            io,
            workers: options.workers,
            ..Config::default()
        };
        let datapath = Datapath::start(config, Tables::default(), ingress).context("starting the datapath")?;
        let how = match (io, datapath.xdp_mode()) {
            (Io::AfXdp(_), Some(mode)) => format!("AF_XDP ({mode:?} XDP)"),
            (Io::AfXdp(_), None) => "AF_XDP".into(),
            (Io::AfPacket, _) => "AF_PACKET".into(),
        };
        let description = format!(
            "{how} on {} ({} worker{})",
            options.devices.join(", "),
            options.workers,
            if options.workers == 1 { "" } else { "s" }
        );
        println!("skiff-agent: datapath: {description}");
        Ok(DatapathSink { datapath, devices: options.devices.clone(), description, last: Tables::default(), hops: HashMap::new() })
    }

    fn read_hops(&self) -> Result<HashMap<IpAddr, Neighbor>> {
        // Each backend once, though every frontend of its service lists it.
        let backends = self.last.services.values().flat_map(|s| s.backends().map(|b| b.addr));
        next_hops::read(&self.devices, backends.collect::<std::collections::BTreeSet<_>>())
    }

    fn publish_with_hops(&mut self) -> Result<()> {
        let mut tables = self.last.clone();
        tables.next_hops = self.hops.iter().map(|(&k, &v)| (k, v)).collect();
        self.datapath.publish(tables)?;
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
        let hops = self.read_hops()?;
        if hops == self.hops {
            return Ok(false);
        }
        self.hops = hops;
        self.publish_with_hops()?;
        Ok(true)
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn next_hops(&self) -> usize {
        self.hops.len()
    }

    fn stats(&self) -> Option<LiveStats> {
        let handle = self.datapath.stats_handle();
        Some(Arc::new(move || {
            let s = handle.total();
            let drops = (0..DropReason::COUNT)
                .filter(|&i| s.drops[i] > 0)
                .map(|i| {
                    let name = u8::try_from(i).ok().and_then(DropReason::from_u8).map_or("unknown", DropReason::name);
                    (name.to_owned(), s.drops[i])
                })
                .collect();
            WorkerView {
                received: s.received,
                forwarded: s.forwarded,
                replied: s.replied,
                dropped: s.dropped,
                handed_off: s.handed_off,
                drops,
            }
        }))
    }
}
