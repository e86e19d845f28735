//! A Kubernetes API server: one kube-rs watcher per kind. A watcher's initial list (and
//! every relist after a reconnect) becomes a [`Event::Resync`] of its kind, so a restarted or
//! unreachable API server converges to its state again without touching what did not change;
//! while it is away, the tables stay as they are. EndpointSlices are read as
//! `discovery.k8s.io/v1` where the server has it and as `v1beta1` (Kubernetes 1.20) otherwise.
//!
//! Nothing one kind does stalls the others: every object is listed untyped and decoded by
//! skiff, so one that does not decode is a rejection of that object, not a failed list; a
//! kind the server does not serve (Cilium's CRDs not installed) is [`Event::NotServed`]
//! until it is, and the other kinds are applied meanwhile.

use std::fmt::Debug;

use anyhow::Result;
use futures::TryStreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, ObjectReference, Pod, Service},
        networking::v1::NetworkPolicy,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
    runtime::{
        WatchStreamExt,
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        wait::{await_condition, conditions},
        watcher,
    },
};
use skiff_api::{Kind, ObjectKey, Rejection};
use tokio::sync::mpsc::Sender;

use crate::{
    controller::Event,
    crd::{CiliumClusterwideNetworkPolicy, CiliumIdentity, CiliumNetworkPolicy, MANAGED_BY, SCHEMA_DIGEST},
    labels::Labels,
    objects::{Object, decode},
    policy::identity::{Allocator, Created},
};

const ORIGIN: &str = "api";

/// Watches every kind until `events` closes; each watcher retries with backoff on its own.
pub async fn watch(client: Client, events: Sender<Event>) -> Result<()> {
    let resources = [
        (Kind::Service, ApiResource::erase::<Service>(&())),
        (Kind::Pod, ApiResource::erase::<Pod>(&())),
        (Kind::Node, ApiResource::erase::<Node>(&())),
        (Kind::Namespace, ApiResource::erase::<Namespace>(&())),
        (Kind::NetworkPolicy, ApiResource::erase::<NetworkPolicy>(&())),
        (Kind::CiliumNetworkPolicy, ApiResource::erase::<CiliumNetworkPolicy>(&())),
        (Kind::CiliumClusterwideNetworkPolicy, ApiResource::erase::<CiliumClusterwideNetworkPolicy>(&())),
        (Kind::EndpointSlice, endpoint_slice_resource(&client).await),
        (Kind::CiliumIdentity, identity_resource()),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for (kind, resource) in resources {
        tasks.spawn(dynamic(client.clone(), resource, kind, events.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

fn identity_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cilium.io", "v2", "CiliumIdentity"),
        "ciliumidentities",
    )
}

/// Creates CiliumIdentity objects for the control loop, which waits for the answer: a pod's
/// identity is needed before its policy can be compiled.
pub struct IdentityAllocator {
    api: Api<DynamicObject>,
    runtime: tokio::runtime::Handle,
}

impl IdentityAllocator {
    /// From within the agent's (multi-threaded) runtime.
    pub fn new(client: Client) -> IdentityAllocator {
        let api = Api::<DynamicObject>::all_with(client, &identity_resource());
        IdentityAllocator { api, runtime: tokio::runtime::Handle::current() }
    }
}

impl Allocator for IdentityAllocator {
    fn create(&mut self, id: u32, labels: &Labels) -> Result<Created> {
        let object: DynamicObject = serde_json::from_value(CiliumIdentity::object(id, labels))?;
        let (api, runtime) = (&self.api, &self.runtime);
        tokio::task::block_in_place(|| {
            runtime.block_on(async {
                match api.create(&PostParams::default(), &object).await {
                    Ok(_) => Ok(Created::Made),
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let theirs: CiliumIdentity =
                            serde_json::from_value(serde_json::to_value(api.get(&id.to_string()).await?)?)?;
                        Ok(Created::Taken(theirs.pod_labels()))
                    }
                    Err(e) => Err(e.into()),
                }
            })
        })
    }

    fn delete(&mut self, id: u32) -> Result<()> {
        let (api, runtime) = (&self.api, &self.runtime);
        tokio::task::block_in_place(|| {
            runtime.block_on(async {
                match api.delete(&id.to_string(), &kube::api::DeleteParams::default()).await {
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    done => done.map(drop).map_err(Into::into),
                }
            })
        })
    }
}

/// v1 where served, else v1beta1.
async fn endpoint_slice_resource(client: &Client) -> ApiResource {
    let version = match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => "v1",
        _ => "v1beta1",
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice"))
}

async fn dynamic(client: Client, resource: ApiResource, kind: Kind, events: Sender<Event>) -> Result<()> {
    let api = Api::<DynamicObject>::all_with(client, &resource);
    let (api_version, kind_name) = (resource.api_version.clone(), resource.kind.clone());
    run(watcher(api, watcher::Config::default()), kind, events, move |o: DynamicObject| {
        let mut value =
            serde_json::to_value(&o).map_err(|e| Rejection::new(None, ORIGIN, "(object)", e.to_string()))?;
        value["apiVersion"] = api_version.clone().into();
        value["kind"] = kind_name.clone().into();
        decode(value, ORIGIN)
    })
    .await
}

/// Turns one watcher's stream into events: the initial list buffered into a resync, then
/// applies and deletes as they come; errors mark the source disconnected (the watcher
/// reconnects with backoff and relists).
async fn run<K, S>(
    stream: S,
    kind: Kind,
    events: Sender<Event>,
    to_object: impl Fn(K) -> Result<Object, Rejection>,
) -> Result<()>
where
    K: Resource + Clone + Debug + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    let mut listing = Vec::new();
    let mut not_served = false;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
            Err(watcher::Error::InitialListFailed(kube::Error::Api(e))) if e.code == 404 => {
                if !std::mem::replace(&mut not_served, true) {
                    tracing::warn!("the API server does not serve {kind} (is its CRD installed?): not read");
                    events.send(Event::NotServed(kind)).await?;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!("watching {kind}: {e}");
                events.send(Event::Connected(false)).await?;
                continue;
            }
        };
        let sent = match event {
            watcher::Event::Init => {
                listing.clear();
                continue;
            }
            watcher::Event::InitApply(o) => {
                listing.push((ORIGIN.to_owned(), to_object(o)));
                continue;
            }
            watcher::Event::InitDone => {
                not_served = false;
                events.send(Event::Connected(true)).await?;
                Event::Resync { kinds: vec![kind], objects: std::mem::take(&mut listing) }
            }
            watcher::Event::Apply(o) => Event::Upsert { origin: ORIGIN.into(), object: to_object(o) },
            watcher::Event::Delete(o) => Event::Delete(key(kind, o.meta())),
        };
        events.send(sent).await?;
    }
}

