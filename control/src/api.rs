//! The agent's side of the local API ([`skiff_api`]): what it answers from, and the unix
//! socket it answers on (root only: 0600 in a 0700 folder).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use skiff_api::{
    Answer, ApiError, BackendView, EndpointView, ErrorCode, FlowView, IpamView, MapView, MetricSample,
    Request, ServiceView, Status, WorkerCounters, encode_line,
    observe::{Flow, FlowFilter, LostEvents},
};
use skiff_engine::tables::{Frontend, Service};
use skiff_xdp::SocketFrontend;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    sync::{broadcast, mpsc, oneshot},
};

use crate::{
    compile::{BackendSpec, FrontendKey, FrontendSpec},
    observer::Observer,
};

/// The workers' counters, read when asked.
pub type LiveStats = Arc<dyn Fn() -> WorkerCounters + Send + Sync>;

/// The tracked flows, read from the XDP program's flow table when asked.
pub type LiveFlows = Arc<dyn Fn() -> Result<Vec<FlowView>, String> + Send + Sync>;

/// The pinned maps, read when asked.
pub type LiveMaps = Arc<dyn Fn() -> Result<Vec<MapView>, String> + Send + Sync>;

/// What the agent answers with; refreshed after every apply. The service views are built
/// when asked, not at every apply (10k services make 100k backend lines).
#[derive(Clone)]
pub struct Snapshot {
    pub status: Status,
    /// The applied frontends, shared with the applier.
    pub applied: Arc<BTreeMap<FrontendKey, FrontendSpec>>,
    /// The published frontends (their backends carry the ids).
    pub services: hashbrown::HashMap<Frontend, Service>,
    pub endpoints: Vec<EndpointView>,
    /// The address pools, when the agent serves the CNI.
    pub ipam: Option<IpamView>,
    pub live: Option<LiveStats>,
    pub flows: Option<LiveFlows>,
    pub observer: Option<Arc<Observer>>,
    pub maps: Option<LiveMaps>,
    /// This node's addresses.
    pub local_addresses: Vec<IpAddr>,
}

/// A request the control loop answers (`skiff-cni`'s, which change the agent's state, and
/// those that read tables too large to copy into every snapshot), with where the answer goes.
pub type Asked = (Request, oneshot::Sender<Answer>);

impl Snapshot {
    pub fn new(status: Status) -> Snapshot {
        Snapshot {
            status,
            applied: Arc::default(),
            services: hashbrown::HashMap::new(),
            endpoints: Vec::new(),
            ipam: None,
            live: None,
            flows: None,
            observer: None,
            maps: None,
            local_addresses: Vec::new(),
        }
    }

    /// The answer to `request`, if it only reads; `None` for the control loop to answer.
    pub fn answer(&self, request: &Request) -> Option<Answer> {
        Some(match request {
            Request::Status => {
                let workers = self.live.as_ref().map(|live| live());
                let flows = self.observer.as_ref().map(|o| o.counters());
                Answer::Status(Box::new(Status { workers, flows, ..self.status.clone() }))
            }
            Request::ServiceList => Answer::ServiceList(self.service_views()),
            Request::CtList => match self.flows.as_ref().map(|flows| flows()) {
                Some(Ok(flows)) => Answer::Flows(flows),
                Some(Err(e)) => Answer::Error(ApiError::new(ErrorCode::Internal, e)),
                None => Answer::Error(ApiError::new(
                    ErrorCode::NotFound,
                    "no flow table: the datapath runs without XDP (AF_PACKET) or not at all",
                )),
            },
            Request::MapList => match self.maps.as_ref().map(|maps| maps()) {
                Some(Ok(maps)) => Answer::Maps(maps),
                Some(Err(e)) => Answer::Error(ApiError::new(ErrorCode::Internal, e)),
                None => Answer::Error(ApiError::new(
                    ErrorCode::NotFound,
                    "no pinned maps: no datapath runs with XDP",
                )),
            },
            Request::EndpointList => Answer::EndpointList(self.endpoints.clone()),
            Request::EndpointGet { id } => match self.endpoints.iter().find(|e| e.id == *id) {
                Some(e) => Answer::Endpoint(Box::new(e.clone())),
                None => Answer::Error(ApiError::new(ErrorCode::NotFound, format!("no endpoint {id}"))),
            },
            Request::IpamList => match &self.ipam {
                Some(ipam) => Answer::Ipam(ipam.clone()),
                None => {
                    Answer::Error(ApiError::new(ErrorCode::NotFound, "this agent hands out no addresses"))
                }
            },
            // Built when asked, by the control loop: 10k identities or pods are not copied
            // into every snapshot.
            Request::IdentityList | Request::NodeList | Request::PolicyGet | Request::PolicyTrace { .. } => {
                return None;
            }
            Request::PrefilterList | Request::PrefilterUpdate { .. } | Request::PrefilterDelete { .. } => {
                return None;
            }
            // Streamed by `serve` from the observer; read from the registry there.
            Request::Observe { .. } | Request::MetricsList => return None,
            Request::AddressAllocate { .. }
            | Request::EndpointCreate(_)
            | Request::EndpointDelete { .. }
            | Request::EndpointCheck { .. }
            | Request::CniGc { .. }
            | Request::CniStatus => return None,
        })
    }

