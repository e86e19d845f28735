//! A real Kubernetes node in a lab: the lab's node namespace runs etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler (v1.20.2, built by setup), containerd (Debian's)
//! and a kubelet, in a mount namespace of their own: `/run`, `/opt` (Debian's reference CNI
//! plugins in `/opt/cni/bin`, as a node has them), `/var/log`, `/etc/cni`, bpffs and the
//! cgroup hierarchies are the node's, so nothing of the machine's is written but the node's
//! own cgroup folders, removed with the rest. The lab's client is a host outside the node.
//!
//! Two accommodations of this machine, neither about networking: it refuses a negative
//! `oom_score_adj` even to root (the kubelet asks -998 for sandboxes), so containerd runs runc
//! through a wrapper that raises such values to 0; and socket-LB would attach to the cgroup2
//! root, which here is the whole machine's, so tests run the agent without it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{Lab, LabError, Topology, apiserver, image::podman};

/// The node's name, its address (the lab node's uplink) and the pod CIDRs it is given.
pub const NODE: &str = "node1";
const CLUSTER_CIDR: &str = "198.18.128.0/17";
const SERVICE_CIDR: &str = "198.19.0.0/16";

pub struct KubeNode {
    /// Its daemons by name, last started first stopped.
    daemons: Vec<(String, Child)>,
    /// Holds the node's mount namespace.
    holder: Child,
    /// The cgroup folder (under each hierarchy) the kubelet puts pods in.
    cgroup: String,
    dir: PathBuf,
    lab: Lab,
}

