//! skiff-lab: network-namespace topologies for tests, the demo and benchmarks.
//!
//! ```text
//!  client ──(uplink)── node ──(lxc0..N)── pod0..N          [node2 ──(lxc0..M)── node2-pod0..M]
//!                        └───────(peer)───────── node2  (optional)
//! ```
//!
//! Addresses (IPv4 198.18.0.0/15, IPv6 fd00::/8; the IPv6 address mirrors the IPv4 one):
//!
//! | link / host | IPv4 | IPv6 |
//! | --- | --- | --- |
//! | client `eth0` ↔ node `uplink` | 198.18.0.2/24 ↔ 198.18.0.1/24 | fd00::2/64 ↔ fd00::1/64 |
//! | node pod gateway (on `lo`) | 198.18.128.1/32 | fd00:0:0:128::1/128 |
//! | pod *i* `eth0` ↔ node `lxc`*i* | 198.18.128.(10+*i*)/32 | fd00:0:0:128::(10+*i*)/128 |
//! | node `peer` ↔ node2 `peer` | 198.18.2.1/24 ↔ 198.18.2.2/24 | fd00:0:0:2::1/64 ↔ fd00:0:0:2::2/64 |
//! | node2 pod gateway, pods | 198.18.129.1, 198.18.129.(10+*i*) | fd00:0:0:129::1, fd00:0:0:129::(10+*i*) |
//!
//! Pods are joined Cilium-style: a /32 (/128) address, a host route to the gateway on the node
//! and a default route through it; the node routes each pod address to its veth. Every
//! neighbour entry is static, IPv6 DAD and router solicitation are off, and transmit checksum
//! offload is off on every veth so AF_XDP and XDP see complete checksums. Nodes forward.
//!
//! With [`Topology::cluster`] (*n* nodes), the nodes and the client share a switch instead:
//!
//! ```text
//!  node1 ─(uplink)─┐
//!  node2 ─(uplink)─┼─ switch (bridge br0) ─┬─ client (eth0)
//!  node3 ─(uplink)─┘                      (198.18.0.0/24: node1 .1, client .2, node k .(k+1))
//! ```
//!
//! with pods made by a CNI in the `cni_pods` namespaces (node *k*'s pod CIDR is
//! 198.18.(9+*k*).0/24 by the lab's convention).
//!
//! Namespace names are `skiff-<id>-<host>`, unique per lab, so tests run in parallel. The
//! [`Lab`] guard removes everything it created in `Drop`, also when a test panics;
//! [`remove`] removes what a crashed run left behind.

pub mod agent;
pub mod apiserver;
mod bpffs;
mod cgroup;
pub mod cni;
pub mod image;
pub mod kubenode;
mod netns;
pub mod probe;
mod wire;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use bpffs::Bpffs;
pub use cgroup::Cgroup;
pub use netns::{Answers, Netns};
pub use wire::mirror_v6;
use wire::{Port, Wire, batch, connect, join_nodes, plug_all};

