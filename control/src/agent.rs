//! `skiff-agent`: the node daemon. Loads the XDP program, starts the workers, runs the
//! control loop on a source (a state folder or an API server), serves the local API, and on
//! SIGTERM or SIGINT stops cleanly: workers joined, XDP detached, steering removed, pinned
//! maps removed (or kept for the next start with `--keep-pinned`).

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    ops::RangeInclusive,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use skiff_api::{DEFAULT_SOCKET, Source, WorkerCounters};
use skiff_common::{
    DropReason,
    config::{XdpConfig, XdpMode},
    lb::{MAGLEV_TABLE_SIZE, MAGLEV_TABLE_SIZES},
    names::PIN_ROOT,
};
use skiff_engine::tables::{Neighbor, Tables};
use skiff_fastpath::datapath::{Config, Datapath, Io};
use skiff_xdp::{Ingress, bpffs};
use tokio::{signal::unix::SignalKind, sync::mpsc};

use crate::{
    api::{self, LiveStats},
    compile::NodeContext,
    controller::{Controller, Event, Recorder, Sink},
    next_hops::{Changes, Kernel},
    source,
    validate::Limits,
};

/// How often a failed apply is retried.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "skiff-agent",
    version,
    about = "skiff's node daemon: Kubernetes objects to an XDP/AF_XDP datapath"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CRDs skiff reads (CiliumNetworkPolicy, …) as YAML.
    Crds,
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Args, Debug)]
pub struct Options {
    /// Kubernetes YAML in a folder, watched for changes.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub state_dir: Option<PathBuf>,
    /// A Kubernetes API server (in a pod, without either flag: the in-cluster config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's Node object.
    #[arg(long, value_name = "NAME", default_value_t = hostname())]
    pub node_name: String,
    /// NodePorts also listen here (repeatable).
    #[arg(long = "node-address", value_name = "IP")]
    pub node_addresses: Vec<IpAddr>,
    /// A device the datapath serves (repeatable, uplink first).
    #[arg(long = "device", value_name = "IFACE")]
    pub devices: Vec<String>,
    /// How packets reach the workers (none: tables only).
    #[arg(long, value_enum, default_value_t = IoMode::Afxdp)]
    pub io: IoMode,
    /// auto: native where the driver has it, else generic (and says which); native; generic.
    #[arg(long, value_name = "MODE", default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,
    /// Workers, one per receive queue.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,
    /// Slots of every service's Maglev table: a prime of 251..=131071.
    #[arg(long, value_name = "M", default_value_t = MAGLEV_TABLE_SIZE, value_parser = maglev_table_size)]
    pub maglev_table_size: u32,
    /// The cluster's NodePort range.
    #[arg(long, value_name = "A-B", default_value = "30000-32767", value_parser = port_range)]
    pub node_port_range: RangeInclusive<i32>,
    /// The local API's unix socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where the XDP program's maps are pinned (bpffs).
    #[arg(long, value_name = "DIR", default_value = PIN_ROOT)]
    pub pin_dir: PathBuf,
    /// On exit, keep the pinned maps for the next start.
    #[arg(long)]
    pub keep_pinned: bool,
    /// How log lines are written (to stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoMode {
    /// AF_XDP sockets behind skiff's XDP program.
    Afxdp,
    /// AF_PACKET sockets with nftables steering (no AF_XDP needed).
    Afpacket,
    /// No datapath: the tables are compiled and shown, nothing forwards.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

fn maglev_table_size(text: &str) -> Result<u32, String> {
    text.parse()
        .ok()
        .filter(|m| MAGLEV_TABLE_SIZES.contains(m))
        .ok_or_else(|| format!("one of {MAGLEV_TABLE_SIZES:?}"))
}

fn port_range(text: &str) -> Result<RangeInclusive<i32>, String> {
    let range =
        text.split_once('-').and_then(|(a, b)| Some((a.parse::<i32>().ok()?, b.parse::<i32>().ok()?)));
    match range {
        Some((a, b)) if 1 <= a && a <= b && b <= 65535 => Ok(a..=b),
        _ => Err("A-B with 1 <= A <= B <= 65535".into()),
    }
}

/// Where the objects come from.
enum SourceArg {
    StateDir(PathBuf),
    /// A kubeconfig, or the in-cluster configuration.
    Kubernetes(Option<PathBuf>),
}

impl Options {
    fn source(&self) -> Result<SourceArg> {
        Ok(match (&self.state_dir, &self.kubeconfig) {
            (Some(dir), _) => SourceArg::StateDir(dir.clone()),
            (None, Some(file)) => SourceArg::Kubernetes(Some(file.clone())),
            (None, None) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                SourceArg::Kubernetes(None)
            }
            (None, None) => bail!("no source: --state-dir DIR or --kubeconfig FILE"),
        })
    }