impl KubeNode {
    /// Starts the node and returns once its kubelet has registered it, with [`PAUSE`],
    /// [`BUSYBOX`] and skiff's image in containerd.
    pub fn start() -> Result<KubeNode, LabError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let lab = Topology::new().build()?;
        let id = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("skiff-kubenode-{id}"));
        std::fs::create_dir_all(&dir).map_err(io("creating the node's folder"))?;
        let cgroup = format!("skiff-kubenode-{id}");
        let holder = spawn(
            lab.node()
                .netns
                .command("unshare")
                .args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(mounts(&dir, &cgroup)?),
            &dir.join("holder.log"),
        )?;
        let mut node = KubeNode { daemons: Vec::new(), holder, cgroup, dir, lab };
        node.wait("the node's mounts", |n| n.dir.join("ready").exists())?;
        // The API server's addresses: the node's, the `kubernetes` Service's, loopback.
        apiserver::certificates(&node.dir, &format!("IP:{},IP:198.19.0.1,IP:127.0.0.1", node.address()))?;
        node.control_plane()?;
        let images = images(&node.dir)?;
        node.containerd(&images)?;
        node.kubelet()?;
        node.wait("the kubelet to register the node", |n| n.kubectl(&["get", "node", NODE]).is_ok())?;
        Ok(node)
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The node's address (its uplink's), where the API server and NodePorts answer.
    pub fn address(&self) -> std::net::Ipv4Addr {
        self.lab.node().ipv4
    }

    /// kubectl as the admin, from the node: its output, or its error.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .lab
            .node()
            .netns
            .command(apiserver::KUBECTL)
            .arg("--kubeconfig")
            .arg(self.dir.join("admin.kubeconfig"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let said = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if out.status.success() { Ok(said(&out.stdout)) } else { Err(said(&out.stdout) + &said(&out.stderr)) }
    }

    /// `kubectl apply` of `yaml` (kept in the node's folder): what kubectl said, or its error.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let file = self.dir.join(format!("applied-{}.yaml", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&file, yaml).map_err(|e| e.to_string())?;
        self.kubectl(&["apply", "-f", &file.display().to_string()])
    }

    /// Runs `program args…` in the node's namespaces (the files a pod's hostPath sees).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, LabError> {
        let out = crate::checked(self.enter().arg(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A daemon's log so far (`kubelet`, `containerd`, `kube-apiserver`, …).
    pub fn log(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{daemon}.log"))).unwrap_or_default()
    }

    /// `nsenter` into the holder's mount and network namespaces.
    fn enter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-m", "-n"])
            .arg(format!("--wd={}", self.dir.display()));
        cmd
    }

    fn daemon(&mut self, name: &str, args: &[&str]) -> Result<(), LabError> {
        let child = spawn(self.enter().args(args), &self.dir.join(format!("{name}.log")))?;
        self.daemons.push((name.to_owned(), child));
        Ok(())
    }

    fn control_plane(&mut self) -> Result<(), LabError> {
        let dir = self.dir.clone();
        let d = |f: &str| dir.join(f).display().to_string();
        let (etcd_data, cert, key, ca, tokens, sa) =
            (d("etcd"), d("server.crt"), d("server.key"), d("ca.crt"), d("tokens.csv"), d("sa.key"));
        let urls = "--listen-client-urls=http://127.0.0.1:2379";
        self.daemon(
            "etcd",
            &[
                "etcd",
                "--data-dir",
                &etcd_data,
                urls,
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
            ],
        )?;
        let address = self.address().to_string();
        let apiserver = kube("kube-apiserver");
        self.daemon(
            "kube-apiserver",
            &[
                &apiserver,
                &format!("--advertise-address={address}"),
                "--secure-port=6443",
                "--etcd-servers=http://127.0.0.1:2379",
                &format!("--tls-cert-file={cert}"),
                &format!("--tls-private-key-file={key}"),
                &format!("--client-ca-file={ca}"),
                &format!("--token-auth-file={tokens}"),
                &format!("--service-account-key-file={sa}"),
                &format!("--service-account-signing-key-file={sa}"),
                "--service-account-issuer=https://kubernetes.default.svc",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--kubelet-preferred-address-types=InternalIP",
            ],
        )?;
        std::fs::write(
            self.dir.join("admin.kubeconfig"),
            apiserver::kubeconfig(&format!("https://{address}:6443"), &ca),
        )
        .map_err(io("writing the kubeconfig"))?;
        self.wait("kube-apiserver", |n| n.kubectl(&["get", "--raw", "/readyz"]).is_ok())?;
        let kubeconfig = format!("--kubeconfig={}", d("admin.kubeconfig"));
        self.daemon(
            "kube-controller-manager",
            &[
                &kube("kube-controller-manager"),
                &kubeconfig,
                "--leader-elect=false",
                "--allocate-node-cidrs",
                &format!("--cluster-cidr={CLUSTER_CIDR}"),
                "--node-cidr-mask-size=24",
                &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                &format!("--service-account-private-key-file={sa}"),
                &format!("--root-ca-file={ca}"),
            ],
        )?;
        self.daemon("kube-scheduler", &[&kube("kube-scheduler"), &kubeconfig, "--leader-elect=false"])
    }

    fn containerd(&mut self, images: &[PathBuf]) -> Result<(), LabError> {
        let runc = self.dir.join("runc");
        std::fs::write(&runc, RUNC_WRAPPER).map_err(io("writing the runc wrapper"))?;
        crate::checked(Command::new("chmod").arg("+x").arg(&runc))?;
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"/run/containerd\"\n[grpc]\naddress = \"/run/containerd/containerd.sock\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"{PAUSE}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\nsnapshotter = \"overlayfs\"\ndefault_runtime_name = \"runc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nBinaryName = \"{runc}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\nbin_dir = \"/opt/cni/bin\"\nconf_dir = \"/etc/cni/net.d\"\n",
            root = self.dir.join("containerd").display(),
            runc = runc.display(),
        );
        std::fs::write(self.dir.join("containerd.toml"), config)
            .map_err(io("writing containerd's config"))?;
        let conf = self.dir.join("containerd.toml").display().to_string();
        self.daemon("containerd", &["containerd", "--config", &conf])?;
        self.wait("containerd", |n| n.exec("ctr", &["version"]).is_ok())?;
        for image in images {
            self.exec("ctr", &["-n", "k8s.io", "images", "import", &image.display().to_string()])?;
        }
        Ok(())
    }

    fn kubelet(&mut self) -> Result<(), LabError> {
        let config = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: cgroupfs\n\
             cgroupRoot: /{}\nfailSwapOn: false\nresolvConf: \"\"\n\
             authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}\nauthorization: {{mode: AlwaysAllow}}\n\
             evictionHard: {{memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%}}\n",
            self.cgroup
        );
        std::fs::write(self.dir.join("kubelet.yaml"), config).map_err(io("writing the kubelet's config"))?;
        let dir = self.dir.clone();
        let d = |f: &str| dir.join(f).display().to_string();
        let (config, kubeconfig, root) = (d("kubelet.yaml"), d("admin.kubeconfig"), d("kubelet"));
        let address = self.address().to_string();
        self.daemon(
            "kubelet",
            &[
                &kube("kubelet"),
                &format!("--config={config}"),
                &format!("--kubeconfig={kubeconfig}"),
                "--container-runtime=remote",
                "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
                &format!("--hostname-override={NODE}"),
                &format!("--node-ip={address}"),
                &format!("--root-dir={root}"),
            ],
        )
    }

    /// Polls `done` for up to two minutes, failing early if a daemon exited.
    fn wait(&mut self, what: &str, done: impl Fn(&KubeNode) -> bool) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done(self) {
            if let Some((name, status)) = self
                .daemons
                .iter_mut()
                .find_map(|(name, c)| Some((name.clone(), c.try_wait().ok().flatten()?)))
            {
                let log = self.log(&name);
                let tail: Vec<&str> = log.lines().rev().take(12).collect();
                let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                return Err(LabError::Exited {
                    what: format!("{what}: {name} exited:\n{tail}\n"),
                    status: status.to_string(),
                });
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(what.into()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        // The pods' processes have namespaces of their own: found by their cgroups.
        let ours = cgroup_folders(&self.cgroup);
        for _ in 0..3 {
            for procs in ours.iter().flat_map(|d| walk(d)).map(|d| d.join("cgroup.procs")) {
                for pid in std::fs::read_to_string(procs).unwrap_or_default().lines() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on a process of this node's pods.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            for child in self.daemons.iter_mut().rev().map(|(_, c)| c).chain([&mut self.holder]) {
                let _ = child.kill();
                let _ = child.wait();
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        for dir in ours.iter().flat_map(|d| walk(d)).rev() {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The node's cgroup folder in each hierarchy (`/sys/fs/cgroup/NAME` with cgroup2 alone).
fn cgroup_folders(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = std::fs::read_dir(root).into_iter().flatten().flatten().map(|e| e.path());
    hierarchies.chain([root.to_path_buf()]).map(|h| h.join(name)).filter(|d| d.is_dir()).collect()
}

/// `dir` and every folder beneath it, parents first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    if dir.is_dir() {
        all.push(dir.to_path_buf());
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                all.extend(walk(&entry.path()));
            }
        }
    }
    all
}

/// The sandbox image containerd runs for every pod (built by the caller, see [`images`]).
pub const PAUSE: &str = "localhost/pause:skiff";
/// A busybox image for the tests' pods (httpd, wget, timeout, …).
pub const BUSYBOX: &str = "localhost/busybox:skiff";

/// Docker archives of [`PAUSE`], [`BUSYBOX`] and skiff's image ([`crate::image::IMAGE`], built
/// by `cargo xtask test`), in `dir`, made with podman from Debian's static busybox: no
/// registry is reachable.
fn images(dir: &Path) -> Result<Vec<PathBuf>, LabError> {
    let rootfs = crate::image::busybox_tar(dir)?;
    let mut archives = Vec::new();
    for (name, entrypoint) in
        [(PAUSE, r#"["/bin/busybox","sleep","2147483647"]"#), (BUSYBOX, r#"["/bin/busybox"]"#)]
    {
        crate::checked(
            podman().args(["import", "--change", &format!("ENTRYPOINT {entrypoint}")]).arg(&rootfs).arg(name),
        )?;
    }
    for name in [PAUSE, BUSYBOX, crate::image::IMAGE] {
        let archive = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        let _ = std::fs::remove_file(&archive);
        crate::checked(podman().args(["save", "--format", "docker-archive", "-o"]).arg(&archive).arg(name))?;
        archives.push(archive);
    }
    Ok(archives)
}

/// Sets up the node's mount namespace, writes `dir/ready`, then holds it.
fn mounts(dir: &Path, cgroup: &str) -> Result<String, LabError> {
    let host = std::fs::read_to_string("/proc/self/mounts").map_err(io("reading /proc/self/mounts"))?;
    // `ip netns exec` mounted a fresh /sys: the cgroup hierarchies again, as the machine has
    // them (one cgroup2, or v1 controllers on a tmpfs).
    let mut cgroups = String::new();
    for line in host.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, point, kind @ ("cgroup" | "cgroup2" | "tmpfs"), options, ..] = fields[..] else { continue };
        if !point.starts_with("/sys/fs/cgroup") {
            continue;
        }
        let mut controllers: Vec<&str> = options
            .split(',')
            .filter(|o| !["rw", "ro", "relatime", "nosuid", "nodev", "noexec"].contains(o))
            .collect();
        // A named hierarchy without controllers (systemd's).
        if controllers.iter().any(|o| o.starts_with("name=")) {
            controllers.insert(0, "none");
        }
        let mkdir = if point == "/sys/fs/cgroup" { String::new() } else { format!("mkdir {point}; ") };
        cgroups += &match kind {
            "tmpfs" => format!("mount -t tmpfs -o mode=755 tmpfs {point}\n"),
            "cgroup" => format!(
                "{mkdir}mount -t cgroup -o {} cgroup {point}; mkdir -p {point}/{cgroup}\n",
                controllers.join(",")
            ),
            _ => format!("{mkdir}mount -t cgroup2 cgroup2 {point}; mkdir -p {point}/{cgroup}\n"),
        };
    }
    Ok(format!(
        "set -e\n\
         mount -t tmpfs tmpfs /run; mkdir -p /run/netns /run/skiff /run/containerd\n\
         mount -t tmpfs tmpfs /opt; mkdir -p /opt/cni/bin; cp /usr/lib/cni/* /opt/cni/bin/\n\
         mount -t tmpfs tmpfs /var/log; mkdir /var/log/pods\n\
         mount -t tmpfs tmpfs /etc/cni; mkdir /etc/cni/net.d\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         {cgroups}\
         # As systemd leaves a host: shared (within this namespace), for Bidirectional mounts.\n\
         mount --make-rshared /\n\
         ip link set lo up\n\
         touch {ready}\n\
         exec sleep 2147483647\n",
        ready = dir.join("ready").display()
    ))
}

/// Raises a negative `oomScoreAdj` in the bundle to 0 (this machine refuses negative values),
/// then runs runc.
const RUNC_WRAPPER: &str = r#"#!/bin/sh
prev=""
for a in "$@"; do
  if [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; then
    sed -i -E 's/"oomScoreAdj":-[0-9]+/"oomScoreAdj":0/' "$a/config.json"
  fi
  prev="$a"
done
exec /usr/sbin/runc "$@"
"#;

fn kube(binary: &str) -> String {
    apiserver::kube_binary(binary).display().to_string()
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child, LabError> {
    let file = std::fs::File::create(log).map_err(io("creating a log"))?;
    let err = file.try_clone().map_err(io("creating a log"))?;
    cmd.stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|source| LabError::Spawn { command: format!("{cmd:?}"), source })
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Io { what: what.into(), source }
}
