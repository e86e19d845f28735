//! A CNI plugin called the way a container runtime calls it: from the node's network
//! namespace, the operation and the attachment in `CNI_*` variables, the network configuration
//! on standard in, the result or error as JSON on standard out.

use std::{
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Host, Lab, LabError, Netns, agent::Agent};

/// One call of the plugin.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    /// `ADD`, `DEL`, `CHECK`, `GC`, `STATUS` or `VERSION`.
    pub command: &'a str,
    pub container_id: &'a str,
    /// The container's namespace (`CNI_NETNS`).
    pub netns: Option<PathBuf>,
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
}

impl<'a> Call<'a> {
    /// `command` for the container `container_id`'s `eth0` in `netns`.
    pub fn new(command: &'a str, container_id: &'a str, netns: &Netns) -> Call<'a> {
        Call { command, container_id, netns: Some(netns.path()), ifname: "eth0", args: "" }
    }
}

/// What the plugin answered.
#[derive(Clone, Debug)]
pub struct Output {
    pub success: bool,
    /// Its standard out as JSON (`Null` when it printed nothing).
    pub json: Value,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// The CNI error code, if it failed with an error result.
    pub fn code(&self) -> Option<u64> {
        self.json.get("code").and_then(Value::as_u64)
    }
}

/// Runs `plugin` in `node`'s namespace with `config` on standard in. Only a plugin that could
/// not run is an error; its own failure is in the output.
pub fn call(node: &Netns, plugin: &Path, config: &str, call: &Call) -> Result<Output, LabError> {
    let spawn_error =
        |source| LabError::Spawn { command: format!("{} {}", plugin.display(), call.command), source };
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(netns) = &call.netns {
        cmd.env("CNI_NETNS", netns);
    }
    // Spawned from a thread inside the node's namespace, the plugin starts there (without
    // `ip netns exec`, whose own start would be timed too).
    let started = Instant::now();
    let out = node.run(|| {
        let mut child = cmd.spawn()?;
        child.stdin.take().expect("piped").write_all(config.as_bytes())?;
        child.wait_with_output()
    })?;
    let elapsed = started.elapsed();
    let out = out.map_err(spawn_error)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).map_err(|_| LabError::Parse {
            what: "the plugin's JSON output".into(),
            text: stdout.clone().into(),
        })?
    };
    Ok(Output {
        success: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    })
}

/// The pod an ADD result describes, as a lab host named `name` (its HTTP server answers with
/// the name): the container's interface, its first IPv4 and IPv6 address, and the host side.
pub fn host_of(name: &str, netns: &Netns, result: &Value) -> Result<Host, LabError> {
    let bad = |what: &str| LabError::Parse { what: what.into(), text: result.to_string() };
    let interfaces = result["interfaces"].as_array().ok_or_else(|| bad("interfaces"))?;
    let (mut pod, mut host) = (None, None);
    for iface in interfaces {
        let mac = parse_mac(iface["mac"].as_str().unwrap_or_default()).ok_or_else(|| bad("a MAC"))?;
        let name = iface["name"].as_str().unwrap_or_default().to_owned();
        if iface.get("sandbox").is_some() { pod = Some((name, mac)) } else { host = Some((name, mac)) }
    }
    let ((iface, mac), (node_iface, node_mac)) =
        pod.zip(host).ok_or_else(|| bad("both sides of the veth"))?;
    let addresses = result["ips"].as_array().ok_or_else(|| bad("ips"))?;
    let address = |v4: bool| {
        addresses.iter().find_map(|ip| {
            let text = ip["address"].as_str()?;
            let addr = text.split('/').next()?;
            (addr.contains('.') == v4).then(|| addr.to_owned())
        })
    };
    let ipv4: Ipv4Addr = address(true).and_then(|a| a.parse().ok()).ok_or_else(|| bad("an IPv4 address"))?;
    let ipv6: Ipv6Addr = address(false).and_then(|a| a.parse().ok()).unwrap_or(Ipv6Addr::UNSPECIFIED);
    Ok(Host { name: name.into(), netns: netns.clone(), iface, mac, ipv4, ipv6, node_iface, node_mac })
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).ok()).collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// skiff-agent running in a node's namespace on a folder of objects, with the CNI
/// configuration it installed as a runtime derives it (the conflist's first plugin). Dropping
/// it kills the agent and removes the folder.
pub struct CniAgent {
    pub agent: Agent,
    /// The node's namespace.
    pub node: Netns,
    /// The agent's arguments (for a restart).
    pub args: Vec<String>,
    pub conf: String,
    pub plugin: PathBuf,
}

