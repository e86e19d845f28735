//! A real container runtime calling skiff-cni through libcni: podman (Debian's, its CNI
//! network backend) in the lab node, with skiff-agent's custom conflist that chains the
//! reference `portmap` plugin (Debian's containernetworking-plugins) after skiff-cni.
//! Containers from an image built here (busybox, `podman import`: no registry is reachable)
//! get skiff addresses, reach each other and a Service, a hostPort answers from outside, and
//! removing them leaves nothing behind. Root only.

mod privileged {
    use std::{
        collections::BTreeSet,
        net::IpAddr,
        path::{Path, PathBuf},
        process::{Command, Output},
    };

    use skiff_api::EndpointView;
    use skiff_lab::{Lab, Topology, agent::Agent};

    const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");
    const IMAGE: &str = "localhost/skiff-busybox:test";

    const NODE: &str = r"
apiVersion: v1
kind: Node
metadata: {name: node1}
spec:
  podCIDRs: [198.18.128.0/24, 'fd00:0:0:128::/64']
status:
  addresses: [{type: InternalIP, address: 198.18.0.1}]
";

    /// podman with its own storage and configuration, run in the lab node's namespace.
    struct Podman {
        lab: Lab,
        dir: PathBuf,
    }

    impl Podman {
        /// Storage under `dir`; networks from `net_d`, plugins from `plugins` and Debian's.
        fn new(lab: Lab, dir: PathBuf, net_d: &Path, plugins: &Path) -> Podman {
            std::fs::create_dir_all(&dir).unwrap();
            let conf = format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 runtime = \"runc\"\n[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
                plugins.display(),
                net_d.display()
            );
            std::fs::write(dir.join("containers.conf"), conf).unwrap();
            Podman { lab, dir }
        }

        /// Runs podman (from a thread in the node's namespace: its CNI plugins run there).
        fn run(&self, args: &[&str]) -> Output {
            let mut cmd = Command::new("podman");
            cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
                .args(["--root", &self.dir.join("storage").display().to_string()])
                .args(["--runroot", &self.dir.join("run").display().to_string()])
                .args(["--tmpdir", &self.dir.join("tmp").display().to_string()])
                .args(["--storage-driver", "vfs"])
                .args(args);
            self.lab.node().netns.run(move || cmd.output()).unwrap().expect("podman runs")
        }

        fn ok(&self, args: &[&str]) -> String {
            let out = self.run(args);
            assert!(
                out.status.success(),
                "podman {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }

        /// An image from Debian's static busybox: `/bin/busybox` and its applets.
        fn build_image(&self) {
            let tar = skiff_lab::image::busybox_tar(&self.dir).expect("busybox-static installed");
            self.ok(&["import", tar.to_str().unwrap(), IMAGE]);
        }

        /// A container on the `skiff` network serving its name over HTTP on 8080.
        fn web(&self, name: &str, publish: Option<&str>) -> String {
            let script =
                format!("mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p 8080 -h /www");
            let mut args = vec!["run", "-d", "--name", name, "--network", "skiff"];
            if let Some(p) = publish {
                args.extend(["-p", p]);
            }
            args.extend([IMAGE, "sh", "-c", &script]);
            self.ok(&args)
        }

        /// `wget` from container `from`: what answered (polling up to 10 s while the server
        /// starts).
        fn get(&self, from: &str, url: &str) -> String {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                // (Debian's static busybox wget crashes with -T: no timeout given.)
                let out = self.run(&["exec", from, "wget", "-q", "-O", "-", url]);
                if out.status.success() {
                    return String::from_utf8_lossy(&out.stdout).trim().to_owned();
                }
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(std::time::Instant::now() < deadline, "wget {url} from {from}: {err}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    impl Drop for Podman {
        fn drop(&mut self) {
            let _ = self.run(&["rm", "-af", "-t", "0"]);
            let _ = self.run(&["rmi", "-af"]);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn endpoint_of<'a>(endpoints: &'a [EndpointView], container_id: &str) -> &'a EndpointView {
        endpoints
            .iter()
            .find(|e| e.attachment.container_id == container_id)
            .unwrap_or_else(|| panic!("an endpoint for {container_id}: {endpoints:?}"))
    }

    fn addr(e: &EndpointView, v4: bool) -> IpAddr {
        *e.addresses.iter().find(|a| a.is_ipv4() == v4).expect("both families")
    }

    /// skiff-agent in `lab`'s node with a custom conflist: skiff-cni, then portmap. The agent,
    /// the folder of objects it watches, and the conflist.
    fn start_agent(lab: &Lab, name: &str) -> (Agent, PathBuf, serde_json::Value) {
        let objects = std::env::temp_dir().join(format!("skiff-{name}-objects"));
        std::fs::create_dir_all(&objects).unwrap();
        std::fs::write(objects.join("node.yaml"), NODE).unwrap();
        let custom = objects.join("skiff-portmap.conflist");
        let socket = std::env::temp_dir().join(format!("skiff-{name}/skiff.sock"));
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "skiff",
            "plugins": [
                {"type": "skiff-cni", "socket": socket},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(&custom, conflist.to_string()).unwrap();
        let args: Vec<String> = [
            "--state-dir",
            objects.to_str().unwrap(),
            "--node-name",
            "node1",
            "--device",
            &lab.client().node_iface,
            "--cni-custom-conf",
            custom.to_str().unwrap(),
        ]
        .map(String::from)
        .into();
        let agent =
            Agent::start(&lab.node().netns, Path::new(AGENT), name, &args).expect("skiff-agent starts");
        (agent, objects, conflist)
    }

    /// The ClusterIP Service `demo/web` on 198.19.0.10:80 over `backends`' port 8080.
    fn web_service(backends: [IpAddr; 2]) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\nspec: {{clusterIP: 198.19.0.10, \
             ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}]}}\n---\napiVersion: discovery.k8s.io/v1\n\
             kind: EndpointSlice\nmetadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints:\n  \
             - {{addresses: ['{}'], conditions: {{ready: true}}}}\n  - {{addresses: ['{}'], conditions: {{ready: true}}}}\n",
            backends[0], backends[1]
        )
    }

