//! skiff installed on a real Kubernetes node as an operator installs it: a kubelet (v1.20.2,
//! with containerd and a control plane, `skiff_lab::kubenode`) in a lab namespace, skiff's
//! image (built by `cargo xtask test`) and `docker/`'s manifests applied with kubectl. The
//! DaemonSet's pod becomes Ready and installs the CNI; a Deployment's pods get their addresses
//! from skiff, a client pod reaches every replica through the ClusterIP and the NodePort answers
//! from outside the node; Cilium's `allow-frontend-to-backend` policy admits the frontend and
//! refuses the rest; scaling and deleting pods are followed within seconds and leak nothing;
//! the DaemonSet restarts a deleted agent, the pods keep their network and a TCP connection
//! open through the NodePort carries on. Root only.

mod privileged {
    use std::{collections::BTreeMap, path::Path, time::Duration};

    use serde_json::Value;
    use skiff_lab::kubenode::{BUSYBOX, KubeNode, NODE};

    /// Polls `done` for up to `secs` seconds; how long it took.
    fn wait_until(what: &str, secs: u64, done: impl FnMut() -> bool) -> Duration {
        skiff_lab::poll(what, Duration::from_secs(secs), done).unwrap()
    }

    /// `docker/skiff.yaml` as an operator edits it for this node: the image as built here, the
    /// node's uplink as the device, and no socket-LB (its cgroup root here is the machine's).
    fn manifests() -> String {
        let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/skiff.yaml");
        let text = std::fs::read_to_string(docker).unwrap();
        let edits = [
            ("image: skiff:latest", format!("image: {}", skiff_lab::image::IMAGE)),
            ("devices: \"eth0\"", "devices: \"uplink\"".to_owned()),
            ("bpf-lb-sock: \"true\"", "bpf-lb-sock: \"false\"".to_owned()),
        ];
        edits.iter().fold(text, |text, (from, to)| {
            assert!(text.contains(from), "skiff.yaml has {from}");
            text.replace(from, to)
        })
    }

