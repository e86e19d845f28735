//! The agent's flow observer, Hubble's part: the workers' records ([`skiff_engine::event`])
//! and the XDP program's sampled decisions ([`skiff_xdp::EventRing`]) become flows
//! ([`skiff_api::observe::Flow`]) named with what the control plane knows (pods, namespaces,
//! labels, identities, services, policy rules, the node), kept in a bounded ring for
//! `skiff observe --last`, and streamed to followers. A thread of its own collects them: the
//! datapath only ever hands records to bounded queues, so observing never slows or stops
//! it; a follower that falls behind misses flows, counted and told.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use skiff_api::{
    FlowCounters, RuleView, Tunnel,
    observe::{
        Counts, DecidedBy, Endpoint, EventKind, EventType, Flow, FlowType, Ip, L4, Policy, Service,
        TrafficDirection, Translation, Verdict,
    },
};
use skiff_common::{
    DropReason,
    event::{Decision, XdpEvent},
    identity::Identity,
    proto::ip,
};
use skiff_engine::{
    event::{self, Event},
    flow::{Tuple, unmap},
    policy as engine_policy,
};
use skiff_wire::layers;
use skiff_xdp::EventRing;
use tokio::sync::broadcast;

/// Flows kept for `skiff observe --last` unless told otherwise: Hubble's default
/// (`hubble-event-buffer-capacity`).
pub const DEFAULT_CAPACITY: usize = 4095;

/// How long the collector waits for a worker's record before it looks at the XDP ring.
const POLL: Duration = Duration::from_millis(20);

/// What the control plane knows to name a flow's ends, refreshed after every apply.
#[derive(Default)]
pub struct Context {
    pub node: String,
    /// Pods by address: (namespace, name).
    pub pods: HashMap<IpAddr, (String, String)>,
    /// The published policy: every address's identity (its ipcache).
    pub policy: Arc<engine_policy::Policy>,
    /// Each identity's labels (`k8s:app=web`, `reserved:world`).
    pub labels: HashMap<u32, Vec<String>>,
    /// Service frontends by (address, port, protocol number).
    pub services: HashMap<(IpAddr, u16, u8), Service>,
    /// Policy rules by number.
    pub rules: HashMap<u32, RuleView>,
    /// In tunnel routing, the other nodes' pod CIDRs: a flow to one is encapsulated, a flow
    /// from one was decapsulated.
    pub tunnels: Vec<Tunnel>,
}

/// A flow and its number, in the order flows were recorded.
pub type Numbered = (u64, Arc<Flow>);

/// The observer: the ring of the last flows, their followers, and its counts.
pub struct Observer {
    capacity: usize,
    /// The last flows, each with its number (the count of flows recorded before it).
    ring: Mutex<VecDeque<Numbered>>,
    live: broadcast::Sender<Numbered>,
    context: RwLock<Arc<Context>>,
    /// Flows recorded since the agent started.
    pub seen: AtomicU64,
    /// Flows followers missed by falling behind.
    pub lost_to_followers: AtomicU64,
}

impl Observer {
    pub fn new(capacity: usize) -> Arc<Observer> {
        let capacity = capacity.max(1);
        Arc::new(Observer {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            live: broadcast::channel(capacity).0,
            context: RwLock::default(),
            seen: AtomicU64::new(0),
            lost_to_followers: AtomicU64::new(0),
        })
    }

    pub fn set_context(&self, context: Context) {
        *self.context.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(context);
    }