    fn io(&self) -> Result<Option<Io>> {
        let io = match self.io {
            IoMode::Afxdp => Some(Io::AfXdp(self.xdp_mode)),
            IoMode::Afpacket => Some(Io::AfPacket),
            IoMode::None => None,
        };
        if io.is_some() && self.devices.is_empty() {
            bail!("the datapath needs at least one --device (or --io none)");
        }
        Ok(io)
    }
}

/// Writes log lines to stderr, plain (coloured on a terminal) or as JSON: skiff's from info
/// up, its libraries' (kube, rtnetlink) warnings and errors.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};
    let levels =
        Targets::new().with_target("skiff_control", tracing::Level::INFO).with_default(tracing::Level::WARN);
    let plain = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Plain => tracing_subscriber::registry().with(plain).with(levels).init(),
        LogFormat::Json => tracing_subscriber::registry().with(plain.json()).with(levels).init(),
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(options: Options) -> Result<()> {
    let source_arg = options.source()?;
    let io = options.io()?;
    let (sink, changes): (Box<dyn Sink>, Option<Changes>) = match io {
        None => (Box::new(Recorder::default()), None),
        Some(io) => {
            let (sink, changes) = DatapathSink::start(&options, io)?;
            (Box::new(sink), Some(changes))
        }
    };
    let ctx = NodeContext {
        name: options.node_name.clone(),
        addresses: options.node_addresses.clone(),
        maglev_table_size: options.maglev_table_size,
    };
    let limits = Limits { node_ports: options.node_port_range.clone() };
    let (events_tx, events) = mpsc::channel(1024);
    let (source, kube_events, source_task) = match source_arg {
        SourceArg::StateDir(dir) => {
            let task = tokio::spawn(source::dir::watch(dir.clone(), events_tx));
            (Source::StateDir { path: dir }, None, task)
        }
        SourceArg::Kubernetes(path) => {
            let (client, server) = kube_client(path.as_ref()).await?;
            let recorder = source::kube::Events::new(client.clone());
            (
                Source::Kubernetes { server },
                Some(recorder),
                tokio::spawn(source::kube::watch(client, events_tx)),
            )
        }
    };
    let controller = Controller::new(ctx, limits, sink, source);
    let server = tokio::spawn({
        let (path, snapshot) = (options.socket.clone(), controller.snapshot());
        async move { api::serve(&path, snapshot).await }
    });
    tracing::info!("serving the local API on {}", options.socket.display());
    let outcome = control_loop(controller, events, changes, kube_events).await;
    source_task.abort();
    server.abort();
    let _ = std::fs::remove_file(&options.socket);
    if matches!(io, Some(Io::AfXdp(_))) {
        if options.keep_pinned {
            tracing::info!("pinned maps kept in {}", options.pin_dir.display());
        } else {
            bpffs::remove_pins(&options.pin_dir)
                .with_context(|| format!("removing the pinned maps in {}", options.pin_dir.display()))?;
        }
    }
    let signal = outcome?;
    let stopped = match io {
        Some(Io::AfXdp(_)) => "workers stopped, XDP detached",
        Some(Io::AfPacket) => "workers stopped, steering removed",
        None => "stopped",
    };
    tracing::info!("{signal}: {stopped}");
    Ok(())
}