    const APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, role: backend}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: httpd
          image: BUSYBOX
          imagePullPolicy: Never
          command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www']
          ports: [{containerPort: 80, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: nc
          image: BUSYBOX
          imagePullPolicy: Never
          command: [nc, -ll, -p, "7", -e, cat]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{port: 7, nodePort: 30007}]
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: default, labels: {role: frontend}}
spec:
  terminationGracePeriodSeconds: 2
  containers: [{name: c, image: BUSYBOX, imagePullPolicy: Never, command: [sleep, "100000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {role: other}}
spec:
  terminationGracePeriodSeconds: 2
  containers: [{name: c, image: BUSYBOX, imagePullPolicy: Never, command: [sleep, "100000"]}]
"#;

    /// Cilium's documentation's example, as written.
    const ALLOW_FRONTEND_TO_BACKEND: &str = r#"
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "allow-frontend-to-backend"
spec:
  endpointSelector:
    matchLabels:
      role: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        role: frontend
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
"#;

    fn apply(node: &KubeNode, yaml: &str) {
        print!("{}", node.apply(yaml).unwrap());
    }

    fn json(node: &KubeNode, args: &[&str]) -> Value {
        let args = [args, &["-o", "json"]].concat();
        serde_json::from_str(&node.kubectl(&args).unwrap()).unwrap()
    }

    /// The default namespace's pods by name: (phase, IP).
    fn pods(node: &KubeNode) -> BTreeMap<String, (String, String)> {
        let list = json(node, &["get", "pods"]);
        let items = list["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .map(|p| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (s(&p["metadata"]["name"]), (s(&p["status"]["phase"]), s(&p["status"]["podIP"])))
            })
            .collect()
    }

    /// An HTTP GET from pod `from` (busybox wget, bounded by `timeout`): the page, or None.
    fn get(node: &KubeNode, from: &str, url: &str) -> Option<String> {
        // (Debian's static busybox wget crashes with its own -T.)
        node.kubectl(&["exec", from, "--", "timeout", "5", "wget", "-q", "-O", "-", url])
            .ok()
            .map(|page| page.trim().to_owned())
    }

    /// The agent's view, from its pod: `skiff ARGS -o json`.
    fn skiff(node: &KubeNode, args: &[&str]) -> Value {
        let args =
            [&["exec", "-n", "kube-system", "ds/skiff", "--", "skiff"][..], args, &["-o", "json"]].concat();
        serde_json::from_str(&node.kubectl(&args).unwrap()).unwrap()
    }

    fn web_pods(node: &KubeNode) -> Vec<(String, String)> {
        pods(node)
            .into_iter()
            .filter(|(name, (phase, ip))| name.starts_with("web-") && phase == "Running" && !ip.is_empty())
            .map(|(name, (_, ip))| (name, ip))
            .collect()
    }

    fn backends(node: &KubeNode, cluster_ip: &str) -> usize {
        let services: Vec<skiff_api::ServiceView> =
            serde_json::from_value(skiff(node, &["service", "list"])).unwrap();
        let frontend = format!("{cluster_ip}:80/TCP");
        services.iter().find(|s| s.frontend() == frontend).map_or(0, |s| s.backends.len())
    }

    /// A TCP connection from the lab's client to the echo Service's NodePort, line by line
    /// (python3 holds it; a reset ends it, and the next line gets no answer).
    struct Echo {
        child: std::process::Child,
        lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    }

    impl Echo {
        fn connect(node: &KubeNode) -> Echo {
            let script = "import socket, sys\n\
                s = socket.create_connection((sys.argv[1], 30007), timeout=10)\n\
                for line in sys.stdin:\n    s.sendall(line.encode())\n    print(s.recv(100).decode().strip(), flush=True)\n";
            let mut child = node
                .lab()
                .client()
                .netns
                .command("python3")
                .args(["-c", script, &node.address().to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
            Echo { child, lines }
        }

        fn say(&mut self, line: &str) -> String {
            use std::io::Write;
            let stdin = self.child.stdin.as_mut().unwrap();
            writeln!(stdin, "{line}").unwrap();
            stdin.flush().unwrap();
            self.lines.next().and_then(Result::ok).unwrap_or_default()
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn skiff_is_the_network_of_a_real_kubelet_node() {
        let node = KubeNode::start().expect("a kubelet node starts");
        install(&node);
        let cluster_ip = every_pod_has_skiffs_network(&node);
        the_policy_admits_the_frontend_alone(&node, &cluster_ip);
        pods_come_and_go(&node, &cluster_ip);
        the_agent_restarts_under_traffic(&node, &cluster_ip);
    }

    /// The CRDs and skiff's manifests applied: the DaemonSet's pod and the node are Ready,
    /// and the CNI is installed.
    fn install(node: &KubeNode) {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/crds.yaml");
        print!("{}", node.kubectl(&["apply", "-f", crds.to_str().unwrap()]).unwrap());
        apply(node, &manifests());
        let ready = wait_until("skiff's pod Ready and the node Ready", 180, || {
            let ds = json(node, &["get", "-n", "kube-system", "daemonset", "skiff"]);
            let node1 = json(node, &["get", "node", NODE]);
            let ready = node1["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ds["status"]["numberReady"] == 1 && ready
        });
        println!(
            "skiff's DaemonSet pod Ready and node1 Ready {:.1} s after kubectl apply",
            ready.as_secs_f64()
        );
        let cni = node.exec("ls", &["/etc/cni/net.d", "/opt/cni/bin"]).unwrap();
        assert!(cni.contains("05-skiff.conflist") && cni.contains("skiff-cni"), "{cni}");
    }

    /// A Deployment, its Service and two client pods: every pod has an address of the node's
    /// pod CIDR, a client reaches every replica through the ClusterIP, and the NodePort answers
    /// from outside. Returns the ClusterIP.
    fn every_pod_has_skiffs_network(node: &KubeNode) -> String {
        apply(node, &APPS.replace("BUSYBOX", BUSYBOX));
        wait_until("3 web pods and 3 others Running", 120, || {
            web_pods(node).len() == 3
                && pods(node).values().filter(|(phase, _)| phase == "Running").count() == 6
        });
        let pod_cidr = json(node, &["get", "node", NODE])["spec"]["podCIDR"].as_str().unwrap().to_owned();
        for (name, (_, ip)) in pods(node) {
            println!("  {name}: {ip}");
            let net: ipnet::IpNet = pod_cidr.parse().unwrap();
            assert!(net.contains(&ip.parse::<std::net::IpAddr>().unwrap()), "{name} {ip} in {pod_cidr}");
        }
        let service = json(node, &["get", "service", "web"]);
        let cluster_ip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();
        // 30 new connections: a replica missed by all has a chance of 3·(2/3)^30 ≈ 2e-5.
        let pages = node
            .kubectl(&[
                "exec",
                "frontend",
                "--",
                "sh",
                "-c",
                &format!("i=0; while [ $i -lt 30 ]; do wget -q -O - http://{cluster_ip}/; i=$((i+1)); done"),
            ])
            .expect("the ClusterIP answers");
        let mut answered: BTreeMap<&str, usize> = BTreeMap::new();
        for page in pages.lines() {
            *answered.entry(page).or_default() += 1;
        }
        println!("30 requests from frontend to {cluster_ip}: {answered:?}");
        assert_eq!(answered.values().sum::<usize>(), 30, "every request answered");
        assert_eq!(answered.len(), 3, "every replica answers through the ClusterIP");
        let outside =
            node.lab().client().netns.http_get(&format!("http://{}:30080/", node.address()), 6, 3).unwrap();
        println!("6 requests from outside the node to its NodePort: {:?}", outside.by_host);
        assert_eq!(outside.answered(), 6, "the NodePort answers from outside: {outside:?}");
        cluster_ip
    }

    /// Cilium's `allow-frontend-to-backend`: the frontend connects, another pod is refused.
    fn the_policy_admits_the_frontend_alone(node: &KubeNode, cluster_ip: &str) {
        apply(node, ALLOW_FRONTEND_TO_BACKEND);
        let web_ip = web_pods(node)[0].1.clone();
        wait_until("the policy enforced", 30, || get(node, "other", &format!("http://{web_ip}/")).is_none());
        assert!(get(node, "frontend", &format!("http://{web_ip}/")).is_some(), "the frontend still connects");
        assert!(
            get(node, "frontend", &format!("http://{cluster_ip}/")).is_some(),
            "also through the Service"
        );
        assert!(get(node, "other", &format!("http://{cluster_ip}/")).is_none(), "other is refused");
        println!("allow-frontend-to-backend: frontend connects, other is refused");
    }

    /// Scaled up and down, a pod deleted: skiff's backends, endpoints and addresses follow.
    fn pods_come_and_go(node: &KubeNode, cluster_ip: &str) {
        for replicas in [5, 2] {
            node.kubectl(&["scale", "deployment", "web", &format!("--replicas={replicas}")]).unwrap();
            let took = wait_until(&format!("{replicas} backends in skiff"), 60, || {
                backends(node, cluster_ip) == replicas
            });
            wait_until(&format!("{replicas} web pods"), 60, || web_pods(node).len() == replicas);
            println!("scaled to {replicas}: skiff had {replicas} backends after {:.1} s", took.as_secs_f64());
        }
        node.kubectl(&["delete", "pod", "other", "--wait=true"]).unwrap();
        // 2 web pods and the frontend: the deleted pods' endpoints and addresses are gone.
        let held = || {
            let endpoints = skiff(node, &["endpoint", "list"]).as_array().map_or(0, Vec::len);
            let ipam: skiff_api::IpamView = serde_json::from_value(skiff(node, &["ipam", "list"])).unwrap();
            (endpoints, ipam.pools.iter().map(|p| p.allocated.len()).sum::<usize>())
        };
        let took = wait_until("the deleted pods' endpoints and addresses released", 60, || held() == (4, 4));
        println!(
            "after scaling down and deleting a pod: 4 endpoints and 4 addresses held (web ×2, echo, frontend) after {:.1} s",
            took.as_secs_f64()
        );
    }

    /// skiff's pod deleted: the DaemonSet makes another, pods keep their network and a TCP
    /// connection opened before carries on.
    fn the_agent_restarts_under_traffic(node: &KubeNode, cluster_ip: &str) {
        // A TCP connection from outside through the NodePort, open while skiff's pod goes.
        let mut echo = Echo::connect(node);
        assert_eq!(echo.say("before"), "before");

        let agent = json(node, &["get", "pods", "-n", "kube-system"])["items"][0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        node.kubectl(&["delete", "pod", "-n", "kube-system", &agent, "--wait=false"]).unwrap();
        let restarted = wait_until("the DaemonSet's new pod Ready", 120, || {
            let pods = json(node, &["get", "pods", "-n", "kube-system"]);
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            items.iter().any(|p| {
                p["metadata"]["name"] != agent.as_str()
                    && p["status"]["containerStatuses"][0]["ready"] == true
            })
        });
        println!("skiff's pod deleted: the DaemonSet's new one Ready after {:.1} s", restarted.as_secs_f64());
        assert!(get(node, "frontend", &format!("http://{cluster_ip}/")).is_some(), "pods keep their network");
        assert_eq!(echo.say("after"), "after", "the connection opened before the restart carries on");
        println!("a TCP connection through the NodePort, open across the agent's restart, still echoes");
    }
}