    /// Collects on a thread of its own until the workers' queue closes (the datapath
    /// stopped).
    pub fn start(self: &Arc<Self>, records: Receiver<Event>, mut xdp: Option<EventRing>) {
        let observer = self.clone();
        std::thread::spawn(move || {
            let clock = Clock::now();
            loop {
                let first = match records.recv_timeout(POLL) {
                    Ok(first) => Some(first),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let context = observer.context();
                for e in first.into_iter().chain(records.try_iter()) {
                    observer.record(worker_flow(&e, &context, &clock));
                }
                for e in xdp.as_mut().map(EventRing::drain).unwrap_or_default() {
                    if let Some(flow) = xdp_flow(&e, &context, &clock) {
                        observer.record(flow);
                    }
                }
            }
        });
    }

    fn context(&self) -> Arc<Context> {
        self.context.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn record(&self, flow: Flow) {
        let flow = Arc::new(flow);
        let number = {
            let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            let number = self.seen.fetch_add(1, Ordering::Relaxed);
            ring.push_back((number, flow.clone()));
            number
        };
        // No follower: nothing to send to.
        let _ = self.live.send((number, flow));
    }

    /// The last `n` kept flows that `keep` keeps (every one kept: `None`), oldest first, and
    /// the number the next flow recorded gets.
    pub fn last(&self, n: Option<usize>, keep: impl Fn(&Flow) -> bool) -> (Vec<Arc<Flow>>, u64) {
        let ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut found: Vec<Arc<Flow>> = ring
            .iter()
            .rev()
            .filter(|(_, f)| keep(f))
            .take(n.unwrap_or(usize::MAX))
            .map(|(_, f)| f.clone())
            .collect();
        found.reverse();
        (found, self.seen.load(Ordering::Relaxed))
    }

    /// New flows from now on; a receiver that falls `capacity` flows behind misses some
    /// (told by `RecvError::Lagged`, which the caller counts with [`Observer::lost`]).
    pub fn follow(&self) -> broadcast::Receiver<Numbered> {
        self.live.subscribe()
    }

    pub fn lost(&self, n: u64) {
        self.lost_to_followers.fetch_add(n, Ordering::Relaxed);
    }

    pub fn counters(&self) -> FlowCounters {
        FlowCounters {
            seen: self.seen.load(Ordering::Relaxed),
            kept: self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len(),
            capacity: self.capacity,
            lost_to_followers: self.lost_to_followers.load(Ordering::Relaxed),
            followers: self.live.receiver_count(),
        }
    }
}

/// CLOCK_MONOTONIC (the datapath's stamps) to wall-clock time.
struct Clock {
    offset_ns: i128,
}

impl Clock {
    fn now() -> Clock {
        let read = |id| {
            let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime writes one timespec we own.
            unsafe { libc::clock_gettime(id, &raw mut t) };
            i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
        };
        Clock { offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC) }
    }

    fn wall(&self, monotonic_ns: u64) -> jiff::Timestamp {
        jiff::Timestamp::from_nanosecond(i128::from(monotonic_ns) + self.offset_ns).unwrap_or_default()
    }
}

fn addr(a: [u8; 16]) -> IpAddr {
    let v4 = Ipv6Addr::from(a).to_ipv4_mapped().is_some();
    unmap(a, !v4)
}

fn l4(t: &Tuple) -> L4 {
    let (source_port, destination_port) = (t.src_port, t.dst_port);
    match t.protocol {
        ip::TCP => L4::Tcp { source_port, destination_port },
        ip::UDP => L4::Udp { source_port, destination_port },
        // The engine keys ICMP by its echo identifier (in one of the ports), not its type.
        ip::ICMP => L4::Icmpv4 { identifier: source_port.max(destination_port) },
        ip::ICMPV6 => L4::Icmpv6 { identifier: source_port.max(destination_port) },
        protocol => L4::Other { protocol },
    }
}

/// `POLICY_DENIED` for `policy-denied`: Hubble's style of drop reason.
fn reason_desc(reason: DropReason) -> String {
    reason.name().replace('-', "_").to_uppercase()
}

impl Context {
    fn end(&self, a: IpAddr, identity: Identity) -> Endpoint {
        let identity = if identity == Identity::UNKNOWN { self.policy.ipcache.lookup(a) } else { identity };
        let (namespace, pod_name) = self.pods.get(&a).cloned().unwrap_or_default();
        Endpoint {
            identity: identity.0,
            namespace,
            labels: self.labels.get(&identity.0).cloned().unwrap_or_default(),
            pod_name,
        }
    }

