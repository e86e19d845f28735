//! The lab builds real topologies: traffic flows client → node → pods (IPv4 and IPv6) and
//! across to a second node, and everything is gone afterwards, also after a panic.

mod privileged {
    use skiff_lab::{Host, Lab, Topology};

    fn curl(lab: &Lab, url: &str) -> String {
        let out = lab.client().netns.exec("curl", &["-sS", "--max-time", "5", "-g", url]).expect("curl");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn url_v6(pod: &Host) -> String {
        format!("http://[{}]/", pod.ipv6)
    }

    #[test]
    fn pods_on_both_nodes_answer_http_over_ipv4_and_ipv6() {
        let mut lab = Topology::new().pods(2).second_node(1).build().expect("lab");
        let pods: Vec<Host> = lab.pods().iter().chain(lab.node2_pods()).cloned().collect();
        for pod in &pods {
            lab.serve_http(pod, 80).expect("server");
        }
        for pod in &pods {
            assert_eq!(curl(&lab, &format!("http://{}/", pod.ipv4)), format!("{}\n", pod.name));
            assert_eq!(curl(&lab, &url_v6(pod)), format!("{}\n", pod.name));
        }
        assert_eq!(pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["pod0", "pod1", "node2-pod0"]);
    }

    #[test]
    fn neighbours_are_static_and_offloads_off() {
        let lab = Topology::new().pods(1).build().expect("lab");
        let pod = &lab.pods()[0];
        let neigh = pod.netns.exec("ip", &["neigh", "show", "dev", "eth0"]).expect("ip neigh");
        let neigh = String::from_utf8_lossy(&neigh.stdout);
        assert!(neigh.lines().count() >= 2 && neigh.lines().all(|l| l.contains("PERMANENT")), "{neigh}");
        let features = lab.node().netns.exec("ethtool", &["-k", &pod.node_iface]).expect("ethtool");
        let features = String::from_utf8_lossy(&features.stdout);
        assert!(features.contains("tx-checksumming: off"), "{features}");
        let dad = pod.netns.exec("sysctl", &["-n", "net.ipv6.conf.eth0.accept_dad"]).expect("sysctl");
        assert_eq!(String::from_utf8_lossy(&dad.stdout).trim(), "0");
    }

    #[test]
    fn dropping_the_guard_removes_everything_even_after_a_panic() {
        let id = format!("drop{}", std::process::id());
        let result = std::panic::catch_unwind(|| {
            let _lab = Topology::new().pods(2).build_named(&id).expect("lab");
            assert_eq!(skiff_lab::list(Some(&id)).expect("list").len(), 4, "node, client, 2 pods");
            panic!("a failing test");
        });
        assert!(result.is_err());
        assert_eq!(skiff_lab::list(Some(&id)).expect("list"), Vec::<String>::new());
    }

    #[test]
    fn a_persisted_lab_is_removed_by_remove() {
        let id = format!("keep{}", std::process::id());
        let mut lab = Topology::new().pods(1).build_named(&id).expect("lab");
        let pod = lab.pods()[0].clone();
        lab.serve_http(&pod, 8080).expect("server");
        lab.persist();
        assert_eq!(skiff_lab::list(Some(&id)).expect("list").len(), 3);
        let removed = skiff_lab::remove(Some(&id)).expect("remove");
        assert_eq!(removed.len(), 3);
        assert!(skiff_lab::list(Some(&id)).expect("list").is_empty());
    }
}
