//! `--state-dir DIR`: every `*.yaml`, `*.yml` and `*.json` file of a folder (multi-document
//! YAML), re-read whole whenever one of them changes, is added or goes away. Changes are
//! found by comparing the files' sizes and modification times every [`POLL`], a stat per file:
//! cheap, and it works on every filesystem (inotify misses changes made through some mounts).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use tokio::sync::mpsc::Sender;

use crate::{
    controller::Event,
    objects::{Kind, Object, Rejection, decode_yaml},
};

pub const POLL: Duration = Duration::from_millis(50);

/// Decodes every manifest of `dir`, in file-name order.
pub fn read(dir: &Path) -> Result<Vec<(String, Result<Object, Rejection>)>> {
    let mut out = Vec::new();
    for path in manifests(dir)? {
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        match std::fs::read_to_string(&path) {
            Ok(text) => out.extend(decode_yaml(&text, &name)),
            Err(e) => out.push((name.clone(), Err(Rejection::new(None, &name, "(file)", format!("unreadable: {e}"))))),
        }
    }
    Ok(out)
}

fn manifests(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the state folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The folder as a list of (file, size, modified): any change of it means a re-read.
fn fingerprint(dir: &Path) -> Result<Vec<(PathBuf, u64, SystemTime)>> {
    manifests(dir)?
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p)?;
            Ok((p, meta.len(), meta.modified()?))
        })
        .collect()
}

/// Sends the folder's contents now and after every change, until the receiver goes away.
pub async fn watch(dir: PathBuf, events: Sender<Event>) -> Result<()> {
    // A folder missing at start is an error; one that goes away later keeps the last state.
    fingerprint(&dir)?;
    let mut last = None;
    loop {
        match fingerprint(&dir) {
            Ok(now) if last.as_ref() != Some(&now) => {
                let objects = read(&dir)?;
                last = Some(now);
                events.send(Event::Connected(true)).await?;
                events.send(Event::Resync { kinds: Kind::ALL.to_vec(), objects }).await?;
            }
            Ok(_) => {}
            Err(e) => {
                if last.take().is_some() {
                    eprintln!("skiff-agent: {e:#}; keeping the last state");
                    events.send(Event::Connected(false)).await?;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