    pub fn service_views(&self) -> Vec<ServiceView> {
        self.applied
            .iter()
            .map(|(&(address, port, protocol), spec)| {
                let c = spec.config;
                let published =
                    self.services.get(&Frontend { addr: address, port, protocol: protocol.number() });
                let id = |b: &BackendSpec| {
                    let mut backends = published.into_iter().flat_map(Service::backends);
                    backends.find(|p| p.addr == b.addr && p.port == b.port).map_or(0, |p| p.id.0)
                };
                ServiceView {
                    address,
                    port,
                    protocol,
                    kind: c.kind,
                    service: spec.service.clone(),
                    algorithm: c.algorithm,
                    traffic_policy: c.traffic_policy,
                    affinity_timeout_seconds: c.affinity_timeout,
                    socket_lb: self.status.datapath.socket_lb.is_on()
                        && SocketFrontend::serves(
                            c.kind,
                            protocol.number(),
                            self.local_addresses.contains(&address),
                        ),
                    backends: spec
                        .backends
                        .iter()
                        .map(|b| BackendView {
                            id: id(b),
                            address: b.addr,
                            port: b.port,
                            weight: b.weight,
                            local: b.local,
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// What the server reads itself, apart from the snapshot: the observer's flows and the
/// metrics registry.
#[derive(Clone, Default)]
pub struct Live {
    pub observer: Option<Arc<Observer>>,
    pub metrics: Option<Arc<Registry>>,
}

/// Serves `snapshot` on `path` until the task is dropped; requests that change state go to
/// the control loop through `asks`; `skiff observe` and `metrics list` are answered from
/// `live`.
pub async fn serve(
    path: &Path,
    snapshot: Arc<RwLock<Snapshot>>,
    asks: mpsc::Sender<Asked>,
    live: Live,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("the socket path has a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let _ = std::fs::remove_file(path);
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (snapshot, asks, live) = (snapshot.clone(), asks.clone(), live.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match Request::decode(&line) {
                    Ok(Request::Observe { filter, last, follow }) => {
                        let observer = live.observer.as_deref();
                        if stream_flows(&mut write, observer, &filter, last, follow).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Ok(Request::MetricsList) => match live.metrics.as_deref().map(metric_samples) {
                        Some(Ok(samples)) => Answer::Metrics(samples),
                        Some(Err(e)) => Answer::Error(ApiError::new(ErrorCode::Internal, e.to_string())),
                        None => {
                            Answer::Error(ApiError::new(ErrorCode::NotFound, "this agent keeps no metrics"))
                        }
                    },
                    Ok(request) => {
                        let read = snapshot
                            .read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .answer(&request);
                        match read {
                            Some(answer) => answer,
                            None => ask(&asks, request).await,
                        }
                    }
                    Err(e) => Answer::Error(e),
                };
                if write.write_all(encode_line(&answer).as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Every series of `registry` with its value, from its text encoding.
fn metric_samples(registry: &Registry) -> Result<Vec<MetricSample>, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(MetricSample { name: name.into(), labels: labels.into(), value: value.parse().ok()? })
        })
        .collect())
}

/// A flow as [`Answer::Flow`] encodes it, borrowed: streamed flows are not copied.
#[derive(serde::Serialize)]
enum FlowLine<'a> {
    #[serde(rename = "flow")]
    Flow(&'a Flow),
}

/// Flows written per write while following, at most.
const FLOWS_PER_WRITE: usize = 256;

/// Writes the kept flows that pass `filter` (the last `last`), then, with `follow`, each new
/// one until the client leaves, those waiting together in one write; flows this client fell
/// too far behind to get are counted and told. Fails when the client is gone.
async fn stream_flows(
    write: &mut (impl AsyncWriteExt + Unpin),
    observer: Option<&Observer>,
    filter: &FlowFilter,
    last: Option<usize>,
    follow: bool,
) -> std::io::Result<()> {
    let Some(observer) = observer else {
        let why = "no datapath runs (--io none): there are no flows to observe";
        let answer = Answer::Error(ApiError::new(ErrorCode::NotFound, why));
        return write.write_all(encode_line(&answer).as_bytes()).await;
    };
    if let Err(why) = filter.check() {
        let answer = Answer::Error(ApiError::new(ErrorCode::BadRequest, why));
        return write.write_all(encode_line(&answer).as_bytes()).await;
    }
    let mut out = Vec::new();
    let line = |out: &mut Vec<u8>, flow: &Flow| {
        // A flow always encodes (plain data); the line ends either way.
        let _ = serde_json::to_writer(&mut *out, &FlowLine::Flow(flow));
        out.push(b'\n');
    };
    // Following from before the kept flows are read: none falls between; those recorded
    // meanwhile (numbered from `next` on) come in both, and are sent once.
    let live = follow.then(|| observer.follow());
    let (kept, next) = observer.last(last, |f| filter.matches(f));
    for flow in &kept {
        line(&mut out, flow);
    }
    let Some(mut live) = live else {
        out.extend_from_slice(encode_line(&Answer::Done).as_bytes());
        return write.write_all(&out).await;
    };
    write.write_all(&out).await?;
    loop {
        out.clear();
        let mut got = Some(live.recv().await);
        for _ in 0..FLOWS_PER_WRITE {
            match got.take() {
                Some(Ok((number, flow))) if number >= next && filter.matches(&flow) => line(&mut out, &flow),
                Some(Ok(_)) => {}
                Some(Err(broadcast::error::RecvError::Lagged(n))) => {
                    observer.lost(n);
                    let lost = LostEvents { source: "HUBBLE_RING_BUFFER".into(), num_events_lost: n };
                    out.extend_from_slice(encode_line(&Answer::Lost(lost)).as_bytes());
                }
                Some(Err(broadcast::error::RecvError::Closed)) => {
                    out.extend_from_slice(encode_line(&Answer::Done).as_bytes());
                    return write.write_all(&out).await;
                }
                None => break,
            }
            got = match live.try_recv() {
                Ok(flow) => Some(Ok(flow)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Some(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(_) => None,
            };
        }
        write.write_all(&out).await?;
    }
}

/// The control loop's answer to `request`.
async fn ask(asks: &mpsc::Sender<Asked>, request: Request) -> Answer {
    let (tx, rx) = oneshot::channel();
    let stopped = || Answer::Error(ApiError::new(ErrorCode::Internal, "skiff-agent is stopping"));
    if asks.send((request, tx)).await.is_err() {
        return stopped();
    }
    rx.await.unwrap_or_else(|_| stopped())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};

    use skiff_api::{Answer, Client, ClientError, Datapath, ErrorCode, Health, Source};

    use super::*;

    /// The CLI's client against the agent's server: a typed status, the service list, and an
    /// error answer (not a status) to a request the agent does not know.
    #[test]
    fn the_client_gets_typed_answers_and_errors() {
        let dir = std::env::temp_dir().join(format!("skiff-api-test-{}", std::process::id()));
        let socket = dir.join("skiff.sock");
        let source = Source::StateDir { path: "/demo".into() };
        let snapshot = Arc::new(RwLock::new(Snapshot::new(Status::new(source.clone(), Datapath::default()))));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (asks, mut asked) = mpsc::channel::<Asked>(1);
        let server = runtime.spawn({
            let (socket, snapshot) = (socket.clone(), snapshot.clone());
            async move { serve(&socket, snapshot, asks, Live::default()).await }
        });
        // The control loop's part: a state-changing request reaches it and its answer returns.
        runtime.spawn(async move {
            while let Some((request, answer)) = asked.recv().await {
                let _ =
                    answer.send(Answer::Error(ApiError::new(ErrorCode::NotReady, format!("{request:?}"))));
            }
        });
        let client = std::thread::spawn(move || {
            let client = Client::new(&socket);
            while !socket.exists() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let status = client.status().unwrap();
            assert_eq!((status.health, status.source), (Health::Ok, source));
            assert!(client.services().unwrap().is_empty());
            let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            raw.write_all(b"{\"request\": \"no-such-request\"}\n").unwrap();
            let mut line = String::new();
            BufReader::new(&raw).read_line(&mut line).unwrap();
            match serde_json::from_str::<Answer>(&line).unwrap() {
                Answer::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e}"),
                other => panic!("an error answer, not {other:?}"),
            }
            let no_table = client.flows().unwrap_err();
            assert!(
                matches!(&no_table, ClientError::Agent(e) if e.code == ErrorCode::NotFound && e.message.contains("no flow table")),
                "{no_table}"
            );
            let loop_answer = client.cni_status().unwrap_err();
            assert!(
                matches!(&loop_answer, ClientError::Agent(e) if e.code == ErrorCode::NotReady && e.message == "CniStatus"),
                "{loop_answer}"
            );
            let gone = Client::new(socket.with_file_name("none.sock")).status().unwrap_err();
            assert!(matches!(gone, ClientError::Connect { .. }), "{gone}");
        });
        runtime.block_on(async {
            while !client.is_finished() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        client.join().unwrap();
        server.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