    /// The other node whose pods `a` is one of (tunnel routing).
    fn remote(&self, a: IpAddr) -> Option<&Tunnel> {
        self.tunnels.iter().find(|t| t.pod_cidr.contains(&a))
    }

    fn service(&self, a: IpAddr, port: u16, protocol: u8) -> Option<Service> {
        self.services.get(&(a, port, protocol)).cloned()
    }

    /// A flow's base: its addresses and ends as the packet `t` arrived.
    fn flow(&self, t: &Tuple, clock: &Clock, at_ns: u64, src: Identity, dst: Identity) -> Flow {
        let (source, destination) = (addr(t.src), addr(t.dst));
        let direction = match (self.pods.contains_key(&source), self.pods.contains_key(&destination)) {
            (_, true) => TrafficDirection::Ingress,
            (true, false) => TrafficDirection::Egress,
            (false, false) => TrafficDirection::TrafficDirectionUnknown,
        };
        Flow {
            time: clock.wall(at_ns),
            verdict: Verdict::Forwarded,
            drop_reason_desc: None,
            ip: Ip { source, destination, ip_version: if source.is_ipv4() { "IPv4" } else { "IPv6" }.into() },
            l4: l4(t),
            source: self.end(source, src),
            destination: self.end(destination, dst),
            flow_type: FlowType::L3L4,
            node_name: self.node.clone(),
            event_type: EventType { kind: EventKind::Trace.code(), sub_type: 0 },
            traffic_direction: direction,
            trace_observation_point: None,
            is_reply: false,
            destination_service: None,
            ingress_allowed_by: Vec::new(),
            egress_allowed_by: Vec::new(),
            ingress_denied_by: Vec::new(),
            egress_denied_by: Vec::new(),
            translated: None,
            decided_by: DecidedBy::Worker,
            counts: None,
            summary: String::new(),
        }
    }

