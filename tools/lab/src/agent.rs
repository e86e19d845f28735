//! skiff-agent running in a lab node, for tests, benches and the demo: everything it writes
//! (socket, endpoint state, CNI folders) in a work folder of its own, its maps and XDP
//! attachments pinned on a bpffs of its own (which outlives it, for a restart), socket-LB
//! attached to a cgroup of its own; dropping it kills it and removes all three.

use std::{
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    time::{Duration, Instant},
};

use skiff_api::{Client, Status};

use crate::{Bpffs, Cgroup, LabError, Netns};

pub struct Agent {
    child: Child,
    /// The work folder: `skiff.sock`, `data/` (endpoints, addresses, identities), `cni/bin`,
    /// `cni/net.d`.
    pub work: PathBuf,
    /// Its `--pin-dir`, on `bpffs`.
    pub pins: PathBuf,
    pub bpffs: Bpffs,
    /// Where its socket-LB attaches (`--cgroup-root`): node-local clients run inside it.
    pub cgroup: Cgroup,
}

impl Agent {
    /// Starts `binary` (skiff-agent) in `node` with `args`, named `name` (unique per run: it
    /// names the work and pin folders; a work folder already there is used again, as a
    /// restarted agent finds its state), and waits until it answers on its socket and has
    /// installed its CNI configuration (once it has a pod CIDR: pods can be served).
    pub fn start(node: &Netns, binary: &Path, name: &str, args: &[String]) -> Result<Agent, LabError> {
        let mut agent = Agent::spawn(node, binary, name, args)?;
        agent.wait_until("skiff-agent to install its CNI configuration", |a| a.cni_conf().0.exists())?;
        Ok(agent)
    }

    /// skiff-agent on `lab`'s node with the demo's cluster (`examples/demo`: the web Service
    /// on three pods, a client pod) from a folder of its own, serving the uplink and every
    /// pod's veth, with `options`; returns once it has applied its objects, with the folder
    /// (the caller's to remove).
    pub fn start_on_demo(
        lab: &crate::Lab,
        binary: &Path,
        name: &str,
        options: &[&str],
    ) -> Result<(Agent, PathBuf), LabError> {
        let state = std::env::temp_dir().join(format!("skiff-{name}-objects"));
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
        let copy = |file: &str| std::fs::copy(demo.join(file), state.join(file)).map(drop);
        std::fs::create_dir_all(&state)
            .and_then(|()| ["node.yaml", "web.yaml", "pods.yaml"].into_iter().try_for_each(copy))
            .map_err(|source| LabError::Spawn {
                command: format!("copying {} to {}", demo.display(), state.display()),
                source,
            })?;
        let mut args: Vec<String> =
            ["--state-dir", &state.display().to_string(), "--node-name", "node1"].map(String::from).into();
        args.extend(options.iter().map(|o| (*o).to_owned()));
        for device in
            std::iter::once(&lab.client().node_iface).chain(lab.pods().iter().map(|p| &p.node_iface))
        {
            args.extend(["--device".to_owned(), device.clone()]);
        }
        let mut agent = Agent::start(&lab.node().netns, binary, name, &args)?;
        agent.wait_until("the first apply", |a| a.status().is_some_and(|s| s.applies >= 1))?;
        Ok((agent, state))
    }

    /// As [`start`](Agent::start), but waits only until the agent answers on its socket.
    pub fn spawn(node: &Netns, binary: &Path, name: &str, args: &[String]) -> Result<Agent, LabError> {
        Agent::launch(node, binary, name, args, false)
    }

    /// As [`spawn`](Agent::spawn), with the agent inside its lab cgroup and in a cgroup
    /// namespace of its own, whose root that cgroup is: a cgroup2 it mounts shows the lab's
    /// cgroup, never the machine's (as an agent in a pod sees its own).
    pub fn spawn_in_cgroup_namespace(
        node: &Netns,
        binary: &Path,
        name: &str,
        args: &[String],
    ) -> Result<Agent, LabError> {
        Agent::launch(node, binary, name, args, true)
    }

