//! A blocking client of the local API, for the CLI and scripts in Rust.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use crate::{
    Addressing, Answer, ApiError, Attachment, EndpointSpec, EndpointView, FlowView, IdentityView, IpamView,
    MapView, MetricSample, NodeView, PodRef, PolicyView, PrefilterView, Protocol, Request, ServiceView,
    Status, TraceEnd, TraceView, encode_line, observe,
};

/// Asks an agent on its socket, one connection per question.
pub struct Client {
    socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach skiff-agent at {socket} (is it running? are you root?): {source}")]
    Connect { socket: PathBuf, source: std::io::Error },
    #[error("talking to skiff-agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("skiff-agent closed the connection without answering")]
    Closed,
    #[error("skiff-agent's answer is not one this client reads (another version?): {0}")]
    Decode(#[from] serde_json::Error),
    #[error("skiff-agent answered something else than was asked")]
    Unexpected,
    /// The agent answered with an error.
    #[error("skiff-agent: {0}")]
    Agent(#[from] ApiError),
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Client {
        Client { socket: socket.as_ref().to_owned() }
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        match self.ask(&Request::Status)? {
            Answer::Status(status) => Ok(*status),
            other => Err(unexpected(other)),
        }
    }

    pub fn services(&self) -> Result<Vec<ServiceView>, ClientError> {
        match self.ask(&Request::ServiceList)? {
            Answer::ServiceList(services) => Ok(services),
            other => Err(unexpected(other)),
        }
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointView>, ClientError> {
        match self.ask(&Request::EndpointList)? {
            Answer::EndpointList(endpoints) => Ok(endpoints),
            other => Err(unexpected(other)),
        }
    }

    pub fn endpoint(&self, id: u32) -> Result<EndpointView, ClientError> {
        self.endpoint_answer(&Request::EndpointGet { id })
    }

    pub fn identities(&self) -> Result<Vec<IdentityView>, ClientError> {
        match self.ask(&Request::IdentityList)? {
            Answer::Identities(identities) => Ok(identities),
            other => Err(unexpected(other)),
        }
    }

    pub fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        match self.ask(&Request::NodeList)? {
            Answer::Nodes(nodes) => Ok(nodes),
            other => Err(unexpected(other)),
        }
    }

    pub fn policy(&self) -> Result<PolicyView, ClientError> {
        match self.ask(&Request::PolicyGet)? {
            Answer::Policy(policy) => Ok(*policy),
            other => Err(unexpected(other)),
        }
    }

    /// The verdict on a new flow from `src` to `dst` on `port`/`protocol`.
    pub fn trace(
        &self,
        src: TraceEnd,
        dst: TraceEnd,
        port: u16,
        protocol: Protocol,
    ) -> Result<TraceView, ClientError> {
        match self.ask(&Request::PolicyTrace { src, dst, port, protocol })? {
            Answer::Trace(trace) => Ok(*trace),
            other => Err(unexpected(other)),
        }
    }

    /// The prefilter after `request` (`PrefilterList`, `PrefilterUpdate`, `PrefilterDelete`).
    pub fn prefilter(&self, request: &Request) -> Result<PrefilterView, ClientError> {
        match self.ask(request)? {
            Answer::Prefilter(view) => Ok(view),
            other => Err(unexpected(other)),
        }
    }

    /// The tracked flows.
    pub fn flows(&self) -> Result<Vec<FlowView>, ClientError> {
        match self.ask(&Request::CtList)? {
            Answer::Flows(flows) => Ok(flows),
            other => Err(unexpected(other)),
        }
    }

    pub fn metrics(&self) -> Result<Vec<MetricSample>, ClientError> {
        match self.ask(&Request::MetricsList)? {
            Answer::Metrics(samples) => Ok(samples),
            other => Err(unexpected(other)),
        }
    }

    pub fn maps(&self) -> Result<Vec<MapView>, ClientError> {
        match self.ask(&Request::MapList)? {
            Answer::Maps(maps) => Ok(maps),
            other => Err(unexpected(other)),
        }
    }

    pub fn ipam(&self) -> Result<IpamView, ClientError> {
        match self.ask(&Request::IpamList)? {
            Answer::Ipam(ipam) => Ok(ipam),
            other => Err(unexpected(other)),
        }
    }

    /// Addresses for `attachment` (the ones it has, if it has some).
    pub fn allocate(&self, attachment: &Attachment, pod: Option<&PodRef>) -> Result<Addressing, ClientError> {
        let request = Request::AddressAllocate { attachment: attachment.clone(), pod: pod.cloned() };
        match self.ask(&request)? {
            Answer::Addressing(addressing) => Ok(addressing),
            other => Err(unexpected(other)),
        }
    }

    pub fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointView, ClientError> {
        self.endpoint_answer(&Request::EndpointCreate(spec.clone()))
    }

    pub fn check_endpoint(&self, attachment: &Attachment) -> Result<EndpointView, ClientError> {
        self.endpoint_answer(&Request::EndpointCheck { attachment: attachment.clone() })
    }

    pub fn delete_endpoint(&self, attachment: &Attachment) -> Result<(), ClientError> {
        self.done(&Request::EndpointDelete { attachment: attachment.clone() })
    }

    /// Removes the endpoints of attachments not in `valid`; the endpoints removed.
    pub fn gc(&self, valid: Vec<Attachment>) -> Result<Vec<EndpointView>, ClientError> {
        match self.ask(&Request::CniGc { valid })? {
            Answer::EndpointList(removed) => Ok(removed),
            other => Err(unexpected(other)),
        }
    }

    pub fn cni_status(&self) -> Result<(), ClientError> {
        self.done(&Request::CniStatus)
    }

    fn endpoint_answer(&self, request: &Request) -> Result<EndpointView, ClientError> {
        match self.ask(request)? {
            Answer::Endpoint(endpoint) => Ok(*endpoint),
            other => Err(unexpected(other)),
        }
    }

    fn done(&self, request: &Request) -> Result<(), ClientError> {
        match self.ask(request)? {
            Answer::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Observed flows, as they come: each flow (and each count of flows missed) goes to
    /// `each`, which returns `false` to stop; returns when the agent is done (or, following,
    /// when `each` stops).
    pub fn observe(
        &self,
        filter: observe::FlowFilter,
        last: Option<usize>,
        follow: bool,
        mut each: impl FnMut(Answer) -> bool,
    ) -> Result<(), ClientError> {
        let mut reader = BufReader::new(self.send(&Request::Observe { filter, last, follow })?);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(ClientError::Closed);
            }
            match serde_json::from_str(&line)? {
                Answer::Done => return Ok(()),
                Answer::Error(e) => return Err(ClientError::Agent(e)),
                answer @ (Answer::Flow(_) | Answer::Lost(_)) => {
                    if !each(answer) {
                        return Ok(());
                    }
                }
                _ => return Err(ClientError::Unexpected),
            }
        }
    }

    /// Sends one request and reads its answer.
    pub fn ask(&self, request: &Request) -> Result<Answer, ClientError> {
        let stream = self.send(request)?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        if line.is_empty() {
            return Err(ClientError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn send(&self, request: &Request) -> Result<UnixStream, ClientError> {
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|source| ClientError::Connect { socket: self.socket.clone(), source })?;
        stream.write_all(encode_line(request).as_bytes())?;
        Ok(stream)
    }
}

fn unexpected(answer: Answer) -> ClientError {
    match answer {
        Answer::Error(e) => ClientError::Agent(e),
        _ => ClientError::Unexpected,
    }
}
