//! `skiff observe` against a real datapath: the demo's cluster in the lab, a NetworkPolicy
//! that admits only the client pod to the web pods, real curls to the ClusterIP (allowed) and
//! the NodePort from outside (denied), then UDP from a source the NIC prefilter denies. Each
//! filter must select exactly the flows it names; `--follow` streams while traffic runs; a
//! follower that stops reading loses flows, counted and told, while the datapath and the
//! other followers go on. Root only (network namespaces, XDP, AF_XDP).

mod privileged {
    use std::{
        net::{IpAddr, Ipv4Addr},
        path::Path,
        time::Duration,
    };

    use skiff_api::{
        Answer, ApiError, ClientError, ErrorCode,
        observe::{DecidedBy, EventKind, Flow, FlowFilter, TrafficDirection, Verdict},
    };
    use skiff_lab::{Host, Topology, agent::Agent};

    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10));
    const CURLS: usize = 5;

    const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{port: 8080, protocol: TCP}]
";

    /// Every kept flow that passes `filter`.
    fn observe(agent: &Agent, filter: FlowFilter) -> Vec<Flow> {
        let mut flows = Vec::new();
        agent
            .client()
            .observe(filter, None, false, |a| {
                if let Answer::Flow(f) = a {
                    flows.push(*f);
                }
                true
            })
            .unwrap();
        flows
    }

    /// A process's resident memory.
    fn rss_kib(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number of KiB")
    }

    /// The ClusterIP's traces: its flows as the client pod sends them.
    fn to_vip() -> FlowFilter {
        FlowFilter { to_ip: Some(VIP), event_type: Some(EventKind::Trace), ..FlowFilter::default() }
    }

    fn wait_until(what: &str, done: impl FnMut() -> bool) {
        skiff_lab::poll(what, Duration::from_secs(30), done).unwrap();
    }

    #[test]
    fn flows_of_every_decision_with_their_filters() {
        let mut lab = Topology::new().pods(4).build().expect("lab");
        for pod in &lab.pods()[..3].to_vec() {
            lab.serve_http(pod, 8080).unwrap();
        }
        let name = format!("test-observe-{}", lab.id());
        let binary = Path::new(env!("CARGO_BIN_EXE_skiff-agent"));
        let (mut agent, state) =
            Agent::start_on_demo(&lab, binary, &name, &["--flow-buffer", "200"]).expect("skiff-agent starts");
        std::fs::write(state.join("policy.yaml"), POLICY).unwrap();
        agent.wait_until("the policy", |a| a.status().is_some_and(|s| s.policies == 1)).unwrap();
        let (client_pod, outside) = (lab.pods()[3].clone(), lab.client().clone());
        let node = lab.node().ipv4;

        let outside_ip = traffic(&agent, &client_pod, &outside, node);
        named_flows(&agent, outside_ip);
        filters(&agent, outside_ip);
        followers(&agent, &client_pod);
        assert!(agent.terminate().unwrap().success());
        // Dropping the agent removes its pins; the lab's namespaces take the attachments.
        std::fs::remove_dir_all(state).unwrap();
    }

    /// Curls to the ClusterIP from the client pod (followed as they run) and to the NodePort
    /// from outside, then datagrams from outside once the prefilter denies it; returns the
    /// outside client's address.
    fn traffic(agent: &Agent, client_pod: &Host, outside: &Host, node: Ipv4Addr) -> IpAddr {
        // A follower from the start, filtered to the ClusterIP, streams as the curls run.
        let followed = std::thread::spawn({
            let client = agent.client();
            move || {
                let mut started = Vec::new();
                client
                    .observe(to_vip(), Some(0), true, |a| {
                        if let Answer::Flow(f) = a {
                            started.push(*f);
                        }
                        started.len() < CURLS
                    })
                    .unwrap();
                started
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        let allowed = client_pod.netns.http_get("http://198.19.0.10/", CURLS, 3).unwrap();
        assert_eq!(allowed.answered(), CURLS, "the client pod is admitted: {allowed:?}");
        let denied = outside.netns.http_get(&format!("http://{node}:30080/"), 2, 1).unwrap();
        assert_eq!(denied.answered(), 0, "the world is not: {denied:?}");
        let followed = followed.join().unwrap();
        assert_eq!(followed.len(), CURLS, "--follow streamed each new flow");
        // The NIC prefilter: the outside client's address denied, then 64 datagrams from it.
        let outside_ip = IpAddr::V4(outside.ipv4);
        agent
            .client()
            .prefilter(&skiff_api::Request::PrefilterUpdate { cidrs: vec![outside_ip.into()] })
            .unwrap();
        let send = format!("for i in $(seq 64); do echo x > /dev/udp/{node}/9; done");
        outside.netns.exec("bash", &["-c", &send]).unwrap();
        wait_until("the NIC's sampled drops", || {
            !observe(agent, FlowFilter { protocol: Some("UDP".into()), ..FlowFilter::default() }).is_empty()
        });

        outside_ip
    }

    /// Each kind of flow, named: pods, labels, service, translation, rule, reason.
    fn named_flows(agent: &Agent, outside_ip: IpAddr) {
        // The ClusterIP's flows, as the client sent them: DNAT'ed to a web pod, named.
        let to_vip = observe(agent, to_vip());
        let started: Vec<&Flow> = to_vip.iter().filter(|f| f.summary.starts_with("new flow")).collect();
        assert_eq!(started.len(), CURLS, "{to_vip:#?}");
        for f in &started {
            let to = f.translated.expect("translated").destination;
            assert!(
                (10..=12).any(|i| to == std::net::SocketAddr::from(([198, 18, 128, i], 8080))),
                "to a web pod: {f:#?}"
            );
            assert_eq!((f.source.namespace.as_str(), f.source.pod_name.as_str()), ("demo", "client"));
            assert!(f.source.labels.contains(&"k8s:app=client".to_owned()), "{:?}", f.source.labels);
            let service = f.destination_service.as_ref().expect("the service");
            assert_eq!((service.namespace.as_str(), service.name.as_str()), ("demo", "web"));
            assert_eq!((f.verdict, f.decided_by, f.is_reply), (Verdict::Forwarded, DecidedBy::Worker, false));
            assert_eq!(f.node_name, "node1");
        }
        // Their replies, from the web pods, leave as the frontend.
        let replies =
            observe(agent, FlowFilter { from_pod: Some("demo/web-".into()), ..FlowFilter::default() });
        assert_eq!(replies.len(), CURLS, "one first reply per connection: {replies:#?}");
        for f in &replies {
            assert!(f.is_reply, "{f:#?}");
            assert_eq!(f.translated.expect("reverse NAT").source, std::net::SocketAddr::new(VIP, 80));
            assert_eq!(
                (f.destination.pod_name.as_str(), f.ip.destination),
                ("client", IpAddr::from([198, 18, 128, 13]))
            );
        }
        // Policy verdicts: the client pod's allowed by the policy's rule, the world's denied.
        let verdicts = observe(
            agent,
            FlowFilter { event_type: Some(EventKind::PolicyVerdict), ..FlowFilter::default() },
        );
        let (admitted, refused): (Vec<&Flow>, Vec<&Flow>) =
            verdicts.iter().partition(|f| f.verdict == Verdict::Forwarded);
        assert_eq!(admitted.len(), CURLS, "{verdicts:#?}");
        assert!(admitted.iter().all(|f| {
            f.ingress_allowed_by.first().is_some_and(|p| p.name == "web-from-client" && p.namespace == "demo")
        }));
        assert!(
            !refused.is_empty()
                && refused.iter().all(|f| {
                    f.ip.source == outside_ip
                        && f.source.identity == 2
                        && f.traffic_direction == TrafficDirection::Ingress
                        && f.drop_reason_desc.as_deref() == Some("POLICY_DENIED")
                }),
            "{refused:#?}"
        );
        // Drops: the worker's for policy, the NIC's for the prefilter, each with its reason.
        let drops = observe(
            agent,
            FlowFilter {
                verdict: Some(Verdict::Dropped),
                event_type: Some(EventKind::Drop),
                ..FlowFilter::default()
            },
        );
        let reason = |by: DecidedBy| {
            drops
                .iter()
                .filter(move |f| f.decided_by == by)
                .map(|f| f.drop_reason_desc.clone().unwrap_or_default())
        };
        assert!(
            reason(DecidedBy::Worker).count() > 0 && reason(DecidedBy::Worker).all(|r| r == "POLICY_DENIED"),
            "{drops:#?}"
        );
        assert!(
            reason(DecidedBy::Xdp).count() > 0 && reason(DecidedBy::Xdp).all(|r| r == "DENIED_CIDR"),
            "{drops:#?}"
        );
    }

    fn filters(agent: &Agent, outside_ip: IpAddr) {
        // Each filter selects what it names.
        let udp = observe(agent, FlowFilter { protocol: Some("udp".into()), ..FlowFilter::default() });
        assert!(
            udp.iter().all(|f| f.decided_by == DecidedBy::Xdp
                && f.ip.source == outside_ip
                && f.l4.ports() == Some((f.l4.ports().unwrap().0, 9))),
            "{udp:#?}"
        );
        let node_port = observe(agent, FlowFilter { port: Some(30080), ..FlowFilter::default() });
        assert!(
            !node_port.is_empty()
                && node_port.iter().all(|f| f.l4.ports().is_some_and(|(s, d)| s == 30080 || d == 30080))
        );
        assert!(
            node_port.iter().all(|f| f.verdict == Verdict::Dropped),
            "the NodePort admitted nobody: {node_port:#?}"
        );
        let from_outside = observe(agent, FlowFilter { from_ip: Some(outside_ip), ..FlowFilter::default() });
        assert_eq!(from_outside.len(), udp.len() + node_port.len(), "the world sent only those");
        let in_demo = observe(agent, FlowFilter { namespace: Some("demo".into()), ..FlowFilter::default() });
        assert!(in_demo.iter().all(|f| f.source.namespace == "demo" || f.destination.namespace == "demo"));
        assert!(in_demo.iter().all(|f| f.l4.protocol() == "TCP"), "the datagrams to the node are no pod's");
        let client = observe(agent, FlowFilter { pod: Some("demo/client".into()), ..FlowFilter::default() });
        assert!(client.iter().all(|f| f.source.pod_name == "client" || f.destination.pod_name == "client"));
        assert!(client.len() >= 3 * CURLS, "verdict, start and reply of each: {}", client.len());
        let mut last = Vec::new();
        agent
            .client()
            .observe(FlowFilter::default(), Some(2), false, |a| {
                last.push(a);
                true
            })
            .unwrap();
        assert_eq!(last.len(), 2, "--last 2");
        // A filter that can select nothing is refused, named.
        let bad = agent.client().observe(
            FlowFilter { protocol: Some("SCTPX".into()), ..FlowFilter::default() },
            None,
            false,
            |_| true,
        );
        assert!(
            matches!(&bad, Err(ClientError::Agent(ApiError { code: ErrorCode::BadRequest, message })) if message.contains("SCTPX")),
            "{bad:?}"
        );
    }

    /// A follower that stops reading, and ten that keep up, through a burst of flows many
    /// times the ring (200): the datapath keeps its pace, the stalled one is told what it
    /// lost once it reads again, the others see the burst.
    fn followers(agent: &Agent, client_pod: &Host) {
        let stalled = std::os::unix::net::UnixStream::connect(agent.socket()).unwrap();
        {
            use std::io::Write;
            (&stalled).write_all(b"{\"request\": \"observe\", \"follow\": true, \"last\": 0}\n").unwrap();
        }
        let keen: Vec<_> = (0..10)
            .map(|_| {
                let client = agent.client();
                std::thread::spawn(move || {
                    let mut n = 0;
                    client
                        .observe(to_vip(), Some(0), true, |a| {
                            n += usize::from(matches!(a, Answer::Flow(_)));
                            n < 200
                        })
                        .unwrap();
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let before = rss_kib(agent.pid());
        let burst = client_pod.netns.http_get("http://198.19.0.10/", 200, 3).unwrap();
        assert_eq!(burst.answered(), 200, "{burst:?}");
        let grown = rss_kib(agent.pid()).saturating_sub(before);
        assert!(grown < 16 * 1024, "the agent grew by {grown} KiB through 3 rings' worth of flows");
        for follower in keen {
            assert_eq!(follower.join().unwrap(), 200, "a follower that keeps up sees every new flow");
        }
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(&stalled));
        let lost = lines.find_map(|l| match serde_json::from_str::<Answer>(&l.unwrap()).unwrap() {
            Answer::Lost(lost) => Some(lost),
            _ => None,
        });
        assert!(lost.is_some_and(|l| l.num_events_lost > 0 && l.source == "HUBBLE_RING_BUFFER"));
        let status = agent.status().unwrap();
        let flows = status.flows.expect("the observer's counts");
        assert!(flows.lost_to_followers > 0 && flows.kept == 200 && flows.seen >= 3 * 200, "{flows:?}");
        assert_eq!(status.workers.map(|w| w.events_lost), Some(0), "the datapath's queues kept up");
        drop(stalled);
    }
}
