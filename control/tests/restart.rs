//! An agent's restart loses nothing. Long TCP streams (iperf3) through a ClusterIP and a
//! NodePort and 1000 idle keep-alive HTTP connections through a ClusterIP run while
//! skiff-agent is killed (SIGKILL), stays down 5 s and starts again; then while it is stopped
//! (SIGTERM) and started again, its XDP program replaced in place. No stream stalls for
//! longer than the restart, every keep-alive connection answers its next request, no RST
//! crosses the client's link (tcpdump), and `skiff ct list` holds every established flow it
//! held before. Root only (network namespaces, XDP, AF_XDP).

mod privileged {
    use std::{
        collections::BTreeSet,
        io::{BufRead, BufReader, Read, Write},
        path::Path,
        process::{Child, ChildStdin, ChildStdout, Stdio},
        time::{Duration, Instant},
    };

    use skiff_api::FlowView;
    use skiff_lab::{Host, Netns, Topology, cni::CniNode};

    const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");
    const KEEP_ALIVES: usize = 1000;
    /// How long the streams run: past both restarts.
    const STREAM_SECONDS: u32 = 40;

    /// The lab node's pod CIDR and addresses.
    const NODE: &str = r"
apiVersion: v1
kind: Node
metadata: {name: node1}
spec: {podCIDR: 198.18.128.0/24, podCIDRs: [198.18.128.0/24]}
status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}
";

    fn pods_yaml(names: &[&str]) -> String {
        names
            .iter()
            .map(|name| {
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{app: web}}}}\n\
                     spec: {{nodeName: node1, containers: [{{name: c, image: skiff/http}}]}}\n"
                )
            })
            .collect()
    }

    /// Service `name` on `cluster_ip:port` (and `node_port`, if one) to `target` on `backends`.
    fn service(
        name: &str,
        cluster_ip: &str,
        port: u16,
        target: u16,
        node_port: Option<u16>,
        backends: &[&Host],
    ) -> String {
        let (kind, node_port) = match node_port {
            Some(p) => ("NodePort", format!(", nodePort: {p}")),
            None => ("ClusterIP", String::new()),
        };
        let endpoints: String = backends
            .iter()
            .map(|h| {
                format!(
                    "  - addresses: ['{}']\n    conditions: {{ready: true}}\n    nodeName: node1\n",
                    h.ipv4
                )
            })
            .collect();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  type: {kind}\n  \
             clusterIP: {cluster_ip}\n  ports: [{{name: p, protocol: TCP, port: {port}, targetPort: {target}{node_port}}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: demo\n  \
             labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: p, protocol: TCP, port: {target}}}]\n\
             endpoints:\n{endpoints}"
        )
    }

    /// 1000 HTTP/1.1 connections, each answered once; then, for every line on stdin, one more
    /// request on each: it prints how many were answered, how many failed, and the first errors.
    const KEEP_ALIVE: &str = r#"
import http.client, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
host, n = sys.argv[1], int(sys.argv[2])
conns = [http.client.HTTPConnection(host, 80, timeout=5) for _ in range(n)]
def get(c):
    c.request('GET', '/')
    return c.getresponse().read()
for c in conns:
    get(c)
print('ready', flush=True)
for line in sys.stdin:
    ok, errors = 0, []
    for c in conns:
        try:
            get(c)
            ok += 1
        except Exception as e:
            errors.append(repr(e))
    print(ok, len(errors), errors[:3], flush=True)
