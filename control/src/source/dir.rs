//! `--state-dir DIR`: every `*.yaml`, `*.yml` and `*.json` file of a folder (multi-document
//! YAML), re-read whole when the kernel says (inotify) that a file in it was written, moved in
//! or out, or deleted. A file that stops being YAML (an editor's half-written save) is
//! rejected, and the objects it last held stay as they were: nothing is deleted because a
//! file broke.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use skiff_api::{Kind, Rejection};
use tokio::sync::mpsc::Sender;

use crate::{
    controller::Event,
    objects::{Documents, Manifest, decode_yaml},
};

/// How long a burst of changes (an editor's write, rename and delete) has to go quiet before
/// the folder is read: one read for the burst.
const SETTLE: Duration = Duration::from_millis(20);
/// How often a folder that went away is looked for again.
const RETRY: Duration = Duration::from_secs(1);

/// A folder's files as last read.
#[derive(Default)]
pub struct Folder {
    /// What each file held when it was last YAML.
    last_good: HashMap<PathBuf, Manifest>,
}

impl Folder {
    /// Decodes every manifest of `dir`, in file-name order.
    pub fn read(&mut self, dir: &Path) -> Result<Manifest> {
        let mut out = Manifest::default();
        let paths = manifests(dir)?;
        self.last_good.retain(|p, _| paths.contains(p));
        for path in paths {
            let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let decoded = std::fs::read_to_string(&path)
                .map_err(|e| Rejection::new(None, &name, "(file)", format!("unreadable: {e}")))
                .and_then(|text| decode_yaml(&text, &name));
            match decoded {
                Ok(manifest) => {
                    self.last_good.insert(path, manifest.clone());
                    out.documents.extend(manifest.documents);
                    out.ignored.extend(manifest.ignored);
                }
                Err(broken) => {
                    out.documents.push((name, Err(broken)));
                    if let Some(kept) = self.last_good.get(&path) {
                        out.documents.extend(kept.documents.iter().filter(|(_, d)| d.is_ok()).cloned());
                        out.ignored.extend(kept.ignored.iter().cloned());
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Decodes every manifest of `dir` once (tests, tools).
pub fn read(dir: &Path) -> Result<Documents> {
    Ok(Folder::default().read(dir)?.documents)
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

/// Sends the folder's contents now and after every change, until the receiver goes away. A
/// folder missing at start is an error; one that goes away later keeps the last state, and
/// is read again when it is back.
pub async fn watch(dir: PathBuf, events: Sender<Event>) -> Result<()> {
    manifests(&dir)?;
    let mut folder = Folder::default();
    loop {
        let inotify = Inotify::init().context("inotify")?;
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        if let Err(e) = inotify.watches().add(&dir, mask) {
            tracing::warn!("watching {}: {e}; keeping the last state", dir.display());
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let mut changes = inotify.into_event_stream([0u8; 4096]).context("inotify events")?;
        // Watched before it is read: no change can fall between the two.
        loop {
            match folder.read(&dir) {
                Ok(Manifest { documents, ignored }) => {
                    events.send(Event::Connected(true)).await?;
                    events.send(Event::Ignored(ignored)).await?;
                    events.send(Event::Resync { kinds: Kind::ALL.to_vec(), objects: documents }).await?;
                }
                Err(e) => {
                    tracing::warn!("{e:#}; keeping the last state");
                    events.send(Event::Connected(false)).await?;
                }
            }
            // The next change, then quiet.
            let Some(change) = changes.next().await else { break };
            let folder_gone = |c: &std::io::Result<inotify::Event<_>>| {
                c.as_ref().is_ok_and(|c| c.mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF))
            };
            let mut gone = folder_gone(&change);
            while let Ok(Some(change)) = tokio::time::timeout(SETTLE, changes.next()).await {
                gone |= folder_gone(&change);
            }
            if gone {
                tracing::warn!("the state folder {} went away; keeping the last state", dir.display());
                events.send(Event::Connected(false)).await?;
                tokio::time::sleep(RETRY).await;
                break;
            }
        }
    }
}
