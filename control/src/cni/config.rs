//! What the runtime hands the plugin: the command and the attachment in the environment
//! (`CNI_*`), the network configuration on standard in.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;
use serde_json::Value;
use skiff_api::{Attachment, DEFAULT_SOCKET, PodRef};

use super::error::{CniError, code};

/// The specification versions this plugin speaks (0.1 and 0.2 had another result format).
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// What an error is labelled with when the configuration could not say.
pub const LATEST: &str = "1.1.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

/// The network configuration (one plugin's object of a conflist, with the list's `name` and
/// `cniVersion`, as the runtime derives it).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin: String,
    /// skiff-agent's local API socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The result of the plugins before this one (ADD when chained, DEL and CHECK).
    pub prev_result: Option<Value>,
    /// GC: the attachments that still exist.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Vec<ValidAttachment>,
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// What `VERSION` reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionConf {
    cni_version: Option<String>,
}

/// The parameters of one invocation.
#[derive(Debug)]
pub struct Invocation {
    pub command: Command,
    pub conf: Option<NetConf>,
    /// The version requested (the configuration's), for the result and errors.
    pub version: String,
    pub env: Env,
}

/// The `CNI_*` variables the command needs, checked.
#[derive(Debug, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub pod: Option<PodRef>,
}

impl Env {
    pub fn attachment(&self) -> Attachment {
        Attachment { container_id: self.container_id.clone(), ifname: self.ifname.clone() }
    }
}

/// Reads an invocation from `var` (the environment) and `stdin`. On error, the version to
/// label the error with comes along.
pub fn parse(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Invocation, (String, CniError)> {
    let command = match var("CNI_COMMAND").as_deref() {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("GC") => Command::Gc,
        Some("STATUS") => Command::Status,
        Some("VERSION") => Command::Version,
        Some(other) => {
            return Err((LATEST.into(), invalid_env(&format!("CNI_COMMAND={other:?} is not a CNI command"))));
        }
        None => return Err((LATEST.into(), invalid_env("CNI_COMMAND is not set"))),
    };
    if command == Command::Version {
        // VERSION answers whatever version is asked, even one this plugin does not speak.
        let version = serde_json::from_slice::<VersionConf>(stdin)
            .ok()
            .and_then(|c| c.cni_version)
            .unwrap_or_else(|| LATEST.into());
        return Ok(Invocation { command, conf: None, version, env: Env::default() });
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        let version = serde_json::from_slice::<VersionConf>(stdin).ok().and_then(|c| c.cni_version);
        (
            version.unwrap_or_else(|| LATEST.into()),
            CniError::new(code::DECODING_FAILURE, "the network configuration is not valid", e.to_string()),
        )
    })?;
    let version = conf.cni_version.clone();
    let fail = |e: CniError| (version.clone(), e);
    check_version(&conf.cni_version, command).map_err(fail)?;
    let env = env(command, &var).map_err(fail)?;
    Ok(Invocation { command, conf: Some(conf), version, env })
}

/// The configuration's version must be one this plugin speaks, and one that has the command.
fn check_version(version: &str, command: Command) -> Result<(), CniError> {
    if !SUPPORTED.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("the configuration's cniVersion is {version:?}; skiff-cni supports {SUPPORTED:?}"),
        ));
    }
    let since = match command {
        Command::Check => "0.4.0",
        Command::Gc | Command::Status => "1.1.0",
        _ => return Ok(()),
    };
    if ordinal(version) < ordinal(since) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("{command:?} came with CNI {since}; the configuration's cniVersion is {version}"),
        ));
    }
    Ok(())
}

fn ordinal(version: &str) -> usize {
    SUPPORTED.iter().position(|v| *v == version).unwrap_or(0)
}

/// The variables `command` requires, checked.
fn env(command: Command, var: &impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let (needs_attachment, needs_netns) = match command {
        Command::Add | Command::Check => (true, true),
        Command::Del => (true, false),
        Command::Gc | Command::Status | Command::Version => (false, false),
    };
    if !needs_attachment {
        return Ok(Env::default());
    }
    let required = |name: &str| var(name).filter(|v| !v.is_empty());
    let mut missing = Vec::new();
    let container_id = required("CNI_CONTAINERID").unwrap_or_else(|| {
        missing.push("CNI_CONTAINERID");
        String::new()
    });
    let ifname = required("CNI_IFNAME").unwrap_or_else(|| {
        missing.push("CNI_IFNAME");
        String::new()
    });
    let netns = required("CNI_NETNS").map(PathBuf::from);
    if needs_netns && netns.is_none() {
        missing.push("CNI_NETNS");
    }
    if !missing.is_empty() {
        return Err(invalid_env(&format!("{} must be set for {command:?}", missing.join(", "))));
    }
    if !valid_container_id(&container_id) {
        return Err(invalid_env(&format!(
            "CNI_CONTAINERID={container_id:?}: it starts with a letter or digit, then letters, digits, \
             '_', '.' or '-'"
        )));
    }
    if ifname.len() > 15 || ifname.contains(['/', ' ', ':']) || ifname == "." || ifname == ".." {
        return Err(invalid_env(&format!(
            "CNI_IFNAME={ifname:?}: an interface name has 1 to 15 bytes, without '/', ':' or spaces"
        )));
    }
    let pod = pod_ref(&var("CNI_ARGS").unwrap_or_default())?;
    Ok(Env { container_id, netns, ifname, pod })
}

