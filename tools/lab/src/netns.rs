//! A named network namespace (`ip netns`), and running code or commands inside it.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Output},
};

use crate::LabError;

/// What a series of HTTP GETs got back (see [`Netns::http_get`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// How many answers each host gave.
    pub by_host: BTreeMap<String, usize>,
    /// What curl said about the requests that failed.
    pub errors: String,
}

impl Answers {
    pub fn answered(&self) -> usize {
        self.by_host.values().sum()
    }
}

/// A network namespace created with `ip netns add`; `/run/netns/<name>` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub(crate) fn new(name: String) -> Self {
        Netns { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that names it (what `CNI_NETNS` is).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `n` HTTP GETs to `url` from inside the namespace, each on a new connection (one curl
    /// process), at most `timeout_s` seconds each: the answers counted (the lab's servers
    /// answer with their host's name) and curl's complaints, if any.
    pub fn http_get(&self, url: &str, n: usize, timeout_s: u32) -> Result<Answers, LabError> {
        curl(self.command("curl"), url, n, timeout_s)
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args…` inside the namespace and returns its output; a non-zero exit is
    /// an error that quotes the command and its stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output, LabError> {
        let mut cmd = self.command(program);
        cmd.args(args);
        crate::checked(&mut cmd)
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets it opens and interface names it resolves belong to the namespace; file
    /// descriptors it returns (sockets, BPF links) stay usable from any thread. A panic in `f`
    /// is propagated to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        let ns =
            File::open(self.path()).map_err(|e| LabError::Netns { name: self.name.clone(), source: e })?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                // SAFETY: setns only changes this (new, unshared) thread's network namespace;
                // `ns` is an open namespace file that outlives the call.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            });
            match thread.join() {
                Ok(result) => result.map_err(|e| LabError::Netns { name: self.name.clone(), source: e }),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Sets sysctls (`key=value`) inside the namespace.
    pub fn sysctl(&self, settings: &[&str]) -> Result<(), LabError> {
        let mut args = vec!["-q", "-w"];
        args.extend_from_slice(settings);
        self.exec("sysctl", &args).map(drop)
    }

    /// Reads an interface statistic (`/sys/class/net/<iface>/statistics/<stat>`) in the namespace.
    pub fn link_stat(&self, iface: &str, stat: &str) -> Result<u64, LabError> {
        let out = self.exec("cat", &[&format!("/sys/class/net/{iface}/statistics/{stat}")])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .map_err(|_| LabError::Parse { what: format!("{iface} {stat}"), text: text.into() })
    }
}

/// `n` HTTP GETs to `url` by `curl` (a command that runs curl), each on a new connection.
pub(crate) fn curl(mut curl: Command, url: &str, n: usize, timeout_s: u32) -> Result<Answers, LabError> {
    let timeout = timeout_s.to_string();
    let mut args = vec!["-sS", "-g", "--max-time", &timeout, "-H", "Connection: close"];
    args.extend(std::iter::repeat_n(url, n));
    let out = curl.args(&args).output().map_err(|e| LabError::Spawn { command: "curl".into(), source: e })?;
    let mut by_host = BTreeMap::new();
    for name in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        *by_host.entry(name.to_owned()).or_insert(0) += 1;
    }
    Ok(Answers { by_host, errors: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
}
