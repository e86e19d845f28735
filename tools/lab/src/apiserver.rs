//! A real Kubernetes API server for tests and benches: etcd and kube-apiserver v1.20.2 (built
//! by `cargo xtask setup`) on loopback ports of their own, with a throwaway CA, serving
//! certificate, service-account key, and tokens for an admin and for skiff's ServiceAccount
//! (authorized by RBAC, as a cluster's), in a temporary folder. Dropping it ends both
//! processes (by their PIDs) and removes the folder.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where `cargo xtask setup` caches the Kubernetes binaries it builds.
pub const KUBERNETES: &str = "/var/cache/skiff/kubernetes-v1.20.2";
/// Where `cargo xtask setup` caches the binary; `SKIFF_KUBE_APISERVER` overrides it.
pub const KUBE_APISERVER: &str = "/var/cache/skiff/kubernetes-v1.20.2/kube-apiserver";
/// kubectl of the same version, built beside it.
pub const KUBECTL: &str = "/var/cache/skiff/kubernetes-v1.20.2/kubectl";

/// One of the Kubernetes binaries setup builds (kubelet, kube-scheduler, …).
pub fn kube_binary(name: &str) -> PathBuf {
    Path::new(KUBERNETES).join(name)
}
const TOKEN: &str = "skiff-test-admin-token";
const AGENT_TOKEN: &str = "skiff-test-agent-token";
/// The user a pod of skiff's DaemonSet is: its ServiceAccount, `kube-system/skiff`.
pub const AGENT_USER: &str = "system:serviceaccount:kube-system:skiff";

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("{0} not found: run `cargo xtask setup` (it builds kube-apiserver and installs etcd)")]
    Missing(String),
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> ApiServerError + '_ {
    move |e| ApiServerError::Io(what.to_owned(), e)
}

pub struct ApiServer {
    dir: PathBuf,
    port: u16,
    etcd_port: u16,
    etcd: Child,
    apiserver: Option<Child>,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and returns once `/readyz` passes.
    pub fn start() -> Result<ApiServer, ApiServerError> {
        let binary = binary();
        if !Path::new(&binary).exists() {
            return Err(ApiServerError::Missing(binary));
        }
        let dir = std::env::temp_dir().join(format!("skiff-apiserver-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).map_err(io("creating the API server's folder"))?;
        certificates(&dir, "IP:127.0.0.1,DNS:localhost")?;
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let client = format!("http://127.0.0.1:{etcd_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let etcd = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--name", "skiff", "--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("skiff={peer}")])
            .stdout(Stdio::null())
            .stderr(log(&dir, "etcd.log")?)
            .spawn()
            .map_err(|_| ApiServerError::Missing("etcd".into()))?;
        let mut server = ApiServer { port: free_port()?, dir, etcd_port, etcd, apiserver: None };
        server.start_apiserver()?;
        std::fs::write(server.kubeconfig(), server.kubeconfig_yaml("admin", TOKEN))
            .map_err(io("writing the kubeconfig"))?;
        std::fs::write(server.agent_kubeconfig(), server.kubeconfig_yaml("skiff", AGENT_TOKEN))
            .map_err(io("writing the agent's kubeconfig"))?;
        Ok(server)
    }

    fn start_apiserver(&mut self) -> Result<(), ApiServerError> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let child = Command::new(binary())
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={}", self.port))
            .arg(format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port))
            .arg(format!("--tls-cert-file={}", d("server.crt")))
            .arg(format!("--tls-private-key-file={}", d("server.key")))
            .arg(format!("--token-auth-file={}", d("tokens.csv")))
            .arg(format!("--service-account-key-file={}", d("sa.key")))
            .arg(format!("--service-account-signing-key-file={}", d("sa.key")))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .args(["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"])
            .args(["--endpoint-reconciler-type=none", "--service-cluster-ip-range=198.19.0.0/16"])
            // As kubeadm's: node agents' DaemonSets (Cilium's, skiff's) have a privileged step.
            .arg("--allow-privileged=true")
            .stdout(Stdio::null())
            .stderr(log(&self.dir, "kube-apiserver.log")?)
            .spawn()
            .map_err(io("starting kube-apiserver"))?;
        self.apiserver = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), ApiServerError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "2", "--cacert"])
                .arg(self.dir.join("ca.crt"))
                .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
                .arg(format!("{}/readyz", self.url()))
                .output()
                .map_err(io("running curl"))?;
            if out.status.success() {
                return Ok(());
            }
            let exited = self.apiserver.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                return Err(ApiServerError::Failed {
                    what: "kube-apiserver did not become ready".into(),
                    detail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig with admin rights on this server.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A kubeconfig as skiff's ServiceAccount ([`AGENT_USER`]): it may do what the
    /// ClusterRole bound to it allows (nothing until `docker/skiff.yaml` is applied).
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.dir.join("agent.kubeconfig")
    }

    fn kubeconfig_yaml(&self, user: &str, token: &str) -> String {
        kubeconfig_as(&self.url(), &self.dir.join("ca.crt").display().to_string(), user, token)
    }

    /// Ends kube-apiserver (SIGKILL, as a crash would); etcd and its data stay.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts kube-apiserver again on the same port and data.
    pub fn restart(&mut self) -> Result<(), ApiServerError> {
        self.kill();
        self.start_apiserver()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary() -> String {
    std::env::var("SKIFF_KUBE_APISERVER").unwrap_or_else(|_| KUBE_APISERVER.into())
}

fn unique() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn log(dir: &Path, name: &str) -> Result<std::fs::File, ApiServerError> {
    std::fs::File::create(dir.join(name)).map_err(io("creating a log file"))
}

/// A port the kernel just handed out on loopback (free now; taken again right away).
fn free_port() -> Result<u16, ApiServerError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener.local_addr().map_err(io("finding a free port"))?.port())
}

/// A kubeconfig for `server` as the admin.
pub(crate) fn kubeconfig(server: &str, ca: &str) -> String {
    kubeconfig_as(server, ca, "admin", TOKEN)
}

fn kubeconfig_as(server: &str, ca: &str, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {user}\n\
         current-context: lab\n"
    )
}

/// A CA, a serving certificate for `sans` (`IP:…,DNS:…`) signed by it and a service-account
/// key, all by openssl, and the tokens.
pub(crate) fn certificates(dir: &Path, sans: &str) -> Result<(), ApiServerError> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let steps: [Vec<&str>; 4] = [
        [
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=skiff-lab-ca"],
        ]
        .concat(),
        [&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=kube-apiserver"]]
            .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
        // SEC1 ("EC PRIVATE KEY"): what 1.20's key reader takes.
        vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key"],
    ];
    std::fs::write(dir.join("san.cnf"), format!("subjectAltName={sans}\n")).map_err(io("writing san.cnf"))?;
    let tokens = format!(
        "{TOKEN},admin,admin,\"system:masters\"\n\
         {AGENT_TOKEN},{AGENT_USER},skiff,\"system:serviceaccounts,system:serviceaccounts:kube-system\"\n"
    );
    std::fs::write(dir.join("tokens.csv"), tokens).map_err(io("writing the token file"))?;
    for args in steps {
        let out =
            Command::new("openssl").current_dir(dir).args(&args).output().map_err(io("running openssl"))?;
        if !out.status.success() {
            return Err(ApiServerError::Failed {
                what: format!("openssl {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    Ok(())
}