fn invalid_env(details: &str) -> CniError {
    CniError::new(code::INVALID_ENVIRONMENT, "invalid CNI environment", details)
}

fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The pod named in `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`). Other keys are refused
/// unless `IgnoreUnknown` is set, as the CNI conventions ask.
fn pod_ref(args: &str) -> Result<Option<PodRef>, CniError> {
    let mut pairs = BTreeMap::new();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(invalid_env(&format!("CNI_ARGS: {pair:?} is not KEY=VALUE")));
        };
        pairs.insert(k, v);
    }
    let ignore_unknown = pairs.get("IgnoreUnknown").is_some_and(|v| matches!(*v, "1" | "true" | "True"));
    const KNOWN: [&str; 5] =
        ["IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"];
    if let Some(unknown) = pairs.keys().find(|k| !KNOWN.contains(k))
        && !ignore_unknown
    {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "unknown CNI_ARGS key",
            format!(
                "CNI_ARGS has {unknown}={}; skiff-cni reads {KNOWN:?} (or set IgnoreUnknown=1)",
                pairs[unknown]
            ),
        ));
    }
    Ok(match (pairs.get("K8S_POD_NAMESPACE"), pairs.get("K8S_POD_NAME")) {
        (Some(namespace), Some(name)) => {
            Some(PodRef { namespace: (*namespace).into(), name: (*name).into() })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |k| map.get(k).cloned()
    }

    const CONF: &[u8] = br#"{"cniVersion":"1.0.0","name":"skiff","type":"skiff-cni"}"#;

    fn add_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;FOO=bar"),
        ]
    }

    #[test]
    fn an_add_names_its_attachment_and_pod() {
        let inv = parse(vars(&add_env()), CONF).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.env.attachment(), Attachment { container_id: "c1".into(), ifname: "eth0".into() });
        assert_eq!(inv.env.pod, Some(PodRef { namespace: "default".into(), name: "web-0".into() }));
        assert_eq!(inv.conf.unwrap().socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn bad_input_gets_the_specs_codes() {
        let code_of = |env: &[(&str, &str)], stdin: &[u8]| parse(vars(env), stdin).unwrap_err().1.code;
        assert_eq!(code_of(&add_env(), b"{not json"), code::DECODING_FAILURE);
        let old = br#"{"cniVersion":"0.2.0","name":"skiff","type":"skiff-cni"}"#;
        assert_eq!(code_of(&add_env(), old), code::INCOMPATIBLE_VERSION);
        let no_netns: Vec<_> = add_env().into_iter().filter(|(k, _)| *k != "CNI_NETNS").collect();
        let e = parse(vars(&no_netns), CONF).unwrap_err().1;
        assert_eq!((e.code, e.details.contains("CNI_NETNS")), (code::INVALID_ENVIRONMENT, true), "{e}");
        assert_eq!(code_of(&[("CNI_COMMAND", "ADD")], CONF), code::INVALID_ENVIRONMENT);
        assert_eq!(code_of(&[], CONF), code::INVALID_ENVIRONMENT);
        let strict: Vec<_> = add_env()
            .into_iter()
            .map(|(k, v)| if k == "CNI_ARGS" { (k, "K8S_POD_NAME=a;FOO=bar") } else { (k, v) })
            .collect();
        assert_eq!(code_of(&strict, CONF), code::UNSUPPORTED_FIELD);
        let check_03 = br#"{"cniVersion":"0.3.1","name":"skiff","type":"skiff-cni"}"#;
        let check: Vec<_> = add_env()
            .into_iter()
            .map(|(k, v)| if k == "CNI_COMMAND" { (k, "CHECK") } else { (k, v) })
            .collect();
        assert_eq!(code_of(&check, check_03), code::INCOMPATIBLE_VERSION);
        let bad_id: Vec<_> = add_env()
            .into_iter()
            .map(|(k, v)| if k == "CNI_CONTAINERID" { (k, "-x") } else { (k, v) })
            .collect();
        assert_eq!(code_of(&bad_id, CONF), code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn del_needs_no_netns_and_version_answers_any_version() {
        let del = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")];
        assert!(parse(vars(&del), CONF).unwrap().env.netns.is_none());
        let inv = parse(vars(&[("CNI_COMMAND", "VERSION")]), br#"{"cniVersion":"9.9.9"}"#).unwrap();
        assert_eq!(inv.version, "9.9.9");
    }
}
