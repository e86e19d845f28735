//! `cargo xtask demo`: the XDP ingress program at work in a lab of network namespaces (until
//! the rest of the datapath lands): a node whose uplink carries `skiff_xdp_ingress`, a client,
//! three pods serving HTTP. The client reaches the pods through the node, a denied CIDR is
//! dropped at the NIC and counted, VXLAN from the client's kernel is decapsulated by XDP, and
//! the program's counters show it all. Everything is torn down at the end.

use std::{
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, ChildStdout, Stdio},
};

use anyhow::{Context, Result, bail};
use skiff_lab::{Host, Netns, Topology};

use crate::{cargo, run, setup, workspace_root};

pub fn demo() -> Result<()> {
    setup::setup()?;
    println!("== building the XDP programs and their loader");
    run(cargo().args(["build", "-p", "skiff-xdp", "--example", "ingress"]))?;
    let loader = workspace_root().join("target/debug/examples/ingress");

    println!("== lab: a node, a client and 3 pods serving HTTP");
    let mut lab = Topology::new().pods(3).build()?;
    for pod in lab.pods().to_vec() {
        lab.serve_http(&pod, 80)?;
    }
    let (node, client) = (lab.node().clone(), lab.client().clone());
    let pods: Vec<String> = lab.pods().iter().map(|p| p.ipv4.to_string()).collect();
    println!(
        "  client {} ── uplink ── node {} ── lxc0..2 ── pods {}",
        client.ipv4,
        node.ipv4,
        pods.join(", ")
    );

    println!("== attaching skiff_xdp_ingress to the node's uplink (mode auto)");
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

    println!("== the client curls each pod through the node: XDP passes the node's traffic");
    for pod in lab.pods() {
        println!("  curl http://{}/ → {}", pod.ipv4, curl(&client.netns, None, pod)?);
    }

    println!("== deny 198.18.0.64/28 at the NIC, then curl from the client's 198.18.0.66");
    control.ask("deny 198.18.0.64/28")?;
    client.netns.exec("ip", &["addr", "add", "198.18.0.66/32", "dev", "eth0"])?;
    println!(
        "  curl --interface 198.18.0.66 http://{}/ → {}",
        pods[0],
        curl(&client.netns, Some("198.18.0.66"), &lab.pods()[0])?
    );
    println!("  curl from 198.18.0.2 still → {}", curl(&client.netns, None, &lab.pods()[0])?);

    println!("== VXLAN: the client's kernel encapsulates pings to 198.19.42.1 (VNI 42, port 8472)");
    vxlan_peer(&client, &node.netns)?;
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
    println!("== detached, maps unpinned; removing the lab");
    drop(lab);
    let left = skiff_lab::list(None)?;
    if !left.is_empty() {
        bail!("lab namespaces left behind: {}", left.join(" "));
    }
    if std::path::Path::new(&pin_dir).exists() {
        bail!("pinned maps left behind in {pin_dir}");
    }
    println!("demo done: no lab namespaces or pinned maps left");
    Ok(())
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

fn curl(client: &Netns, from: Option<&str>, pod: &Host) -> Result<String> {
    let mut cmd = client.command("curl");
    cmd.args(["-sS", "--max-time", "2"]);
    if let Some(addr) = from {
        cmd.args(["--interface", addr]);
    }
    let out = cmd.arg(format!("http://{}/", pod.ipv4)).output()?;
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
