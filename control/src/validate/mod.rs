//! Every object is checked before it takes effect: the rules Kubernetes' own validation
//! applies to the fields skiff uses, and what skiff's datapath cannot do (SCTP services).
//! Each error names the field and the allowed values or range.

mod check;
mod policy;
mod service;

use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::{Node, Pod};
use skiff_api::FieldError;

use self::{
    check::Check,
    policy::{cilium_policy, network_policy},
    service::{endpoint_slice, service},
};
use crate::objects::Object;

/// Bounds the cluster sets (Kubernetes' defaults).
#[derive(Clone, Debug)]
pub struct Limits {
    /// `--service-node-port-range`.
    pub node_ports: RangeInclusive<i32>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { node_ports: 30000..=32767 }
    }
}

pub const PORTS: RangeInclusive<i32> = 1..=65535;
/// Kubernetes' bound on `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const AFFINITY_TIMEOUT: RangeInclusive<i32> = 1..=86400;
/// The annotation that picks a service's load-balancing algorithm (Cilium's).
pub const LB_ALGORITHM: &str = "service.cilium.io/lb-algorithm";

/// Checks an object; `Err` holds every problem found, not just the first.
pub fn validate(object: &Object, limits: &Limits) -> Result<(), Vec<FieldError>> {
    let mut v = Check::default();
    let meta = object.metadata();
    let name = meta.name.as_deref().unwrap_or_default();
    match object {
        // Service names become DNS labels of their own.
        Object::Service(_) => v.dns_label("metadata.name", name, true),
        _ => v.dns_subdomain("metadata.name", name),
    }
    if let Some(ns) = meta.namespace.as_deref() {
        v.dns_label("metadata.namespace", ns, false);
    }
    v.labels("metadata.labels", meta.labels.as_ref());
    match object {
        Object::Service(s) => service(&mut v, s, limits),
        Object::EndpointSlice(s) => endpoint_slice(&mut v, s),
        Object::Pod(p) => pod(&mut v, p),
        Object::Node(n) => node(&mut v, n),
        Object::Namespace(_) => {}
        Object::NetworkPolicy(p) => network_policy(&mut v, p),
        Object::CiliumNetworkPolicy(p) => cilium_policy(&mut v, &p.spec),
        Object::CiliumClusterwideNetworkPolicy(p) => cilium_policy(&mut v, &p.spec.policy),
        Object::CiliumIdentity(_) => identity(&mut v, meta.name.as_deref().unwrap_or_default()),
    }
    if v.errors.is_empty() { Ok(()) } else { Err(v.errors) }
}

/// A CiliumIdentity is named by its number, in the range Cilium's agents allocate.
fn identity(v: &mut Check, name: &str) {
    let range = skiff_common::identity::Identity::FIRST_ALLOCATED.0..=crate::policy::identity::LAST_ALLOCATED;
    if !name.parse::<u32>().is_ok_and(|id| range.contains(&id)) {
        v.error("metadata.name", format!("{name:?} is not an identity number in {range:?}"));
    }
}

fn pod(v: &mut Check, p: &Pod) {
    for (i, c) in p.spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
        for (j, port) in c.ports.iter().flatten().enumerate() {
            let at = |f: &str| format!("spec.containers[{i}].ports[{j}].{f}");
            v.range(&at("containerPort"), port.container_port, PORTS);
            v.one_of(&at("protocol"), port.protocol.as_deref().unwrap_or("TCP"), &["TCP", "UDP", "SCTP"]);
        }
    }
    if let Some(status) = &p.status {
        if let Some(ip) = &status.pod_ip {
            v.ip("status.podIP", ip);
        }
        for (i, ip) in status.pod_ips.iter().flatten().enumerate() {
            v.ip(&format!("status.podIPs[{i}].ip"), &ip.ip);
        }
    }
}

fn node(v: &mut Check, n: &Node) {
    if let Some(spec) = &n.spec {
        if let Some(cidr) = &spec.pod_cidr {
            v.cidr("spec.podCIDR", cidr);
        }
        for (i, cidr) in spec.pod_cidrs.iter().flatten().enumerate() {
            v.cidr(&format!("spec.podCIDRs[{i}]"), cidr);
        }
    }
    for (i, a) in n.status.iter().flat_map(|s| s.addresses.iter().flatten()).enumerate() {
        let at = |f: &str| format!("status.addresses[{i}].{f}");
        v.one_of(
            &at("type"),
            &a.type_,
            &["Hostname", "InternalIP", "ExternalIP", "InternalDNS", "ExternalDNS"],
        );
        if a.type_.ends_with("IP") {
            v.ip(&at("address"), &a.address);
        }
    }
}
