//! Connections to a ClusterIP over three pods on a lab node running skiff-agent (AF_XDP,
//! release build), measured by `tcp-rate` run inside the agent's cgroup (socket-LB translates
//! its connects) or outside it (it does not), in ABBA rounds:
//!
//! - new TCP connections per second from a pod: socket-LB against the per-packet path (the
//!   XDP program redirects to a worker, which DNATs every packet);
//! - new TCP connections per second from the node, and one-byte request/response round trips
//!   per second on one connection: socket-LB against kube-proxy's iptables rules for the same
//!   service (KUBE-SERVICES → KUBE-SVC → KUBE-SEP DNAT, as kube-proxy writes them; present
//!   only during the baseline's rounds);
//! - how new connections scale with the cluster's services: at 1, 1 000 and 10 000 services,
//!   skiff's socket-LB (the node) and per-packet path (a pod, which also pays its veth)
//!   against kube-proxy's rules for as many services (iptables-nft, from the node, loaded
//!   for its rounds only), the measured service's rule in the middle of KUBE-SERVICES
//!   (kube-proxy writes them in no particular order: the average case).
//!
//! Needs skiff-agent built in release (`cargo xtask bench` builds it and names the folder in
//! `SKIFF_BIN_DIR`). Root only. Writes `target/bench-report/socket_lb.json`.

use std::{path::PathBuf, process::Child};

use skiff_lab::{Cgroup, Host, Netns, Topology, cni::CniAgent};
use skiff_perf::{
    Record,
    lab::{ROUNDS, Result, abba, alternate},
    write_report,
};

const TCP_RATE: &str = env!("CARGO_BIN_EXE_tcp-rate");
const VIP: &str = "198.19.0.10";
/// Seconds each round measures.
const SECONDS: &str = "2";

/// The node, the pods and the service every side measures.
fn objects(pods: &[Host]) -> String {
    let mut yaml = "---\napiVersion: v1\nkind: Node\nmetadata: {name: node1}\n\
                    spec: {podCIDRs: [198.18.10.0/24]}\n\
                    status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}\n"
        .to_owned();
    for p in pods {
        yaml += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: node1, containers: [{{name: c, image: skiff/probe}}]}}\n\
             status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
            name = p.name,
            ip = p.ipv4,
        );
    }
    let endpoints: String =
        pods[..3].iter().map(|p| format!("  - {{addresses: ['{}'], nodeName: node1}}\n", p.ipv4)).collect();
    yaml + &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: bench, namespace: default}}\n\
         spec: {{clusterIP: {VIP}, ports: [{{name: connect, port: 80, targetPort: 8081}}, {{name: rr, port: 81, targetPort: 8082}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: bench, namespace: default, labels: {{kubernetes.io/service-name: bench}}}}\n\
         addressType: IPv4\nports: [{{name: connect, port: 8081}}, {{name: rr, port: 8082}}]\nendpoints:\n{endpoints}"
    )
}

/// Services that only make up the numbers, `dummies` ClusterIPs (198.19.1.1 on, one port
/// each, to the first pod), in files of at most 400 (a file holds at most 1024 documents),
/// in place of the last set.
fn write_dummies(folder: &std::path::Path, pods: &[Host], dummies: usize) -> Result<()> {
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("dummies-")) {
            std::fs::remove_file(path)?;
        }
    }
    let indices: Vec<usize> = (0..dummies).collect();
    for (k, chunk) in indices.chunks(400).enumerate() {
        let yaml: String = chunk
            .iter()
            .map(|&i| {
                format!(
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: dummy-{i}, namespace: default}}\n\
                     spec: {{clusterIP: {}, ports: [{{name: connect, port: 80, targetPort: 8081}}]}}\n\
                     ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata: {{name: dummy-{i}, namespace: default, labels: {{kubernetes.io/service-name: dummy-{i}}}}}\n\
                     addressType: IPv4\nports: [{{name: connect, port: 8081}}]\nendpoints:\n  - {{addresses: ['{}'], nodeName: node1}}\n",
                    dummy_vip(i),
                    pods[0].ipv4
                )
            })
            .collect();
        std::fs::write(folder.join(format!("dummies-{k}.yaml")), yaml)?;
    }
    Ok(())
}

/// The address of dummy service `i`.
fn dummy_vip(i: usize) -> std::net::Ipv4Addr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 19, 1, 1)) + i / 250 * 256 + i % 250)
}

