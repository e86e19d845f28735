//! skiff-cni with skiff-agent in the lab, called as a container runtime calls it: pods get
//! their addresses, routes and datapath from skiff (IPv4 and IPv6, pod to pod, pod to node,
//! pod to a ClusterIP of such pods, a NodePort from outside) over AF_XDP and AF_PACKET;
//! endpoints outlive an agent crash; bad input gets the spec's errors and leaves nothing
//! half-made; 500 ADD/DEL cycles leak nothing. The real runtime (podman) is in
//! `tests/runtime.rs`. Root only (network namespaces, XDP, AF_XDP).

mod privileged {
    use std::{collections::BTreeSet, net::IpAddr, path::Path};

    use serde_json::{Value, json};
    use skiff_api::{EndpointState, EndpointView};
    use skiff_common::conntrack::FlowPath;
    use skiff_lab::{
        Host, Lab, Netns, Topology,
        agent::Agent,
        cni::{self, Call, CniNode, Output},
    };

    const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");

    /// The lab node's pod CIDRs (its gateways 198.18.128.1 and fd00:0:0:128::1 are on lo).
    const NODE: &str = r"
apiVersion: v1
kind: Node
metadata: {name: node1}
spec:
  podCIDR: 198.18.128.0/24
  podCIDRs: [198.18.128.0/24, 'fd00:0:0:128::/64']
status:
  addresses:
    - {type: InternalIP, address: 198.18.0.1}
    - {type: InternalIP, address: 'fd00::1'}
";

    /// A lab node running skiff-agent, and the CNI configuration it installed.
    struct Cluster(CniNode);

    impl std::ops::Deref for Cluster {
        type Target = CniNode;
        fn deref(&self) -> &CniNode {
            &self.0
        }
    }

    impl std::ops::DerefMut for Cluster {
        fn deref_mut(&mut self) -> &mut CniNode {
            &mut self.0
        }
    }

    impl Cluster {
        /// `lab`'s node with skiff-agent (`io`, `extra` options) on the folder `objects`.
        fn start(lab: Lab, name: &str, io: &str, extra: &[&str], objects: &str) -> Cluster {
            Cluster(CniNode::start(lab, Path::new(AGENT), name, io, extra, objects))
        }

        /// ADD for pod `name` (namespace `demo`) in `netns`, container `container`.
        fn add(&self, container: &str, netns: &Netns, name: &str) -> Output {
            self.0.add(container, netns, "demo", name)
        }

        /// ADD that must succeed: the pod as a lab host.
        fn pod(&self, container: &str, netns: &Netns, name: &str) -> Host {
            self.0.pod(container, netns, "demo", name)
        }

        fn endpoints(&self) -> Vec<EndpointView> {
            self.agent.client().endpoints().unwrap()
        }

        /// Addresses held, by pool.
        fn allocated(&self) -> usize {
            self.agent.client().ipam().unwrap().pools.iter().map(|p| p.allocated.len()).sum()
        }

