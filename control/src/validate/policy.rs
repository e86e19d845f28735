//! NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{PORTS, check::Check};
use crate::crd::{PolicySpec, Rule};

pub(super) fn network_policy(v: &mut Check, p: &NetworkPolicy) {
    let Some(spec) = &p.spec else { return v.error("spec", "missing: a NetworkPolicy needs a spec") };
    if let Some(selector) = &spec.pod_selector {
        v.selector("spec.podSelector", selector);
    }
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        v.one_of(&format!("spec.policyTypes[{i}]"), t, &["Ingress", "Egress"]);
    }
    let rules =
        spec.ingress.iter().flatten().map(|r| ("ingress", "from", r.from.as_deref(), r.ports.as_deref()));
    let rules = rules
        .chain(spec.egress.iter().flatten().map(|r| ("egress", "to", r.to.as_deref(), r.ports.as_deref())));
    let mut index = BTreeMap::<&str, usize>::new();
    for (direction, peers_field, peers, ports) in rules {
        let n = index.entry(direction).or_default();
        let at = format!("spec.{direction}[{n}]");
        *n += 1;
        for (j, peer) in peers.unwrap_or_default().iter().enumerate() {
            network_policy_peer(v, &format!("{at}.{peers_field}[{j}]"), peer);
        }
        for (j, port) in ports.unwrap_or_default().iter().enumerate() {
            network_policy_port(v, &format!("{at}.ports[{j}]"), port);
        }
    }
}

fn network_policy_peer(v: &mut Check, at: &str, peer: &NetworkPolicyPeer) {
    if let Some(block) = &peer.ip_block {
        let except = block.except.as_deref().unwrap_or_default();
        cidr_with_except(
            v,
            &format!("{at}.ipBlock.cidr"),
            &block.cidr,
            &format!("{at}.ipBlock.except"),
            except,
        );
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            v.error(at, "ipBlock may not be combined with podSelector or namespaceSelector");
        }
    }
    if let Some(s) = &peer.pod_selector {
        v.selector(&format!("{at}.podSelector"), s);
    }
    if let Some(s) = &peer.namespace_selector {
        v.selector(&format!("{at}.namespaceSelector"), s);
    }
}

fn network_policy_port(v: &mut Check, at: &str, port: &NetworkPolicyPort) {
    v.one_of(&format!("{at}.protocol"), port.protocol.as_deref().unwrap_or("TCP"), &["TCP", "UDP", "SCTP"]);
    match (&port.port, port.end_port) {
        (Some(IntOrString::Int(p)), end) => {
            v.range(&format!("{at}.port"), *p, PORTS);
            if let Some(end) = end {
                v.range(&format!("{at}.endPort"), end, *p..=65535);
            }
        }
        (Some(IntOrString::String(name)), end) => {
            v.port_name(&format!("{at}.port"), name);
            if end.is_some() {
                v.error(&format!("{at}.endPort"), "may only be set with a numeric port");
            }
        }
        (None, Some(_)) => v.error(&format!("{at}.endPort"), "may only be set with a numeric port"),
        (None, None) => {}
    }
}

/// A Cilium policy: its spec, and each of its `specs` (fields named `specs[i].…`).
pub(super) fn cilium_policy(v: &mut Check, spec: &PolicySpec) {
    if spec.more.is_empty() {
        return cilium_spec(v, "spec", spec);
    }
    for (i, s) in std::iter::once(spec).chain(&spec.more).enumerate() {
        cilium_spec(v, &format!("specs[{i}]"), s);
    }
}