/// The rules kube-proxy (iptables mode) writes for the service and `dummies` more (half
/// before the service's, half after), in the node's nat table.
fn kube_proxy_rules(pods: &[Host], dummies: usize) -> String {
    let mut declared = "*nat\n:KUBE-SERVICES - [0:0]\n".to_owned();
    let mut rules = String::new();
    // A service: its KUBE-SERVICES rule, and its endpoints' chains (the i-th of n taken with
    // probability 1/(n-i), the last always).
    let mut service = |name: &str, vip: &str, port: u16, target: u16, endpoints: &[&Host]| {
        let svc = format!("KUBE-SVC-{name}");
        declared += &format!(":{svc} - [0:0]\n");
        rules += &format!("-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport {port} -j {svc}\n");
        let n = endpoints.len();
        for (i, p) in endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{name}-{i}");
            declared += &format!(":{sep} - [0:0]\n");
            let pick = if i + 1 < n {
                format!("-m statistic --mode random --probability {:.11} ", 1.0 / (n - i) as f64)
            } else {
                String::new()
            };
            rules += &format!("-A {svc} {pick}-j {sep}\n");
            rules += &format!("-A {sep} -s {}/32 -j MARK --set-xmark 0x4000/0x4000\n", p.ipv4);
            rules += &format!("-A {sep} -p tcp -m tcp -j DNAT --to-destination {}:{target}\n", p.ipv4);
        }
    };
    for i in 0..dummies / 2 {
        service(&format!("DUMMY{i}"), &dummy_vip(i).to_string(), 80, 8081, &[&pods[0]]);
    }
    let three: Vec<&Host> = pods[..3].iter().collect();
    for (port, target) in [(80, 8081), (81, 8082)] {
        service(&format!("BENCH{port}"), VIP, port, target, &three);
    }
    for i in dummies / 2..dummies {
        service(&format!("DUMMY{i}"), &dummy_vip(i).to_string(), 80, 8081, &[&pods[0]]);
    }
    declared
        + "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        + &rules
        + "COMMIT\n"
}

