//! `cargo xtask demo`: until the datapath lands, it shows the toolchain end to end: a lab of
//! network namespaces, the counting XDP program attached to the node's uplink, real HTTP
//! traffic from the client to three pods, the counter, and a clean teardown.

use std::{
    io::{BufRead, BufReader, Write},
    process::{ChildStdout, Stdio},
};

use anyhow::{Context, Result, bail};
use skiff_lab::Topology;

use crate::{cargo, output_of, run, setup, workspace_root};

const REQUESTS_PER_POD: usize = 3;

pub fn demo() -> Result<()> {
    setup::setup()?;
    println!("== building the XDP program and its loader");
    run(cargo().args(["build", "-p", "skiff-xdp", "--example", "count"]))?;
    let count_bin = workspace_root().join("target/debug/examples/count");

    println!("== lab: a node, a client and 3 pods serving HTTP");
    let mut lab = Topology::new().pods(3).build()?;
    for pod in lab.pods().to_vec() {
        lab.serve_http(&pod, 80)?;
    }
    let node = lab.node().clone();
    let client = lab.client().clone();
    println!(
        "  client {} ── uplink ── node {} ── lxc0..2 ── pods {}",
        client.ipv4,
        node.ipv4,
        lab.pods().iter().map(|p| p.ipv4.to_string()).collect::<Vec<_>>().join(", ")
    );

    println!("== attaching skiff_xdp_count to the node's uplink (mode auto)");
    let mut agent = node
        .netns
        .command(count_bin.to_str().context("path is UTF-8")?)
        .args([client.node_iface.as_str(), "auto"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the XDP loader")?;
    let mut stdin = agent.stdin.take().expect("piped");
    let mut stdout = BufReader::new(agent.stdout.take().expect("piped"));
    println!("  {}", read_line(&mut stdout)?);

    let before = counter(&mut stdin, &mut stdout)?;
    println!("== {REQUESTS_PER_POD} requests from the client to each pod, through the node");
    for pod in lab.pods() {
        for _ in 0..REQUESTS_PER_POD {
            let url = format!("http://{}/", pod.ipv4);
            let reply = output_of(client.netns.command("curl").args(["-sS", "--max-time", "5", &url]))?;
            println!("  curl {url:<22} → {}", reply.trim());
        }
    }
    let after = counter(&mut stdin, &mut stdout)?;
    println!("== what the XDP program counted on the uplink (all CPUs)");
    println!("  before: {before}\n  after:  {after}");

    drop(stdin);
    let status = agent.wait()?;
    if !status.success() {
        bail!("the XDP loader exited with {status}");
    }
    println!("== detached; removing the lab");
    drop(lab);
    let left = skiff_lab::list(None)?;
    if !left.is_empty() {
        bail!("lab namespaces left behind: {}", left.join(" "));
    }
    println!("demo done: no lab namespaces left");
    Ok(())
}

fn counter(stdin: &mut impl Write, stdout: &mut BufReader<ChildStdout>) -> Result<String> {
    writeln!(stdin)?;
    stdin.flush()?;
    read_line(stdout)
}

fn read_line(stdout: &mut BufReader<ChildStdout>) -> Result<String> {
    let mut line = String::new();
    if stdout.read_line(&mut line)? == 0 {
        bail!("the XDP loader exited early (see its error above)");
    }
    Ok(line.trim().to_owned())
}
