//! The cluster state as the sources report it, each object checked before it is taken: a
//! rejected object leaves its last good version in place, and the rejection is kept for
//! `skiff status` (and Kubernetes Events) until a good version or a delete replaces it.

use std::collections::{BTreeMap, btree_map::Entry};

use crate::{
    objects::{Kind, Object, ObjectKey, Rejection},
    validate::{Limits, validate},
};

/// What a rejection is about: an object, or a document that does not say which object it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Object(ObjectKey),
    Document(String),
}

#[derive(Default)]
pub struct Store {
    limits: Limits,
    objects: BTreeMap<ObjectKey, Object>,
    rejections: BTreeMap<Subject, Rejection>,
    /// Bumped by every change of the accepted objects: the compiler's cue.
    generation: u64,
}

impl Store {
    pub fn new(limits: Limits) -> Store {
        Store { limits, ..Store::default() }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }

    pub fn rejections(&self) -> impl Iterator<Item = &Rejection> {
        self.rejections.values()
    }

    /// Takes a new version of an object if it is valid; otherwise records why not, and the
    /// last good version (if any) stays. Returns the rejection, if there was one.
    /// `origin` says where it came from (`web.yaml#2`, `api`).
    pub fn upsert(&mut self, origin: &str, decoded: Result<Object, Rejection>) -> Option<&Rejection> {
        let (subject, rejection) = match decoded.and_then(|object| self.check(origin, object)) {
            Ok(object) => {
                let key = object.key();
                self.rejections.remove(&Subject::Object(key.clone()));
                if self.objects.get(&key) != Some(&object) {
                    self.objects.insert(key, object);
                    self.generation += 1;
                }
                return None;
            }
            Err(rejection) => match &rejection.key {
                Some(key) => (Subject::Object(key.clone()), rejection),
                None => (Subject::Document(rejection.origin.clone()), rejection),
            },
        };
        self.rejections.insert(subject.clone(), rejection);
        self.rejections.get(&subject)
    }

    pub fn delete(&mut self, key: &ObjectKey) {
        self.rejections.remove(&Subject::Object(key.clone()));
        if self.objects.remove(key).is_some() {
            self.generation += 1;
        }
    }

    /// Replaces everything of `kinds` by what a source listed (a re-read folder, a watcher's
    /// relist): objects it no longer lists are deleted, rejected ones keep their last good
    /// version. Unchanged objects cost no generation.
    pub fn resync(
        &mut self,
        kinds: &[Kind],
        listed: impl IntoIterator<Item = (String, Result<Object, Rejection>)>,
    ) {
        let ours = |key: &ObjectKey| kinds.contains(&key.kind);
        self.rejections.retain(|subject, _| match subject {
            Subject::Object(key) => !ours(key),
            Subject::Document(_) => false,
        });
        let mut seen: Vec<(ObjectKey, String)> = Vec::new();
        for (origin, decoded) in listed {
            let key = match &decoded {
                Ok(object) => Some(object.key()),
                Err(rejection) => rejection.key.clone(),
            };
            if let Some(key) = key {
                // Two documents for one object: which one is meant is unknowable, so the
                // second is refused and the last good version stays.
                if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                    let message = format!("defined again; first defined in {first}");
                    let error = Rejection::new(Some(key.clone()), &origin, "metadata.name", message);
                    match self.rejections.entry(Subject::Object(key)) {
                        Entry::Occupied(mut e) => e.get_mut().errors.extend(error.errors),
                        Entry::Vacant(e) => {
                            e.insert(error);
                        }
                    }
                    continue;
                }
                seen.push((key, origin.clone()));
            }
            self.upsert(&origin, decoded);
        }
        let mut seen: Vec<ObjectKey> = seen.into_iter().map(|(k, _)| k).collect();
        seen.sort();
        let gone: Vec<ObjectKey> =
            self.objects.keys().filter(|k| ours(k) && seen.binary_search(k).is_err()).cloned().collect();
        for key in gone {
            self.delete(&key);
        }
    }

    fn check(&self, origin: &str, object: Object) -> Result<Object, Rejection> {
        match validate(&object, &self.limits) {
            Ok(()) => Ok(object),
            Err(errors) => Err(Rejection { key: Some(object.key()), origin: origin.to_owned(), errors }),
        }
    }
}
