//! Installing the CNI plugin for the node's container runtime: the `skiff-cni` binary into the
//! plugin folder and a conflist into the configuration folder, with the two choices Cilium's
//! Helm values give (`cni.exclusive`, `cni.customConf`): move other configurations aside so
//! the runtime uses skiff's, and install the user's own conflist instead of skiff's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::write_atomically;

/// The plugin's name: its binary and its `type` in a conflist.
pub const PLUGIN: &str = "skiff-cni";
/// What a configuration moved aside is renamed with (added to its name).
pub const MOVED_ASIDE: &str = ".skiff_bak";

#[derive(Clone, Debug)]
pub struct CniInstall {
    /// Where the runtime finds plugins (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// Where the runtime reads configurations (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The conflist's file name (`05-skiff.conflist`: runtimes take the first by name).
    pub conf_name: String,
    /// Move every other configuration in `conf_dir` aside.
    pub exclusive: bool,
    /// Install this conflist (which must run `skiff-cni`) instead of skiff's.
    pub custom_conf: Option<PathBuf>,
    /// The agent's socket, for the plugin.
    pub socket: PathBuf,
}

impl CniInstall {
    /// Installs `plugin` (the `skiff-cni` binary) and the conflist; returns the conflist's path
    /// and the configurations moved aside.
    pub fn install(&self, plugin: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
        let conflist = match &self.custom_conf {
            Some(file) => custom(file)?,
            None => serde_json::to_vec_pretty(&self.conflist())?,
        };
        let binary = std::fs::read(plugin)
            .with_context(|| format!("reading the plugin {} (built beside skiff-agent)", plugin.display()))?;
        let installed = self.bin_dir.join(PLUGIN);
        write_atomically(&installed, &binary)
            .with_context(|| format!("installing {}", installed.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o755))?;
        let path = self.conf_dir.join(&self.conf_name);
        write_atomically(&path, &conflist).with_context(|| format!("writing {}", path.display()))?;
        let moved = if self.exclusive { self.move_others_aside()? } else { Vec::new() };
        Ok((path, moved))
    }

    /// skiff's conflist: `skiff-cni` alone, told where the agent's socket is. Version 1.0.0,
    /// the newest the runtimes of today's libcni read (the plugin speaks 1.1.0 too).
    pub fn conflist(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "skiff",
            "plugins": [{ "type": PLUGIN, "socket": self.socket }]
        })
    }

    /// Renames every other configuration in the folder, so the runtime finds only skiff's.
    fn move_others_aside(&self) -> Result<Vec<PathBuf>> {
        let mut moved = Vec::new();
        let entries = std::fs::read_dir(&self.conf_dir)
            .with_context(|| format!("reading {}", self.conf_dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let is_conf = [".conf", ".conflist", ".json"].iter().any(|ext| name.ends_with(ext));
            if is_conf && name != self.conf_name {
                let aside = path.with_file_name(format!("{name}{MOVED_ASIDE}"));
                std::fs::rename(&path, &aside).with_context(|| format!("moving {} aside", path.display()))?;
                moved.push(aside);
            }
        }
        Ok(moved)
    }
}

/// The user's conflist, checked: a JSON object with a `name` and a `plugins` list that runs
/// `skiff-cni` first.
fn custom(file: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(file).with_context(|| format!("--cni-custom-conf {}", file.display()))?;
    let conf: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("--cni-custom-conf {}: not JSON", file.display()))?;
    let first = conf.get("plugins").and_then(Value::as_array).and_then(|p| p.first());
    let first_type = first.and_then(|p| p.get("type")).and_then(Value::as_str);
    if conf.get("name").and_then(Value::as_str).is_none() || first_type != Some(PLUGIN) {
        bail!(
            "--cni-custom-conf {}: a conflist needs a \"name\" and a \"plugins\" list whose first plugin \
             has \"type\": \"{PLUGIN}\" (found {first_type:?})",
            file.display()
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-cni-conf-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net.d")).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("skiff-cni"), b"#!plugin").unwrap();
        std::fs::write(dir.join("net.d/10-bridge.conflist"), b"{}").unwrap();
        dir
    }

    fn install(dir: &Path, exclusive: bool, custom_conf: Option<PathBuf>) -> Result<(PathBuf, Vec<PathBuf>)> {
        CniInstall {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            conf_name: "05-skiff.conflist".into(),
            exclusive,
            custom_conf,
            socket: "/run/skiff/skiff.sock".into(),
        }
        .install(&dir.join("skiff-cni"))
    }

    #[test]
    fn installs_the_plugin_and_the_conflist_and_leaves_others_unless_exclusive() {
        let dir = temp("plain");
        let (conf, moved) = install(&dir, false, None).unwrap();
        assert!(moved.is_empty());
        assert_eq!(std::fs::read(dir.join("bin/skiff-cni")).unwrap(), b"#!plugin");
        let written: Value = serde_json::from_slice(&std::fs::read(conf).unwrap()).unwrap();
        assert_eq!(written["plugins"][0]["type"], PLUGIN);
        assert_eq!(written["plugins"][0]["socket"], "/run/skiff/skiff.sock");
        assert!(dir.join("net.d/10-bridge.conflist").exists());
        let (_, moved) = install(&dir, true, None).unwrap();
        assert_eq!(moved, [dir.join("net.d/10-bridge.conflist.skiff_bak")]);
        assert!(dir.join("net.d/05-skiff.conflist").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_custom_conflist_is_installed_if_it_runs_skiff_first() {
        let dir = temp("custom");
        let mine = dir.join("mine.conflist");
        let text =
            br#"{"cniVersion":"1.0.0","name":"mine","plugins":[{"type":"skiff-cni"},{"type":"portmap"}]}"#;
        std::fs::write(&mine, text).unwrap();
        let (conf, _) = install(&dir, false, Some(mine.clone())).unwrap();
        assert_eq!(std::fs::read(conf).unwrap(), text);
        std::fs::write(&mine, br#"{"name":"mine","plugins":[{"type":"bridge"}]}"#).unwrap();
        let e = install(&dir, false, Some(mine)).unwrap_err().to_string();
        assert!(e.contains("\"type\": \"skiff-cni\"") && e.contains("bridge"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
