//! Security identities of label sets: a number from 256 up for each distinct set (below are
//! Cilium's reserved ones), kept on disk so an endpoint keeps its number across restarts.
//! Numbers are this node's own until identities are agreed between nodes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use skiff_common::identity::Identity;

use super::{read_json, write_atomically};

type Labels = BTreeMap<String, String>;

pub struct Identities {
    path: PathBuf,
    by_labels: BTreeMap<Labels, Identity>,
}

impl Identities {
    pub fn open(path: &Path) -> anyhow::Result<Identities> {
        let saved: Vec<(Labels, u32)> = read_json(path)?.unwrap_or_default();
        let by_labels = saved.into_iter().map(|(labels, id)| (labels, Identity(id))).collect();
        Ok(Identities { path: path.to_owned(), by_labels })
    }

    /// The identity of `labels`: the one they have, or the next free number (saved first).
    pub fn of(&mut self, labels: &Labels) -> anyhow::Result<Identity> {
        if let Some(id) = self.by_labels.get(labels) {
            return Ok(*id);
        }
        let id = self.by_labels.values().max().map_or(Identity::FIRST_ALLOCATED, |m| Identity(m.0 + 1));
        self.by_labels.insert(labels.clone(), id);
        let saved: Vec<(&Labels, u32)> = self.by_labels.iter().map(|(l, id)| (l, id.0)).collect();
        write_atomically(&self.path, &serde_json::to_vec_pretty(&saved)?)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", self.path.display()))?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_set_keeps_its_number_across_restarts() {
        let dir = std::env::temp_dir().join(format!("skiff-identities-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("identities.json");
        let web: Labels = [("app".into(), "web".into())].into();
        let db: Labels = [("app".into(), "db".into())].into();
        let mut ids = Identities::open(&path).unwrap();
        let of = |ids: &mut Identities, l: &Labels| ids.of(l).unwrap().0;
        assert_eq!((of(&mut ids, &web), of(&mut ids, &db), of(&mut ids, &web)), (256, 257, 256));
        let mut again = Identities::open(&path).unwrap();
        assert_eq!((of(&mut again, &db), of(&mut again, &Labels::new())), (257, 258));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