/// Every lab namespace starts with this; `lab down` removes all of them.
pub const PREFIX: &str = "skiff-";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("could not run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("network namespace {name}: {source}")]
    Netns { name: String, source: std::io::Error },
    #[error("could not parse {what} from {text:?}")]
    Parse { what: String, text: String },
    #[error("HTTP server in {host} did not start listening on port {port} within 10 s{detail}")]
    ServerStart { host: String, port: u16, detail: String },
    #[error("skiff-agent exited ({status}) while waiting for {what}")]
    Exited { what: String, status: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    ApiServer(#[from] apiserver::ApiServerError),
}

/// What to build: a node with a client and `pods` pods; optionally a second node with pods.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pods: usize,
    cni_pods: usize,
    second_node_pods: Option<usize>,
    queues: u16,
    cluster: usize,
}

impl Topology {
    /// A node and a client.
    pub fn new() -> Self {
        Topology::default()
    }

    /// `n` pods on the node.
    pub fn pods(mut self, n: usize) -> Self {
        self.pods = n;
        self
    }

    /// `n` pod namespaces with no network (`cni0`, `cni1`, …): a CNI plugin gives them one.
    pub fn cni_pods(mut self, n: usize) -> Self {
        self.cni_pods = n;
        self
    }

    /// `n` queues each way on the client's and the pods' veths, like a multi-queue NIC: a
    /// frame arrives on the queue its sender's flow hash picked.
    pub fn queues(mut self, n: u16) -> Self {
        self.queues = n;
        self
    }

    /// A second node joined to the first, with `pods` pods of its own.
    pub fn second_node(mut self, pods: usize) -> Self {
        self.second_node_pods = Some(pods);
        self
    }

    /// `n` nodes and the client on one switch instead (see [`Lab::nodes`]); their pods come
    /// from `cni_pods` and a CNI.
    pub fn cluster(mut self, n: usize) -> Self {
        self.cluster = n;
        self
    }

    /// Builds the topology under a fresh unique id.
    pub fn build(self) -> Result<Lab, LabError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        self.build_named(&id)
    }

    /// Builds the topology with namespaces named `skiff-<id>-…`.
    pub fn build_named(self, id: &str) -> Result<Lab, LabError> {
        assert!(self.pods <= 200 && self.second_node_pods.unwrap_or(0) <= 200, "at most 200 pods per node");
        // The guard exists before the first namespace does, so a failure part-way through
        // removes what was already made.
        let mut lab = Lab {
            id: id.to_owned(),
            namespaces: Vec::new(),
            servers: Vec::new(),
            nodes: Vec::new(),
            client: None,
            pods: Vec::new(),
            cni_pods: Vec::new(),
            node2_pods: Vec::new(),
        };
        let queues = self.queues.max(1);
        for i in 0..self.cni_pods {
            let netns = lab.add_namespace(&format!("cni{i}"))?;
            lab.cni_pods.push(netns);
        }
        if self.cluster > 0 {
            lab.switch(self.cluster)?;
            return Ok(lab);
        }
        let node = lab.add_node("node", 128, Wire::uplink().node_v4)?;
        let client = lab.add_host("client", &node, Wire { queues, ..Wire::uplink() })?;
        lab.client = Some(client);
        for i in 0..self.pods {
            let pod = lab.add_host(&format!("pod{i}"), &node, Wire { queues, ..Wire::pod(&node, i) })?;
            lab.pods.push(pod);
        }
        lab.nodes.push(node.clone());
        if let Some(pods) = self.second_node_pods {
            let node2 = lab.add_node("node2", 129, Wire::peer().far_v4)?;
            join_nodes(&node, &node2)?;
            for i in 0..pods {
                let pod = lab.add_host(&format!("node2-pod{i}"), &node2, Wire::pod(&node2, i))?;
                lab.node2_pods.push(pod);
            }
            lab.nodes.push(node2);
        }
        Ok(lab)
    }
}

/// A node namespace: forwards, and is the gateway of its pods.
#[derive(Clone, Debug)]
pub struct LabNode {
    pub name: String,
    pub netns: Netns,
    /// The node's own address on its first link (the uplink for `node`, `peer` for `node2`):
    /// what NodePort traffic is sent to.
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The pod CIDR is `198.18.<pod_net>.0/24` (`fd00:0:0:<pod_net>::/64`).
    pub pod_net: u8,
}

impl LabNode {
    pub fn pod_gateway_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.pod_net, 1)
    }
    pub fn pod_gateway_v6(&self) -> Ipv6Addr {
        mirror_v6(self.pod_gateway_v4())
    }
}

/// A client or pod namespace joined to a node by a veth pair.
#[derive(Clone, Debug)]
pub struct Host {
    /// Logical name (`client`, `pod0`, `node2-pod1`); pods' HTTP servers answer with it.
    pub name: String,
    pub netns: Netns,
    /// The host's interface (`eth0`) and its MAC.
    pub iface: String,
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The node's end of the pair (`uplink`, `lxc<i>`) and its MAC.
    pub node_iface: String,
    pub node_mac: [u8; 6],
}

/// A built topology. Dropping it stops the servers it started and deletes its namespaces
/// (which deletes their links).
#[derive(Debug)]
pub struct Lab {
    id: String,
    namespaces: Vec<Netns>,
    servers: Vec<Child>,
    nodes: Vec<LabNode>,
    client: Option<Host>,
    pods: Vec<Host>,
    cni_pods: Vec<Netns>,
    node2_pods: Vec<Host>,
}

