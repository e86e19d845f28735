//! The invalid-object corpus (`tests/invalid/`): each file holds one bad object and names, in
//! its header, the object, field and message its rejection must carry. Each arrives on top of
//! the demo's cluster: it must be rejected with that error, publish nothing (no partial
//! apply), and leave the last good version of its object running.

use std::path::Path;

use skiff_api::{Datapath, Health, Kind, ObjectKey, Problem, Source};
use skiff_control::{
    compile::NodeContext,
    controller::{Controller, Event, Recorder, Sink},
    objects::{Documents, decode_yaml},
    policy::Enforcement,
    source::dir,
    validate::Limits,
};

fn source() -> Source {
    Source::StateDir { path: "test".into() }
}

/// The documents of a text, or its one rejection when it is not YAML.
fn documents(text: &str, origin: &str) -> Documents {
    decode_yaml(text, origin).map_or_else(|broken| vec![(origin.to_owned(), Err(broken))], |m| m.documents)
}

/// A controller before any list, and the demo's objects.
fn unlisted() -> (Controller, Recorder, Documents) {
    let recorder = Recorder::default();
    let ctx = NodeContext {
        name: "node1".into(),
        addresses: Vec::new(),
        maglev_table_size: 251,
        pod_cidrs: Vec::new(),
        policy_enforcement: Enforcement::Default,
        ..NodeContext::default()
    };
    let c = Controller::new(ctx, Limits::default(), Box::new(recorder.clone()), source());
    let objects = dir::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")).unwrap();
    (c, recorder, objects)
}

fn demo() -> (Controller, Recorder) {
    let (mut c, recorder, objects) = unlisted();
    assert!(c.handle(Event::Resync { kinds: Kind::ALL.to_vec(), objects }).is_empty(), "the demo is valid");
    c.reconcile().unwrap();
    (c, recorder)
}

/// The header line `# {name}: value`.
fn header<'a>(text: &'a str, name: &str) -> &'a str {
    let prefix = format!("# {name}: ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no `{prefix}` line"))
}

#[test]
fn every_invalid_object_is_rejected_naming_object_field_and_range() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 40, "the corpus has {} objects, at least 40 wanted", files.len());
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let (object, field, message) =
            (header(&text, "object"), header(&text, "field"), header(&text, "message"));
        let (mut c, recorder) = demo();
        let published = recorder.0.read().unwrap().0;
        let web = c.snapshot().read().unwrap().service_views();

        let mut rejections = Vec::new();
        for (origin, decoded) in documents(&text, &name) {
            rejections.extend(c.handle(Event::Upsert { origin, object: decoded }));
        }
        c.reconcile().unwrap();

        assert_eq!(rejections.len(), 1, "{name}: one rejection, got {rejections:?}");
        let r = &rejections[0];
        let named = r.key.as_ref().map_or_else(|| "(document)".to_owned(), ToString::to_string);
        assert_eq!(named, object, "{name}: names the object");
        assert!(
            r.errors.iter().any(|e| e.field == field && e.message.contains(message)),
            "{name}: wanted `{field}: …{message}…`, got: {r}"
        );
        assert!(r.to_string().contains(field), "{name}: the message names the field: {r}");
        let status = c.snapshot().read().unwrap().status.clone();
        assert!(status.rejections.iter().any(|v| v == r), "{name}: shown in status");
        assert_eq!(recorder.0.read().unwrap().0, published, "{name}: nothing was published");
        let now = c.snapshot().read().unwrap().service_views();
        assert_eq!(
            serde_json::to_string(&now).unwrap(),
            serde_json::to_string(&web).unwrap(),
            "{name}: the last good services keep running"
        );
    }
}

#[test]
fn a_good_version_clears_the_rejection_and_a_delete_removes_the_object() {
    let (mut c, recorder) = demo();
    let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: [{port: 65536}]}\n";
    for (origin, object) in documents(bad, "bad.yaml") {
        assert_eq!(c.handle(Event::Upsert { origin, object }).len(), 1);
    }
    c.reconcile().unwrap();
    assert_eq!(c.snapshot().read().unwrap().status.rejections.len(), 1);
    let good =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/web.yaml"))
            .unwrap();
    let fixed = good.replace("port: 80\n", "port: 8000\n");
    for (origin, object) in documents(&fixed, "web.yaml") {
        assert!(c.handle(Event::Upsert { origin, object }).is_empty());
    }
    c.reconcile().unwrap();
    let snapshot = c.snapshot().read().unwrap().clone();
    assert!(snapshot.status.rejections.is_empty(), "the good version clears the rejection");
    assert!(
        snapshot.service_views().iter().any(|s| s.frontend() == "198.19.0.10:8000/TCP"),
        "and takes effect"
    );
    let key = ObjectKey { kind: Kind::Service, namespace: "demo".into(), name: "web".into() };
    c.handle(Event::Delete(key));
    c.reconcile().unwrap();
    assert!(c.snapshot().read().unwrap().service_views().is_empty());
    assert!(recorder.0.read().unwrap().1.services.is_empty(), "the delete reached the tables");
}

#[test]
fn an_object_defined_twice_in_the_folder_is_refused_and_the_last_good_stays() {
    let (mut c, _) = demo();
    let mut objects = dir::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")).unwrap();
    let again = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: [{port: 81}]}\n";
    objects.extend(documents(again, "zz-again.yaml"));
    c.handle(Event::Resync { kinds: Kind::ALL.to_vec(), objects });
    c.reconcile().unwrap();
    let snapshot = c.snapshot().read().unwrap().clone();
    let r = &snapshot.status.rejections;
    assert_eq!(r.len(), 1);
    let object = r[0].key.as_ref().map(ToString::to_string);
    assert_eq!((object.as_deref(), r[0].origin.as_str()), (Some("Service demo/web"), "zz-again.yaml#1"));
    assert!(r[0].errors[0].message.contains("defined again; first defined in web.yaml#1"), "{r:?}");
    assert!(
        snapshot.service_views().iter().any(|s| s.frontend() == "198.19.0.10:80/TCP"),
        "the first definition runs"
    );
}