/// Installs the CRDs skiff reads, as cilium-agent does: created where missing (then served
/// before the watchers list them), updated where an older one of skiff's is; a CRD installed
/// by someone else (Cilium's own: a superset of skiff's schema) is left as it is. Without the
/// right to, it says so, and the kinds are read once someone installs them.
pub async fn install_crds(client: &Client) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for mut crd in crate::crd::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let digest = crd.annotations().get(SCHEMA_DIGEST).cloned();
        let pp = PostParams::default();
        let outcome = match api.get_opt(&name).await {
            Ok(None) => api.create(&pp, &crd).await.map(|_| "installed"),
            Ok(Some(old)) if old.labels().get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) => {
                Ok("installed by someone else, left as it is")
            }
            Ok(Some(old)) if old.annotations().get(SCHEMA_DIGEST) == digest.as_ref() => Ok("up to date"),
            Ok(Some(old)) => {
                crd.metadata.resource_version = old.metadata.resource_version;
                api.replace(&name, &pp, &crd).await.map(|_| "updated")
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(what) => {
                let established = await_condition(api.clone(), &name, conditions::is_crd_established());
                if tokio::time::timeout(CRD_ESTABLISHED, established).await.is_err() {
                    tracing::warn!("CRD {name}: {what}, not yet served after {CRD_ESTABLISHED:?}");
                } else {
                    tracing::info!("CRD {name}: {what}");
                }
            }
            Err(e) => tracing::warn!(
                "CRD {name}: cannot install it ({e}); `skiff-agent crds | kubectl apply -f -` installs it"
            ),
        }
    }
}

/// How long the agent waits for a CRD it installed to be served.
const CRD_ESTABLISHED: std::time::Duration = std::time::Duration::from_secs(10);

fn key(kind: Kind, meta: &ObjectMeta) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// Publishes rejections as Warning Events on the rejected objects (`kubectl describe` shows
/// them), once per distinct rejection.
pub struct Events {
    recorder: Recorder,
}

impl Events {
    pub fn new(client: Client) -> Events {
        Events { recorder: Recorder::new(client, Reporter::from("skiff-agent")) }
    }

    pub async fn rejected(&self, rejection: &Rejection) {
        let Some(key) = &rejection.key else { return };
        let note: String = rejection.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        self.warn(key, "Rejected", "Validate", &note).await;
    }

    /// A policy rule skiff does not enforce as written (what it does instead is in `note`).
    pub async fn not_enforced(&self, key: &ObjectKey, note: &str) {
        self.warn(key, "NotEnforced", "Enforce", note).await;
    }

    async fn warn(&self, key: &ObjectKey, reason: &str, action: &str, note: &str) {
        let reference = ObjectReference {
            api_version: Some(key.kind.api_versions()[0].into()),
            kind: Some(key.kind.to_string()),
            name: Some(key.name.clone()),
            namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
            ..ObjectReference::default()
        };
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: reason.into(),
            // The API bounds a note to 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!("could not post {reason} for {key} as an Event: {e}");
        }
    }
}
