//! The labels that make a pod's security identity, as Cilium derives them: the pod's own,
//! less those that carry no meaning for security (hashes, generations, Kubernetes' own
//! bookkeeping; Cilium's default filter), and what Cilium adds: the namespace, the
//! namespace's labels (`io.cilium.k8s.namespace.labels.<key>`, which namespace selectors
//! match), the service account and the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use skiff_api::{Kind, ObjectKey};

use crate::{objects::Object, store::Store};

pub type Labels = BTreeMap<String, String>;

pub const NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const NAMESPACE_LABELS: &str = "io.cilium.k8s.namespace.labels";
pub const SERVICE_ACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";
pub const CLUSTER: &str = "io.cilium.k8s.policy.cluster";
/// The label Kubernetes (1.21 on) gives every namespace: its name.
const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// Keys that start with one of these, or hold `beta.kubernetes.io`, carry no meaning for
/// security (Cilium's default exclusions); `app.kubernetes.io/…` labels do.
const EXCLUDED: [&str; 13] = [
    "io.kubernetes",
    "kubernetes.io",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
    "k8s.io",
    "pod-template-generation",
    "pod-template-hash",
    "controller-revision-hash",
    "annotation",
    "etcd_node",
];

fn relevant(key: &str) -> bool {
    !EXCLUDED.iter().any(|p| key.starts_with(p)) && !key.contains("beta.kubernetes.io")
}

/// The identity labels of `pod`, whose namespace's labels are in `store`.
pub fn of_pod(pod: &Pod, store: &Store) -> Labels {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut labels: Labels = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| relevant(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let key = ObjectKey { kind: Kind::Namespace, namespace: String::new(), name: namespace.clone() };
    let mut of_namespace = match store.get(&key) {
        Some(Object::Namespace(n)) => n.metadata.labels.clone().unwrap_or_default(),
        _ => Labels::new(),
    };
    // As the API server adds it, so that a namespace selector on the name works from a folder too.
    of_namespace.entry(NAMESPACE_NAME.into()).or_insert_with(|| namespace.clone());
    labels.extend(of_namespace.into_iter().map(|(k, v)| (format!("{NAMESPACE_LABELS}.{k}"), v)));
    let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone());
    labels.insert(SERVICE_ACCOUNT.into(), account.unwrap_or_else(|| "default".into()));
    labels.insert(CLUSTER.into(), "default".into());
    labels.insert(NAMESPACE.into(), namespace);
    labels
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use skiff_api::Kind;

    use super::*;
    use crate::{objects::decode, validate::Limits};

    #[test]
    fn hashes_go_and_the_namespace_its_labels_and_the_service_account_come() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-7d4f9-abcde", "namespace": "shop", "labels": {
                "app": "web", "app.kubernetes.io/name": "web", "pod-template-hash": "7d4f9",
                "controller-revision-hash": "1", "statefulset.kubernetes.io/pod-name": "web-0",
                "failure-domain.beta.kubernetes.io/zone": "a", "io.kubernetes.foo": "x"}},
            "spec": {"serviceAccountName": "web-sa", "containers": []}});
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"team": "blue"}}});
        let mut store = Store::new(Limits::default());
        let objects = [namespace, pod].map(|v| ("test".to_owned(), decode(v, "test")));
        store.resync(&Kind::ALL, objects.to_vec());
        let Some(Object::Pod(pod)) = store.get(&ObjectKey {
            kind: Kind::Pod,
            namespace: "shop".into(),
            name: "web-7d4f9-abcde".into(),
        }) else {
            panic!("the pod is stored")
        };
        let want: Labels = [
            ("app", "web"),
            ("app.kubernetes.io/name", "web"),
            ("io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name", "shop"),
            ("io.cilium.k8s.namespace.labels.team", "blue"),
            ("io.cilium.k8s.policy.cluster", "default"),
            ("io.cilium.k8s.policy.serviceaccount", "web-sa"),
            ("io.kubernetes.pod.namespace", "shop"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(of_pod(pod, &store), want);
    }
}
