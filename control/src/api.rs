//! The agent's local API: one request per line on a root-only unix socket (`status`,
//! `services`), one JSON answer per line. The types are shared with the `skiff` CLI.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use skiff_fastpath::{
    engine::{Frontend, FrontendKind, Service, TrafficPolicy},
    lb::Algorithm,
};

use crate::{
    apply::ApplyReport,
    compile::{BackendSpec, FrontendKey, FrontendSpec, Tunnel},
    objects::Rejection,
};

pub const DEFAULT_SOCKET: &str = "/run/skiff/skiff.sock";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// `Ok`, or `Degraded: ` and why (the source is away, the last apply failed).
    pub health: String,
    pub node: String,
    /// `state-dir DIR` or `kubernetes URL`.
    pub source: String,
    /// Whether the source is reachable (an API server can go away; the tables stay).
    pub connected: bool,
    /// How packets reach the workers, e.g. `AF_XDP native on uplink, lxc0 (1 worker)`.
    pub datapath: String,
    /// Accepted objects by kind.
    pub objects: BTreeMap<String, usize>,
    pub rejections: Vec<RejectionView>,
    pub frontends: usize,
    pub backends: usize,
    pub identities: usize,
    pub tunnels: Vec<TunnelView>,
    pub policies: usize,
    pub next_hops: usize,
    pub applies: u64,
    pub last_apply: Option<LastApply>,
    pub workers: Option<WorkerView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RejectionView {
    pub object: String,
    pub origin: String,
    pub errors: Vec<String>,
}

impl From<&Rejection> for RejectionView {
    fn from(r: &Rejection) -> RejectionView {
        RejectionView {
            object: r.key.as_ref().map_or_else(|| "(document)".into(), ToString::to_string),
            origin: r.origin.clone(),
            errors: r.errors.iter().map(ToString::to_string).collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TunnelView {
    pub node: String,
    pub pod_cidr: String,
    pub endpoint: String,
}

impl From<&Tunnel> for TunnelView {
    fn from(t: &Tunnel) -> TunnelView {
        TunnelView { node: t.node.clone(), pod_cidr: t.pod_cidr.clone(), endpoint: t.endpoint.to_string() }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastApply {
    pub report: ApplyReport,
    /// From the change's arrival to the tables' publication.
    pub micros: u64,
    pub unix_seconds: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerView {
    pub received: u64,
    pub forwarded: u64,
    pub replied: u64,
    pub dropped: u64,
    /// Frames a worker received for a flow another owns, and handed to it.
    #[serde(default)]
    pub handed_off: u64,
    /// Drops by reason name.
    pub drops: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceView {
    /// `address:port/protocol`.
    pub frontend: String,
    pub kind: String,
    /// `namespace/name:port`.
    pub service: String,
    pub algorithm: String,
    pub traffic_policy: String,
    pub affinity_seconds: Option<u64>,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendView {
    pub id: u32,
    pub address: String,
    pub weight: u16,
    pub local: bool,
}

/// The workers' counters, read when asked.
pub type LiveStats = std::sync::Arc<dyn Fn() -> WorkerView + Send + Sync>;

/// What the agent answers with; refreshed after every apply. The service views are built
/// when asked, not at every apply (10k services make 100k backend lines).
#[derive(Clone, Default)]
pub struct Snapshot {
    pub status: Status,
    /// The applied frontends, shared with the applier.
    pub applied: Arc<BTreeMap<FrontendKey, FrontendSpec>>,
    /// The published frontends (their backends carry the ids).
    pub services: hashbrown::HashMap<Frontend, Service>,
    pub live: Option<LiveStats>,
}

impl Snapshot {
    pub fn service_views(&self) -> Vec<ServiceView> {
        self.applied
            .iter()
            .map(|(&(addr, port, protocol), spec)| {
                let c = spec.config;
                let published = self.services.get(&Frontend { addr, port, protocol });
                let id = |b: &BackendSpec| {
                    let mut backends = published.into_iter().flat_map(Service::backends);
                    backends.find(|p| p.addr == b.addr && p.port == b.port).map_or(0, |p| p.id.0)
                };
                ServiceView {
                    frontend: format!("{}:{port}/{}", bracket(addr), protocol_name(protocol)),
                    kind: match c.kind {
                        FrontendKind::ClusterIp => "ClusterIP",
                        FrontendKind::NodePort => "NodePort",
                        FrontendKind::LoadBalancer => "LoadBalancer",
                        FrontendKind::ExternalIp => "ExternalIP",
                    }
                    .into(),
                    service: format!(
                        "{}/{}{}",
                        spec.service.namespace,
                        spec.service.name,
                        if spec.service.port.is_empty() { String::new() } else { format!(":{}", spec.service.port) }
                    ),
                    algorithm: match c.algorithm {
                        Algorithm::Maglev { table_size } => format!("maglev/{table_size}"),
                        Algorithm::Random => "random".into(),
                    },
                    traffic_policy: match c.traffic_policy {
                        TrafficPolicy::Cluster => "Cluster",
                        TrafficPolicy::Local => "Local",
                    }
                    .into(),
                    affinity_seconds: c.affinity_timeout,
                    backends: spec
                        .backends
                        .iter()
                        .map(|b| BackendView {
                            id: id(b),
                            address: format!("{}:{}", bracket(b.addr), b.port),
                            weight: b.weight,
                            local: b.local,
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

fn bracket(addr: IpAddr) -> String {
    if addr.is_ipv6() { format!("[{addr}]") } else { addr.to_string() }
}

fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "?",
    }
}

/// Serves `snapshot` on `path` until the task is dropped: the socket's folder is made 0700 and
/// the socket 0600, so only root talks to the agent.
pub async fn serve(path: &Path, snapshot: std::sync::Arc<std::sync::RwLock<Snapshot>>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("the socket path has a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = {
                    let s = snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                    match line.trim() {
                        "status" => {
                            let workers = s.live.as_ref().map(|live| live());
                            serde_json::to_string(&Status { workers, ..s.status.clone() })
                        }
                        "services" => serde_json::to_string(&s.service_views()),
                        other => serde_json::to_string(&serde_json::json!({
                            "error": format!("unknown request {other:?} (status, services)")
                        })),
                    }
                };
                let Ok(mut answer) = answer else { break };
                answer.push('\n');
                if write.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Asks the agent on `path` one request (blocking; for the CLI).
pub fn request<T: for<'de> Deserialize<'de>>(path: &Path, request: &str) -> Result<T> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to skiff-agent at {} (is it running? are you root?)", path.display()))?;
    writeln!(stream, "{request}")?;
    let mut line = String::new();
    std::io::BufReader::new(&stream).read_line(&mut line)?;
    if line.is_empty() {
        bail!("skiff-agent closed the connection without answering");
    }
    serde_json::from_str(&line).with_context(|| format!("reading the agent's answer to {request:?}"))
}