        /// The node's `lxc…` links.
        fn lxc_links(&self) -> Vec<String> {
            let out = self.lab.node().netns.exec("ip", &["-o", "link", "show"]).unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n).to_owned())
                .filter(|n| n.starts_with("lxc"))
                .collect()
        }

        /// What every endpoint leaves: as many veths and address sets as endpoints.
        fn assert_nothing_half_made(&self, endpoints: usize, when: &str) {
            assert_eq!(self.endpoints().len(), endpoints, "{when}: endpoints");
            assert_eq!(self.lxc_links().len(), endpoints, "{when}: host veths {:?}", self.lxc_links());
            let per_endpoint: usize = self.endpoints().iter().map(|e| e.addresses.len()).sum();
            assert_eq!(self.allocated(), per_endpoint, "{when}: addresses held");
        }

        /// Writes `web`, a dual-stack NodePort Service whose EndpointSlices list `backends`,
        /// and waits until the agent has applied it.
        fn serve_web(&mut self, backends: &[&Host]) {
            std::fs::write(self.objects().join("web.yaml"), web_service(backends)).unwrap();
            let want = backends.len();
            self.agent
                .wait_until("the web Service", |a| {
                    let services = a.client().services().unwrap_or_default();
                    !services.is_empty() && services.iter().all(|s| s.backends.len() == want)
                })
                .unwrap();
        }
    }

    fn pods_yaml(names: &[&str]) -> String {
        names
            .iter()
            .map(|name| {
                let app = if name.starts_with("web") { "web" } else { "client" };
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}}}\n\
                     spec: {{nodeName: node1, containers: [{{name: c, image: skiff/http}}]}}\n"
                )
            })
            .collect()
    }

    /// The Service `demo/web` on 198.19.0.10 and fd00:0:0:19::10 port 80, NodePort 30080,
    /// backends on 8080.
    fn web_service(backends: &[&Host]) -> String {
        let slice = |family: &str, addresses: Vec<String>| {
            let endpoints: String = addresses
                .iter()
                .map(|a| {
                    format!("  - addresses: ['{a}']\n    conditions: {{ready: true}}\n    nodeName: node1\n")
                })
                .collect();
            format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-{f}\n  namespace: demo\n  \
                 labels: {{kubernetes.io/service-name: web}}\naddressType: {family}\nports: [{{name: http, protocol: TCP, port: 8080}}]\n\
                 endpoints:\n{endpoints}",
                f = family.to_lowercase()
            )
        };
        let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  type: NodePort\n  \
                       clusterIP: 198.19.0.10\n  clusterIPs: [198.19.0.10, 'fd00:0:0:19::10']\n  ipFamilies: [IPv4, IPv6]\n  \
                       ipFamilyPolicy: RequireDualStack\n  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]\n";
        let v4 = backends.iter().map(|h| h.ipv4.to_string()).collect();
        let v6 = backends.iter().map(|h| h.ipv6.to_string()).collect();
        format!("{service}{}{}", slice("IPv4", v4), slice("IPv6", v6))
    }

    /// `n` GETs from `from` to `url`; every one answered; who answered.
    fn curl(from: &Netns, url: &str, n: usize) -> BTreeSet<String> {
        let answers = from.http_get(url, n, 3).unwrap();
        assert_eq!(answers.answered(), n, "every GET {url} answered: {answers:?}");
        answers.by_host.into_keys().collect()
    }

    fn ping(from: &Netns, to: IpAddr) {
        let out =
            from.command("ping").args(["-c", "2", "-i", "0.2", "-W", "2", &to.to_string()]).output().unwrap();
        assert!(out.status.success(), "ping {to}: {}", String::from_utf8_lossy(&out.stdout));
    }

    fn set<const N: usize>(names: [&str; N]) -> BTreeSet<String> {
        names.into_iter().map(String::from).collect()
    }

    fn pods_through_skiff_cni(io: &str) {
        let lab = Topology::new().cni_pods(4).build().expect("lab");
        let objects = format!("{NODE}{}", pods_yaml(&["web-0", "web-1", "web-2", "client"]));
        let mut c = Cluster::start(lab, &format!("cni-{io}"), io, &[], &objects);
        let netns: Vec<Netns> = c.lab.cni_pods().to_vec();
        let names = ["web-0", "web-1", "web-2", "client"];
        let pods: Vec<Host> =
            names.iter().zip(&netns).enumerate().map(|(i, (n, ns))| c.pod(&format!("c{i}"), ns, n)).collect();
        for pod in &pods[..3] {
            c.lab.serve_http(pod, 8080).unwrap();
        }
        let client = &pods[3];

        // What the agent knows: each pod's labels, identity, addresses and attachment.
        let endpoints = c.endpoints();
        assert_eq!(endpoints.len(), 4);
        for (e, pod) in endpoints.iter().zip(&pods) {
            assert_eq!(e.addresses, [IpAddr::from(pod.ipv4), IpAddr::from(pod.ipv6)], "{e:?}");
            assert_eq!((e.state, &e.host_ifname), (EndpointState::Ready, &pod.node_iface), "{e:?}");
            assert_eq!(
                e.labels.get("app").map(String::as_str),
                Some(if e.id == 4 { "client" } else { "web" })
            );
            assert!(e.identity >= 256, "{e:?}");
        }
        assert_eq!(endpoints[0].identity, endpoints[1].identity, "one label set, one identity");
        assert_ne!(endpoints[0].identity, endpoints[3].identity);

        // Pod to pod and pod to node, both families, through the kernel's routes to the veths.
        let web0 = &pods[0];
        assert_eq!(curl(&client.netns, &format!("http://{}:8080/", web0.ipv4), 3), set(["web-0"]));
        assert_eq!(curl(&client.netns, &format!("http://[{}]:8080/", web0.ipv6), 3), set(["web-0"]));
        let node = c.lab.node().clone();
        for to in
            [node.pod_gateway_v4().into(), node.pod_gateway_v6().into(), node.ipv4.into(), node.ipv6.into()]
        {
            ping(&client.netns, to);
        }
        assert_eq!(curl(&node.netns, &format!("http://{}:8080/", pods[1].ipv4), 3), set(["web-1"]));

        // A ClusterIP whose backends are these pods, from a pod; a NodePort from outside.
        c.serve_web(&[&pods[0], &pods[1], &pods[2]]);
        let three = set(["web-0", "web-1", "web-2"]);
        assert_eq!(curl(&client.netns, "http://198.19.0.10/", 150), three, "ClusterIP, IPv4");
        assert_eq!(curl(&client.netns, "http://[fd00:0:0:19::10]/", 150), three, "ClusterIP, IPv6");
        let outside = c.lab.client().netns.clone();
        assert_eq!(curl(&outside, "http://198.18.0.1:30080/", 150), three, "NodePort, IPv4");
        assert_eq!(curl(&outside, "http://[fd00::1]:30080/", 150), three, "NodePort, IPv6");
        // The workers forward the handshakes, the XDP program most of the rest (skiff-cni
        // turned GRO on in the pods: their veths take redirected frames).
        let workers = c.agent.status().unwrap().workers.expect("a datapath");
        let at_nic = workers.flow_paths.get(&FlowPath::Forwarded).copied().unwrap_or(0);
        assert!(workers.forwarded + at_nic >= 600 * 8, "skiff carried the connections: {workers:?}");

        // DEL leaves nothing; a second DEL is fine.
        for (i, ns) in netns.iter().enumerate() {
            let out = c.del(&format!("c{i}"), ns);
            assert!(out.success, "DEL: {}", out.json);
            assert!(c.del(&format!("c{i}"), ns).success, "a second DEL succeeds");
        }
        c.assert_nothing_half_made(0, "after DEL");
    }

    #[test]
    fn pods_get_their_network_from_skiff_cni_over_af_xdp() {
        pods_through_skiff_cni("afxdp");
    }

    #[test]
    fn pods_get_their_network_from_skiff_cni_over_af_packet() {
        pods_through_skiff_cni("afpacket");
    }

    /// Cluster-pool IPAM; endpoints and addresses survive an agent crash: the veths stay, the
    /// restarted agent serves them again, and no address is handed out twice.
    #[test]
    fn endpoints_survive_an_agent_crash() {
        let lab = Topology::new().cni_pods(3).build().expect("lab");
        let pool =
            ["--ipam", "cluster-pool", "--pod-cidr", "198.18.128.0/24", "--pod-cidr", "fd00:0:0:128::/64"];
        let mut c = Cluster::start(lab, "cni-crash", "afxdp", &pool, &pods_yaml(&["web-0", "client"]));
        let netns = c.lab.cni_pods().to_vec();
        let web = c.pod("c0", &netns[0], "web-0");
        let client = c.pod("c1", &netns[1], "client");
        c.lab.serve_http(&web, 8080).unwrap();
        c.serve_web(&[&web]);
        assert_eq!(curl(&client.netns, "http://198.19.0.10/", 20), set(["web-0"]));
        let before = c.endpoints();

        c.agent.kill().unwrap();
        let (args, node) = (c.args.clone(), c.lab.node().netns.clone());
        c.agent.restart(&node, Path::new(AGENT), &args).expect("the agent restarts");
        // Restored at once, and ready once the agent has read its Pods again.
        let ready = |e: Vec<EndpointView>| e.len() == 2 && e.iter().all(|e| e.state == EndpointState::Ready);
        c.agent.wait_until("the restored endpoints", |a| a.client().endpoints().is_ok_and(ready)).unwrap();
        let after = c.endpoints();
        let ids = |e: &[EndpointView]| e.iter().map(|e| (e.id, e.addresses.clone())).collect::<Vec<_>>();
        assert_eq!(ids(&after), ids(&before), "the same endpoints, ids and addresses");
        c.serve_web(&[&web]);
        assert_eq!(curl(&client.netns, "http://198.19.0.10/", 20), set(["web-0"]), "served again");
        let third = c.pod("c2", &netns[2], "web-1");
        let held: BTreeSet<IpAddr> = before.iter().flat_map(|e| e.addresses.clone()).collect();
        assert!(!held.contains(&IpAddr::from(third.ipv4)), "a new address: {} not in {held:?}", third.ipv4);
    }

    /// Until the Node has a pod CIDR (kubernetes IPAM), no conflist is written and an ADD is
    /// "try again later"; the conflist appears with the CIDR, and ADDs are served.
    #[test]
    fn the_cni_configuration_waits_for_a_pod_cidr() {
        let lab = Topology::new().cni_pods(1).build().expect("lab");
        let state = std::env::temp_dir().join(format!("skiff-cni-wait-{}-objects", lab.id()));
        std::fs::create_dir_all(&state).unwrap();
        let without_cidrs = "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n";
        std::fs::write(state.join("node.yaml"), without_cidrs).unwrap();
        let args: Vec<String> = ["--state-dir", state.to_str().unwrap(), "--node-name", "node1"]
            .into_iter()
            .map(String::from)
            .chain(["--device".into(), lab.client().node_iface.clone()])
            .collect();
        let node = lab.node().netns.clone();
        let mut agent =
            Agent::spawn(&node, Path::new(AGENT), &format!("cni-wait-{}", lab.id()), &args).unwrap();
        agent.wait_until("the first apply", |a| a.status().is_some_and(|s| s.applies >= 1)).unwrap();
        let (conflist, _) = agent.cni_conf();
        assert!(!conflist.exists(), "no conflist without a pod CIDR");

        let plugin = Path::new(env!("CARGO_BIN_EXE_skiff-cni"));
        let conf =
            json!({"cniVersion": "1.0.0", "name": "skiff", "type": "skiff-cni", "socket": agent.socket()});
        let add = Call::new("ADD", "early", &lab.cni_pods()[0]);
        let out = cni::call(&node, plugin, &conf.to_string(), &add).unwrap();
        assert!(!out.success && out.code() == Some(11), "try again later: {}", out.json);
        assert!(out.json["details"].as_str().unwrap().contains("no pod CIDR"), "{}", out.json);

        std::fs::write(state.join("node.yaml"), NODE).unwrap();
        agent.wait_until("the conflist, with the pod CIDR", |a| a.cni_conf().0.exists()).unwrap();
        let out = cni::call(&node, plugin, &conf.to_string(), &add).unwrap();
        assert!(out.success, "ADD once the node has a pod CIDR: {}", out.json);
        assert!(
            cni::call(&node, plugin, &conf.to_string(), &Call { command: "DEL", ..add }).unwrap().success
        );
        drop(agent);
        std::fs::remove_dir_all(state).unwrap();
    }

    /// The spec's errors for bad input, and nothing half-made after any of them.
    #[test]
    fn bad_input_is_refused_and_leaves_nothing_behind() {
        let lab = Topology::new().cni_pods(7).build().expect("lab");
        // A /29: five addresses for pods (.2 to .6).
        let pool = ["--ipam", "cluster-pool", "--pod-cidr", "198.18.128.0/29"];
        let mut c = Cluster::start(lab, "cni-bad", "afxdp", &pool, "");
        let netns = c.lab.cni_pods().to_vec();
        let node = c.lab.node().netns.clone();
        let raw = |conf: &str, call: &Call| cni::call(&node, &c.plugin, conf, call).unwrap();
        let code_of = |out: &Output| {
            assert!(!out.success, "a failure: {}", out.json);
            assert!(out.json["msg"].as_str().is_some_and(|m| !m.is_empty()), "a message: {}", out.json);
            out.code()
        };

        let add0 = Call::new("ADD", "bad0", &netns[0]);
        assert_eq!(code_of(&raw("{\"cniVersion\": ", &add0)), Some(6), "malformed JSON");
        let old = c.conf.replace("1.0.0", "0.2.0");
        let out = raw(&old, &add0);
        assert_eq!(code_of(&out), Some(1), "an unsupported version");
        assert!(out.json["details"].as_str().unwrap().contains("0.2.0"), "{}", out.json);
        let out = c.call(&Call { netns: None, ..add0.clone() });
        assert_eq!(code_of(&out), Some(4), "no CNI_NETNS");
        assert!(out.json["details"].as_str().unwrap().contains("CNI_NETNS"), "{}", out.json);
        let ghost = Call { netns: Some("/run/netns/skiff-no-such-netns".into()), ..add0.clone() };
        assert_eq!(code_of(&c.call(&ghost)), Some(4), "a netns that does not exist");
        assert!(c.call(&Call { command: "DEL", ..ghost.clone() }).success, "DEL of a missing netns succeeds");
        assert!(c.del("never-added", &netns[0]).success, "DEL of an unknown container succeeds");
        c.assert_nothing_half_made(0, "after the refused ADDs");

        // A second ADD for the same attachment: refused, and the first one keeps working.
        let first = c.pod("dup", &netns[0], "web-0");
        let out = c.add("dup", &netns[0], "web-0");
        assert_eq!(code_of(&out), Some(100), "a second ADD");
        ping(&first.netns, c.lab.node().pod_gateway_v4().into());
        c.assert_nothing_half_made(1, "after the second ADD");

        // CHECK against the previous result, then against a pod that lost its address.
        let check = |prev: &Value| {
            let mut conf: Value = serde_json::from_str(&c.conf).unwrap();
            conf["prevResult"] = prev.clone();
            cni::call(&node, &c.plugin, &conf.to_string(), &Call::new("CHECK", "dup", &netns[0])).unwrap()
        };
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": first.node_iface, "mac": "00:00:00:00:00:00"}, {"name": "eth0", "mac": "00:00:00:00:00:00", "sandbox": netns[0].path()}],
            "ips": [{"address": format!("{}/32", first.ipv4), "interface": 1}]
        });
        let out = check(&result);
        assert!(out.success, "CHECK after ADD: {}", out.json);
        first.netns.exec("ip", &["addr", "del", &format!("{}/32", first.ipv4), "dev", "eth0"]).unwrap();
        assert_eq!(code_of(&check(&result)), Some(104), "CHECK of a pod without its address");

        // Exhaustion: five addresses, the sixth ADD is refused.
        for (i, ns) in netns.iter().enumerate().take(5).skip(1) {
            c.pod(&format!("fill{i}"), ns, "web-0");
        }
        let out = c.add("fill5", &netns[5], "web-0");
        assert_eq!(code_of(&out), Some(101), "an exhausted pool");
        c.assert_nothing_half_made(5, "after the exhausted pool");

        // GC keeps the attachments the runtime names and removes the others with their veths.
        let mut gc: Value = serde_json::from_str(&c.conf.replace("1.0.0", "1.1.0")).unwrap();
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "dup", "ifname": "eth0"}]);
        let out = cni::call(
            &node,
            &c.plugin,
            &gc.to_string(),
            &Call { command: "GC", container_id: "", netns: None, ifname: "", args: "" },
        )
        .unwrap();
        assert!(out.success, "GC: {}", out.json);
        c.assert_nothing_half_made(1, "after GC");
        let status = Call { command: "STATUS", ..Call::new("STATUS", "", &netns[0]) };
        assert!(cni::call(&node, &c.plugin, &gc.to_string(), &status).unwrap().success, "STATUS");
        let version =
            cni::call(&node, &c.plugin, "{\"cniVersion\":\"1.0.0\"}", &Call::new("VERSION", "", &netns[0]))
                .unwrap();
        assert!(
            version.json["supportedVersions"].as_array().is_some_and(|v| v.contains(&json!("1.1.0"))),
            "{}",
            version.json
        );

        // The agent gone: "try again later", naming its socket; nothing made.
        let socket = c.agent.socket();
        c.agent.terminate().unwrap();
        let out = c.add("late", &netns[6], "web-0");
        assert_eq!(code_of(&out), Some(11), "the agent not running");
        assert!(out.json["details"].as_str().unwrap().contains(socket.to_str().unwrap()), "{}", out.json);
        assert_eq!(c.lxc_links().len(), 1, "no veth made: {:?}", c.lxc_links());
    }

    fn rss_kib(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The agent's descriptors: the fewest seen over 200 ms, so that what is on its way out
    /// (a removed socket closing on its own thread, a CNI call's connection) is not counted.
    fn fds(pid: u32) -> usize {
        let count = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        (0..10)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                count()
            })
            .min()
            .unwrap()
    }

    /// 500 ADD/DEL cycles over 50 endpoints (10 rounds of 50), each endpoint curling a
    /// ClusterIP through skiff's workers while it exists: afterwards no address, veth,
    /// endpoint, datapath port or descriptor is left over, and the agent's memory is flat.
    #[test]
    fn churn_leaks_nothing() {
        const ROUNDS: usize = 10;
        const PODS: usize = 50;
        let lab = Topology::new().cni_pods(PODS + 1).build().expect("lab");
        // A small connection-tracking table and flow buffer: every new flow touches pages of the
        // one and adds to the other (both bounded), and small ones are all resident after the
        // first rounds, so what grows after them is a leak.
        let small = ["--ct-capacity", "4096", "--flow-buffer", "64"];
        let mut c =
            Cluster::start(lab, "cni-churn", "afxdp", &small, &format!("{NODE}{}", pods_yaml(&["web-0"])));
        let netns = c.lab.cni_pods().to_vec();
        let web = c.pod("web", &netns[PODS], "web-0");
        c.lab.serve_http(&web, 8080).unwrap();
        c.serve_web(&[&web]);
        let pid = c.agent.pid();
        let before = (rss_kib(pid), fds(pid));
        let mut marks = Vec::new();
        for round in 0..ROUNDS {
            for (i, ns) in netns[..PODS].iter().enumerate() {
                let pod = c.pod(&format!("r{round}p{i}"), ns, "client");
                assert_eq!(
                    curl(&pod.netns, "http://198.19.0.10/", 1),
                    set(["web-0"]),
                    "round {round} pod {i}"
                );
            }
            for (i, ns) in netns[..PODS].iter().enumerate() {
                assert!(c.del(&format!("r{round}p{i}"), ns).success);
            }
            c.assert_nothing_half_made(1, &format!("after round {round}"));
            marks.push((rss_kib(pid), fds(pid)));
        }
        let ports = c.agent.status().unwrap().datapath.devices;
        assert_eq!(ports.len(), 2, "the uplink and the web pod's veth are served: {ports:?}");
        eprintln!("churn: agent (RSS KiB, descriptors) before: {before:?}, after each round: {marks:?}");
        // A leak grows with the cycles: over the last 250 it would show. The first rounds also
        // fault in the tables' pages and make what the agent makes once.
        let (rss_settled, fds_half) = (marks[1].0, marks[ROUNDS / 2 - 1].1);
        let (rss_last, fds_last) = marks[ROUNDS - 1];
        assert!(fds_last <= fds_half, "descriptors grew over the last 250 cycles: {marks:?}");
        assert!(rss_last <= rss_settled + 1024, "RSS grew over 1 MiB in 400 cycles: {marks:?}");
    }
}
