//! The Kubernetes objects the control plane reads, decoded from JSON or YAML into their typed
//! form (k8s-openapi's, and ours for Cilium's policies). A document that does not decode is a
//! [`Rejection`] naming the object and the field, never a panic.

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use skiff_api::{Kind, ObjectKey, Rejection};

use crate::crd::{CiliumClusterwideNetworkPolicy, CiliumIdentity, CiliumNetworkPolicy};

#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Pod(Box<Pod>),
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    NetworkPolicy(Box<NetworkPolicy>),
    CiliumNetworkPolicy(Box<CiliumNetworkPolicy>),
    CiliumClusterwideNetworkPolicy(Box<CiliumClusterwideNetworkPolicy>),
    CiliumIdentity(Box<CiliumIdentity>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
            Object::Node(_) => Kind::Node,
            Object::Namespace(_) => Kind::Namespace,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::CiliumNetworkPolicy(_) => Kind::CiliumNetworkPolicy,
            Object::CiliumClusterwideNetworkPolicy(_) => Kind::CiliumClusterwideNetworkPolicy,
            Object::CiliumIdentity(_) => Kind::CiliumIdentity,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::CiliumNetworkPolicy(o) => &o.metadata,
            Object::CiliumClusterwideNetworkPolicy(o) => &o.metadata,
            Object::CiliumIdentity(o) => &o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Decodes one object from its JSON form (a YAML document converts losslessly). Namespaced
/// objects without a namespace land in `default`, as `kubectl apply` puts them.
pub fn decode(mut value: Value, origin: &str) -> Result<Object, Rejection> {
    let text = |v: &Value, field: &str| v.pointer(field).and_then(Value::as_str).map(str::to_owned);
    let (api_version, kind_name) = (text(&value, "/apiVersion"), text(&value, "/kind"));
    let Some(kind_name) = kind_name else {
        return Err(Rejection::new(None, origin, "kind", "missing: every object needs a kind"));
    };
    let Some(kind) = Kind::from_name(&kind_name) else {
        let allowed = Kind::ALL.map(|k| k.to_string()).join(", ");
        return Err(Rejection::new(
            None,
            origin,
            "kind",
            format!("{kind_name:?} is not read by skiff ({allowed})"),
        ));
    };
    if kind.namespaced()
        && text(&value, "/metadata/namespace").is_none()
        && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("namespace".into(), "default".into());
    }
    let key = ObjectKey {
        kind,
        namespace: text(&value, "/metadata/namespace").unwrap_or_default(),
        name: text(&value, "/metadata/name").unwrap_or_default(),
    };
    let reject = |field: &str, message: String| Rejection::new(Some(key.clone()), origin, field, message);
    let api_version = api_version.ok_or_else(|| reject("apiVersion", "missing".into()))?;
    if !kind.api_versions().contains(&api_version.as_str()) {
        let allowed = kind.api_versions().join(", ");
        return Err(reject("apiVersion", format!("{api_version:?} is not one skiff reads ({allowed})")));
    }
    // A Cilium policy's `specs`: the first is its spec (with `spec` absent), the others follow
    // it in `more`.
    let mut more = Vec::new();
    if matches!(kind, Kind::CiliumNetworkPolicy | Kind::CiliumClusterwideNetworkPolicy)
        && let Some(specs) = value.as_object_mut().and_then(|o| o.remove("specs"))
    {
        let Value::Array(mut specs) = specs else { return Err(reject("specs", "must be a list".into())) };
        if value.get("spec").is_none() && !specs.is_empty() {
            value["spec"] = specs.remove(0);
        }
        for (i, spec) in specs.into_iter().enumerate() {
            let at = if value.get("spec").is_some() { i + 1 } else { i };
            let spec: crate::crd::PolicySpec = serde_path_to_error::deserialize(spec)
                .map_err(|e| reject(&format!("specs[{at}].{}", e.path()), e.into_inner().to_string()))?;
            more.push(spec);
        }
    }
    if api_version == "discovery.k8s.io/v1beta1" {
        endpoint_slice_from_v1beta1(&mut value);
    }
    fn typed<T: DeserializeOwned>(value: Value) -> Result<Box<T>, (String, String)> {
        serde_path_to_error::deserialize(value).map(Box::new).map_err(|e| {
            let field = e.path().to_string();
            // serde's message, less the position it repeats (the path names the field).
            (field, e.into_inner().to_string())
        })
    }
    let mut object = match kind {
        Kind::Service => typed(value).map(Object::Service),
        Kind::EndpointSlice => typed(value).map(Object::EndpointSlice),
        Kind::Pod => typed(value).map(Object::Pod),
        Kind::Node => typed(value).map(Object::Node),
        Kind::Namespace => typed(value).map(Object::Namespace),
        Kind::NetworkPolicy => typed(value).map(Object::NetworkPolicy),
        Kind::CiliumNetworkPolicy => typed(value).map(Object::CiliumNetworkPolicy),
        Kind::CiliumClusterwideNetworkPolicy => typed(value).map(Object::CiliumClusterwideNetworkPolicy),
        Kind::CiliumIdentity => typed(value).map(Object::CiliumIdentity),
    };
    match &mut object {
        Ok(Object::CiliumNetworkPolicy(p)) => p.spec.more = more,
        Ok(Object::CiliumClusterwideNetworkPolicy(p)) => p.spec.policy.more = more,
        _ => {}
    }
    object.map_err(|(field, message)| reject(if field == "." { "(object)" } else { &field }, message))
}