    fn launch(
        node: &Netns,
        binary: &Path,
        name: &str,
        args: &[String],
        cgroup_namespace: bool,
    ) -> Result<Agent, LabError> {
        let work = std::env::temp_dir().join(format!("skiff-{name}"));
        let bpffs = Bpffs::new(name)?;
        let pins = bpffs.pins();
        let cgroup = Cgroup::new(name)?;
        let io = |source| LabError::Spawn { command: format!("creating {}", work.display()), source };
        std::fs::create_dir_all(work.join("cni/net.d")).map_err(io)?;
        std::fs::create_dir_all(work.join("cni/bin")).map_err(io)?;
        let binary = binary.to_str().unwrap_or_default();
        let mut cmd = if cgroup_namespace {
            let mut cmd = cgroup.command(node, "unshare");
            cmd.args(["--cgroup", binary]);
            cmd
        } else {
            node.command(binary)
        };
        cmd.args(args)
            .arg("--socket")
            .arg(work.join("skiff.sock"))
            .arg("--pin-dir")
            .arg(&pins)
            .arg("--data-dir")
            .arg(work.join("data"))
            .arg("--cni-bin-path")
            .arg(work.join("cni/bin"))
            .arg("--cni-conf-path")
            .arg(work.join("cni/net.d"));
        if !args.iter().any(|a| a == "--cgroup-root") {
            cmd.arg("--cgroup-root").arg(cgroup.path());
        }
        let child =
            cmd.spawn().map_err(|source| LabError::Spawn { command: "skiff-agent".into(), source })?;
        let mut agent = Agent { child, work, pins, bpffs, cgroup };
        agent.wait_until("skiff-agent to answer", |a| a.status().is_some())?;
        Ok(agent)
    }

    pub fn socket(&self) -> PathBuf {
        self.work.join("skiff.sock")
    }

    pub fn client(&self) -> Client {
        Client::new(self.socket())
    }

    pub fn status(&self) -> Option<Status> {
        self.client().status().ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The conflist the agent installed, and its plugin.
    pub fn cni_conf(&self) -> (PathBuf, PathBuf) {
        (self.work.join("cni/net.d/05-skiff.conflist"), self.work.join("cni/bin/skiff-cni"))
    }

    /// Polls `done` every 50 ms for up to 30 s; an agent that exits fails the wait at once.
    pub fn wait_until(&mut self, what: &str, mut done: impl FnMut(&Agent) -> bool) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LabError::Exited { what: what.into(), status: status.to_string() });
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(what.into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGTERM, and its exit.
    pub fn terminate(&mut self) -> Result<ExitStatus, LabError> {
        let pid = i32::try_from(self.child.id()).unwrap_or(i32::MAX);
        // SAFETY: kill(2) on the agent this value spawned and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.child
            .wait()
            .map_err(|source| LabError::Spawn { command: "waiting for skiff-agent".into(), source })
    }

    /// SIGKILL (a crash), and its exit; the work folder stays for a restart.
    pub fn kill(&mut self) -> Result<ExitStatus, LabError> {
        let _ = self.child.kill();
        self.child
            .wait()
            .map_err(|source| LabError::Spawn { command: "waiting for skiff-agent".into(), source })
    }

    /// Starts the agent again with `args` over the same work folder (after
    /// [`terminate`](Agent::terminate) or [`kill`](Agent::kill)): it finds the state it left.
    pub fn restart(&mut self, node: &Netns, binary: &Path, args: &[String]) -> Result<(), LabError> {
        let folder = self.work.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let name = folder.trim_start_matches("skiff-").to_owned();
        let mut again = Agent::start(node, binary, &name, args)?;
        std::mem::swap(&mut self.child, &mut again.child);
        // `again` now holds the exited process; the folders are this value's to remove.
        again.work = PathBuf::new();
        again.pins = PathBuf::new();
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !self.work.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
        if !self.pins.as_os_str().is_empty() {
            // Pinned maps are files on bpffs, removed like any other.
            let _ = std::fs::remove_dir_all(&self.pins);
        }
    }
}
