//! `cargo xtask demo`: skiff at work in a lab of network namespaces, torn down at the end.
//! First the XDP program alone at the node's uplink (it passes the node's traffic, drops a
//! denied CIDR at the NIC, decapsulates VXLAN from the client's kernel); then skiff-agent on
//! the node with `examples/demo` as the cluster: a client pod curls the ClusterIP and an
//! external client the NodePort through skiff's workers, `skiff status` and `skiff service
//! list` show it, a bad manifest is rejected while the service keeps forwarding, an endpoint
//! removed from the folder leaves the service live, and SIGTERM stops the agent cleanly.

use std::{
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, ChildStdout, Stdio},
};

use anyhow::{Context, Result, bail};
use skiff_lab::{Host, Lab, Netns, Topology};

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

    println!("== lab: a node, an external client, 3 web pods serving HTTP on 8080, a client pod");
    let mut lab = Topology::new().pods(4).build()?;
    let web = lab.pods()[..3].to_vec();
    for pod in &web {
        lab.serve_http(pod, 8080)?;
    }
    let (node, client) = (lab.node().clone(), lab.client().clone());
    let pods: Vec<String> = lab.pods().iter().map(|p| p.ipv4.to_string()).collect();
    println!(
        "  client {} ── uplink ── node {} ── lxc0..3 ── pods {} (the last one is the client pod)",
        client.ipv4,
        node.ipv4,
        pods.join(", ")
    );
    xdp_at_the_nic(&lab, &bin.join("examples/ingress"))?;
    services_through_skiff(&lab, &bin)?;

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
/// CIDR and decapsulates VXLAN from the client's kernel.
fn xdp_at_the_nic(lab: &Lab, loader: &std::path::Path) -> Result<()> {
    let (node, client) = (lab.node(), lab.client());
    let pods: Vec<String> = lab.pods().iter().map(|p| p.ipv4.to_string()).collect();
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
    let web = lab.pods()[..3].to_vec();
    for pod in &web {
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

/// skiff-agent on the node with examples/demo as the cluster: the ClusterIP from the client
/// pod and the NodePort from outside through skiff's workers, the CLI's view, a rejected
/// manifest that changes nothing, an endpoint removed live, and a clean SIGTERM.
fn services_through_skiff(lab: &Lab, bin: &std::path::Path) -> Result<()> {
    let (node, client) = (lab.node(), lab.client());
    let client_pod = &lab.pods()[3];
    let work = std::env::temp_dir().join(format!("skiff-demo-{}", lab.id()));
    let state = work.join("state");
    std::fs::create_dir_all(&state)?;
    for file in ["node.yaml", "web.yaml", "pods.yaml"] {
        std::fs::copy(workspace_root().join("examples/demo").join(file), state.join(file))?;
    }
    let socket = work.join("skiff.sock");
    let pin_dir = format!("/sys/fs/bpf/skiff-demo-agent-{}", lab.id());
    let mut args =
        vec!["--state-dir".to_owned(), state.display().to_string(), "--node-name".into(), "node1".into()];
    for device in std::iter::once(&client.node_iface).chain(lab.pods().iter().map(|p| &p.node_iface)) {
        args.extend(["--device".to_owned(), device.clone()]);
    }
    args.extend(["--socket".into(), socket.display().to_string(), "--pin-dir".into(), pin_dir]);
    println!("== skiff-agent on the node, state from examples/demo");
    println!("  skiff-agent {}", args.join(" "));
    let mut agent = Agent(
        node.netns
            .command(bin.join("skiff-agent").to_str().context("path is UTF-8")?)
            .args(&args)
            .spawn()
            .context("starting skiff-agent")?,
    );
    let skiff = |args: &[&str]| -> Result<String> {
        let out =
            std::process::Command::new(bin.join("skiff")).arg("--socket").arg(&socket).args(args).output()?;
        if !out.status.success() {
            bail!("skiff {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let applies = || -> u64 {
        let status = skiff(&["status", "-o", "json"]).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&status)
            .ok()
            .and_then(|s| s["applies"].as_u64())
            .unwrap_or(0)
    };
    wait_for("the first apply", || applies() >= 1)?;

    println!("== 30 curls from the client pod ({}) to the ClusterIP 198.19.0.10:80", client_pod.ipv4);
    println!("  answers by pod: {}", spread(&client_pod.netns, "198.19.0.10:80", 30)?);
    println!("== 30 curls from the external client to the NodePort {}:30080", node.ipv4);
    println!("  answers by pod: {}", spread(&client.netns, &format!("{}:30080", node.ipv4), 30)?);

    println!("== skiff status");
    print_indented(&skiff(&["status"])?);
    println!("== skiff service list");
    print_indented(&skiff(&["service", "list"])?);

    println!("== a bad manifest arrives: a Service on port 65536");
    std::fs::write(
        state.join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\nspec:\n  clusterIP: 198.19.0.11\n  ports: [{port: 65536, targetPort: 8080}]\n",
    )?;
    let rejected = || skiff(&["status", "-o", "json"]).is_ok_and(|s| s.contains("broken"));
    wait_for("the rejection", rejected)?;
    let status = skiff(&["status"])?;
    print_indented(
        &status
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("Rejections"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    println!("  the service keeps forwarding: {}", spread(&client_pod.netns, "198.19.0.10:80", 9)?);

    println!("== web-2 goes away: its endpoint leaves the EndpointSlice");
    let web = std::fs::read_to_string(state.join("web.yaml"))?;
    let cut = web.find("  - addresses: [198.18.128.12]").context("web.yaml has web-2")?;
    let before = applies();
    std::fs::write(state.join("web.yaml"), &web[..cut])?;
    wait_for("the endpoint change", || applies() > before)?;
    print_indented(&skiff(&["service", "list"])?);
    println!("  30 new connections: {}", spread(&client_pod.netns, "198.19.0.10:80", 30)?);

    println!("== SIGTERM to skiff-agent");
    agent.terminate()?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// skiff-agent, stopped with SIGTERM (and killed if a failure cuts the demo short).
struct Agent(std::process::Child);

impl Agent {
    fn terminate(&mut self) -> Result<()> {
        let pid = i32::try_from(self.0.id())?;
        // SAFETY: kill(2) on the agent we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.0.wait()?;
        if !status.success() {
            bail!("skiff-agent exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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
    let answers = from.http_get(&format!("http://{target}/"), n, 3)?;
    let mut text = answers.by_host.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    if answers.answered() < n {
        text.push_str(&format!(" — {} of {n} unanswered: {}", n - answers.answered(), answers.errors));
    }
    Ok(text)
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
        vec!["link", "set", "vx0", "up"],
        vec!["neigh", "replace", "198.19.42.1", "lladdr", &mac, "dev", "vx0", "nud", "permanent"],
    ] {
        client.netns.exec("ip", &args)?;
    }
    node.exec("ip", &["addr", "add", "198.19.42.1/32", "dev", "lo"])?;
    node.exec("ip", &["route", "add", "198.19.42.0/24", "via", &local])?;
    Ok(())
}
