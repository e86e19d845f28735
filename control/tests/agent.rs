//! skiff-agent with its datapath in the lab: the demo's cluster (examples/demo) from a
//! watched folder, real TCP through skiff's workers to a ClusterIP from a client pod and to a
//! NodePort from outside, over AF_XDP and over AF_PACKET; a bad manifest rejected while the
//! service keeps answering; an endpoint removed from the folder; SIGTERM leaves the
//! datapath's pinned state for the next start, and `skiff-agent cleanup` removes it. Root
//! only (network namespaces, XDP, AF_XDP).

mod privileged {
    use std::{collections::BTreeMap, path::Path, time::Duration};

    use skiff_lab::{Lab, Netns, Topology, agent::Agent};

    /// `n` new connections from `from` to `url` through the agent's datapath, counted by the
    /// pod that answered; all must answer.
    fn curl(agent: &Agent, from: &Netns, url: &str, n: usize) -> BTreeMap<String, usize> {
        let answers = from.http_get(url, n, 3).unwrap();
        let status = agent.status();
        assert_eq!(answers.answered(), n, "every request to {url} answered: {answers:?} {status:?}");
        answers.by_host
    }

    fn start(lab: &Lab, io: &str) -> (Agent, std::path::PathBuf) {
        // Without XDP nothing decapsulates: AF_PACKET runs with native routing.
        let native: &[&str] = if io == "afpacket" { &["--routing-mode", "native"] } else { &[] };
        let options = [&["--io", io][..], native].concat();
        let name = format!("test-agent-{}-{io}", lab.id());
        Agent::start_on_demo(lab, Path::new(env!("CARGO_BIN_EXE_skiff-agent")), &name, &options)
            .expect("skiff-agent starts")
    }

    fn wait_until(what: &str, done: impl FnMut() -> bool) {
        skiff_lab::poll(what, Duration::from_secs(30), done).unwrap();
    }

    fn services_through_the_agent(io: &str) {
        let mut lab = Topology::new().pods(4).build().expect("lab");
        let web = lab.pods()[..3].to_vec();
        for pod in &web {
            lab.serve_http(pod, 8080).unwrap();
        }
        let (mut agent, state) = start(&lab, io);
        let services = |agent: &Agent| agent.client().services().unwrap_or_default();
        let (client_pod, client) = (lab.pods()[3].netns.clone(), lab.client().netns.clone());
        let three = ["pod0", "pod1", "pod2"];
        let keys = |m: BTreeMap<String, usize>| m.into_keys().collect::<Vec<_>>();
        assert_eq!(
            keys(curl(&agent, &client_pod, "http://198.19.0.10/", 150)),
            three,
            "the ClusterIP, from a pod"
        );
        assert_eq!(
            keys(curl(&agent, &client, "http://198.18.0.1:30080/", 150)),
            three,
            "the NodePort, from outside"
        );
        let workers = agent.status().unwrap().workers.expect("a datapath");
        assert!(workers.forwarded >= 300 * 8, "skiff's workers carried the connections: {workers:?}");
        // Counters are published as the traffic stops: once they stop moving, at most the last
        // connection's closing frames are new.
        let forwarded = || agent.status().and_then(|s| s.workers).map_or(0, |w| w.forwarded);
        let mut settled = 0;
        wait_until("the counters to settle", || {
            let before = forwarded();
            std::thread::sleep(Duration::from_millis(100));
            settled = forwarded();
            settled == before
        });
        assert!(
            settled - workers.forwarded <= 4,
            "the counters lagged: {workers:?}, then {settled} forwarded"
        );

        std::fs::write(
            state.join("bad.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: [{port: 65536}]}\n",
        )
        .unwrap();
        wait_until("the rejection", || agent.status().is_some_and(|s| !s.rejections.is_empty()));
        assert!(services(&agent).iter().all(|s| s.backends.len() == 3), "the last good Service runs");
        assert_eq!(keys(curl(&agent, &client_pod, "http://198.19.0.10/", 60)), three);

        let web = state.join("web.yaml");
        let text = std::fs::read_to_string(&web).unwrap();
        let cut = text.find("  - addresses: [198.18.128.12]").unwrap();
        std::fs::write(&web, &text[..cut]).unwrap();
        wait_until("the endpoint removal", || services(&agent).iter().all(|s| s.backends.len() == 2));
        assert_eq!(keys(curl(&agent, &client, "http://198.18.0.1:30080/", 60)), ["pod0", "pod1"]);

        assert!(agent.terminate().unwrap().success(), "a clean exit on SIGTERM");
        assert!(!agent.socket().exists(), "the socket is removed");
        // The datapath's state stays for the next start: socket-LB's maps, and with AF_XDP the
        // flow table and the program's attachment to the uplink.
        assert!(agent.pins.join("SOCK_SVC_V4").exists(), "socket-LB's maps stay pinned");
        let uplink = &lab.client().node_iface;
        assert_eq!(xdp_attached(&lab, uplink), io == "afxdp", "XDP stays attached with AF_XDP");
        assert_eq!(agent.pins.join("CT_V4").exists(), io == "afxdp", "the flow table stays");
        // An uninstall removes it all.
        let cleanup = std::process::Command::new(env!("CARGO_BIN_EXE_skiff-agent"))
            .args(["cleanup", "--pin-dir"])
            .arg(&agent.pins)
            .output()
            .unwrap();
        assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
        assert!(!agent.pins.exists(), "the pins are removed");
        assert!(!xdp_attached(&lab, uplink), "XDP is detached");
        std::fs::remove_dir_all(state).unwrap();
    }

    /// Whether an XDP program is attached to `iface` of the lab's node.
    fn xdp_attached(lab: &Lab, iface: &str) -> bool {
        let out = lab.node().netns.exec("ip", &["-d", "link", "show", iface]).unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    #[test]
    fn services_through_the_agent_over_af_xdp() {
        services_through_the_agent("afxdp");
    }

    #[test]
    fn services_through_the_agent_over_af_packet() {
        services_through_the_agent("afpacket");
    }
}
