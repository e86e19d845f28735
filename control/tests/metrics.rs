//! The agent's Prometheus metrics scraped by a real Prometheus server (Debian's), both in the
//! lab node's namespace: after known traffic (7 connections to the ClusterIP, 20 datagrams
//! from a source the NIC prefilter denies), PromQL over Prometheus's HTTP API returns exactly
//! those counts; `/healthz` answers for probes. Root only (network namespaces, XDP).

mod privileged {
    use std::{
        path::{Path, PathBuf},
        process::Child,
        time::{Duration, Instant},
    };

    use skiff_lab::{Netns, Topology, agent::Agent};

    const AGENT: &str = "127.0.0.1:9962";
    const PROMETHEUS: &str = "127.0.0.1:9090";

    /// Prometheus in the node's namespace, scraping the agent every second; killed and its
    /// storage removed on drop.
    struct Prometheus {
        child: Child,
        dir: PathBuf,
        netns: Netns,
    }

    impl Prometheus {
        fn start(netns: &Netns, dir: PathBuf) -> Prometheus {
            std::fs::create_dir_all(&dir).unwrap();
            let config = dir.join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: skiff\n    static_configs: [{{targets: ['{AGENT}']}}]\n"
                ),
            )
            .unwrap();
            let child = netns
                .command("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={PROMETHEUS}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
                .spawn()
                .expect("prometheus (Debian's package, installed by cargo xtask setup)");
            Prometheus { child, dir, netns: netns.clone() }
        }

        /// The value of a PromQL query's single series, if it has one.
        fn query(&self, promql: &str) -> Option<f64> {
            let url = format!("http://{PROMETHEUS}/api/v1/query");
            let out = self
                .netns
                .command("curl")
                .args(["-sS", "--max-time", "5", &url, "--data-urlencode"])
                .arg(format!("query={promql}"))
                .output()
                .ok()?;
            let answer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
        }

        /// Waits until `promql` gives `want` (failing if it never does within 30 s).
        fn expect(&self, promql: &str, want: f64) {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut got = None;
            while Instant::now() < deadline {
                got = self.query(promql);
                if got == Some(want) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
            panic!("{promql}: {got:?}, not {want}\n{log}");
        }
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_real_prometheus_scrapes_the_counts_of_known_traffic() {
        let mut lab = Topology::new().pods(4).build().expect("lab");
        for pod in &lab.pods()[..3].to_vec() {
            lab.serve_http(pod, 8080).unwrap();
        }
        let name = format!("test-metrics-{}", lab.id());
        let binary = Path::new(env!("CARGO_BIN_EXE_skiff-agent"));
        let (mut agent, state) =
            Agent::start_on_demo(&lab, binary, &name, &["--prometheus-serve-addr", AGENT])
                .expect("skiff-agent starts");
        let node = lab.node().netns.clone();
        let health =
            node.exec("curl", &["-sS", "-w", " %{http_code}", &format!("http://{AGENT}/healthz")]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&health.stdout),
            "Ok\n 200",
            "ready once its tables are published"
        );
        let prometheus =
            Prometheus::start(&node, std::env::temp_dir().join(format!("skiff-prometheus-{}", lab.id())));

        let answers = lab.pods()[3].netns.http_get("http://198.19.0.10/", 7, 3).unwrap();
        assert_eq!(answers.answered(), 7, "{answers:?}");
        let outside = lab.client().clone();
        agent
            .client()
            .prefilter(&skiff_api::Request::PrefilterUpdate {
                cidrs: vec![std::net::IpAddr::V4(outside.ipv4).into()],
            })
            .unwrap();
        let node_ip = lab.node().ipv4;
        outside
            .netns
            .exec("bash", &["-c", &format!("for i in $(seq 20); do echo x > /dev/udp/{node_ip}/9; done")])
            .unwrap();

        prometheus.expect("skiff_service_flows_total", 7.0);
        prometheus.expect(r#"sum(skiff_drop_count_total{reason="denied-cidr",location="xdp"})"#, 20.0);
        let status = agent.status().unwrap();
        prometheus.expect("skiff_services", status.frontends as f64);
        prometheus.expect("skiff_apply_duration_seconds_count", status.applies as f64);
        prometheus
            .expect(r#"sum(skiff_kubernetes_events_total{kind="Pod",action="resync",valid="true"})"#, 4.0);
        let busy = prometheus.query("skiff_worker_busy_ratio");
        assert!(busy.is_some_and(|r| (0.0..=1.0).contains(&r)), "{busy:?}");
        drop(prometheus);
        assert!(agent.terminate().unwrap().success());
        std::fs::remove_dir_all(state).unwrap();
    }
}
