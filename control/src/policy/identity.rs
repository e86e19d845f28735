//! Security identities of label sets: a number from 256 up for each distinct set of the
//! cluster's pods (below are Cilium's reserved ones), kept on disk (in the agent's data
//! folder) so that a label set keeps its number across restarts. From a folder a number stays
//! with its labels after their last pod goes.
//!
//! With an API server the nodes agree, as Cilium's agents do in CRD mode: a number is a
//! CiliumIdentity object, created by the first agent that needs one for its labels (the API
//! server lets only one create a name), and every agent reads them all. Two agents that raced
//! to number the same labels differently both take the lower number. Where the API server
//! refuses (no CRD, no right), the number is this node's own, and said so in the log. An
//! object whose labels no pod of the cluster has had for a grace period is deleted, as
//! Cilium's operator collects them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hashbrown::HashMap;

use skiff_api::IdentityView;
use skiff_common::identity::Identity;

use crate::{
    endpoints::{read_json, write_atomically},
    labels::Labels,
};

/// The highest number an agent allocates (Cilium's CRD mode allocates 16 bits).
pub const LAST_ALLOCATED: u32 = 65535;

/// Makes CiliumIdentity objects (the agent's: through the API server).
pub trait Allocator: Send {
    /// Creates identity `id` for `labels`, or finds it taken: with the pod label set it stands
    /// for (`None` if it is not one).
    fn create(&mut self, id: u32, labels: &Labels) -> anyhow::Result<Created>;
    /// Deletes identity `id` (already gone: done).
    fn delete(&mut self, id: u32) -> anyhow::Result<()>;
}

pub enum Created {
    Made,
    Taken(Option<Labels>),
}

/// The cluster's CiliumIdentity objects: number → the pod label set it stands for (`None`:
/// labels of another source, a number taken all the same).
pub type ClusterIdentities = BTreeMap<u32, Option<Labels>>;

#[derive(Default)]
pub struct Identities {
    /// Where they are kept; `None`: in memory only.
    path: Option<PathBuf>,
    /// Hashed (hashbrown's fast hasher): a lookup hashes a label set once rather than
    /// comparing it with a dozen others.
    by_labels: HashMap<Labels, Identity>,
    /// With an API server: what allocates, and what it knows of the cluster's numbers.
    cluster: Option<(Box<dyn Allocator>, ClusterIdentities)>,
    /// A number this node gave alone although it has an API server (it refused).
    fell_back: bool,
    /// Cluster numbers whose label set no pod has, since when.
    unused_since: HashMap<u32, Instant>,
}