/// `tcp-rate` on CPU 0 in `netns`, inside `cgroup` (socket-LB) or not: its rate.
fn rate(netns: &Netns, cgroup: Option<&Cgroup>, args: &[&str]) -> Result<f64> {
    let mut cmd = match cgroup {
        Some(cgroup) => cgroup.command(netns, "taskset"),
        None => netns.command("taskset"),
    };
    let out = cmd.args(["-c", "0", TCP_RATE]).args(args).output()?;
    if !out.status.success() {
        return Err(format!("tcp-rate {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// Runs `measure` with kube-proxy's rules in the node's nat table, removed afterwards.
fn with_kube_proxy<T>(node: &Netns, rules: &str, measure: impl FnOnce() -> Result<T>) -> Result<T> {
    let path = std::env::temp_dir().join(format!("skiff-bench-kube-proxy-{}.rules", std::process::id()));
    std::fs::write(&path, rules)?;
    let loaded = node.exec("iptables-restore", &[path.to_str().ok_or("path")?]);
    let _ = std::fs::remove_file(&path);
    loaded?;
    let result = measure();
    node.exec("iptables", &["-t", "nat", "-F"])?;
    node.exec("iptables", &["-t", "nat", "-X"])?;
    result
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let bin =
        PathBuf::from(std::env::var("SKIFF_BIN_DIR").map_err(|_| "SKIFF_BIN_DIR: where skiff-agent is")?);
    let lab = Topology::new().cluster(1).cni_pods(5).build()?;
    let node = lab.nodes()[0].netns.clone();
    let first =
        "---\napiVersion: v1\nkind: Node\nmetadata: {name: node1}\nspec: {podCIDRs: [198.18.10.0/24]}\n";
    let name = format!("bench-socklb-{}", lab.id());
    let agent =
        CniAgent::start(&node, &bin.join("skiff-agent"), &name, "node1", "uplink", "afxdp", &[], first);
    let names = ["web-0", "web-1", "web-2", "client", "client-2"];
    let pods: Vec<Host> =
        lab.cni_pods().iter().zip(names).map(|(netns, n)| agent.pod(n, netns, "default", n)).collect();
    let mut servers: Vec<Child> = Vec::new();
    for pod in &pods[..3] {
        // The servers on CPU 1, the clients on CPU 0: one layout for every round.
        servers.push(pod.netns.command("taskset").args(["-c", "1", TCP_RATE, "serve"]).spawn()?);
    }
    agent.set_objects(&objects(&pods));
    // A node has a default route; without one a connect to the service fails before
    // kube-proxy's OUTPUT rules could translate it.
    node.exec("ip", &["route", "add", "198.19.0.0/24", "dev", "uplink"])?;
    let mut agent = agent;
    agent.agent.wait_until("the bench service", |a| a.client().services().is_ok_and(|s| !s.is_empty()))?;
    let measured = measure(&node, &agent.agent.cgroup, &pods).and_then(|mut records| {
        records.extend(scaling(&mut agent, &node, &pods)?);
        Ok(records)
    });
    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    let records = measured?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(&dir, "socket_lb", &records)?;
    Ok(())
}

/// New connections to the service among `n` services, for n = 1, 1 000, 10 000: skiff's
/// socket-LB (the node, in its cgroup) and per-packet path (a pod outside the cgroup) against
/// kube-proxy's iptables rules for as many services (the node), in alternating rounds, the
/// rules loaded only for kube-proxy's rounds (the node's own connections meet the OUTPUT
/// hook's rules whoever translated them).
fn scaling(agent: &mut CniAgent, node: &Netns, pods: &[Host]) -> Result<Vec<Record>> {
    let connect_to = format!("{VIP}:80");
    let connect = ["connect", connect_to.as_str(), SECONDS];
    let per_packet = &pods[4].netns;
    let mut records = Vec::new();
    for n in [1, 1000, 10_000] {
        write_dummies(&agent.objects(), pods, n - 1)?;
        // The service's two ports and one each for the others.
        let applied = |a: &skiff_lab::agent::Agent| a.client().services().is_ok_and(|s| s.len() == n + 1);
        agent.agent.wait_until(&format!("{n} services"), applied)?;
        let cgroup = &agent.agent.cgroup;
        let rules = kube_proxy_rules(pods, n - 1);
        for (client, cgroup) in [(node, Some(cgroup)), (per_packet, None)] {
            rate(client, cgroup, &["connect", &connect_to, "0.2"])?;
        }
        let figures = alternate(
            ROUNDS,
            &mut [
                &mut || rate(node, Some(cgroup), &connect),
                &mut || rate(per_packet, None, &connect),
                &mut || with_kube_proxy(node, &rules, || rate(node, None, &connect)),
            ],
        )?;
        let [socket_lb, packet, kube_proxy] = <[_; 3]>::try_from(figures).map_err(|_| "three sides")?;
        println!(
            "{n} services: new connections, skiff socket-LB {:.0}/s, skiff per packet {:.0}/s, kube-proxy iptables {:.0}/s",
            socket_lb.value, packet.value, kube_proxy.value
        );
        let baseline = format!("kube-proxy iptables rules for {n} services (from the node)");
        records.push(
            Record::new(
                format!("new TCP connections to a ClusterIP among {n} services, socket-LB (node)"),
                "conn/s",
                socket_lb,
            )
            .against(baseline.clone(), kube_proxy.clone()),
        );
        records.push(
            Record::new(
                format!("new TCP connections to a ClusterIP among {n} services, per packet (pod)"),
                "conn/s",
                packet,
            )
            .against(baseline, kube_proxy),
        );
    }
    Ok(records)
}

fn measure(node: &Netns, cgroup: &Cgroup, pods: &[Host]) -> Result<Vec<Record>> {
    let (connect_to, rr_to) = (format!("{VIP}:80"), format!("{VIP}:81"));
    let connect = ["connect", connect_to.as_str(), SECONDS];
    let rr = ["rr", rr_to.as_str(), SECONDS];
    // Two client pods alike, one in the cgroup: a pod whose connects alternate between the
    // paths would meet its own NAT'd flows' reply tuples (a stale one costs a retransmission).
    let (client, per_packet) = (&pods[3].netns, &pods[4].netns);
    // Every side must work before it is timed.
    for (netns, cgroup) in [(client, Some(cgroup)), (node, Some(cgroup)), (per_packet, None)] {
        rate(netns, cgroup, &["connect", &connect_to, "0.2"])?;
    }
    let (pod_lb, pod_packet) =
        abba(ROUNDS, || rate(client, Some(cgroup), &connect), || rate(per_packet, None, &connect))?;
    let rules = kube_proxy_rules(pods, 0);
    let (node_lb, node_iptables) = abba(
        ROUNDS,
        || rate(node, Some(cgroup), &connect),
        || with_kube_proxy(node, &rules, || rate(node, None, &connect)),
    )?;
    let (rr_lb, rr_iptables) = abba(
        ROUNDS,
        || rate(node, Some(cgroup), &rr),
        || with_kube_proxy(node, &rules, || rate(node, None, &rr)),
    )?;
    Ok(vec![
        Record::new("new TCP connections, pod to ClusterIP, socket-LB (aim ≥ 2×)", "conn/s", pod_lb)
            .against("a pod alike, per packet (XDP → worker DNAT)", pod_packet),
        Record::new("new TCP connections, node to ClusterIP, socket-LB (aim ≥ 2×)", "conn/s", node_lb)
            .against("kube-proxy iptables rules (per packet)", node_iptables),
        Record::new("request/response, node to ClusterIP, socket-LB", "req/s", rr_lb)
            .against("kube-proxy iptables rules (per packet)", rr_iptables),
    ])
}