    /// A rule as a flow names it.
    fn policy(&self, rule: u32) -> Vec<Policy> {
        let Some(r) = self.rules.get(&rule) else { return Vec::new() };
        // `CiliumNetworkPolicy x/allow-web`, or a name of the agent's own.
        let (kind, object) = r.source.split_once(' ').unwrap_or(("", &r.source));
        let (namespace, name) = object.split_once('/').unwrap_or(("", object));
        vec![Policy { name: name.into(), namespace: namespace.into(), kind: kind.into(), rule }]
    }
}

/// A worker's record as a flow.
fn worker_flow(e: &Event, ctx: &Context, clock: &Clock) -> Flow {
    let mut f = ctx.flow(&e.tuple, clock, e.at_ns, e.src_identity, e.dst_identity);
    let (dst, dport) = (addr(e.tuple.dst), e.tuple.dst_port);
    if e.translated != e.tuple {
        let end = |a, port| SocketAddr::new(addr(a), port);
        f.translated = Some(Translation {
            source: end(e.translated.src, e.translated.src_port),
            destination: end(e.translated.dst, e.translated.dst_port),
        });
    }
    let leaves = addr(e.translated.dst);
    let remote = ctx.remote(leaves);
    let to = match remote {
        Some(_) => "TO_OVERLAY",
        None if ctx.pods.contains_key(&leaves) => "TO_ENDPOINT",
        None => "TO_NETWORK",
    };
    // Where the overlay carried the packet, for the summary.
    let tunnel = match (remote, ctx.remote(addr(e.tuple.src))) {
        (Some(t), _) => format!(", encapsulated to {} ({})", t.node, t.endpoint),
        (None, Some(t)) => format!(", decapsulated from {} ({})", t.node, t.endpoint),
        (None, None) => String::new(),
    };
    match e.kind {
        event::EventKind::Started => {
            f.destination_service = ctx.service(dst, dport, e.tuple.protocol);
            f.trace_observation_point = Some(to.into());
            f.summary = match &f.translated {
                Some(t) => format!("new flow, to {} (backend {}){tunnel}", t.destination, e.backend.0),
                None => format!("new flow{tunnel}"),
            };
        }
        event::EventKind::Replied => {
            let frontend = (addr(e.translated.src), e.translated.src_port);
            f.destination_service = ctx.service(frontend.0, frontend.1, e.tuple.protocol);
            f.is_reply = true;
            f.trace_observation_point = Some(to.into());
            f.summary = match &f.translated {
                Some(t) => format!("reply, from {}{tunnel}", t.source),
                None => format!("reply{tunnel}"),
            };
        }
        event::EventKind::Ended => {
            f.destination_service = ctx.service(dst, dport, e.tuple.protocol);
            f.counts = Some(Counts { packets: e.packets, bytes: e.bytes });
            f.summary = format!("flow ended: {} packets, {} bytes", e.packets, e.bytes);
        }
        event::EventKind::Judged { verdict, ingress } => {
            f.event_type = EventType { kind: EventKind::PolicyVerdict.code(), sub_type: 0 };
            f.traffic_direction = if ingress { TrafficDirection::Ingress } else { TrafficDirection::Egress };
            let (rule, list) = match verdict {
                engine_policy::Verdict::Allowed(rule) if ingress => (rule, &mut f.ingress_allowed_by),
                engine_policy::Verdict::Allowed(rule) => (rule, &mut f.egress_allowed_by),
                engine_policy::Verdict::DeniedByRule(rule) if ingress => {
                    (Some(rule), &mut f.ingress_denied_by)
                }
                engine_policy::Verdict::DeniedByRule(rule) => (Some(rule), &mut f.egress_denied_by),
                engine_policy::Verdict::Denied => (None, &mut f.ingress_denied_by),
            };
            *list = rule.map(|r| ctx.policy(r)).unwrap_or_default();
            let by = rule.map_or_else(String::new, |r| format!(" by rule {r}"));
            f.summary = match verdict.drop_reason() {
                None => format!("policy allowed{by}"),
                Some(reason) => {
                    f.verdict = Verdict::Dropped;
                    f.drop_reason_desc = Some(reason_desc(reason));
                    format!("policy denied{by}")
                }
            };
        }
        event::EventKind::ToSlowPath => {
            f.trace_observation_point = Some("TO_STACK".into());
            f.summary = "to the slow path (the kernel never saw it)".into();
        }
        event::EventKind::Dropped(reason) => {
            f.verdict = Verdict::Dropped;
            f.drop_reason_desc = Some(reason_desc(reason));
            f.event_type = EventType { kind: EventKind::Drop.code(), sub_type: i32::from(reason.code()) };
            f.summary = reason.description().into();
        }
    }
    f
}

/// A sampled decision of the XDP program as a flow; `None` for a frame that is not IP.
fn xdp_flow(e: &XdpEvent, ctx: &Context, clock: &Clock) -> Option<Flow> {
    let frame = e.headers();
    let key = layers::parse(frame).ok()?.flow(frame)?;
    let tuple = Tuple::new(key.src, key.dst, key.protocol.0, key.src_port, key.dst_port);
    let mut f = ctx.flow(&tuple, clock, e.timestamp_ns, Identity::UNKNOWN, Identity::UNKNOWN);
    f.decided_by = DecidedBy::Xdp;
    f.trace_observation_point = Some("FROM_NETWORK".into());
    let (verdict, summary) = match (e.decision()?, e.reason()) {
        (Decision::Dropped, Some(reason)) => {
            f.drop_reason_desc = Some(reason_desc(reason));
            f.event_type = EventType { kind: EventKind::Drop.code(), sub_type: i32::from(reason.code()) };
            (Verdict::Dropped, format!("XDP: {}", reason.description()))
        }
        (Decision::Dropped, None) => (Verdict::Dropped, "XDP: dropped".into()),
        (Decision::Passed, _) => (Verdict::Forwarded, "XDP: passed to the kernel (sampled)".into()),
        (Decision::ToWorker, _) => (Verdict::Forwarded, "XDP: to a worker (sampled)".into()),
        (Decision::Forwarded, _) => (Verdict::Forwarded, "XDP: forwarded at the NIC (sampled)".into()),
    };
    (f.verdict, f.summary) = (verdict, summary);
    Some(f)
}
