//! Prometheus metrics on `--prometheus-serve-addr` (off unless given, as Cilium's), with
//! `/healthz` beside them for probes. Names follow Cilium's (`cilium_drop_count_total` is
//! `skiff_drop_count_total`). Most are read at each scrape from what the agent counts anyway
//! (its status: the workers', the XDP program's and the observer's counters); what only the
//! control loop sees as it happens (apply latency, Kubernetes events) it records in
//! [`ControlMetrics`].

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Method, Request as HttpRequest, Response, StatusCode, body::Bytes, service::service_fn};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use skiff_api::{Health, Kind, Request, Status};
use skiff_common::DropReason;

use crate::api::Snapshot;

/// What the control loop records as it happens.
#[derive(Clone, Debug)]
pub struct ControlMetrics {
    /// From a change's arrival to its tables published.
    pub apply_seconds: Histogram,
    pub kubernetes_events: Family<KubeEvent, Counter>,
}

impl Default for ControlMetrics {
    fn default() -> ControlMetrics {
        ControlMetrics {
            // 100 µs to about 3 s.
            apply_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            kubernetes_events: Family::default(),
        }
    }
}

/// A Kubernetes event as Cilium's `kubernetes_events_total` labels it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeEvent {
    pub kind: String,
    /// `update`, `delete` or `resync`.
    pub action: String,
    /// `false`: rejected (the last good version kept).
    pub valid: String,
}

impl ControlMetrics {
    pub fn event(&self, kind: Kind, action: &str, valid: bool) {
        let labels =
            KubeEvent { kind: format!("{kind:?}"), action: action.to_owned(), valid: valid.to_string() };
        self.kubernetes_events.get_or_create(&labels).inc();
    }
}

/// The agent's metrics: its status read at each scrape, and the control loop's records.
pub fn registry(snapshot: Arc<RwLock<Snapshot>>, control: &ControlMetrics) -> Registry {
    let mut registry = Registry::with_prefix("skiff");
    registry.register(
        "apply_duration_seconds",
        "Time from a change of the objects to its tables published",
        control.apply_seconds.clone(),
    );
    registry.register(
        "kubernetes_events",
        "Kubernetes objects received, by kind, action and whether they were valid",
        control.kubernetes_events.clone(),
    );
    registry.register_collector(Box::new(StatusCollector { snapshot }));
    registry
}

/// Reads the agent's status at each scrape.
struct StatusCollector {
    snapshot: Arc<RwLock<Snapshot>>,
}

impl fmt::Debug for StatusCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric with its series.
fn encode<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    series: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(name: &'static str, help: &'static str) -> (&'static str, &'static str, MetricType) {
    (name, help, MetricType::Counter)
}

fn gauge(name: &'static str, help: &'static str) -> (&'static str, &'static str, MetricType) {
    (name, help, MetricType::Gauge)
}

/// Where a drop happens: at the output (no room to send, no route, too big) or on the way in.
fn direction(reason: DropReason) -> &'static str {
    match reason {
        DropReason::NoTxSpace | DropReason::Unroutable | DropReason::MtuExceeded => "EGRESS",
        _ => "INGRESS",
    }
}

impl Collector for StatusCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let status = {
            let snapshot = self.snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            match snapshot.answer(&Request::Status) {
                Some(skiff_api::Answer::Status(status)) => *status,
                _ => return Ok(()),
            }
        };
        let one = |n: u64| vec![(Vec::new(), ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)))];
        let n = |n: usize| n as u64;
        encode(&mut e, gauge("services", "Service frontends"), one(n(status.frontends)))?;
        encode(&mut e, gauge("backends", "Service backends"), one(n(status.backends)))?;
        encode(
            &mut e,
            gauge("identities", "Security identities of pod label sets"),
            one(n(status.identities)),
        )?;
        encode(&mut e, gauge("policies", "Network policies in effect"), one(n(status.policies)))?;
        encode(
            &mut e,
            gauge("prefilter_prefixes", "Source prefixes dropped at the NIC"),
            one(n(status.prefilter)),
        )?;
        let endpoints = self.snapshot.read().map_or(0, |s| s.endpoints.len());
        encode(&mut e, gauge("endpoints", "Pods this agent gave a network"), one(n(endpoints)))?;
        let healthy = u64::from(matches!(status.health, Health::Ok));
        encode(&mut e, gauge("healthy", "1 when the agent reports no problem"), one(healthy))?;
        workers(&mut e, &status)?;
        if let Some(flows) = &status.flows {
            encode(
                &mut e,
                counter("flows_observed", "Flows the observer recorded"),
                [(Vec::new(), ConstCounter::new(flows.seen))],
            )?;
            encode(
                &mut e,
                counter("flow_events_lost", "Flow events lost, by where"),
                [
                    (vec![("source", "follower".to_owned())], ConstCounter::new(flows.lost_to_followers)),
                    (
                        vec![("source", "datapath".to_owned())],
                        ConstCounter::new(status.workers.as_ref().map_or(0, |w| w.events_lost)),
                    ),
                ],
            )?;
        }
        Ok(())
    }
}

