//! `cargo xtask demo`: skiff at work in a lab of network namespaces, torn down at the end.
//! First skiff-agent on the node with `examples/demo` as the cluster: `skiff-cni` gives four
//! empty pod namespaces their network (`skiff endpoint list` shows them), the EndpointSlice
//! names the addresses they got, a client pod curls the ClusterIP and an external client the
//! NodePort through skiff's workers, the node itself the ClusterIP and its own NodePort on
//! 127.0.0.1 through socket-LB, `skiff status`, `skiff service list` and `skiff node
//! list` show it, a bad manifest is rejected while the service keeps forwarding, a pod
//! deleted (CNI DEL) leaves the service live, and SIGTERM stops the agent cleanly (the pods
//! keep their network, the XDP program stays attached with its flows) until `skiff-agent
//! cleanup` detaches it. Then the XDP program alone at the node's uplink: it passes the
//! node's traffic, drops a denied CIDR at the NIC, decapsulates VXLAN from the client's
//! kernel.

use std::{
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use skiff_lab::{
    Host, Lab, LabNode, Netns, Topology,
    agent::Agent,
    cni::{self, Call},
};

use crate::{cargo, run, setup, workspace_root};

pub fn demo() -> Result<()> {
    setup::setup(setup::Purpose::Run)?;
    println!(
        "== building skiff-agent, the skiff CLI, the XDP programs and their loader (minutes, the first time)"
    );
    let started = std::time::Instant::now();
    let packages = ["-p", "skiff-control", "-p", "skiff", "-p", "skiff-xdp"];
    run(cargo().args(["build", "-q", "--bins", "--example", "ingress"]).args(packages))?;
    println!("  built in {:.0} s", started.elapsed().as_secs_f64());
    let bin = workspace_root().join("target/debug");

    println!("== lab: a node, an external client, and 4 pod namespaces with no network yet");
    let mut lab = Topology::new().cni_pods(4).build()?;
    let (node, client) = (lab.node().clone(), lab.client().clone());
    println!("  client {} ── uplink ── node {} ── (the pods: skiff-cni will tell)", client.ipv4, node.ipv4);
    let web = services_through_skiff(&mut lab, &bin)?;
    xdp_at_the_nic(&lab, &web, &bin.join("examples/ingress"))?;

    println!("== removing the lab");
    let id = lab.id().to_owned();
    drop(lab);
    let left = skiff_lab::list(None)?;
    if !left.is_empty() {
        bail!("lab namespaces left behind: {}", left.join(" "));
    }
    for dir in [format!("/sys/fs/bpf/skiff-demo-{id}"), format!("/sys/fs/bpf/skiff-demo-agent-{id}")] {
        if std::path::Path::new(&dir).exists() {
            bail!("pinned maps left behind in {dir}");
        }
    }
    println!("demo done: no lab namespaces or pinned maps left");
    Ok(())
}

/// The XDP program alone at the node's uplink: it passes the node's traffic, drops a denied
/// CIDR and decapsulates VXLAN from the client's kernel. `web` are pods that kept their
/// network.
fn xdp_at_the_nic(lab: &Lab, web: &[Host], loader: &std::path::Path) -> Result<()> {
    let (node, client) = (lab.node(), lab.client());
    let pods: Vec<String> = web.iter().map(|p| p.ipv4.to_string()).collect();
    println!("== XDP alone: attaching skiff_xdp_ingress to the node's uplink (mode auto)");
    let pin_dir = format!("/sys/fs/bpf/skiff-demo-{}", lab.id());
    let mut agent = node
        .netns
        .command(loader.to_str().context("path is UTF-8")?)
        .args([&client.node_iface, &node.ipv4.to_string(), &pin_dir, "auto"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the XDP loader")?;
    let mut control = Control {
        stdin: agent.stdin.take().expect("piped"),
        stdout: BufReader::new(agent.stdout.take().expect("piped")),
    };
    println!("  {}", control.line()?);

    println!("== the client curls each web pod through the node: XDP passes the node's traffic");
    for pod in web {
        println!(
            "  curl http://{}:8080/ → {}",
            pod.ipv4,
            curl(&client.netns, None, &format!("{}:8080", pod.ipv4))?
        );
    }

    println!("== deny 198.18.0.64/28 at the NIC, then curl from the client's 198.18.0.66");
    control.ask("deny 198.18.0.64/28")?;
    client.netns.exec("ip", &["addr", "add", "198.18.0.66/32", "dev", "eth0"])?;
    let web0 = format!("{}:8080", pods[0]);
    println!(
        "  curl --interface 198.18.0.66 http://{web0}/ → {}",
        curl(&client.netns, Some("198.18.0.66"), &web0)?
    );
    println!("  curl from 198.18.0.2 still → {}", curl(&client.netns, None, &web0)?);

    println!("== VXLAN: the client's kernel encapsulates pings to 198.19.42.1 (VNI 42, port 8472)");
    control.ask(&format!("node {} 42 198.19.42.0/24", client.ipv4))?;
    vxlan_peer(client, &node.netns)?;
    let ping =
        client.netns.command("ping").args(["-c", "3", "-i", "0.2", "-W", "1", "198.19.42.1"]).output()?;
    let summary = String::from_utf8_lossy(&ping.stdout);
    println!(
        "  {}",
        summary.lines().find(|l| l.contains("packets transmitted")).unwrap_or("no ping summary")
    );
    println!("  (the node has no vxlan device: XDP stripped the outer headers)");

    println!("== what skiff_xdp_ingress counted");
    for line in control.ask("stats")? {
        println!("  {line}");
    }
    drop(control);
    let status = agent.wait()?;
    if !status.success() {
        bail!("the XDP loader exited with {status}");
    }
    println!("  detached, maps unpinned");
    Ok(())
}

/// skiff-agent on the lab's node, with the CLI and skiff-cni as the demo calls them.
struct OnTheNode {
    node: Netns,
    agent: Agent,
    skiff: std::path::PathBuf,
    /// The folder of objects the agent watches.
    state: std::path::PathBuf,
    plugin: std::path::PathBuf,
    /// The plugin's configuration, derived from the installed conflist as a runtime does.
    conf: String,
}

/// The folder of objects goes with it, also when the demo fails part-way.
impl Drop for OnTheNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl OnTheNode {
    fn start(lab: &Lab, bin: &std::path::Path) -> Result<OnTheNode> {
        let node = lab.node().netns.clone();
        let name = format!("demo-agent-{}", lab.id());
        let state = std::env::temp_dir().join(format!("skiff-{name}-objects"));
        std::fs::create_dir_all(&state)?;
        for file in ["node.yaml", "pods.yaml"] {
            std::fs::copy(workspace_root().join("examples/demo").join(file), state.join(file))?;
        }
        let state_arg = state.display().to_string();
        let uplink = &lab.client().node_iface;
        let args: Vec<String> = [
            "--state-dir",
            &state_arg,
            "--node-name",
            "node1",
            "--device",
            uplink,
            "--prometheus-serve-addr",
            METRICS,
        ]
        .map(String::from)
        .into();
        println!("== skiff-agent on the node: objects from examples/demo, the pods' network from skiff-cni");
        println!("  skiff-agent {}", args.join(" "));
        let agent = Agent::start(&node, &bin.join("skiff-agent"), &name, &args)?;
        let (conflist, plugin) = agent.cni_conf();
        println!("  it installed {} and {}", plugin.display(), conflist.display());
        let list: serde_json::Value = serde_json::from_slice(&std::fs::read(&conflist)?)?;
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        Ok(OnTheNode { node, agent, skiff: bin.join("skiff"), state, plugin, conf: conf.to_string() })
    }

    /// The `skiff` CLI's output.
    /// A field of `skiff status -o json`, by JSON pointer.
    fn status(&self, pointer: &str) -> Option<serde_json::Value> {
        let json: serde_json::Value =
            serde_json::from_str(&self.skiff(&["status", "-o", "json"]).ok()?).ok()?;
        json.pointer(pointer).cloned()
    }

    fn skiff(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.skiff).arg("--socket").arg(self.agent.socket()).args(args).output()?;
        if !out.status.success() {
            bail!("skiff {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// skiff-cni `command` for pod `pod` in `netns`; its result.
    fn cni(&self, command: &str, pod: &str, netns: &Netns) -> Result<cni::Output> {
        let args = format!("K8S_POD_NAMESPACE=demo;K8S_POD_NAME={pod}");
        let id = format!("demo-{pod}");
        let out = cni::call(
            &self.node,
            &self.plugin,
            &self.conf,
            &Call { args: &args, ..Call::new(command, &id, netns) },
        )?;
        if !out.success {
            bail!("skiff-cni {command} {pod}: {}", out.json);
        }
        Ok(out)
    }

    /// Waits until the web Service has `n` backends.
    fn wait_backends(&self, n: usize) -> Result<()> {
        wait_for("the web Service", || {
            self.skiff(&["service", "list", "-o", "json"]).is_ok_and(|s| {
                let services: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
                services[0]["backends"].as_array().is_some_and(|b| b.len() == n)
            })
        })
    }
}

/// skiff-agent on the node with examples/demo as the cluster: skiff-cni gives the pods their
/// network, the ClusterIP from the client pod and the NodePort from outside go through skiff's
/// workers, the CLI shows it, a rejected manifest changes nothing, a pod deleted live leaves
/// the service answering, and SIGTERM stops the agent. Returns the web pods still there.
fn services_through_skiff(lab: &mut Lab, bin: &std::path::Path) -> Result<Vec<Host>> {
    let mut on = OnTheNode::start(lab, bin)?;
    println!("== skiff-cni ADD for each pod, as a container runtime calls it");
    let mut pods = Vec::new();
    let cni_pods = lab.cni_pods().to_vec();
    for (name, netns) in ["web-0", "web-1", "web-2", "client"].into_iter().zip(&cni_pods) {
        let out = on.cni("ADD", name, netns)?;
        let pod = cni::host_of(name, netns, &out.json)?;
        let ms = out.elapsed.as_secs_f64() * 1000.0;
        println!("  {name}: {} and {} on {} ({ms:.0} ms)", pod.ipv4, pod.ipv6, pod.node_iface);
        pods.push(pod);
    }
    println!("== skiff endpoint list");
    print_indented(&on.skiff(&["endpoint", "list"])?);
    println!("== skiff identity list: Cilium's reserved identities, then one per pod label set");
    print_indented(&on.skiff(&["identity", "list"])?);
    for pod in &pods[..3] {
        lab.serve_http(pod, 8080)?;
    }
    let (client_pod, client, node) = (pods[3].clone(), lab.client().clone(), lab.node().clone());

    println!("== the web Service's EndpointSlice names the addresses the pods got");
    let mut web = std::fs::read_to_string(workspace_root().join("examples/demo/web.yaml"))?;
    for (i, pod) in pods[..3].iter().enumerate() {
        web = web.replace(&format!("[198.18.128.1{i}]"), &format!("[{}]", pod.ipv4));
    }
    std::fs::write(on.state.join("web.yaml"), &web)?;
    on.wait_backends(3)?;
    println!("== 30 curls from the client pod ({}) to the ClusterIP 198.19.0.10:80", client_pod.ipv4);
    println!("  answers by pod: {}", spread(&client_pod.netns, "198.19.0.10:80", 30)?);
    println!("== 30 curls from the external client to the NodePort {}:30080", node.ipv4);
    println!("  answers by pod: {}", spread(&client.netns, &format!("{}:30080", node.ipv4), 30)?);
    println!("== 30 curls from the node itself to the ClusterIP, and 30 to 127.0.0.1:30080");
    println!("  (socket-LB: the connect goes to a backend; curl runs in the cgroup skiff-agent serves)");
    for target in ["198.19.0.10:80", "127.0.0.1:30080"] {
        let answers = on.agent.cgroup.http_get(&node.netns, &format!("http://{target}/"), 30, 3)?;
        println!("  {target}: {}", described(&answers, 30));
    }
    println!("== skiff status");
    print_indented(&on.skiff(&["status"])?);
    println!("== skiff service list");
    print_indented(&on.skiff(&["service", "list"])?);
    println!("== skiff node list (one node here; control/tests/overlay.rs runs three)");
    print_indented(&on.skiff(&["node", "list"])?);
    bad_manifest(&on, &client_pod)?;
    network_policy(&on, &client_pod, &client, &node)?;

    println!("== web-2 is deleted: skiff-cni DEL, and its endpoint leaves the EndpointSlice");
    on.cni("DEL", "web-2", &cni_pods[2])?;
    let cut = web.find(&format!("  - addresses: [{}]", pods[2].ipv4)).context("web.yaml has web-2")?;
    std::fs::write(on.state.join("web.yaml"), &web[..cut])?;
    on.wait_backends(2)?;
    print_indented(&on.skiff(&["endpoint", "list"])?);
    println!("  30 new connections: {}", spread(&client_pod.netns, "198.19.0.10:80", 30)?);

    what_skiff_saw(&on)?;

    println!("== SIGTERM to skiff-agent (the pods keep their network; flows at the NIC keep flowing)");
    let exit = on.agent.terminate()?;
    if !exit.success() {
        bail!("skiff-agent exited with {exit}");
    }
    let uplink = lab.client().node_iface.clone();
    let attached = || -> Result<bool> {
        let out = lab.node().netns.exec("ip", &["-d", "link", "show", &uplink])?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
    };
    println!("  XDP on {uplink} while no agent runs: {}", if attached()? { "attached" } else { "detached" });
    println!("== skiff-agent cleanup: an uninstall detaches XDP and removes the pinned maps");
    let cleanup =
        Command::new(bin.join("skiff-agent")).arg("cleanup").arg("--pin-dir").arg(&on.agent.pins).output()?;
    if !cleanup.status.success() {
        bail!("skiff-agent cleanup: {}", String::from_utf8_lossy(&cleanup.stderr));
    }
    print_indented(&String::from_utf8_lossy(&cleanup.stdout));
    if attached()? {
        bail!("XDP still attached to {uplink} after cleanup");
    }
    println!("  XDP on {uplink}: detached");
    Ok(pods[..2].to_vec())
}

/// Where the demo's agent serves Prometheus metrics, in the node's namespace.
const METRICS: &str = "127.0.0.1:9962";

/// The flows skiff decided, as `skiff observe` shows them, and a metric as Prometheus
/// scrapes it.
fn what_skiff_saw(on: &OnTheNode) -> Result<()> {
    println!(
        "== skiff observe --last 20: the last flows skiff decided (the workers', and the NIC's sampled)"
    );
    print_indented(&on.skiff(&["observe", "--last", "20"])?);
    println!("== one metric, as Prometheus scrapes it from http://{METRICS}/metrics");
    let out = on.node.exec("curl", &["-sS", &format!("http://{METRICS}/metrics")])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("skiff_service_flows_total"))
        .context("no skiff_service_flows_total")?;
    println!("  {line}");
    Ok(())
}

/// A Service on port 65536 arrives: rejected, and the service keeps forwarding.
fn bad_manifest(on: &OnTheNode, client_pod: &Host) -> Result<()> {
    println!("== a bad manifest arrives: a Service on port 65536");
    std::fs::write(
        on.state.join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\nspec:\n  clusterIP: 198.19.0.11\n  ports: [{port: 65536, targetPort: 8080}]\n",
    )?;
    wait_for("the rejection", || on.skiff(&["status", "-o", "json"]).is_ok_and(|s| s.contains("broken")))?;
    let status = on.skiff(&["status"])?;
    let rejections: Vec<&str> =
        status.lines().skip_while(|l| !l.trim_start().starts_with("Rejections")).collect();
    print_indented(&rejections.join("\n"));
    println!("  the service keeps forwarding: {}", spread(&client_pod.netns, "198.19.0.10:80", 9)?);
    Ok(())
}

/// A CiliumNetworkPolicy lets only the client pods reach the web pods: the client pod still
/// gets through the ClusterIP, the world no longer through the NodePort; `skiff policy get`
/// and `trace` say why; without it the NodePort answers again.
fn network_policy(on: &OnTheNode, client_pod: &Host, client: &Host, node: &LabNode) -> Result<()> {
    println!("== a CiliumNetworkPolicy: only app=client may reach app=web, on TCP 8080");
    let policy = std::fs::read_to_string(workspace_root().join("examples/policy/web-from-client.yaml"))?;
    print_indented(&policy);
    std::fs::write(on.state.join("policy.yaml"), policy)?;
    // The three web pods under ingress policy.
    wait_for("the policy", || on.status("/enforced/0") == Some(3.into()))
        .with_context(|| format!("status: {:?}", on.skiff(&["status"])))?;
    print_indented(&on.skiff(&["endpoint", "list"])?);
    println!("  the client pod through the ClusterIP: {}", spread(&client_pod.netns, "198.19.0.10:80", 9)?);
    let nodeport = format!("{}:30080", node.ipv4);
    let denied = client.netns.http_get(&format!("http://{nodeport}/"), 2, 1)?;
    println!("  the external client through the NodePort: {} of 2 answered (denied)", denied.answered());
    println!("== skiff policy get");
    print_indented(&on.skiff(&["policy", "get"])?);
    println!("== skiff policy trace, from the client pod and from the world");
    print_indented(&on.skiff(&[
        "policy",
        "trace",
        "--src-pod",
        "demo/client",
        "--dst-pod",
        "demo/web-0",
        "--dport",
        "8080/TCP",
    ])?);
    let world = client.ipv4.to_string();
    print_indented(&on.skiff(&[
        "policy",
        "trace",
        "--src-ip",
        &world,
        "--dst-pod",
        "demo/web-0",
        "--dport",
        "8080/TCP",
    ])?);
    println!("== the policy is deleted: the NodePort answers again");
    std::fs::remove_file(on.state.join("policy.yaml"))?;
    wait_for("no policy", || on.status("/policies") == Some(0.into()))?;
    println!("  the external client through the NodePort: {}", spread(&client.netns, &nodeport, 9)?);
    Ok(())
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        if std::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// `n` curls (new connections) to `target`, counted by the pod that answered.
fn spread(from: &Netns, target: &str, n: usize) -> Result<String> {
    Ok(described(&from.http_get(&format!("http://{target}/"), n, 3)?, n))
}

/// `n` answers counted by the pod that gave them, and what went unanswered.
fn described(answers: &skiff_lab::Answers, n: usize) -> String {
    let mut text = answers.by_host.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    if answers.answered() < n {
        text.push_str(&format!(" — {} of {n} unanswered: {}", n - answers.answered(), answers.errors));
    }
    text
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}

/// The loader's stdin and stdout.
struct Control {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Control {
    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the XDP loader exited early (see its error above)");
        }
        Ok(line.trim_end().to_owned())
    }

    /// Sends a command and returns its answer (the lines before ".").
    fn ask(&mut self, command: &str) -> Result<Vec<String>> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let mut answer = Vec::new();
        loop {
            match self.line()? {
                end if end == "." => return Ok(answer),
                line => answer.push(line),
            }
        }
    }
}

fn curl(client: &Netns, from: Option<&str>, target: &str) -> Result<String> {
    let mut cmd = client.command("curl");
    cmd.args(["-sS", "--max-time", "2"]);
    if let Some(addr) = from {
        cmd.args(["--interface", addr]);
    }
    let out = cmd.arg(format!("http://{target}/")).output()?;
    Ok(if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        format!("no answer ({})", String::from_utf8_lossy(&out.stderr).trim())
    })
}

/// A kernel vxlan device in the client towards the node, and the node's end of the overlay:
/// an address on lo and a route back (plain, unencapsulated).
fn vxlan_peer(client: &Host, node: &Netns) -> Result<()> {
    let mac = client.node_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let (local, remote) = (client.ipv4.to_string(), "198.18.0.1".to_string());
    for args in [
        vec![
            "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "8472", "dev", "eth0", "local",
            &local, "remote", &remote,
        ],
        vec!["addr", "add", "198.19.42.2/24", "dev", "vx0"],
        // IPv4 only: the kernel's IPv6 link-local chatter on vx0 would claim VNI 42 from
        // fe80:: sources, which the ipcache does not give 42 (dropped at the NIC).
        vec!["link", "set", "vx0", "addrgenmode", "none"],
        vec!["link", "set", "vx0", "up"],
        vec!["neigh", "replace", "198.19.42.1", "lladdr", &mac, "dev", "vx0", "nud", "permanent"],
    ] {
        client.netns.exec("ip", &args)?;
    }
    node.exec("ip", &["addr", "add", "198.19.42.1/32", "dev", "lo"])?;
    node.exec("ip", &["route", "add", "198.19.42.0/24", "via", &local])?;
    Ok(())
}
