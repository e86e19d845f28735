//! The agent's side of the local API ([`skiff_api`]): what it answers from, and the unix
//! socket it answers on (root only: 0600 in a 0700 folder).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result};
use skiff_api::{Answer, BackendView, Request, ServiceView, Status, WorkerCounters, encode_line};
use skiff_engine::tables::{Frontend, Service};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::compile::{BackendSpec, FrontendKey, FrontendSpec};

/// The workers' counters, read when asked.
pub type LiveStats = Arc<dyn Fn() -> WorkerCounters + Send + Sync>;

/// What the agent answers with; refreshed after every apply. The service views are built
/// when asked, not at every apply (10k services make 100k backend lines).
#[derive(Clone)]
pub struct Snapshot {
    pub status: Status,
    /// The applied frontends, shared with the applier.
    pub applied: Arc<BTreeMap<FrontendKey, FrontendSpec>>,
    /// The published frontends (their backends carry the ids).
    pub services: hashbrown::HashMap<Frontend, Service>,
    pub live: Option<LiveStats>,
}

impl Snapshot {
    pub fn new(status: Status) -> Snapshot {
        Snapshot { status, applied: Arc::default(), services: hashbrown::HashMap::new(), live: None }
    }

    /// The answer to `request`.
    pub fn answer(&self, request: &Request) -> Answer {
        match request {
            Request::Status => {
                let workers = self.live.as_ref().map(|live| live());
                Answer::Status(Box::new(Status { workers, ..self.status.clone() }))
            }
            Request::ServiceList => Answer::ServiceList(self.service_views()),
        }
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

/// Serves `snapshot` on `path` until the task is dropped.
pub async fn serve(path: &Path, snapshot: Arc<RwLock<Snapshot>>) -> Result<()> {
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
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match Request::decode(&line) {
                    Ok(request) => {
                        snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner).answer(&request)
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
        let server = runtime.spawn({
            let (socket, snapshot) = (socket.clone(), snapshot.clone());
            async move { serve(&socket, snapshot).await }
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
            raw.write_all(b"{\"request\": \"ct-list\"}\n").unwrap();
            let mut line = String::new();
            BufReader::new(&raw).read_line(&mut line).unwrap();
            match serde_json::from_str::<Answer>(&line).unwrap() {
                Answer::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e}"),
                other => panic!("an error answer, not {other:?}"),
            }
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