/// The datapath's counters.
fn workers(e: &mut DescriptorEncoder, status: &Status) -> fmt::Result {
    let Some(w) = &status.workers else { return Ok(()) };
    let drops = w
        .drops
        .iter()
        .map(|(&r, &n)| (r, "worker", n))
        .chain(w.xdp_drops.iter().map(|(&r, &n)| (r, "xdp", n)));
    encode(
        e,
        counter("drop_count", "Packets dropped, by reason, direction and where"),
        drops.map(|(reason, location, n)| {
            let labels = vec![
                ("reason", reason.name().to_owned()),
                ("direction", direction(reason).to_owned()),
                ("location", location.to_owned()),
            ];
            (labels, ConstCounter::new(n))
        }),
    )?;
    let nic = w.flow_paths.get(&skiff_common::conntrack::FlowPath::Forwarded).copied().unwrap_or(0);
    encode(
        e,
        counter("forward_count", "Packets forwarded, by a worker or at the NIC (the flow table)"),
        [
            (vec![("location", "worker".to_owned())], ConstCounter::new(w.forwarded)),
            (vec![("location", "nic".to_owned())], ConstCounter::new(nic)),
        ],
    )?;
    encode(
        e,
        counter("forward_bytes", "Bytes forwarded, by a worker or at the NIC (the flow table)"),
        [
            (vec![("location", "worker".to_owned())], ConstCounter::new(w.forwarded_bytes)),
            (vec![("location", "nic".to_owned())], ConstCounter::new(w.nic_forwarded_bytes)),
        ],
    )?;
    let actions = |pick: fn(&(u64, u64)) -> u64| {
        w.xdp_actions
            .iter()
            .map(move |(a, c)| (vec![("action", a.name().to_owned())], ConstCounter::new(pick(c))))
            .collect::<Vec<_>>()
    };
    encode(e, counter("xdp_verdicts", "Frames by the XDP program's verdict"), actions(|c| c.0))?;
    encode(e, counter("xdp_verdict_bytes", "Bytes by the XDP program's verdict"), actions(|c| c.1))?;
    let family = |(v4, v6): (u64, u64)| {
        [("ipv4", v4), ("ipv6", v6)].map(|(f, n)| {
            (vec![("family", f.to_owned())], ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)))
        })
    };
    encode(e, gauge("conntrack_entries", "Flows the workers track, by family"), family(w.conntrack))?;
    encode(
        e,
        gauge("nat_ports_in_use", "NAT ports held by masqueraded flows, by family"),
        family(w.nat_ports),
    )?;
    encode(
        e,
        counter("service_flows", "New flows translated to a service backend (DNAT)"),
        [(Vec::new(), ConstCounter::new(w.service_flows))],
    )?;
    encode(
        e,
        counter("flows_offloaded", "Established flows handed to the flow table at the NIC"),
        [(Vec::new(), ConstCounter::new(w.offloaded))],
    )?;
    encode(
        e,
        gauge("worker_busy_ratio", "Part of the last second each worker spent at work"),
        w.busy_permille
            .iter()
            .enumerate()
            .map(|(q, &b)| (vec![("worker", q.to_string())], ConstGauge::new(f64::from(b) / 1000.0))),
    )
}

/// Listens on `addr`: bound before the agent goes on, so that an address it cannot have stops
/// it with the reason instead of leaving it without metrics unsaid.
pub async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--prometheus-serve-addr: binding {addr}"))
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped. `/healthz`
/// answers 200 once the agent has published its first tables, 503 before.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    snapshot: Arc<RwLock<Snapshot>>,
) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let (registry, snapshot) = (registry.clone(), snapshot.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: HttpRequest<hyper::body::Incoming>| {
                let answer = answer(&request, &registry, &snapshot);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

fn answer<B>(
    request: &HttpRequest<B>,
    registry: &Registry,
    snapshot: &RwLock<Snapshot>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => {
                    reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
                }
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        "/healthz" => {
            let status = snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner).status.clone();
            if status.applies == 0 {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no tables published yet\n".into(),
                )
            } else {
                reply(StatusCode::OK, "text/plain", format!("{}\n", status.health))
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "/metrics or /healthz\n".into()),
    }
}
