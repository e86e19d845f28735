//! The agent's settings from a folder holding one file per key, as the kubelet projects a
//! ConfigMap and as cilium-agent reads its own (`--config-dir`). A key is an option's long
//! name, or Cilium's name for it where the meaning is the same (`enable-policy`,
//! `bpf-lb-sock`, …); its file holds the value (`true`, `tunnel`, `eth0 eth1`). The command
//! line wins over the folder. An unknown key or an ill-typed value stops the agent with the
//! key and its file named: it never runs half-configured.

use std::{ffi::OsString, path::Path};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgAction, Command};

/// The folder's settings as command-line arguments (`--name=value`), each checked alone
/// against `command`; keys whose option `on_command_line` says was given there are left out.
pub fn args(dir: &Path, command: &Command, on_command_line: impl Fn(&str) -> bool) -> Result<Vec<OsString>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the config folder {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading the config folder {}", dir.display()))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    let mut args = Vec::new();
    for entry in entries {
        let key = entry.file_name().to_string_lossy().into_owned();
        // The kubelet's own entries (`..data`, `..2026_12_02_…`) and hidden files.
        if key.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Some(arg) = option(command, &key) else {
            bail!(
                "config key `{key}` ({}): not a skiff-agent option (`skiff-agent --help` lists them)",
                path.display()
            );
        };
        if on_command_line(arg.get_id().as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("config key `{key}`: reading {}", path.display()))?;
        let long = arg.get_long().unwrap_or(&key);
        let values: Vec<&str> = if matches!(arg.get_action(), ArgAction::Append) {
            text.split(|c: char| c.is_whitespace() || c == ',').filter(|v| !v.is_empty()).collect()
        } else {
            // Empty: unset, as Cilium reads an empty value.
            Some(text.trim()).filter(|v| !v.is_empty()).into_iter().collect()
        };
        let own: Vec<OsString> = values.iter().map(|v| format!("--{long}={v}").into()).collect();
        if let Err(e) = command
            .clone()
            .try_get_matches_from(std::iter::once(OsString::from("skiff-agent")).chain(own.iter().cloned()))
        {
            bail!("config key `{key}` ({}): {}", path.display(), what_is_wrong(&e.to_string()));
        }
        args.extend(own);
    }
    Ok(args)
}

/// The option a key names: by its long name or one of its aliases (`config-dir` itself is
/// not one a folder can set).
fn option<'c>(command: &'c Command, key: &str) -> Option<&'c Arg> {
    command.get_arguments().filter(|a| a.get_long() != Some("config-dir")).find(|a| {
        a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|aliases| aliases.contains(&key))
    })
}

/// Clap's error on one line, without its `error: ` prefix and the usage after it.
fn what_is_wrong(message: &str) -> String {
    let said: Vec<&str> = message.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    said.join(" ").trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::CommandFactory;

    use super::*;
    use crate::agent::Cli;

    /// A folder holding `keys` as files, removed on drop.
    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str, keys: &[(&str, &str)]) -> Folder {
            let dir = std::env::temp_dir().join(format!("skiff-config-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("..data")).unwrap();
            std::fs::write(dir.join("..data/stale"), "kubelet's own").unwrap();
            for (key, value) in keys {
                std::fs::write(dir.join(key), value).unwrap();
            }
            Folder(dir)
        }

        fn args(&self, on_command_line: &[&str]) -> Result<Vec<String>> {
            let args = args(&self.0, &Cli::command(), |id| on_command_line.contains(&id))?;
            Ok(args.into_iter().map(|a| a.into_string().unwrap()).collect())
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn keys_by_cilium_name_or_skiff_name_become_options() {
        let folder = Folder::new(
            "names",
            &[
                ("enable-policy", "always\n"),
                ("routing-mode", "native"),
                ("devices", "eth0 eth1"),
                ("bpf-lb-sock", "false"),
                ("cni-exclusive", "true"),
                ("k8s-service-host", ""),
            ],
        );
        assert_eq!(
            folder.args(&[]).unwrap(),
            [
                "--socket-lb=false",
                "--cni-exclusive=true",
                "--device=eth0",
                "--device=eth1",
                "--policy-enforcement=always",
                "--routing-mode=native",
            ],
            "in key order; an empty value is unset"
        );
        assert_eq!(
            folder.args(&["routing_mode", "devices"]).unwrap(),
            ["--socket-lb=false", "--cni-exclusive=true", "--policy-enforcement=always"],
            "the command line wins"
        );
    }

    #[test]
    fn an_unknown_key_or_an_ill_typed_value_is_named_with_its_file() {
        let folder = Folder::new("unknown", &[("enable-polcy", "always")]);
        let e = folder.args(&[]).unwrap_err().to_string();
        assert!(e.starts_with("config key `enable-polcy` ("), "{e}");
        assert!(
            e.ends_with("enable-polcy): not a skiff-agent option (`skiff-agent --help` lists them)"),
            "{e}"
        );
        let folder = Folder::new("ill-typed", &[("routing-mode", "vxlan")]);
        let e = folder.args(&[]).unwrap_err().to_string();
        assert!(e.contains("config key `routing-mode` ("), "{e}");
        assert!(
            e.contains("invalid value 'vxlan' for '--routing-mode <MODE>' [possible values: tunnel, native]"),
            "{e}"
        );
        let folder = Folder::new("algorithm", &[("bpf-lb-algorithm", "ring")]);
        let e = folder.args(&[]).unwrap_err().to_string();
        assert!(e.contains("invalid value 'ring'") && e.contains("[possible values: maglev, random]"), "{e}");
        let folder = Folder::new("itself", &[("config-dir", "/etc")]);
        assert!(folder.args(&[]).unwrap_err().to_string().contains("not a skiff-agent option"));
    }
}
