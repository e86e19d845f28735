//! `skiff-agent`: the node daemon. Loads the XDP program (adopting the attachments, maps and
//! flows an earlier agent left), starts the workers, runs the control loop on a source (a
//! state folder or an API server), serves the local API, and on SIGTERM or SIGINT stops:
//! workers joined, steering removed, socket-LB detached. The XDP program stays attached with
//! its pinned maps, so that flows forwarded at the NIC keep flowing until the next agent
//! adopts them; `skiff-agent cleanup` removes it all (an uninstall).

mod config_dir;
mod datapath;
mod options;
mod socket_lb;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use skiff_api::Source;
use skiff_fastpath::datapath::Io;
use skiff_xdp::bpffs;
use tokio::{signal::unix::SignalKind, sync::mpsc};

pub use self::options::{Cli, Command, IoMode, IpamArg, LogFormat, Options};
use self::{datapath::DatapathSink, options::SourceArg};
use crate::{
    api::{self, Asked},
    compile::NodeContext,
    controller::{Controller, Event, Recorder, Sink},
    endpoints::{Endpoints, cni_conf::CniInstall, ipam::IpamMode},
    next_hops::Changes,
    observer::Observer,
    source,
    validate::Limits,
};

/// How often a failed apply is retried.
const RETRY: Duration = Duration::from_secs(1);

/// Writes log lines to stderr, plain (coloured on a terminal) or as JSON: skiff's from info
/// up, its libraries' (kube, rtnetlink) warnings and errors.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};
    let levels =
        Targets::new().with_target("skiff_control", tracing::Level::INFO).with_default(tracing::Level::WARN);
    let plain = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match format {
        LogFormat::Plain => tracing_subscriber::registry().with(plain).with(levels).init(),
        LogFormat::Json => tracing_subscriber::registry().with(plain.json()).with(levels).init(),
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(options: Options) -> Result<()> {
    options.check()?;
    let source_arg = options.source()?;
    let io = options.io()?;
    let endpoint_config = options.endpoints()?;
    let (sink, changes, observer) = start_datapath(&options, io)?;
    let ctx = NodeContext {
        name: options.node_name.clone(),
        addresses: options.node_addresses.clone(),
        maglev_table_size: options.maglev_table_size,
        lb_algorithm: options.bpf_lb_algorithm,
        pod_cidrs: match &endpoint_config.ipam {
            IpamMode::ClusterPool(cidrs) => cidrs.clone(),
            IpamMode::Kubernetes => Vec::new(),
        },
        policy_enforcement: options.policy_enforcement,
        routing: options.routing(),
        masquerade: options.masquerade(),
        underlay_mtu: options.underlay_mtu(),
    };
    let limits = Limits { node_ports: options.node_port_range.clone() };
    let (events_tx, events) = mpsc::channel(1024);
    let mut kube_client_for_identities = None;
    let (source, kube_events, source_task) = match source_arg {
        SourceArg::StateDir(dir) => {
            let task = tokio::spawn(source::dir::watch(dir.clone(), events_tx));
            (Source::StateDir { path: dir }, None, task)
        }
        SourceArg::Kubernetes(path) => {
            let service = options.k8s_service_host.as_deref().map(|host| (host, options.k8s_service_port));
            let (client, server) = kube_client(path.as_ref(), service).await?;
            if !options.skip_crd_creation {
                source::kube::install_crds(&client).await;
            }
            let recorder = source::kube::Events::new(client.clone());
            kube_client_for_identities = Some(client.clone());
            (
                Source::Kubernetes { server },
                Some(recorder),
                tokio::spawn(source::kube::watch(client, events_tx)),
            )
        }
    };
    let endpoints = Endpoints::open(endpoint_config)?;
    let mut controller = Controller::new(ctx, limits, sink, source).with_endpoints(endpoints)?;
    if let Some(observer) = &observer {
        controller = controller.with_observer(observer.clone());
    }
    if let Some(client) = kube_client_for_identities {
        controller = controller.with_identity_allocator(
            Box::new(source::kube::IdentityAllocator::new(client)),
            options.identity_heartbeat_timeout,
        );
    }
    let (asks_tx, asks) = mpsc::channel(64);
    let metrics = match options.prometheus_serve_addr {
        Some(addr) => Some((addr, crate::metrics::listen(addr).await?)),
        None => None,
    };
    let servers = start_servers(&options, &controller, observer, asks_tx, metrics);
    let outcome = control_loop(controller, events, changes, asks, kube_events, options.cni()).await;
    source_task.abort();
    for server in servers {
        server.abort();
    }
    let _ = std::fs::remove_file(&options.socket);
    let signal = outcome?;
    let stopped = match io {
        Some(Io::AfXdp(_)) => format!(
            "workers stopped, socket-LB detached; XDP stays attached with its maps pinned in {} \
             (flows forwarded at the NIC go on; `skiff-agent cleanup` removes it)",
            options.pin_dir.display()
        ),
        Some(Io::AfPacket) => "workers stopped, steering removed, socket-LB detached".into(),
        None => "stopped".into(),
    };
    tracing::info!("{signal}: {stopped}");
    Ok(())
}

/// Serves the local API (its state-changing requests to `asks`) and, when asked for,
/// Prometheus metrics on their bound listener; returns their tasks, to end at exit.
fn start_servers(
    options: &Options,
    controller: &Controller,
    observer: Option<Arc<Observer>>,
    asks: mpsc::Sender<Asked>,
    metrics: Option<(std::net::SocketAddr, tokio::net::TcpListener)>,
) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    let registry = Arc::new(crate::metrics::registry(controller.snapshot(), controller.metrics()));
    let mut servers = Vec::new();
    if let Some((addr, listener)) = metrics {
        tracing::info!("serving Prometheus metrics on http://{addr}/metrics");
        servers.push(tokio::spawn(crate::metrics::serve(listener, registry.clone(), controller.snapshot())));
    }
    let (path, snapshot) = (options.socket.clone(), controller.snapshot());
    let live = api::Live { observer, metrics: Some(registry) };
    servers.push(tokio::spawn(async move { api::serve(&path, snapshot, asks, live).await }));
    tracing::info!("serving the local API on {}", options.socket.display());
    servers
}

