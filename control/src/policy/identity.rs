//! Security identities of label sets: a number from 256 up for each distinct set of the
//! cluster's pods (below are Cilium's reserved ones), kept on disk (in the agent's data
//! folder) so that a label set keeps its number across restarts. Numbers are this node's own
//! until identities are agreed between nodes. A number stays with its labels after their last
//! pod goes.

use std::path::{Path, PathBuf};

use hashbrown::HashMap;

use skiff_api::IdentityView;
use skiff_common::identity::Identity;

use crate::{
    endpoints::{read_json, write_atomically},
    labels::Labels,
};

#[derive(Default)]
pub struct Identities {
    /// Where they are kept; `None`: in memory only.
    path: Option<PathBuf>,
    /// Hashed (hashbrown's fast hasher): a lookup hashes a label set once rather than
    /// comparing it with a dozen others.
    by_labels: HashMap<Labels, Identity>,
}

impl Identities {
    pub fn open(path: &Path) -> anyhow::Result<Identities> {
        let saved: Vec<(Labels, u32)> = read_json(path)?.unwrap_or_default();
        let by_labels = saved.into_iter().map(|(labels, id)| (labels, Identity(id))).collect();
        Ok(Identities { path: Some(path.to_owned()), by_labels })
    }

    /// Every label set with its number.
    pub fn all(&self) -> &HashMap<Labels, Identity> {
        &self.by_labels
    }

    /// The identity of `labels`: the one they have, or the next free number (saved first).
    pub fn of(&mut self, labels: &Labels) -> anyhow::Result<Identity> {
        self.allocate([labels])?;
        Ok(self.by_labels[labels])
    }

    /// Numbers every set in `sets` that has none yet; saves once.
    pub fn allocate<'a>(&mut self, sets: impl IntoIterator<Item = &'a Labels>) -> anyhow::Result<()> {
        let mut next = self.by_labels.values().max().map_or(Identity::FIRST_ALLOCATED, |m| Identity(m.0 + 1));
        let mut added = false;
        for labels in sets {
            if !self.by_labels.contains_key(labels) {
                self.by_labels.insert(labels.clone(), next);
                next = Identity(next.0 + 1);
                added = true;
            }
        }
        if added && let Some(path) = &self.path {
            let mut saved: Vec<(&Labels, u32)> = self.by_labels.iter().map(|(l, id)| (l, id.0)).collect();
            saved.sort_by_key(|&(_, id)| id);
            write_atomically(path, &serde_json::to_vec_pretty(&saved)?)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// The reserved identities, then the allocated ones, by number.
    pub fn views(&self) -> Vec<IdentityView> {
        let reserved = (1..Identity::FIRST_ALLOCATED.0).filter_map(|id| {
            let name = Identity(id).reserved_name()?;
            Some(IdentityView { id, labels: vec![format!("reserved:{name}")] })
        });
        let mut allocated: Vec<IdentityView> = self
            .by_labels
            .iter()
            .map(|(labels, id)| IdentityView {
                id: id.0,
                labels: labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect(),
            })
            .collect();
        allocated.sort_by_key(|v| v.id);
        reserved.chain(allocated).collect()
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
        let api: Labels = [("app".into(), "api".into())].into();
        again.allocate([&web, &api, &db]).unwrap();
        let views = Identities::open(&path).unwrap().views();
        let of_view = |id: u32| views.iter().find(|v| v.id == id).map(|v| v.labels.clone());
        assert_eq!(of_view(1), Some(vec!["reserved:host".to_owned()]));
        assert_eq!(of_view(259), Some(vec!["k8s:app=api".to_owned()]), "only the new set is numbered");
        assert_eq!(views.iter().filter(|v| v.id >= 256).count(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
