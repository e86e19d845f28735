//! Where the cluster state comes from: a folder of YAML (the embedded default) or a
//! Kubernetes API server. Both report [`Event`](crate::controller::Event)s on one channel.

pub mod dir;
pub mod kube;