"#;

    struct KeepAlives {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    }

    impl KeepAlives {
        fn open(client: &Netns, host: &str) -> KeepAlives {
            let mut child = client
                .command("python3")
                .args(["-c", KEEP_ALIVE, host, &KEEP_ALIVES.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let (stdin, stdout) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
            let mut k = KeepAlives { child, stdin, stdout };
            assert_eq!(k.line(), "ready", "every connection answered its first request");
            k
        }

        fn line(&mut self) -> String {
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            line.trim().to_owned()
        }

        /// One more request on every connection; all must be answered.
        fn all_answer(&mut self, when: &str) {
            self.stdin.write_all(b"go\n").unwrap();
            let line = self.line();
            assert!(
                line.starts_with(&format!("{KEEP_ALIVES} 0 ")),
                "{when}: answered, failed, errors: {line}"
            );
        }
    }

    impl Drop for KeepAlives {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A process the test started, killed (by its PID) when dropped.
    struct Started(Child);

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The longest run of 1-second intervals without a byte, in an iperf3 JSON report, and the
    /// lowest and highest rate of an interval (Mbit/s).
    fn stalls(report: &str) -> (usize, f64, f64) {
        let json: serde_json::Value =
            serde_json::from_str(report).unwrap_or_else(|e| panic!("{e}: {report}"));
        let intervals = json["intervals"].as_array().expect("intervals");
        let (mut longest, mut run, mut low, mut high) = (0, 0, f64::MAX, 0f64);
        for i in intervals {
            let bytes = i["sum"]["bytes"].as_u64().unwrap_or(0);
            run = if bytes == 0 { run + 1 } else { 0 };
            longest = longest.max(run);
            let mbits = i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6;
            (low, high) = (low.min(mbits), high.max(mbits));
        }
        (longest, low, high)
    }

    fn xdp_prog_id(node: &Netns, iface: &str) -> Option<u32> {
        let out = node.exec("ip", &["-d", "link", "show", iface]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let at = text.find("prog/xdp id ")? + "prog/xdp id ".len();
        text[at..].split_whitespace().next()?.parse().ok()
    }

    /// The established flows at the NIC, by their tuples.
    fn at_nic(flows: &[FlowView]) -> BTreeSet<String> {
        flows
            .iter()
            .filter(|f| f.at_nic)
            .map(|f| {
                format!(
                    "{} {} {} {} {}",
                    f.protocol, f.source, f.destination, f.reply_source, f.reply_destination
                )
            })
            .collect()
    }

    /// A lab node running skiff-agent (the lab client's link as its device) with two pods
    /// serving HTTP on 8080 and iperf3 on 5201, behind the Services `web` (198.19.0.10:80 to
    /// both), `stream-a` (198.19.0.11:5201 to web-0) and `stream-b` (NodePort 30201 to web-1).
    fn cluster() -> (CniNode, Host, Vec<Started>) {
        let lab = Topology::new().cni_pods(2).build().expect("lab");
        let client = lab.client().clone();
        // The uplink's far end takes frames XDP redirects to it, as a NIC does: the replies
        // are forwarded at the NIC too.
        client.netns.exec("ethtool", &["-K", &client.iface, "gro", "on"]).unwrap();
        let objects = format!("{NODE}{}", pods_yaml(&["web-0", "web-1"]));
        let mut node = CniNode::start(lab, Path::new(AGENT), "restart", "afxdp", &[], &objects);
        let netns = node.lab.cni_pods().to_vec();
        let pods: Vec<Host> = ["web-0", "web-1"]
            .iter()
            .zip(&netns)
            .enumerate()
            .map(|(i, (name, ns))| node.pod(&format!("c{i}"), ns, "demo", name))
            .collect();
        let mut servers = Vec::new();
        for pod in &pods {
            node.lab.serve_http(pod, 8080).unwrap();
            let iperf = pod.netns.command("iperf3").args(["-s", "-p", "5201"]).stdout(Stdio::null()).spawn();
            servers.push(Started(iperf.unwrap()));
        }
        let services = [
            service("web", "198.19.0.10", 80, 8080, None, &[&pods[0], &pods[1]]),
            service("stream-a", "198.19.0.11", 5201, 5201, None, &[&pods[0]]),
            service("stream-b", "198.19.0.12", 5201, 5201, Some(30201), &[&pods[1]]),
        ];
        std::fs::write(node.objects().join("services.yaml"), services.concat()).unwrap();
        node.agent
            .wait_until("the services", |a| {
                a.client().services().is_ok_and(|s| s.len() >= 4 && s.iter().all(|s| !s.backends.is_empty()))
            })
            .unwrap();
        let answers = client.netns.http_get("http://198.19.0.10/", 20, 3).unwrap();
        assert_eq!(answers.answered(), 20, "the ClusterIP answers: {answers:?}");
        (node, client, servers)
    }

    /// tcpdump printing every RST on the client's link, once it listens.
    fn watch_rsts(client: &Host) -> Started {
        let mut tcpdump = client
            .netns
            .command("tcpdump")
            .args(["-i", &client.iface, "-n", "-l", "tcp[tcpflags] & tcp-rst != 0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(tcpdump.stderr.take().unwrap()).lines();
        let listening = stderr.find(|l| l.as_ref().map_or(true, |l| l.contains("listening on")));
        assert!(listening.is_some_and(|l| l.is_ok()), "tcpdump listens");
        Started(tcpdump)
    }

    /// What tcpdump printed, once stopped.
    fn rsts(mut tcpdump: Started) -> String {
        let pid = i32::try_from(tcpdump.0.id()).unwrap();
        // SAFETY: kill(2) on the tcpdump this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        tcpdump.0.wait().unwrap();
        let mut out = String::new();
        tcpdump.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        out
    }

    /// Stops the agent (SIGKILL, or SIGTERM), waits 5 s, starts it again; checks that XDP
    /// stayed attached meanwhile, that the new agent's program runs in place, and that `ct
    /// list` still holds the flows of `before`. Returns how long it was down.
    fn restart(node: &mut CniNode, uplink: &str, kill: bool, before: &BTreeSet<String>) -> Duration {
        let (node_ns, args) = (node.lab.node().netns.clone(), node.args.clone());
        let old = xdp_prog_id(&node_ns, uplink).expect("attached");
        let down = Instant::now();
        if kill {
            node.agent.kill().unwrap();
        } else {
            assert!(node.agent.terminate().unwrap().success(), "a clean stop");
        }
        std::thread::sleep(Duration::from_secs(5));
        assert_eq!(xdp_prog_id(&node_ns, uplink), Some(old), "the program stays while no agent runs");
        node.agent.restart(&node_ns, Path::new(AGENT), &args).expect("the agent starts again");
        let downtime = down.elapsed();
        let new = xdp_prog_id(&node_ns, uplink).expect("attached");
        assert_ne!(new, old, "the new agent's program runs, replaced in place");
        let after = at_nic(&node.agent.client().flows().unwrap());
        let lost: Vec<_> = before.difference(&after).collect();
        let workers = node.agent.status().and_then(|s| s.workers);
        assert!(
            lost.is_empty(),
            "after {}, ct list lost {} flows: {:?} {workers:?}",
            if kill { "SIGKILL" } else { "SIGTERM" },
            lost.len(),
            &lost[..lost.len().min(3)]
        );
        downtime
    }

    #[test]
    fn a_restart_loses_no_flow() {
        let (mut node, client, servers) = cluster();
        let tcpdump = watch_rsts(&client);
        let mut keep_alives = KeepAlives::open(&client.netns, "198.19.0.10");
        let stream = |to: &str, port: &str| {
            let seconds = STREAM_SECONDS.to_string();
            let args = ["-c", to, "-p", port, "-t", &seconds, "-i", "1", "-b", "100M", "-J"];
            Started(client.netns.command("iperf3").args(args).stdout(Stdio::piped()).spawn().unwrap())
        };
        let streams = [stream("198.19.0.11", "5201"), stream("198.18.0.1", "30201")];
        std::thread::sleep(Duration::from_secs(3));
        let before = at_nic(&node.agent.client().flows().unwrap());
        assert!(
            before.len() >= KEEP_ALIVES + 4,
            "the connections are forwarded at the NIC: {}",
            before.len()
        );

        let crash = restart(&mut node, &client.node_iface, true, &before);
        keep_alives.all_answer("after SIGKILL");
        let stop = restart(&mut node, &client.node_iface, false, &before);
        keep_alives.all_answer("after SIGTERM");
        let rsts = rsts(tcpdump);
        assert!(rsts.trim().is_empty(), "RSTs seen:\n{rsts}");

        // The streams ran through both restarts.
        let restart = usize::try_from(crash.max(stop).as_secs()).unwrap();
        for (mut s, what) in streams.into_iter().zip(["ClusterIP", "NodePort"]) {
            let mut report = String::new();
            s.0.stdout.take().unwrap().read_to_string(&mut report).unwrap();
            assert!(s.0.wait().unwrap().success(), "iperf3 to the {what}: {report}");
            let (stall, low, high) = stalls(&report);
            println!(
                "iperf3 through the {what}: longest stall {stall} s, {low:.0}..{high:.0} Mbit/s per second, restarts {crash:.1?} (SIGKILL) and {stop:.1?} (SIGTERM)"
            );
            assert!(stall <= restart, "the stream to the {what} stalled {stall} s, longer than the restart");
        }
        println!("{} flows forwarded at the NIC kept through both restarts", before.len());
        drop(servers);
    }
}
