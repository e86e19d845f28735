//! A Kubernetes API server: one kube-rs watcher per kind. A watcher's initial list (and
//! every relist after a reconnect) becomes a [`Event::Resync`] of its kind, so a restarted or
//! unreachable API server converges to its state again without touching what did not change;
//! while it is away, the tables stay as they are. EndpointSlices are read as
//! `discovery.k8s.io/v1` where the server has it and as `v1beta1` (Kubernetes 1.20) otherwise.

use std::fmt::Debug;

use anyhow::Result;
use futures::TryStreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Node, ObjectReference, Pod, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt,
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use skiff_api::{Kind, ObjectKey, Rejection};
use tokio::sync::mpsc::Sender;

use crate::{
    controller::Event,
    crd::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy},
    objects::{Object, decode},
};

const ORIGIN: &str = "api";

/// Watches every kind until `events` closes; each watcher retries with backoff on its own.
pub async fn watch(client: Client, events: Sender<Event>) -> Result<()> {
    let slices = endpoint_slice_resource(&client).await;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(typed::<Service>(client.clone(), Kind::Service, events.clone()));
    tasks.spawn(typed::<Pod>(client.clone(), Kind::Pod, events.clone()));
    tasks.spawn(typed::<Node>(client.clone(), Kind::Node, events.clone()));
    tasks.spawn(typed::<NetworkPolicy>(client.clone(), Kind::NetworkPolicy, events.clone()));
    tasks.spawn(typed::<CiliumNetworkPolicy>(client.clone(), Kind::CiliumNetworkPolicy, events.clone()));
    tasks.spawn(typed::<CiliumClusterwideNetworkPolicy>(
        client.clone(),
        Kind::CiliumClusterwideNetworkPolicy,
        events.clone(),
    ));
    tasks.spawn(dynamic(client, slices, Kind::EndpointSlice, events));
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// v1 where served, else v1beta1.
async fn endpoint_slice_resource(client: &Client) -> ApiResource {
    let version = match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => "v1",
        _ => "v1beta1",
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice"))
}

async fn typed<K>(client: Client, kind: Kind, events: Sender<Event>) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let api = Api::<K>::all(client);
    run(watcher(api, watcher::Config::default()), kind, events, |o: K| {
        let mut value =
            serde_json::to_value(&o).map_err(|e| Rejection::new(None, ORIGIN, "(object)", e.to_string()))?;
        // List items come without their type; `decode` wants it.
        value["apiVersion"] = K::api_version(&()).into();
        value["kind"] = K::kind(&()).into();
        decode(value, ORIGIN)
    })
    .await
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
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
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
                events.send(Event::Connected(true)).await?;
                Event::Resync { kinds: vec![kind], objects: std::mem::take(&mut listing) }
            }
            watcher::Event::Apply(o) => Event::Upsert { origin: ORIGIN.into(), object: to_object(o) },
            watcher::Event::Delete(o) => Event::Delete(key(kind, o.meta())),
        };
        events.send(sent).await?;
    }
}

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
        let reference = ObjectReference {
            api_version: Some(key.kind.api_versions()[0].into()),
            kind: Some(key.kind.to_string()),
            name: Some(key.name.clone()),
            namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
            ..ObjectReference::default()
        };
        let note: String = rejection.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "Rejected".into(),
            // The API bounds a note to 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!("could not post the rejection of {key} as an Event: {e}");
        }
    }
}