/// discovery.k8s.io/v1beta1 → v1: the same object but for `topology`'s hostname, which v1
/// calls `nodeName`.
fn endpoint_slice_from_v1beta1(value: &mut Value) {
    value["apiVersion"] = "discovery.k8s.io/v1".into();
    if let Some(endpoints) = value.get_mut("endpoints").and_then(Value::as_array_mut) {
        for endpoint in endpoints.iter_mut().filter_map(Value::as_object_mut) {
            let host = endpoint.remove("topology").and_then(|t| t.get("kubernetes.io/hostname").cloned());
            if let Some(host) = host {
                endpoint.entry("nodeName").or_insert(host);
            }
        }
    }
}

/// Decoded documents with their origins, as a source reports them.
pub type Documents = Vec<(String, Result<Object, Rejection>)>;

/// A YAML text's documents: decoded (objects or rejections), and those of kinds skiff does
/// not read, named.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    pub documents: Documents,
    /// A folder of manifests holds Deployments, ConfigMaps, …: not errors, but listed in status
    /// (`Deployment demo/web (web.yaml#2)`), so that a misspelt kind is seen.
    pub ignored: Vec<String>,
}

/// Every document of a YAML text, decoded, with its origin: `origin` names the text (a file
/// name) and documents are numbered from 1 (`web.yaml#2`). Empty documents are skipped; a
/// `List` is taken apart. A text that is not YAML is one rejection (`Err`) for the whole
/// text: its parser cannot tell where the next document starts.
pub fn decode_yaml(text: &str, origin: &str) -> Result<Manifest, Rejection> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        Rejection::new(None, origin, "(document)", format!("not YAML: {}", e.without_snippet()))
    })?;
    let mut out = Manifest::default();
    let mut take = |value: Value, origin: &str| match not_read(&value) {
        Some(named) => out.ignored.push(format!("{named} ({origin})")),
        None => out.documents.push((origin.to_owned(), decode(value, origin))),
    };
    for (i, value) in documents.into_iter().enumerate() {
        let origin = format!("{origin}#{}", i + 1);
        match value {
            Value::Null => {}
            value if value.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = value.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                items.into_iter().for_each(|item| take(item, &origin));
            }
            value => take(value, &origin),
        }
    }
    Ok(out)
}

/// `Kind namespace/name` of an object whose kind skiff does not read.
fn not_read(value: &Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    if Kind::from_name(kind).is_some() {
        return None;
    }
    let text = |field: &str| value.pointer(field).and_then(Value::as_str).unwrap_or_default();
    Some(match text("/metadata/namespace") {
        "" => format!("{kind} {}", text("/metadata/name")),
        namespace => format!("{kind} {namespace}/{}", text("/metadata/name")),
    })
}