    #[test]
    fn podman_containers_get_their_network_from_skiff() {
        let version = Command::new("podman").arg("--version").output().expect("podman installed by setup");
        eprintln!("runtime: {}", String::from_utf8_lossy(&version.stdout).trim());
        let lab = Topology::new().build().expect("lab");
        let name = format!("runtime-{}", lab.id());
        let (mut agent, objects, conflist) = start_agent(&lab, &name);
        let installed = std::fs::read(agent.work.join("cni/net.d/05-skiff.conflist")).unwrap();
        assert_eq!(installed, conflist.to_string().into_bytes(), "the custom conflist is what was installed");
        let outside = lab.client().netns.clone();
        let podman = Podman::new(
            lab,
            std::env::temp_dir().join(format!("skiff-{name}-podman")),
            &agent.work.join("cni/net.d"),
            &agent.work.join("cni/bin"),
        );
        podman.build_image();

        let a = podman.web("web-a", Some("8081:8080"));
        let b = podman.web("web-b", None);
        let client =
            podman.ok(&["run", "-d", "--name", "client", "--network", "skiff", IMAGE, "sleep", "600"]);
        let endpoints = agent.client().endpoints().unwrap();
        assert_eq!(endpoints.len(), 3, "{endpoints:?}");
        let (ea, eb) = (endpoint_of(&endpoints, &a), endpoint_of(&endpoints, &b));
        endpoint_of(&endpoints, &client);
        let inside = podman.ok(&["exec", "web-a", "ip", "-o", "addr", "show", "eth0"]);
        assert!(inside.contains(&format!("{}/32", addr(ea, true))), "web-a has its skiff address: {inside}");

        // Container to container, both families.
        assert_eq!(podman.get("client", &format!("http://{}:8080/", addr(ea, true))), "web-a");
        assert_eq!(podman.get("client", &format!("http://[{}]:8080/", addr(eb, false))), "web-b");

        // A Service of both, through skiff's workers.
        std::fs::write(objects.join("web.yaml"), web_service([addr(ea, true), addr(eb, true)])).unwrap();
        agent
            .wait_until("the Service", |a| {
                a.client().services().is_ok_and(|s| s.iter().any(|s| s.backends.len() == 2))
            })
            .unwrap();
        let answered: BTreeSet<String> =
            (0..20).map(|_| podman.get("client", "http://198.19.0.10/")).collect();
        assert_eq!(answered, ["web-a", "web-b"].map(String::from).into(), "the ClusterIP reaches both");

        // The hostPort portmap set up, from outside the node.
        let answers = outside.http_get("http://198.18.0.1:8081/", 5, 3).unwrap();
        assert_eq!(answers.by_host.get("web-a"), Some(&5), "the hostPort answers: {answers:?}");

        // Removing the containers removes everything the attachments made.
        podman.ok(&["rm", "-f", "-t", "0", "web-a", "web-b", "client"]);
        assert!(agent.client().endpoints().unwrap().is_empty(), "no endpoint left");
        let ipam = agent.client().ipam().unwrap();
        assert!(ipam.pools.iter().all(|p| p.allocated.is_empty()), "no address held: {ipam:?}");
        let links = podman.lab.node().netns.exec("ip", &["-o", "link", "show"]).unwrap();
        assert!(!String::from_utf8_lossy(&links.stdout).contains("lxc"), "no veth left");
        let nat = podman.lab.node().netns.exec("iptables-save", &["-t", "nat"]).unwrap();
        let nat = String::from_utf8_lossy(&nat.stdout);
        assert!(!nat.contains(&addr(ea, true).to_string()), "portmap's rules are gone:\n{nat}");
        // podman first: its last `rm` takes a lock in the agent's CNI folder.
        drop(podman);
        drop(agent);
        std::fs::remove_dir_all(objects).unwrap();
    }
}