/// Applies the source's events, the kernel's changes and retries until a signal; returns the
/// signal's name. The controller (and with it the datapath) is stopped on return.
async fn control_loop(
    mut controller: Controller,
    mut events: mpsc::Receiver<Event>,
    mut changes: Option<Changes>,
    kube_events: Option<source::kube::Events>,
) -> Result<&'static str> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut retry = tokio::time::interval(RETRY);
    let kernel_changed = async |changes: &mut Option<Changes>| match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { bail!("the source stopped") };
                let mut rejected = controller.handle(event);
                // Take every event already queued before applying: one apply per burst.
                while let Ok(event) = events.try_recv() {
                    rejected.extend(controller.handle(event));
                }
                for r in &rejected {
                    tracing::warn!("rejected {r}");
                    if let Some(k) = &kube_events {
                        k.rejected(r).await;
                    }
                }
                match controller.reconcile() {
                    Ok(Some(report)) => tracing::info!("applied: {report}"),
                    Ok(None) => {}
                    Err(e) => tracing::error!("apply failed, the last tables stay: {e:#}"),
                }
            }
            Some(_) = kernel_changed(&mut changes) => {
                // One refresh for a burst of notifications.
                while changes.as_mut().is_some_and(|c| c.try_recv().is_ok()) {}
                if let Err(e) = controller.refresh() {
                    tracing::error!("next hops: {e:#}");
                }
            }
            _ = retry.tick() => {
                if let Err(e) = controller.retry() {
                    tracing::error!("{e:#}");
                }
            }
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
        }
    }
}

/// A client of the API server in `path` (or the in-cluster one), and the server's URL.
async fn kube_client(path: Option<&PathBuf>) -> Result<(kube::Client, String)> {
    let config = match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::incluster().context("the in-cluster configuration")?,
    };
    let server = config.cluster_url.to_string();
    Ok((kube::Client::try_from(config)?, server))
}

/// The running datapath as the controller's sink: publishes the tables with next hops from
/// the kernel, and derives them again when the kernel's tables change.
struct DatapathSink {
    datapath: Datapath,
    kernel: Kernel,
    description: skiff_api::Datapath,
    last: Tables,
    hops: HashMap<IpAddr, Neighbor>,
}

impl DatapathSink {
    fn start(options: &Options, io: Io) -> Result<(DatapathSink, Changes)> {
        let ingress = match io {
            Io::AfXdp(_) => {
                bpffs::ensure_mounted().context("mounting bpffs")?;
                let mut ingress = Ingress::load(&options.pin_dir).context("loading skiff_xdp_ingress")?;
                ingress.set_config(&XdpConfig::DEFAULT)?;
                Some(ingress)
            }
            Io::AfPacket => None,
        };
        let config =
            Config { interfaces: options.devices.clone(), io, workers: options.workers, ..Config::default() };
        let datapath =
            Datapath::start(config, Tables::default(), ingress).context("starting the datapath")?;
        let io = match (io, datapath.xdp_mode()) {
            (Io::AfXdp(requested), mode) => skiff_api::Io::AfXdp { xdp_mode: mode.unwrap_or(requested) },
            (Io::AfPacket, _) => skiff_api::Io::AfPacket,
        };
        let description =
            skiff_api::Datapath { io, devices: options.devices.clone(), workers: options.workers };
        tracing::info!("datapath: {description}");
        let (kernel, changes) = Kernel::connect(&options.devices)?;
        let sink =
            DatapathSink { datapath, kernel, description, last: Tables::default(), hops: HashMap::new() };
        Ok((sink, changes))
    }

    /// The next hops of the devices and of every backend, from the kernel (blocking this
    /// thread of the agent's runtime while rtnetlink answers).
    fn read_hops(&mut self) -> Result<HashMap<IpAddr, Neighbor>> {
        // Each backend once, though every frontend of its service lists it.
        let backends: BTreeSet<IpAddr> =
            self.last.services.values().flat_map(|s| s.backends().map(|b| b.addr)).collect();
        let kernel = &mut self.kernel;
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(kernel.next_hops(backends)))
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
        self.kernel.changed();
        let hops = self.read_hops()?;
        if hops == self.hops {
            return Ok(false);
        }
        self.hops = hops;
        self.publish_with_hops()?;
        Ok(true)
    }

    fn describe(&self) -> skiff_api::Datapath {
        self.description.clone()
    }

    fn next_hops(&self) -> usize {
        self.hops.len()
    }

    fn stats(&self) -> Option<LiveStats> {
        let handle = self.datapath.stats_handle();
        Some(Arc::new(move || {
            let s = handle.total();
            let drops =
                DropReason::ALL.into_iter().map(|r| (r, s.drops_of(r))).filter(|&(_, n)| n > 0).collect();
            WorkerCounters {
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
