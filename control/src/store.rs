//! The cluster state as the sources report it, each object checked before it is taken: a
//! rejected object leaves its last good version in place, and the rejection is kept for
//! `skiff status` (and Kubernetes Events) until a good version or a delete replaces it.

use std::collections::{BTreeMap, BTreeSet, btree_map::Entry};

use k8s_openapi::api::core::v1::Node;
use skiff_api::{FieldError, Kind, ObjectKey, Rejection};

use crate::{
    compile,
    objects::Object,
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
    /// EndpointSlice names by the service they belong to (namespace, service).
    slices: BTreeMap<(String, String), BTreeSet<String>>,
    /// What changed since the compiler last took the changes.
    changes: Changes,
}

/// What changed in the store, as the compiler needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Nodes changed (node addresses, pod CIDRs): every service is recompiled.
    pub nodes: bool,
    /// Pods (namespace, name) added, changed or removed.
    pub pods: BTreeSet<(String, String)>,
    /// Namespaces whose labels (part of their pods' identities) changed.
    pub namespaces: BTreeSet<String>,
    pub policies: bool,
    /// Services (namespace, name) whose object or EndpointSlices changed.
    pub services: BTreeSet<(String, String)>,
}

impl Changes {
    /// What a first compile takes whole (a compiler's first update compiles every pod and
    /// service anyway).
    pub fn all() -> Changes {
        Changes { nodes: true, policies: true, ..Changes::default() }
    }

    fn record(&mut self, object: &Object) {
        let namespace = || object.metadata().namespace.clone().unwrap_or_default();
        match object {
            Object::Service(s) => {
                self.services.insert((namespace(), s.metadata.name.clone().unwrap_or_default()));
            }
            Object::EndpointSlice(_) => self.services.extend(service_of(object).map(|s| (namespace(), s))),
            Object::Node(_) => self.nodes = true,
            Object::Pod(p) => {
                self.pods.insert((namespace(), p.metadata.name.clone().unwrap_or_default()));
            }
            Object::Namespace(n) => {
                self.namespaces.insert(n.metadata.name.clone().unwrap_or_default());
            }
            // An identity's number changes what the compiled policy says of its pods.
            Object::NetworkPolicy(_)
            | Object::CiliumNetworkPolicy(_)
            | Object::CiliumClusterwideNetworkPolicy(_)
            | Object::CiliumIdentity(_) => self.policies = true,
        }
    }
}

/// The service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub fn service_of(object: &Object) -> Option<String> {
    let Object::EndpointSlice(s) = object else { return None };
    s.metadata.labels.as_ref()?.get("kubernetes.io/service-name").cloned()
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

    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key)
    }

    /// Every object of one kind (keys sort by kind first).
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        let from = ObjectKey { kind, namespace: String::new(), name: String::new() };
        self.objects.range(from..).take_while(move |(k, _)| k.kind == kind).map(|(_, o)| o)
    }

    /// The EndpointSlices of a service.
    pub fn slices_of<'a>(&'a self, namespace: &str, service: &str) -> impl Iterator<Item = &'a Object> + 'a {
        let names = self.slices.get(&(namespace.to_owned(), service.to_owned())).into_iter().flatten();
        let namespace = namespace.to_owned();
        names.filter_map(move |name| {
            self.objects.get(&ObjectKey {
                kind: Kind::EndpointSlice,
                namespace: namespace.clone(),
                name: name.clone(),
            })
        })
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Stores or removes an object, keeping the slice index and the changes.
    fn set(&mut self, key: &ObjectKey, object: Option<Object>) {
        if let Some(old) = self.objects.remove(key) {
            self.changes.record(&old);
            self.index(&old, false);
        }
        if let Some(new) = object {
            self.changes.record(&new);
            self.index(&new, true);
            self.objects.insert(key.clone(), new);
        }
        self.generation += 1;
    }

    fn index(&mut self, object: &Object, present: bool) {
        let Some(service) = service_of(object) else { return };
        let (namespace, name) = (object.metadata().namespace.clone().unwrap_or_default(), object.key().name);
        let names = self.slices.entry((namespace, service)).or_default();
        if present {
            names.insert(name);
        } else {
            names.remove(&name);
        }
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
                    self.set(&key, Some(object));
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
        if self.objects.contains_key(key) {
            self.set(key, None);
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
        let mut seen: BTreeMap<ObjectKey, String> = BTreeMap::new();
        for (origin, decoded) in listed {
            let key = match &decoded {
                Ok(object) => Some(object.key()),
                Err(rejection) => rejection.key.clone(),
            };
            if let Some(key) = key {
                // Two documents for one object: which one is meant is unknowable, so the
                // second is refused and the last good version stays.
                if let Some(first) = seen.get(&key) {
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
                seen.insert(key, origin.clone());
            }
            self.upsert(&origin, decoded);
        }
        let gone: Vec<ObjectKey> =
            self.objects.keys().filter(|k| ours(k) && !seen.contains_key(k)).cloned().collect();
        for key in gone {
            self.delete(&key);
        }
    }

    fn check(&self, origin: &str, object: Object) -> Result<Object, Rejection> {
        let mut errors = validate(&object, &self.limits).err().unwrap_or_default();
        if let Object::Node(node) = &object {
            errors.extend(self.pod_cidr_overlaps(node));
        }
        if errors.is_empty() {
            Ok(object)
        } else {
            Err(Rejection { key: Some(object.key()), origin: origin.to_owned(), errors })
        }
    }

    /// A Node's pod CIDRs must be its own: one overlapping another Node's, or holding a
    /// Service's cluster IP, would send pods' traffic to the wrong node.
    fn pod_cidr_overlaps(&self, node: &Node) -> Vec<FieldError> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let mut errors = Vec::new();
        for (i, cidr) in compile::pod_cidrs_of(node).into_iter().enumerate() {
            let field = format!("spec.podCIDRs[{i}]");
            for other in
                self.of_kind(Kind::Node).filter_map(|o| if let Object::Node(n) = o { Some(n) } else { None })
            {
                let other_name = other.metadata.name.as_deref().unwrap_or_default();
                for theirs in compile::pod_cidrs_of(other).into_iter().filter(|_| other_name != name) {
                    if cidr.contains(&theirs.network()) || theirs.contains(&cidr.network()) {
                        let message = format!("{cidr} overlaps Node {other_name}'s pod CIDR {theirs}");
                        errors.push(FieldError { field: field.clone(), message });
                    }
                }
            }
            for service in self.of_kind(Kind::Service) {
                let Object::Service(s) = service else { continue };
                let ips = s.spec.iter().flat_map(|spec| spec.cluster_ips.iter().flatten());
                let spec_ip = s.spec.iter().filter_map(|spec| spec.cluster_ip.as_ref());
                let mut ips = ips.chain(spec_ip).filter_map(|ip| ip.parse::<std::net::IpAddr>().ok());
                if let Some(ip) = ips.find(|ip| cidr.contains(ip)) {
                    let message = format!("{cidr} holds the cluster IP {ip} of {}", service.key());
                    errors.push(FieldError { field: field.clone(), message });
                }
            }
        }
        errors
    }
}