/// The datapath (none: a recorder of tables), the kernel's changes it follows, and the
/// observer of what it decides.
type Started = (Box<dyn Sink>, Option<Changes>, Option<Arc<Observer>>);

fn start_datapath(options: &Options, io: Option<Io>) -> Result<Started> {
    let Some(io) = io else { return Ok((Box::new(Recorder::default()), None, None)) };
    let (sink, changes) = DatapathSink::start(options, io)?;
    let observer = Observer::new(options.flow_buffer);
    let (records, xdp) = sink.observed()?;
    observer.start(records, xdp);
    Ok((Box::new(sink), Some(changes), Some(observer)))
}

/// `skiff-agent cleanup`: detaches the XDP program everywhere and removes its pinned maps
/// and attachments (and socket-LB's maps).
pub fn cleanup(pin_dir: &std::path::Path) -> Result<()> {
    bpffs::ensure_mounted().context("mounting bpffs")?;
    bpffs::remove_pins(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    println!("removed {} (XDP detached, maps removed)", pin_dir.display());
    Ok(())
}

/// Applies the source's events, the kernel's changes and retries until a signal; returns the
/// signal's name. The controller (and with it the datapath) is stopped on return.
async fn control_loop(
    mut controller: Controller,
    mut events: mpsc::Receiver<Event>,
    mut changes: Option<Changes>,
    mut asks: mpsc::Receiver<Asked>,
    kube_events: Option<source::kube::Events>,
    mut cni: Option<CniInstall>,
) -> Result<&'static str> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut retry = tokio::time::interval(RETRY);
    let kernel_changed = async |changes: &mut Option<Changes>| match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    };
    loop {
        // The CNI configuration is written once ADD can be served, as Cilium's
        // `write-cni-conf-when-ready`: until then the kubelet holds pods back ("cni config
        // uninitialized") instead of failing their ADDs.
        if controller.cni_ready()
            && let Some(cni) = cni.take()
        {
            install_cni(&cni)?;
        }
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
                for (key, note) in controller.take_notices() {
                    tracing::warn!("not enforced as written: {note}");
                    if let Some(k) = &kube_events {
                        k.not_enforced(&key, &note).await;
                    }
                }
            }
            Some(_) = kernel_changed(&mut changes) => {
                // One refresh for a burst of notifications.
                while changes.as_mut().is_some_and(|c| c.try_recv().is_ok()) {}
                if let Err(e) = controller.refresh() {
                    tracing::error!("next hops: {e:#}");
                }
            }
            Some((request, answer)) = asks.recv() => {
                let _ = answer.send(controller.request(&request));
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

fn install_cni(cni: &CniInstall) -> Result<()> {
    let plugin = std::env::current_exe()?.with_file_name(crate::endpoints::cni_conf::PLUGIN);
    let (conflist, moved) = cni.install(&plugin)?;
    tracing::info!(
        "CNI: {} installed in {}, conflist {}",
        plugin.display(),
        cni.bin_dir.display(),
        conflist.display()
    );
    for aside in moved {
        tracing::info!("CNI: moved aside {} (--cni-exclusive)", aside.display());
    }
    Ok(())
}

/// A client of the API server in `path` (or the in-cluster one), and the server's URL.
/// A client from a kubeconfig, else in-cluster: through `service` (host, port) where given,
/// else the `kubernetes` Service the pod's environment names.
async fn kube_client(path: Option<&PathBuf>, service: Option<(&str, u16)>) -> Result<(kube::Client, String)> {
    let config = match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => match service {
            Some((host, port)) => {
                let mut config = kube::Config::incluster_dns().context("the in-cluster configuration")?;
                let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
                config.cluster_url =
                    format!("https://{host}:{port}").parse().context("--k8s-service-host")?;
                config
            }
            None => kube::Config::incluster().context("the in-cluster configuration")?,
        },
    };
    let server = config.cluster_url.to_string();
    Ok((kube::Client::try_from(config)?, server))
}
