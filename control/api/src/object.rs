//! The Kubernetes objects the agent reads, as the API names them, and why one was rejected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A kind of object the agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Node,
    /// Read for its labels: they are part of its pods' identities and select them.
    Namespace,
    NetworkPolicy,
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    /// A security identity's number and labels, as Cilium's agents allocate them through the
    /// API server: every node numbers a label set alike.
    CiliumIdentity,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::Node,
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::CiliumNetworkPolicy,
        Kind::CiliumClusterwideNetworkPolicy,
        Kind::CiliumIdentity,
    ];

    /// The API versions skiff reads a kind in, the current one first.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Service | Kind::Pod | Kind::Node | Kind::Namespace => &["v1"],
            // 1.20 API servers serve only v1beta1; the agent converts its fields.
            Kind::EndpointSlice => &["discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"],
            Kind::NetworkPolicy => &["networking.k8s.io/v1"],
            Kind::CiliumNetworkPolicy | Kind::CiliumClusterwideNetworkPolicy | Kind::CiliumIdentity => {
                &["cilium.io/v2"]
            }
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Node | Kind::Namespace | Kind::CiliumClusterwideNetworkPolicy | Kind::CiliumIdentity
        )
    }

    /// The kind called `name` (as in an object's `kind` field).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Kind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            Kind::CiliumIdentity => "CiliumIdentity",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Kind, namespace (empty for cluster-scoped kinds) and name: what identifies an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One field that is wrong: its path (`spec.ports[0].port`) and what is wrong with it,
/// including the allowed values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// An object that did not take effect, and why. `key` is `None` only when the document does
/// not even say which object it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub key: Option<ObjectKey>,
    /// Where it came from: `web.yaml#2` (the second document of a file) or `api`.
    pub origin: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key} ({}): ", self.origin)?,
            None => write!(f, "{}: ", self.origin)?,
        }
        for (i, e) in self.errors.iter().enumerate() {
            write!(f, "{}{e}", if i == 0 { "" } else { "; " })?;
        }
        Ok(())
    }
}

impl Rejection {
    pub fn new(key: Option<ObjectKey>, origin: &str, field: &str, message: impl Into<String>) -> Rejection {
        Rejection {
            key,
            origin: origin.to_owned(),
            errors: vec![FieldError { field: field.to_owned(), message: message.into() }],
        }
    }
}
