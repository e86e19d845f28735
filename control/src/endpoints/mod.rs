//! Endpoints: the pods `skiff-cni` gives a network. The plugin asks for addresses
//! ([`ipam`]), makes the veth pair, then registers the endpoint; the agent serves its host-side
//! interface (the [`Sink`] attaches the datapath to it while running), gives it its Pod's
//! labels and identity, and forgets it on DEL. Endpoints are written to disk, so a restarted
//! agent serves them again (their veths are still there).

pub mod cni_conf;
pub mod ipam;

use std::{
    collections::BTreeMap,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use skiff_api::{
    Addressing, Answer, ApiError, AttachMode, Attachment, EndpointSpec, EndpointState, EndpointView,
    ErrorCode, PodRef, Request,
};
use skiff_common::identity::Identity;

use self::ipam::{Ipam, IpamError, IpamMode};
use crate::{controller::Sink, labels::Labels};

/// What the agent's endpoints need to know.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Where endpoints, allocations and identities are kept across restarts.
    pub dir: PathBuf,
    pub ipam: IpamMode,
    /// The pods' MTU.
    pub mtu: u32,
    /// Queues on each pod's veth: one per worker.
    pub queues: u16,
    /// This node's name (errors name it).
    pub node: String,
}

/// An endpoint as the agent keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: u32,
    pub spec: EndpointSpec,
    /// How the datapath serves it (not saved: attached anew at every start).
    #[serde(skip)]
    pub attach: Option<AttachMode>,
    /// Its Pod's labels, once the Pod is known (not saved: the Pod is the source).
    #[serde(skip)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip)]
    pub identity: Identity,
}

/// This node's endpoints, their addresses and identities, saved in `config.dir`.
pub struct Endpoints {
    config: EndpointConfig,
    path: PathBuf,
    by_attachment: BTreeMap<Attachment, Endpoint>,
    next_id: u32,
    ipam: Ipam,
    /// The gateways put on the node for its pods (done when the first pod comes, not before:
    /// an agent that serves no pods leaves the node as it is).
    prepared: Vec<IpAddr>,
}

impl Endpoints {
    /// The endpoints, allocations and identities saved in `config.dir` (none the first time).
    pub fn open(config: EndpointConfig) -> Result<Endpoints> {
        let dir = &config.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("endpoints.json");
        let saved: Vec<Endpoint> = read_json(&path)?.unwrap_or_default();
        let next_id = saved.iter().map(|e| e.id + 1).max().unwrap_or(1);
        Ok(Endpoints {
            ipam: Ipam::open(&dir.join("ipam.json"), config.ipam.clone())?,
            path,
            by_attachment: saved.into_iter().map(|e| (e.spec.attachment.clone(), e)).collect(),
            next_id,
            config,
            prepared: Vec::new(),
        })
    }

    /// Serves the saved endpoints again (an agent restart): each whose veth still exists is
    /// attached; one whose veth is gone (its pod went while the agent was away) is removed
    /// with its addresses.
    pub fn restore(&mut self, sink: &mut dyn Sink) -> Result<()> {
        if !self.by_attachment.is_empty() {
            self.prepare_node(sink)?;
        }
        let mut gone = Vec::new();
        for endpoint in self.by_attachment.values_mut() {
            let ifname = &endpoint.spec.host_ifname;
            if !interface_exists(ifname) {
                gone.push(endpoint.spec.attachment.clone());
                continue;
            }
            match sink.attach(ifname, &endpoint.spec.addresses) {
                Ok(mode) => endpoint.attach = Some(mode),
                Err(e) => tracing::error!("endpoint {}: attaching to {ifname}: {e:#}", endpoint.id),
            }
        }
        for attachment in gone {
            tracing::info!("endpoint {attachment}: its veth is gone; removed with its addresses");
            self.by_attachment.remove(&attachment);
            self.ipam.release(&attachment)?;
        }
        self.save()
    }

    /// The Node's pod CIDRs (kubernetes IPAM).
    pub fn set_node_cidrs(&mut self, cidrs: &[IpNet], sink: &mut dyn Sink) -> Result<()> {
        self.ipam.set_node_cidrs(cidrs);
        if !self.by_attachment.is_empty() {
            self.prepare_node(sink)?;
        }
        Ok(())
    }

    /// Has `sink` ready the node for its pods (forwarding, the gateways), once per set of
    /// gateways.
    fn prepare_node(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let gateways = self.ipam.gateways();
        if gateways != self.prepared {
            sink.prepare_node(&gateways)?;
            self.prepared = gateways;
        }
        Ok(())
    }

