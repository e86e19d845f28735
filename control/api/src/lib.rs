//! skiff-agent's local API: one JSON [`Request`] per line on a root-only unix socket, one JSON
//! [`Answer`] per line back. The types are shared by the agent, the `skiff` CLI and scripts;
//! the JSON stays readable (enums by name, addresses as text). [`Client`] asks, blocking.

mod client;
mod endpoint;
mod flow;
mod object;
pub mod observe;
mod policy;
mod service;
mod status;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError};
pub use endpoint::{
    Addressing, AttachMode, Attachment, EndpointSpec, EndpointState, EndpointView, IdentityView, IpamView,
    PodRef, PoolView,
};
pub use flow::FlowView;
pub use object::{FieldError, Kind, ObjectKey, Rejection};
pub use policy::{PolicyView, PrefilterView, RuleView, TraceEnd, TraceView, VerdictView};
pub use service::{BackendView, Protocol, ServicePort, ServiceView};
pub use status::{
    ApplyReport, Datapath, FlowCounters, Health, Io, LastApply, NodeView, Problem, SocketLb, Source, Status,
    Tunnel, WorkerCounters,
};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/skiff/skiff.sock";

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// The agent's [`Status`].
    Status,
    /// Every service frontend with its backends.
    ServiceList,
    /// Every endpoint.
    EndpointList,
    /// One endpoint, by its id.
    EndpointGet { id: u32 },
    /// The address pools and who holds each address.
    IpamList,
    /// The security identities: the reserved ones, and one per distinct pod label set.
    IdentityList,
    /// The cluster's nodes: addresses, pod CIDRs, tunnel endpoints, health.
    NodeList,
    /// The compiled policy rules.
    PolicyGet,
    /// The verdict on a new flow from `src` to `dst` on `port`/`protocol`, from the tables.
    PolicyTrace { src: TraceEnd, dst: TraceEnd, port: u16, protocol: Protocol },
    /// The tracked flows, from the XDP program's flow table.
    CtList,
    /// The last `last` observed flows that pass `filter` (every one the agent keeps when
    /// `None`), each answered as an [`Answer::Flow`], then with `follow` the new ones as they
    /// come, else [`Answer::Done`]. Flows a consumer missed come as [`Answer::Lost`].
    Observe {
        #[serde(default)]
        filter: observe::FlowFilter,
        #[serde(default)]
        last: Option<usize>,
        #[serde(default)]
        follow: bool,
    },
    /// The agent's metrics, as Prometheus would scrape them.
    MetricsList,
    /// The pinned BPF maps: type, entries, capacity.
    MapList,
    /// The prefilter's prefixes.
    PrefilterList,
    /// Drops these sources on arrival from now on (and after a restart).
    PrefilterUpdate { cidrs: Vec<ipnet::IpNet> },
    /// No longer drops these sources.
    PrefilterDelete { cidrs: Vec<ipnet::IpNet> },
    /// `skiff-cni` ADD, first: addresses for an attachment (the ones it has, if it has some).
    AddressAllocate { attachment: Attachment, pod: Option<PodRef> },
    /// `skiff-cni` ADD, then: the interfaces exist; serve them.
    EndpointCreate(EndpointSpec),
    /// `skiff-cni` DEL: stop serving the attachment and release its addresses; an
    /// attachment the agent does not know is already deleted.
    EndpointDelete { attachment: Attachment },
    /// `skiff-cni` CHECK: the endpoint of an attachment.
    EndpointCheck { attachment: Attachment },
    /// `skiff-cni` GC: every attachment not in `valid` goes, with its addresses; the answer
    /// lists the endpoints removed (their veths are the plugin's to delete).
    CniGc { valid: Vec<Attachment> },
    /// `skiff-cni` STATUS: whether an ADD can be served now.
    CniStatus,
}

/// What the agent answers: the reply to the request, or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    Status(Box<Status>),
    ServiceList(Vec<ServiceView>),
    EndpointList(Vec<EndpointView>),
    Endpoint(Box<EndpointView>),
    Ipam(IpamView),
    Identities(Vec<IdentityView>),
    Nodes(Vec<NodeView>),
    Policy(Box<PolicyView>),
    Trace(Box<TraceView>),
    Prefilter(PrefilterView),
    Flows(Vec<FlowView>),
    Flow(Box<observe::Flow>),
    Metrics(Vec<MetricSample>),
    Maps(Vec<MapView>),
    Lost(observe::LostEvents),
    Addressing(Addressing),
    /// Done, nothing to report.
    Done,
    Error(ApiError),
}

/// One series of a metric and its value now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub name: String,
    /// `reason="policy-denied",location="worker"`, or empty.
    pub labels: String,
    pub value: f64,
}

/// A pinned BPF map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapView {
    pub name: String,
    /// `Hash`, `LpmTrie`, `PerCpuArray`, …
    pub kind: String,
    /// Entries in use; `None` for arrays, whose every slot exists.
    pub entries: Option<u64>,
    pub capacity: u32,
}

/// A request the agent could not answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Not a request this agent knows (an older agent, or a malformed line).
    BadRequest,
    /// The agent failed while answering.
    Internal,
    /// What the request names does not exist.
    NotFound,
    /// No address is left in a pool.
    Exhausted,
    /// The agent cannot serve it yet (its Node's pod CIDRs are not known); try again later.
    NotReady,
    /// It contradicts what exists (an attachment served on other interfaces).
    Conflict,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::BadRequest => "bad request",
            ErrorCode::Internal => "internal error",
            ErrorCode::NotFound => "not found",
            ErrorCode::Exhausted => "exhausted",
            ErrorCode::NotReady => "not ready",
            ErrorCode::Conflict => "conflict",
        })
    }
}

impl Request {
    /// Reads a request line; a line that is not one gets an error answer.
    pub fn decode(line: &str) -> Result<Request, ApiError> {
        serde_json::from_str(line.trim()).map_err(|e| ApiError {
            code: ErrorCode::BadRequest,
            message: format!(
                "{e} (a request is {{\"request\": \"status\"}}, {{\"request\": \"endpoint-list\"}}, …)"
            ),
        })
    }
}

/// One line of JSON, newline included.
pub fn encode_line<T: Serialize>(message: &T) -> String {
    let mut line = serde_json::to_string(message).unwrap_or_else(|e| {
        let error = ApiError { code: ErrorCode::Internal, message: format!("encoding the answer: {e}") };
        serde_json::to_string(&Answer::Error(error)).unwrap_or_default()
    });
    line.push('\n');
    line
}