/// A datapath that refuses its first table.
struct FailsOnce(bool, Recorder);

impl Sink for FailsOnce {
    fn publish(&mut self, tables: skiff_engine::tables::Tables) -> anyhow::Result<()> {
        if std::mem::replace(&mut self.0, false) {
            anyhow::bail!("the datapath is busy");
        }
        self.1.publish(tables)
    }

    fn describe(&self) -> Datapath {
        Datapath::default()
    }
}

#[test]
fn a_failed_publish_degrades_health_and_is_retried_whole() {
    let recorder = Recorder::default();
    let ctx = NodeContext {
        name: "node1".into(),
        addresses: Vec::new(),
        maglev_table_size: 251,
        pod_cidrs: Vec::new(),
        policy_enforcement: Enforcement::Default,
        ..NodeContext::default()
    };
    let mut c =
        Controller::new(ctx, Limits::default(), Box::new(FailsOnce(true, recorder.clone())), source());
    let objects = dir::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")).unwrap();
    c.handle(Event::Connected(true));
    c.handle(Event::Resync { kinds: Kind::ALL.to_vec(), objects });
    assert!(c.reconcile().is_err());
    let health = c.snapshot().read().unwrap().status.health.clone();
    let failed = Problem::ApplyFailed { error: "the datapath is busy".into() };
    assert_eq!(health, Health::Degraded { problems: vec![failed] });
    c.retry().unwrap();
    assert_eq!(c.snapshot().read().unwrap().status.health, Health::Ok);
    assert_eq!(recorder.0.read().unwrap().1.services.len(), 2, "the retry published the whole tables");
}

/// Nothing is published before every kind's first list: a source that reports itself
/// connected, or lists Services before EndpointSlices, never gets a partial cluster forwarded.
#[test]
fn nothing_is_published_before_every_kind_is_listed() {
    let (mut c, recorder, objects) = unlisted();
    let (services, rest): (Vec<_>, Vec<_>) =
        objects.into_iter().partition(|(_, o)| o.as_ref().is_ok_and(|o| o.kind() == Kind::Service));
    c.handle(Event::Connected(true));
    c.handle(Event::Resync { kinds: vec![Kind::Service], objects: services });
    assert_eq!(c.reconcile().unwrap(), None);
    assert_eq!(recorder.0.read().unwrap().0, 0, "nothing published");
    let health = c.snapshot().read().unwrap().status.health.clone();
    let others: Vec<Kind> = Kind::ALL.into_iter().filter(|&k| k != Kind::Service).collect();
    assert_eq!(
        health,
        Health::Degraded { problems: vec![Problem::WaitingForFirstList { kinds: others.clone() }] }
    );
    c.handle(Event::Resync { kinds: others, objects: rest });
    assert!(c.reconcile().unwrap().is_some());
    assert_eq!(recorder.0.read().unwrap().1.services.len(), 2, "the whole cluster, at once");
    assert_eq!(c.snapshot().read().unwrap().status.health, Health::Ok);
}

/// A kind the source does not serve (Cilium's CRDs missing) does not hold the others back:
/// they are published, health names the kind, and a later list of it clears the problem.
#[test]
fn a_kind_not_served_holds_nothing_back() {
    let (mut c, recorder, objects) = unlisted();
    let cilium = [Kind::CiliumNetworkPolicy, Kind::CiliumClusterwideNetworkPolicy];
    let served: Vec<Kind> = Kind::ALL.into_iter().filter(|k| !cilium.contains(k)).collect();
    c.handle(Event::Connected(true));
    c.handle(Event::Resync { kinds: served, objects });
    assert_eq!(c.reconcile().unwrap(), None, "waiting for Cilium's kinds");
    for kind in cilium {
        c.handle(Event::NotServed(kind));
    }
    assert!(c.reconcile().unwrap().is_some(), "published without them");
    assert_eq!(recorder.0.read().unwrap().1.services.len(), 2);
    let health = c.snapshot().read().unwrap().status.health.clone();
    assert_eq!(health, Health::Degraded { problems: vec![Problem::NotServed { kinds: cilium.to_vec() }] });
    c.handle(Event::Resync { kinds: cilium.to_vec(), objects: Vec::new() });
    c.reconcile().unwrap();
    assert_eq!(c.snapshot().read().unwrap().status.health, Health::Ok, "served once listed");
}

/// A folder of manifests holds kinds skiff does not read: they are no rejections, and status
/// lists them (a misspelt kind shows there).
#[test]
fn kinds_skiff_does_not_read_are_listed_not_rejected() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\n---\n\
                apiVersion: v1\nkind: Servce\nmetadata: {name: typo}\n---\n\
                apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";
    let manifest = decode_yaml(text, "mixed.yaml").unwrap();
    assert_eq!(manifest.ignored, ["Deployment demo/web (mixed.yaml#1)", "Servce typo (mixed.yaml#2)"]);
    assert_eq!(manifest.documents.len(), 1, "the Namespace is read");
    let (mut c, _) = demo();
    c.handle(Event::Ignored(manifest.ignored.clone()));
    c.reconcile().unwrap();
    let status = c.snapshot().read().unwrap().status.clone();
    assert_eq!((status.ignored, status.rejections.len()), (manifest.ignored, 0));
}