impl Identities {
    pub fn open(path: &Path) -> anyhow::Result<Identities> {
        let saved: Vec<(Labels, u32)> = read_json(path)?.unwrap_or_default();
        let by_labels = saved.into_iter().map(|(labels, id)| (labels, Identity(id))).collect();
        Ok(Identities { path: Some(path.to_owned()), by_labels, ..Identities::default() })
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

    /// Numbers through `allocator` from now on (the agent's API server).
    pub fn set_allocator(&mut self, allocator: Box<dyn Allocator>) {
        self.cluster = Some((allocator, ClusterIdentities::new()));
    }

    /// Takes the cluster's numbers as they are now: a label set with an object takes its
    /// lowest number; one whose number another label set holds, or whose object was deleted
    /// (collected by another agent), loses it (and is numbered again by
    /// [`allocate`](Identities::allocate) if a pod still has it). Whether any number changed.
    pub fn observe(&mut self, objects: ClusterIdentities) -> bool {
        let Some((_, known)) = &mut self.cluster else { return false };
        let before = std::mem::replace(known, objects);
        let mut agreed: HashMap<&Labels, u32> = HashMap::new();
        for (&id, labels) in known.iter() {
            if let Some(labels) = labels {
                agreed.entry(labels).or_insert(id);
            }
        }
        let mut changed = false;
        self.by_labels.retain(|labels, id| {
            // Not in the cluster, nor ever seen there: this node's own number (it fell back).
            let own = !known.contains_key(&id.0) && !before.contains_key(&id.0);
            let keep = agreed.get(labels).is_some_and(|&a| a == id.0) || own;
            changed |= !keep;
            keep
        });
        for (labels, id) in agreed {
            changed |= self.by_labels.insert(labels.clone(), Identity(id)) != Some(Identity(id));
        }
        changed
    }

    /// Numbers every set in `sets` that has none yet; saves once.
    pub fn allocate<'a>(&mut self, sets: impl IntoIterator<Item = &'a Labels>) -> anyhow::Result<()> {
        let mut added = false;
        // Numbers in use, gathered once (not per set: a folder of thousands of new sets).
        let mut used: hashbrown::HashSet<u32> = self.by_labels.values().map(|id| id.0).collect();
        let mut next_local = used.iter().max().map_or(Identity::FIRST_ALLOCATED.0, |m| m + 1);
        for labels in sets {
            if !self.by_labels.contains_key(labels) {
                let id = self.number(labels, &used).unwrap_or_else(|| {
                    next_local += 1;
                    Identity(next_local - 1)
                });
                used.insert(id.0);
                next_local = next_local.max(id.0 + 1);
                self.by_labels.insert(labels.clone(), id);
                added = true;
            }
        }
        if added {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut saved: Vec<(&Labels, u32)> = self.by_labels.iter().map(|(l, id)| (l, id.0)).collect();
        saved.sort_by_key(|&(_, id)| id);
        write_atomically(path, &serde_json::to_vec_pretty(&saved)?)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }

    /// Deletes the CiliumIdentity objects of label sets no pod of the cluster has had for
    /// `grace` (as Cilium's operator does: every agent sees every pod, so they agree on what
    /// is unused; the grace covers a watch's lag and a pod coming back). Objects of other
    /// sources are left alone. Returns the numbers deleted.
    pub fn collect_garbage(
        &mut self,
        in_use: impl Fn(&Labels) -> bool,
        now: Instant,
        grace: Duration,
    ) -> Vec<u32> {
        let Some((allocator, known)) = &mut self.cluster else { return Vec::new() };
        let unused: Vec<u32> =
            known.iter().filter(|(_, l)| l.as_ref().is_some_and(|l| !in_use(l))).map(|(&id, _)| id).collect();
        self.unused_since.retain(|id, _| unused.contains(id));
        let mut deleted = Vec::new();
        for id in unused {
            let since = *self.unused_since.entry(id).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            match allocator.delete(id) {
                Ok(()) => {
                    known.remove(&id);
                    self.unused_since.remove(&id);
                    self.by_labels.retain(|_, n| n.0 != id);
                    deleted.push(id);
                }
                Err(e) => tracing::warn!("deleting CiliumIdentity {id}: {e:#}"),
            }
        }
        if !deleted.is_empty()
            && let Err(e) = self.save()
        {
            tracing::warn!("{e:#}");
        }
        deleted
    }

    /// A CiliumIdentity's number for `labels`, made for it or found made by another agent
    /// (`used`: the numbers this node gave); `None`: this node numbers it alone (no API server,
    /// or it refused).
    fn number(&mut self, labels: &Labels, used: &hashbrown::HashSet<u32>) -> Option<Identity> {
        let (allocator, known) = self.cluster.as_mut()?;
        // Found while numbering another set (its number was taken by these labels).
        if let Some((&id, _)) = known.iter().find(|(_, theirs)| theirs.as_ref() == Some(labels)) {
            return Some(Identity(id));
        }
        let mut id = Identity::FIRST_ALLOCATED.0;
        // Bounded: each try learns one more taken number.
        for _ in 0..64 {
            while known.contains_key(&id) || used.contains(&id) {
                id += 1;
            }
            if id > LAST_ALLOCATED {
                break;
            }
            match allocator.create(id, labels) {
                Ok(Created::Made) => {
                    known.insert(id, Some(labels.clone()));
                    return Some(Identity(id));
                }
                Ok(Created::Taken(theirs)) => {
                    let same = theirs.as_ref() == Some(labels);
                    known.insert(id, theirs);
                    if same {
                        return Some(Identity(id));
                    }
                }
                Err(e) => {
                    tracing::warn!("CiliumIdentity {id}: {e:#}; numbered by this node alone");
                    break;
                }
            }
        }
        self.fell_back = true;
        None
    }

    /// Where the numbers come from, for `skiff status`.
    pub fn allocation(&self) -> &'static str {
        match (&self.cluster, self.fell_back) {
            (None, _) => "numbered by this node",
            (Some(_), false) => "agreed through CiliumIdentity objects",
            (Some(_), true) => {
                "some numbered by this node alone: the API server refused a CiliumIdentity (see the log)"
            }
        }
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

    /// An API server of CiliumIdentity objects as the agent sees it: numbers another agent took.
    struct Server(std::sync::Arc<std::sync::Mutex<ClusterIdentities>>);

    impl Allocator for Server {
        fn create(&mut self, id: u32, labels: &Labels) -> anyhow::Result<Created> {
            let mut objects = self.0.lock().unwrap();
            if let Some(theirs) = objects.get(&id) {
                return Ok(Created::Taken(theirs.clone()));
            }
            objects.insert(id, Some(labels.clone()));
            Ok(Created::Made)
        }

        fn delete(&mut self, id: u32) -> anyhow::Result<()> {
            self.0.lock().unwrap().remove(&id);
            Ok(())
        }
    }

    /// A number whose label set no pod has is deleted once the grace has passed, not before;
    /// one in use again meanwhile is kept, and another source's objects are never touched.
    #[test]
    fn unused_identities_are_collected_after_their_grace() {
        let set = |app: &str| -> Labels { [("app".into(), app.into())].into() };
        let (web, db) = (set("web"), set("db"));
        let objects = std::sync::Arc::new(std::sync::Mutex::new(ClusterIdentities::from([(300, None)])));
        let mut ids = Identities::default();
        ids.set_allocator(Box::new(Server(objects.clone())));
        ids.observe(objects.lock().unwrap().clone());
        ids.allocate([&web, &db]).unwrap();
        let (t0, grace) = (Instant::now(), Duration::from_secs(60));
        let only_web = |l: &Labels| *l == web;
        assert!(ids.collect_garbage(only_web, t0, grace).is_empty(), "db just became unused");
        assert!(ids.collect_garbage(|_| true, t0 + grace / 2, grace).is_empty(), "db back in use");
        assert!(ids.collect_garbage(only_web, t0 + grace, grace).is_empty(), "its grace starts again");
        let db_id = ids.all()[&db].0;
        // Another agent, which knew db's number, sees its object go.
        let mut other = Identities::default();
        other.set_allocator(Box::new(Server(objects.clone())));
        other.observe(objects.lock().unwrap().clone());
        assert_eq!(other.all().get(&db), Some(&Identity(db_id)));
        assert_eq!(ids.collect_garbage(only_web, t0 + grace * 2, grace), [db_id]);
        assert!(other.observe(objects.lock().unwrap().clone()), "a number went");
        assert!(!other.all().contains_key(&db), "collected elsewhere: forgotten here too");
        let left: Vec<u32> = objects.lock().unwrap().keys().copied().collect();
        assert_eq!(left, [256, 300], "web's and the other source's stay");
        assert!(!ids.all().contains_key(&db));
    }

    #[test]
    fn the_cluster_numbers_win_and_the_lowest_of_a_race() {
        let set = |app: &str| -> Labels { [("app".into(), app.into())].into() };
        let (web, db, api) = (set("web"), set("db"), set("api"));
        // Another agent made 256 for db and 257 for a reserved-like set skiff does not read.
        let objects = std::sync::Arc::new(std::sync::Mutex::new(ClusterIdentities::from([
            (256, Some(db.clone())),
            (257, None),
        ])));
        let mut ids = Identities::default();
        ids.set_allocator(Box::new(Server(objects.clone())));
        // Not yet listed: web tries 256 and 257 (taken), and makes 258; db finds its own 256.
        ids.allocate([&web, &db]).unwrap();
        assert_eq!((ids.all()[&web].0, ids.all()[&db].0), (258, 256));
        // Listed: the same, nothing changes.
        assert!(!ids.observe(objects.lock().unwrap().clone()));
        // A race: another agent numbered web 300 and api 259 while this one made 258 for web:
        // both keep the lower, 258; api takes 259.
        let mut listed = objects.lock().unwrap().clone();
        listed.insert(300, Some(web.clone()));
        listed.insert(259, Some(api.clone()));
        assert!(ids.observe(listed.clone()), "api is numbered by the cluster");
        assert_eq!((ids.all()[&web].0, ids.all()[&api].0), (258, 259));
        // The object for 258 goes (the other agent won with 300, say): web renumbers to 300.
        listed.remove(&258);
        assert!(ids.observe(listed));
        assert_eq!(ids.all()[&web].0, 300);
    }
}
