//! skiff-agent with its datapath in the lab: the demo's cluster (examples/demo) from a
//! watched folder, real TCP through skiff's workers to a ClusterIP from a client pod and to a
//! NodePort from outside, over AF_XDP and over AF_PACKET; a bad manifest rejected while the
//! service keeps answering; an endpoint removed from the folder; SIGTERM leaves nothing
//! behind. Root only (network namespaces, XDP, AF_XDP).

mod privileged {
    use std::{
        collections::BTreeMap,
        path::{Path, PathBuf},
        process::Child,
        time::{Duration, Instant},
    };

    use skiff_api::{Client, ServiceView, Status};
    use skiff_lab::{Lab, Netns, Topology};

    struct Agent {
        child: Child,
        work: PathBuf,
        pins: PathBuf,
    }

    impl Agent {
        fn socket(&self) -> PathBuf {
            self.work.join("skiff.sock")
        }

        fn status(&self) -> Option<Status> {
            Client::new(self.socket()).status().ok()
        }

        fn services(&self) -> Vec<ServiceView> {
            Client::new(self.socket()).services().unwrap_or_default()
        }

        /// `n` new connections from `from` to `url` through the agent's datapath, counted by
        /// the pod that answered; all must answer.
        fn curl(&self, from: &Netns, url: &str, n: usize) -> BTreeMap<String, usize> {
            let answers = from.http_get(url, n, 3).unwrap();
            let status = self.status();
            assert_eq!(answers.answered(), n, "every request to {url} answered: {answers:?} {status:?}");
            answers.by_host
        }
    }

    impl Drop for Agent {
        fn drop(&mut self) {
            if self.child.try_wait().ok().flatten().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            let _ = std::fs::remove_dir_all(&self.work);
            let _ = skiff_xdp::bpffs::remove_pins(&self.pins);
        }
    }

    fn start(lab: &Lab, io: &str) -> Agent {
        let work = std::env::temp_dir().join(format!("skiff-test-agent-{}-{io}", lab.id()));
        let state = work.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
        for file in ["node.yaml", "web.yaml", "pods.yaml"] {
            std::fs::copy(demo.join(file), state.join(file)).unwrap();
        }
        let pins = PathBuf::from(format!("/sys/fs/bpf/skiff-test-agent-{}", lab.id()));
        let mut cmd = lab.node().netns.command(env!("CARGO_BIN_EXE_skiff-agent"));
        cmd.arg("--state-dir").arg(&state).args(["--node-name", "node1", "--io", io]);
        for device in
            std::iter::once(&lab.client().node_iface).chain(lab.pods().iter().map(|p| &p.node_iface))
        {
            cmd.args(["--device", device]);
        }
        cmd.arg("--socket").arg(work.join("skiff.sock")).arg("--pin-dir").arg(&pins);
        let agent = Agent { child: cmd.spawn().expect("skiff-agent starts"), work, pins };
        wait_until("the first apply", || agent.status().is_some_and(|s| s.applies >= 1));
        agent
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn services_through_the_agent(io: &str) {
        let mut lab = Topology::new().pods(4).build().expect("lab");
        let web = lab.pods()[..3].to_vec();
        for pod in &web {
            lab.serve_http(pod, 8080).unwrap();
        }
        let mut agent = start(&lab, io);
        let (client_pod, client) = (lab.pods()[3].netns.clone(), lab.client().netns.clone());
        let three = ["pod0", "pod1", "pod2"];
        let keys = |m: BTreeMap<String, usize>| m.into_keys().collect::<Vec<_>>();
        assert_eq!(
            keys(agent.curl(&client_pod, "http://198.19.0.10/", 150)),
            three,
            "the ClusterIP, from a pod"
        );
        assert_eq!(
            keys(agent.curl(&client, "http://198.18.0.1:30080/", 150)),
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
            agent.work.join("state/bad.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: [{port: 65536}]}\n",
        )
        .unwrap();
        wait_until("the rejection", || agent.status().is_some_and(|s| !s.rejections.is_empty()));
        assert!(agent.services().iter().all(|s| s.backends.len() == 3), "the last good Service runs");
        assert_eq!(keys(agent.curl(&client_pod, "http://198.19.0.10/", 60)), three);

        let web = agent.work.join("state/web.yaml");
        let text = std::fs::read_to_string(&web).unwrap();
        let cut = text.find("  - addresses: [198.18.128.12]").unwrap();
        std::fs::write(&web, &text[..cut]).unwrap();
        wait_until("the endpoint removal", || agent.services().iter().all(|s| s.backends.len() == 2));
        assert_eq!(keys(agent.curl(&client, "http://198.18.0.1:30080/", 60)), ["pod0", "pod1"]);

        let pid = i32::try_from(agent.child.id()).unwrap();
        // SAFETY: kill(2) on the agent this test spawned and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        assert!(agent.child.wait().unwrap().success(), "a clean exit on SIGTERM");
        assert!(!agent.socket().exists(), "the socket is removed");
        assert!(!agent.pins.exists(), "the pinned maps are removed");
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
