//! skiff's control plane: Kubernetes objects, from a folder of YAML or an API server, checked
//! and compiled into the tables the datapath runs on.
//!
//! ```text
//!  source (dir | kube) ──► Store (validated, last good kept) ──► compile ──► Desired
//!                                  └► rejections (status, Events)            │
//!                                                                  Applier (diff, reuse)
//!                                                                            ▼
//!                                                                 Tables ──► Datapath::publish
//! ```
//!
//! What the datapath decides comes back the other way: its records, named by the same state,
//! become the flows of `skiff observe` ([`observer`]).

pub mod agent;
pub mod api;
pub mod apply;
pub mod cni;
pub mod compile;
pub mod controller;
pub mod crd;
pub mod endpoints;
pub mod labels;
pub mod metrics;
pub mod next_hops;
pub mod objects;
pub mod observer;
pub mod overlay;
pub mod policy;
pub mod prefilter;
pub mod source;
pub mod store;
pub mod validate;