impl Lab {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn node(&self) -> &LabNode {
        &self.nodes[0]
    }
    pub fn node2(&self) -> Option<&LabNode> {
        self.nodes.get(1)
    }
    /// Every node (with [`Topology::cluster`], `node1`…`nodeN`).
    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }
    pub fn client(&self) -> &Host {
        self.client.as_ref().expect("every topology has a client")
    }
    pub fn pods(&self) -> &[Host] {
        &self.pods
    }
    pub fn node2_pods(&self) -> &[Host] {
        &self.node2_pods
    }
    /// The namespaces of the pods a CNI plugin gives their network.
    pub fn cni_pods(&self) -> &[Netns] {
        &self.cni_pods
    }

    /// Starts an HTTP server (python3) in `host` on `port`, IPv4 and IPv6, answering every GET
    /// with `<host name>\n`; returns once it accepts connections. Stopped when the lab drops.
    pub fn serve_http(&mut self, host: &Host, port: u16) -> Result<(), LabError> {
        let mut child = host
            .netns
            .command("python3")
            .args(["-c", HTTP_SERVER, &host.name, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Spawn { command: "python3 http server".into(), source: e })?;
        let addr = SocketAddr::from((host.ipv4, port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up =
                host.netns.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
            if up {
                self.servers.push(child);
                return Ok(());
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().ok();
                let stderr = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
                return Err(LabError::ServerStart {
                    host: host.name.clone(),
                    port,
                    detail: format!(": {stderr}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keeps the lab after this value is gone (`cargo xtask lab up`); `lab down` removes it.
    pub fn persist(mut self) {
        self.namespaces.clear();
        self.servers.clear();
    }

    fn add_namespace(&mut self, host: &str) -> Result<Netns, LabError> {
        let ns = Netns::new(format!("{PREFIX}{}-{host}", self.id));
        checked(Command::new("ip").args(["netns", "add", ns.name()]))?;
        self.namespaces.push(ns.clone());
        let mut settings = vec![
            // Set before any link exists so every interface inherits them.
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.default.router_solicitations=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ];
        if host.starts_with("node") && !host.contains("pod") {
            settings.extend(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        }
        ns.sysctl(&settings)?;
        batch(&ns, &["link set lo up".into()])?;
        Ok(ns)
    }

    fn add_node(&mut self, name: &str, pod_net: u8, ipv4: Ipv4Addr) -> Result<LabNode, LabError> {
        let netns = self.add_namespace(name)?;
        let node = LabNode { name: name.into(), netns, ipv4, ipv6: mirror_v6(ipv4), pod_net };
        let gw4 = node.pod_gateway_v4();
        let gw6 = node.pod_gateway_v6();
        batch(&node.netns, &[format!("addr add {gw4}/32 dev lo"), format!("addr add {gw6}/128 dev lo")])?;
        Ok(node)
    }

    /// The cluster topology: nodes `node1`…`nodeN` and the client on a switch's bridge,
    /// 198.18.0.0/24 (node1 .1, the client .2, node *k* .(*k* + 1)), every neighbour static;
    /// node *k*'s pods are 198.18.(9 + *k*).0/24, its uplink `uplink`.
    fn switch(&mut self, nodes: usize) -> Result<(), LabError> {
        let switch = self.add_namespace("switch")?;
        batch(&switch, &["link add br0 type bridge".into(), "link set br0 up".into()])?;
        let mut ports = Vec::new();
        for k in 1..=nodes {
            let k8 = u8::try_from(k).expect("a few nodes");
            let v4 = Ipv4Addr::new(198, 18, 0, if k == 1 { 1 } else { k8 + 1 });
            let node = self.add_node(&format!("node{k}"), 9 + k8, v4)?;
            ports.push(Port {
                netns: node.netns.clone(),
                iface: "uplink".into(),
                mac: [2, 0, 1, 0, k8, 1],
                v4,
            });
            self.nodes.push(node);
        }
        let netns = self.add_namespace("client")?;
        let client = Port { netns, iface: "eth0".into(), mac: [2, 0, 1, 0, 0, 2], v4: Wire::uplink().far_v4 };
        let (first_iface, first_mac, gw4) = (ports[0].iface.clone(), ports[0].mac, ports[0].v4);
        self.client = Some(Host {
            name: "client".into(),
            netns: client.netns.clone(),
            iface: client.iface.clone(),
            mac: client.mac,
            ipv4: client.v4,
            ipv6: mirror_v6(client.v4),
            node_iface: first_iface,
            node_mac: first_mac,
        });
        ports.push(client);
        plug_all(&switch, &ports)?;
        let gw6 = mirror_v6(gw4);
        let client = self.client().netns.clone();
        batch(&client, &[format!("route add default via {gw4}"), format!("route add ::/0 via {gw6}")])
    }

    fn add_host(&mut self, name: &str, node: &LabNode, wire: Wire) -> Result<Host, LabError> {
        let netns = self.add_namespace(name)?;
        let host = Host {
            name: name.into(),
            netns,
            iface: "eth0".into(),
            mac: wire.far_mac,
            ipv4: wire.far_v4,
            ipv6: mirror_v6(wire.far_v4),
            node_iface: wire.node_iface.clone(),
            node_mac: wire.node_mac,
        };
        connect(&node.netns, &host.netns, &wire, &host.iface)?;
        let (gw4, gw6) = wire.node_addr();
        let mut far = Vec::new();
        if wire.prefix_len == 32 {
            // A pod's gateway is not on a shared subnet: reach it through a host route.
            far.push(format!("route add {gw4}/32 dev eth0"));
            far.push(format!("route add {gw6}/128 dev eth0"));
        }
        far.push(format!("route add default via {gw4} dev eth0"));
        far.push(format!("route add ::/0 via {gw6} dev eth0"));
        batch(&host.netns, &far)?;
        if wire.prefix_len == 32 {
            let (v4, v6) = (host.ipv4, host.ipv6);
            batch(
                &node.netns,
                &[
                    format!("route add {v4}/32 dev {}", wire.node_iface),
                    format!("route add {v6}/128 dev {}", wire.node_iface),
                ],
            )?;
        }
        Ok(host)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = delete_namespace(ns.name()) {
                eprintln!("skiff-lab: cleaning up: {e}");
            }
        }
    }
}

/// Polls `done` until it holds (returning how long that took) or `timeout` passes: the
/// tests' wait for what a lab, an agent or a cluster will do. It rests between checks as long
/// as a check takes (20 ms at least), so a costly one (kubectl) keeps to half the time.
pub fn poll(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<Duration, LabError> {
    let started = Instant::now();
    loop {
        let check = Instant::now();
        if done() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(LabError::Timeout(what.into()));
        }
        std::thread::sleep(check.elapsed().max(Duration::from_millis(20)));
    }
}

/// The names of the lab namespaces that exist now: all of them, or those of lab `id`.
pub fn list(id: Option<&str>) -> Result<Vec<String>, LabError> {
    let prefix = match id {
        Some(id) => format!("{PREFIX}{id}-"),
        None => PREFIX.to_owned(),
    };
    let out = checked(Command::new("ip").args(["netns", "list"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect())
}

/// Removes the namespaces of lab `id`, or of every lab (what a crashed run left, with its
/// cgroups), stopping processes still in them. Returns the names removed.
pub fn remove(id: Option<&str>) -> Result<Vec<String>, LabError> {
    let names = list(id)?;
    for name in &names {
        delete_namespace(name)?;
    }
    if id.is_none() {
        cgroup::remove_all()?;
        bpffs::remove_all();
    }
    Ok(names)
}

/// Stops what still runs inside a lab namespace (processes the lab or a test started there),
/// then deletes it, which also deletes its links.
fn delete_namespace(name: &str) -> Result<(), LabError> {
    let pids = checked(Command::new("ip").args(["netns", "pids", name]))?;
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: plain kill(2) on a process that lives in our own lab namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    checked(Command::new("ip").args(["netns", "del", name])).map(drop)
}

/// Whether the filesystem at `path` is of `kind`, as `stat -f` names it (`bpf_fs`,
/// `cgroup2fs`).
pub(crate) fn is_filesystem(path: &std::path::Path, kind: &str) -> bool {
    let out = Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output();
    out.is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == kind.as_bytes())
}

/// Runs a command to completion; a non-zero exit becomes an error quoting it and its stderr.
pub(crate) fn checked(cmd: &mut Command) -> Result<Output, LabError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    check(command, out)
}

fn check(command: String, out: Output) -> Result<Output, LabError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// A tiny HTTP server: answers every GET with the host's name. argv: name, port.
const HTTP_SERVER: &str = r#"
import http.server, socket, sys
name, port = sys.argv[1], int(sys.argv[2])
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (name + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 1024
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
Server(("::", port), Handler).serve_forever()
"#;