impl CniAgent {
    /// `agent` (skiff-agent) as node `node_name` in `node`, serving `device`, run with `--io io`
    /// and `extra` options on a folder holding `objects` as `cluster.yaml`; `name` makes its
    /// folders unique.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        node: &Netns,
        agent: &Path,
        name: &str,
        node_name: &str,
        device: &str,
        io: &str,
        extra: &[&str],
        objects: &str,
    ) -> CniAgent {
        let state = std::env::temp_dir().join(format!("skiff-{name}-objects"));
        std::fs::create_dir_all(&state).expect("the objects folder");
        std::fs::write(state.join("cluster.yaml"), objects).expect("the objects");
        let mut args: Vec<String> =
            ["--state-dir", state.to_str().unwrap_or_default(), "--node-name", node_name, "--io", io]
                .into_iter()
                .map(String::from)
                .collect();
        args.extend(["--device".into(), device.to_owned()]);
        if io == "afpacket" {
            // Without XDP nothing decapsulates: AF_PACKET runs with native routing.
            args.extend(["--routing-mode".into(), "native".into()]);
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let agent = match Agent::start(node, agent, name, &args) {
            Ok(agent) => agent,
            Err(e) => {
                // Nothing left behind by a failed start.
                let _ = std::fs::remove_dir_all(&state);
                panic!("skiff-agent starts: {e}");
            }
        };
        let (conflist, plugin) = agent.cni_conf();
        let list: Value =
            serde_json::from_slice(&std::fs::read(&conflist).expect("the conflist")).expect("JSON");
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        CniAgent { agent, node: node.clone(), args, conf: conf.to_string(), plugin }
    }

    /// The folder of objects the agent watches.
    pub fn objects(&self) -> PathBuf {
        PathBuf::from(&self.args[1])
    }

    /// Replaces the objects the agent reads, at once (written aside, then renamed).
    pub fn set_objects(&self, objects: &str) {
        let (aside, file) = (self.objects().join(".cluster.yaml.new"), self.objects().join("cluster.yaml"));
        std::fs::write(&aside, objects).expect("the objects");
        std::fs::rename(aside, file).expect("the objects in place");
    }

    pub fn call(&self, what: &Call) -> Output {
        call(&self.node, &self.plugin, &self.conf, what).expect("skiff-cni runs")
    }

    /// ADD for pod `namespace/name` in `netns`, container `container`.
    pub fn add(&self, container: &str, netns: &Netns, namespace: &str, name: &str) -> Output {
        let args = format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
        self.call(&Call { args: &args, ..Call::new("ADD", container, netns) })
    }

    /// ADD that must succeed: the pod as a lab host.
    pub fn pod(&self, container: &str, netns: &Netns, namespace: &str, name: &str) -> Host {
        let out = self.add(container, netns, namespace, name);
        assert!(out.success, "ADD {namespace}/{name}: {} {}", out.json, out.stderr);
        host_of(name, netns, &out.json).expect("an ADD result")
    }

    pub fn del(&self, container: &str, netns: &Netns) -> Output {
        self.call(&Call::new("DEL", container, netns))
    }
}

impl Drop for CniAgent {
    fn drop(&mut self) {
        // The agent first: it watches the folder of objects.
        let _ = self.agent.kill();
        let _ = std::fs::remove_dir_all(self.objects());
    }
}

/// A lab's node running skiff-agent (see [`CniAgent`]) with the client's link as its device.
/// Dropping it stops the agent, then removes the lab.
pub struct CniNode {
    agent: CniAgent,
    pub lab: Lab,
}

impl CniNode {
    /// `lab`'s node with `agent` (skiff-agent) run with `--io io` and `extra` options on a
    /// folder holding `objects` as `cluster.yaml`; `name` makes its folders unique.
    pub fn start(lab: Lab, agent: &Path, name: &str, io: &str, extra: &[&str], objects: &str) -> CniNode {
        let device = lab.client().node_iface.clone();
        let name = format!("{name}-{}", lab.id());
        let agent = CniAgent::start(&lab.node().netns, agent, &name, "node1", &device, io, extra, objects);
        CniNode { agent, lab }
    }
}

impl std::ops::Deref for CniNode {
    type Target = CniAgent;
    fn deref(&self) -> &CniAgent {
        &self.agent
    }
}

impl std::ops::DerefMut for CniNode {
    fn deref_mut(&mut self) -> &mut CniAgent {
        &mut self.agent
    }
}