fn cilium_spec(v: &mut Check, at: &str, spec: &PolicySpec) {
    match (&spec.endpoint_selector, &spec.node_selector) {
        (Some(selector), None) => v.cilium_selector(&format!("{at}.endpointSelector"), selector),
        // A host policy.
        (None, Some(selector)) => v.cilium_selector(&format!("{at}.nodeSelector"), selector),
        (Some(_), Some(_)) => v.error(&format!("{at}.nodeSelector"), "may not be set with endpointSelector"),
        (None, None) => {
            v.error(&format!("{at}.endpointSelector"), "missing: a policy selects endpoints (or nodes)")
        }
    }
    for (direction, rules) in [
        ("ingress", &spec.ingress),
        ("ingressDeny", &spec.ingress_deny),
        ("egress", &spec.egress),
        ("egressDeny", &spec.egress_deny),
    ] {
        for (i, rule) in rules.iter().enumerate() {
            cilium_rule(v, &format!("{at}.{direction}[{i}]"), rule);
        }
    }
}

fn cilium_rule(v: &mut Check, at: &str, rule: &Rule) {
    for (field, selectors) in [("fromEndpoints", &rule.from_endpoints), ("toEndpoints", &rule.to_endpoints)] {
        for (j, s) in selectors.iter().enumerate() {
            v.cilium_selector(&format!("{at}.{field}[{j}]"), s);
        }
    }
    for (field, cidrs) in [("fromCIDR", &rule.from_cidr), ("toCIDR", &rule.to_cidr)] {
        for (j, cidr) in cidrs.iter().enumerate() {
            v.cidr(&format!("{at}.{field}[{j}]"), cidr);
        }
    }
    for (field, sets) in [("fromCIDRSet", &rule.from_cidr_set), ("toCIDRSet", &rule.to_cidr_set)] {
        for (j, set) in sets.iter().enumerate() {
            let at = format!("{at}.{field}[{j}]");
            match &set.cidr {
                Some(cidr) => {
                    cidr_with_except(v, &format!("{at}.cidr"), cidr, &format!("{at}.except"), &set.except)
                }
                None if set.unmodelled.is_empty() => {
                    v.error(&format!("{at}.cidr"), "missing: a CIDR set needs a cidr (or a cidrGroupRef)")
                }
                None => {}
            }
        }
    }
    for (j, ports) in rule.to_ports.iter().enumerate() {
        for (k, p) in ports.ports.iter().enumerate() {
            let field = format!("{at}.toPorts[{j}].ports[{k}]");
            match p.port.parse::<i64>() {
                Ok(n) => {
                    if !(0..=65535).contains(&n) {
                        v.error(&format!("{field}.port"), format!("{n} is out of range 0..=65535"));
                    } else if let Some(end) = p.end_port {
                        // n is within 0..=65535 here.
                        v.range(&format!("{field}.endPort"), end, i32::try_from(n).unwrap_or(0)..=65535);
                    }
                }
                Err(_) => v.port_name(&format!("{field}.port"), &p.port),
            }
        }
    }
    for (j, icmp) in rule.icmps.iter().enumerate() {
        for (k, f) in icmp.fields.iter().enumerate() {
            let family = f.family;
            if crate::policy::icmp_type(&f.type_, family).is_none() {
                let value = match &f.type_ {
                    IntOrString::Int(n) => n.to_string(),
                    IntOrString::String(s) => s.clone(),
                };
                v.error(
                    &format!("{at}.icmps[{j}].fields[{k}].type"),
                    format!(
                        "{value:?} is no {family:?} ICMP type (a number 0-255 or a name such as EchoRequest)"
                    ),
                );
            }
        }
    }
}

/// A CIDR and its exceptions, each strictly inside it.
fn cidr_with_except(v: &mut Check, field: &str, cidr: &str, except_field: &str, except: &[String]) {
    let Some(net) = v.cidr(field, cidr) else { return };
    for (k, e) in except.iter().enumerate() {
        let field = format!("{except_field}[{k}]");
        if let Some(inner) = v.cidr(&field, e)
            && !(inner.prefix_len() > net.prefix_len() && net.contains(&inner))
        {
            v.error(&field, format!("{e} is not strictly inside {cidr}"));
        }
    }
}