    /// Where endpoints, allocations and identities are kept.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Gives each endpoint its Pod's labels and their identity (`of_pod`), or `init` while its
    /// Pod is not known.
    pub fn label(
        &mut self,
        mut of_pod: impl FnMut(&PodRef) -> Result<Option<(Labels, Identity)>>,
    ) -> Result<()> {
        for endpoint in self.by_attachment.values_mut() {
            let found = match &endpoint.spec.pod {
                Some(pod) => of_pod(pod)?,
                None => None,
            };
            (endpoint.labels, endpoint.identity) = match found {
                Some((labels, identity)) => (Some(labels), identity),
                None => (None, Identity::INIT),
            };
        }
        Ok(())
    }

    /// The endpoints by id, as `skiff endpoint list` shows them.
    pub fn views(&self) -> Vec<EndpointView> {
        let mut views: Vec<EndpointView> = self.by_attachment.values().map(view).collect();
        views.sort_by_key(|v| v.id);
        views
    }

    /// The pods' gateways (addresses of the node).
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.ipam.gateways()
    }

    /// Whether ADD can be served: the node has a pod CIDR.
    pub fn ready(&self) -> bool {
        !self.ipam.gateways().is_empty()
    }

    pub fn ipam_view(&self) -> skiff_api::IpamView {
        self.ipam.view()
    }

    /// Answers a request of `skiff-cni`, attaching and detaching through `sink`.
    pub fn answer(&mut self, request: &Request, sink: &mut dyn Sink) -> Answer {
        let answer = match request {
            Request::AddressAllocate { attachment, .. } => {
                self.allocate(attachment, sink).map(Answer::Addressing)
            }
            Request::EndpointCreate(spec) => self.create(spec, sink).map(|e| Answer::Endpoint(Box::new(e))),
            Request::EndpointDelete { attachment } => self.delete(attachment, sink).map(|_| Answer::Done),
            Request::EndpointCheck { attachment } => match self.by_attachment.get(attachment) {
                Some(e) => Ok(Answer::Endpoint(Box::new(view(e)))),
                None => Err(ApiError::new(ErrorCode::NotFound, format!("no endpoint for {attachment}"))),
            },
            Request::CniGc { valid } => self.gc(valid, sink).map(Answer::EndpointList),
            Request::CniStatus if !self.ready() => Err(ApiError::new(
                ErrorCode::NotReady,
                format!("no pod CIDR yet for the node {}", self.config.node),
            )),
            Request::CniStatus => Ok(Answer::Done),
            other => {
                Err(ApiError::new(ErrorCode::BadRequest, format!("{other:?} is not an endpoint request")))
            }
        };
        answer.unwrap_or_else(Answer::Error)
    }

    fn allocate(&mut self, attachment: &Attachment, sink: &mut dyn Sink) -> Result<Addressing, ApiError> {
        let addresses = self.ipam.allocate(attachment, &self.config.node).map_err(|e| {
            let code = match e {
                IpamError::NoPool(_) => ErrorCode::NotReady,
                IpamError::Exhausted(..) => ErrorCode::Exhausted,
                IpamError::Persist(..) => ErrorCode::Internal,
            };
            ApiError::new(code, e.to_string())
        })?;
        if let Err(e) = self.prepare_node(sink) {
            let _ = self.ipam.release(attachment);
            return Err(ApiError::new(ErrorCode::Internal, format!("readying the node for pods: {e:#}")));
        }
        Ok(Addressing {
            addresses,
            gateways: self.ipam.gateways(),
            mtu: self.config.mtu,
            queues: self.config.queues,
        })
    }

    fn create(&mut self, spec: &EndpointSpec, sink: &mut dyn Sink) -> Result<EndpointView, ApiError> {
        let attachment = &spec.attachment;
        if let Some(existing) = self.by_attachment.get(attachment) {
            if existing.spec == *spec {
                return Ok(view(existing));
            }
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{attachment} is already endpoint {} on {}", existing.id, existing.spec.host_ifname),
            ));
        }
        let allocated = self.ipam.addresses_of(attachment);
        if allocated != spec.addresses {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("{attachment} was given {allocated:?}, not {:?}: allocate first", spec.addresses),
            ));
        }
        let internal = |e: anyhow::Error| ApiError::new(ErrorCode::Internal, format!("{e:#}"));
        let mode = sink.attach(&spec.host_ifname, &spec.addresses).map_err(internal)?;
        let id = self.next_id;
        let endpoint =
            Endpoint { id, spec: spec.clone(), attach: Some(mode), labels: None, identity: Identity::INIT };
        self.by_attachment.insert(attachment.clone(), endpoint);
        if let Err(e) = self.save() {
            self.by_attachment.remove(attachment);
            let _ = sink.detach(&spec.host_ifname);
            return Err(internal(e));
        }
        self.next_id += 1;
        tracing::info!("endpoint {id}: {attachment} on {} ({mode}), {:?}", spec.host_ifname, spec.addresses);
        Ok(view(&self.by_attachment[attachment]))
    }

    /// Removes the endpoint of `attachment` (if there is one) and releases its addresses;
    /// the endpoint it was.
    fn delete(&mut self, attachment: &Attachment, sink: &mut dyn Sink) -> Result<Option<Endpoint>, ApiError> {
        let internal = |e: anyhow::Error| ApiError::new(ErrorCode::Internal, format!("{e:#}"));
        let removed = self.by_attachment.remove(attachment);
        if let Some(endpoint) = &removed {
            if let Err(e) = sink.detach(&endpoint.spec.host_ifname) {
                // The endpoint stays, so that a retried DEL detaches it.
                self.by_attachment.insert(attachment.clone(), endpoint.clone());
                return Err(internal(e));
            }
            self.save().map_err(internal)?;
            tracing::info!("endpoint {}: {attachment} removed", endpoint.id);
        }
        self.ipam.release(attachment).map_err(|e| internal(e.into()))?;
        Ok(removed)
    }

    /// Removes every endpoint and allocation whose attachment is not in `valid`.
    fn gc(&mut self, valid: &[Attachment], sink: &mut dyn Sink) -> Result<Vec<EndpointView>, ApiError> {
        let stale: Vec<Attachment> =
            self.by_attachment.keys().filter(|a| !valid.contains(a)).cloned().collect();
        let mut removed = Vec::new();
        for attachment in stale {
            removed.extend(self.delete(&attachment, sink)?.as_ref().map(view));
        }
        let released = self
            .ipam
            .retain(|a| valid.contains(a))
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        tracing::info!("CNI GC: {} endpoints and {released} other allocations removed", removed.len());
        Ok(removed)
    }

    fn save(&self) -> Result<()> {
        let all: Vec<&Endpoint> = self.by_attachment.values().collect();
        write_atomically(&self.path, &serde_json::to_vec_pretty(&all)?)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

fn view(endpoint: &Endpoint) -> EndpointView {
    let state = match (&endpoint.attach, &endpoint.labels) {
        (None, _) => EndpointState::NotAttached,
        (Some(_), None) => EndpointState::WaitingForLabels,
        (Some(_), Some(_)) => EndpointState::Ready,
    };
    EndpointView {
        id: endpoint.id,
        attachment: endpoint.spec.attachment.clone(),
        pod: endpoint.spec.pod.clone(),
        labels: endpoint.labels.clone().unwrap_or_default(),
        identity: endpoint.identity.0,
        addresses: endpoint.spec.addresses.clone(),
        netns: endpoint.spec.netns.clone(),
        host_ifname: endpoint.spec.host_ifname.clone(),
        attach: endpoint.attach.unwrap_or(AttachMode::None),
        state,
        policy: (false, false),
    }
}

fn interface_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else { return false };
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// The JSON in `path`, or `None` if there is no such file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{}: not what skiff-agent wrote", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces `path` with `bytes` all at once: written beside it, synced, renamed over it, and
/// the folder synced, so a crash leaves the old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("new");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use skiff_api::{Addressing, Answer, Attachment, EndpointSpec, ErrorCode, Request};

    use super::*;
    use crate::controller::Recorder;

    fn config(name: &str) -> EndpointConfig {
        let dir = std::env::temp_dir().join(format!("skiff-endpoints-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        EndpointConfig {
            dir,
            ipam: IpamMode::ClusterPool(vec![
                "198.18.128.0/24".parse().unwrap(),
                "fd00:0:0:128::/64".parse().unwrap(),
            ]),
            mtu: 1500,
            queues: 1,
            node: "node1".into(),
        }
    }

    fn attachment(id: &str) -> Attachment {
        Attachment { container_id: id.into(), ifname: "eth0".into() }
    }

    fn allocate(e: &mut Endpoints, sink: &mut Recorder, id: &str) -> Addressing {
        match e.answer(&Request::AddressAllocate { attachment: attachment(id), pod: None }, sink) {
            Answer::Addressing(a) => a,
            other => panic!("addresses, not {other:?}"),
        }
    }

    fn spec(id: &str, addressing: &Addressing) -> EndpointSpec {
        EndpointSpec {
            attachment: attachment(id),
            pod: None,
            netns: "/run/netns/x".into(),
            host_ifname: format!("lxc-{id}"),
            addresses: addressing.addresses.iter().map(ipnet::IpNet::addr).collect(),
        }
    }

    fn code(answer: Answer) -> ErrorCode {
        match answer {
            Answer::Error(e) => e.code,
            other => panic!("an error, not {other:?}"),
        }
    }

    #[test]
    fn an_endpoint_is_allocated_created_listed_and_deleted() {
        let (config, mut sink) = (config("lifecycle"), Recorder::default());
        let mut e = Endpoints::open(config.clone()).unwrap();
        let addressing = allocate(&mut e, &mut sink, "a");
        assert_eq!(
            addressing.gateways,
            ["198.18.128.1".parse::<IpAddr>().unwrap(), "fd00:0:0:128::1".parse().unwrap()]
        );
        assert_eq!((addressing.mtu, addressing.queues), (1500, 1));
        let not_allocated = EndpointSpec { attachment: attachment("b"), ..spec("a", &addressing) };
        assert_eq!(code(e.answer(&Request::EndpointCreate(not_allocated), &mut sink)), ErrorCode::BadRequest);
        let created = e.answer(&Request::EndpointCreate(spec("a", &addressing)), &mut sink);
        let Answer::Endpoint(view) = created else { panic!("an endpoint: {created:?}") };
        assert_eq!((view.id, view.identity, view.state), (1, 5, EndpointState::WaitingForLabels));
        let again = e.answer(&Request::EndpointCreate(spec("a", &addressing)), &mut sink);
        assert!(matches!(again, Answer::Endpoint(v) if v.id == 1), "the same ADD again is the same endpoint");
        let other = EndpointSpec { host_ifname: "lxc-other".into(), ..spec("a", &addressing) };
        assert_eq!(code(e.answer(&Request::EndpointCreate(other), &mut sink)), ErrorCode::Conflict);

        e.label(|_| Ok(Some(([("app".to_owned(), "web".to_owned())].into(), Identity(300))))).unwrap();
        // No Pod named: no labels, the init identity.
        assert_eq!(e.views()[0].identity, Identity::INIT.0);

        let reopened = Endpoints::open(config.clone()).unwrap();
        assert_eq!(reopened.views().len(), 1, "saved");
        assert!(matches!(
            e.answer(&Request::EndpointDelete { attachment: attachment("a") }, &mut sink),
            Answer::Done
        ));
        assert!(matches!(
            e.answer(&Request::EndpointDelete { attachment: attachment("a") }, &mut sink),
            Answer::Done
        ));
        assert_eq!(
            code(e.answer(&Request::EndpointCheck { attachment: attachment("a") }, &mut sink)),
            ErrorCode::NotFound
        );
        assert!(e.ipam_view().pools.iter().all(|p| p.allocated.is_empty()), "addresses released");
        std::fs::remove_dir_all(config.dir).unwrap();
    }

    #[test]
    fn gc_and_restore_drop_what_is_gone() {
        let (config, mut sink) = (config("gc"), Recorder::default());
        let mut e = Endpoints::open(config.clone()).unwrap();
        for id in ["a", "b", "c"] {
            let addressing = allocate(&mut e, &mut sink, id);
            e.answer(&Request::EndpointCreate(spec(id, &addressing)), &mut sink);
        }
        allocate(&mut e, &mut sink, "d");
        let answer = e.answer(&Request::CniGc { valid: vec![attachment("a"), attachment("b")] }, &mut sink);
        let Answer::EndpointList(removed) = answer else { panic!("the removed endpoints: {answer:?}") };
        assert_eq!(removed.iter().map(|v| v.attachment.container_id.as_str()).collect::<Vec<_>>(), ["c"]);
        assert_eq!(e.ipam_view().pools[0].allocated.len(), 2, "d's allocation went too");
        // After a restart, endpoints whose veths are gone (these never existed) are removed.
        let mut restarted = Endpoints::open(config.clone()).unwrap();
        restarted.restore(&mut sink).unwrap();
        assert!(restarted.views().is_empty());
        assert!(restarted.ipam_view().pools.iter().all(|p| p.allocated.is_empty()));
        std::fs::remove_dir_all(config.dir).unwrap();
    }
}
