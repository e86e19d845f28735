//! Services and EndpointSlices.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{AFFINITY_TIMEOUT, LB_ALGORITHM, Limits, PORTS, check::Check};

pub(super) fn service(v: &mut Check, s: &Service, limits: &Limits) {
    let Some(spec) = &s.spec else { return v.error("spec", "missing: a Service needs a spec") };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    v.one_of("spec.type", kind, &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    for (field, ip) in spec.cluster_ip.iter().map(|ip| ("spec.clusterIP".to_owned(), ip)).chain(
        spec.cluster_ips.iter().flatten().enumerate().map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip)),
    ) {
        if !ip.is_empty() && ip != "None" {
            v.ip(&field, ip);
        }
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        v.ip(&format!("spec.externalIPs[{i}]"), ip);
    }
    for (i, cidr) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
        v.cidr(&format!("spec.loadBalancerSourceRanges[{i}]"), cidr);
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !headless && kind != "ExternalName" {
        v.error("spec.ports", "empty: a Service needs at least one port (1..=65535)");
    }
    let node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    service_ports(v, ports, kind, node_ports, limits);
    traffic_and_affinity(v, spec, kind, node_ports);
    if let Some(algorithm) = s.metadata.annotations.as_ref().and_then(|a| a.get(LB_ALGORITHM)) {
        v.one_of(&format!("metadata.annotations[{LB_ALGORITHM}]"), algorithm, &["maglev", "random"]);
    }
    for (i, ingress) in s
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .enumerate()
    {
        if let Some(ip) = &ingress.ip {
            v.ip(&format!("status.loadBalancer.ingress[{i}].ip"), ip);
        }
    }
}

/// Each port: its number, protocol, name, target and node port, none repeated.
fn service_ports(v: &mut Check, ports: &[ServicePort], kind: &str, node_ports: bool, limits: &Limits) {
    let mut seen = BTreeMap::new();
    for (i, p) in ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        v.range(&at("port"), p.port, PORTS);
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        v.one_of(&at("protocol"), protocol, &["TCP", "UDP"]);
        match &p.name {
            Some(name) if !name.is_empty() => {
                v.dns_label(&at("name"), name, false);
                if let Some(j) = seen.insert(format!("name {name}"), i) {
                    v.error(&at("name"), format!("{name:?} duplicates spec.ports[{j}].name"));
                }
            }
            _ if ports.len() > 1 => {
                v.error(&at("name"), "missing: required when a Service has several ports")
            }
            _ => {}
        }
        if let Some(j) = seen.insert(format!("port {} {protocol}", p.port), i) {
            v.error(&at("port"), format!("{}/{protocol} duplicates spec.ports[{j}]", p.port));
        }
        match &p.target_port {
            Some(IntOrString::Int(port)) => {
                v.range(&at("targetPort"), *port, PORTS);
            }
            Some(IntOrString::String(name)) => v.port_name(&at("targetPort"), name),
            None => {}
        }
        if let Some(node_port) = p.node_port {
            if !node_ports {
                v.error(
                    &at("nodePort"),
                    format!("may only be set when spec.type is NodePort or LoadBalancer, not {kind}"),
                );
            } else if v.range(&at("nodePort"), node_port, limits.node_ports.clone())
                && let Some(j) = seen.insert(format!("nodePort {node_port} {protocol}"), i)
            {
                v.error(
                    &at("nodePort"),
                    format!("{node_port}/{protocol} duplicates spec.ports[{j}].nodePort"),
                );
            }
        }
    }
}

fn traffic_and_affinity(v: &mut Check, spec: &ServiceSpec, kind: &str, node_ports: bool) {
    if let Some(policy) = &spec.external_traffic_policy {
        v.one_of("spec.externalTrafficPolicy", policy, &["Cluster", "Local"]);
        if policy == "Local" && !node_ports && spec.external_ips.as_ref().is_none_or(Vec::is_empty) {
            v.error(
                "spec.externalTrafficPolicy",
                format!("Local needs NodePort, LoadBalancer or externalIPs, not {kind}"),
            );
        }
    }
    if let Some(policy) = &spec.internal_traffic_policy {
        v.one_of("spec.internalTrafficPolicy", policy, &["Cluster", "Local"]);
    }
    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    v.one_of("spec.sessionAffinity", affinity, &["None", "ClientIP"]);
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    if let Some(timeout) = timeout {
        let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
        if affinity == "ClientIP" {
            v.range(field, timeout, AFFINITY_TIMEOUT);
        } else {
            v.error(field, "may only be set when spec.sessionAffinity is ClientIP");
        }
    }
}

pub(super) fn endpoint_slice(v: &mut Check, s: &EndpointSlice) {
    let family = s.address_type.as_str();
    v.one_of("addressType", family, &["IPv4", "IPv6", "FQDN"]);
    if s.endpoints.len() > 1000 {
        v.error("endpoints", format!("{} endpoints: at most 1000", s.endpoints.len()));
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}].addresses");
        if !(1..=100).contains(&e.addresses.len()) {
            v.error(&at, format!("{} addresses: 1..=100 allowed", e.addresses.len()));
        }
        for (j, addr) in e.addresses.iter().enumerate() {
            let field = format!("{at}[{j}]");
            match (family, addr.parse::<IpAddr>()) {
                ("IPv4", Ok(IpAddr::V4(_))) | ("IPv6", Ok(IpAddr::V6(_))) => {}
                ("IPv4" | "IPv6", _) => v.error(&field, format!("{addr:?} is not an {family} address")),
                _ => {}
            }
        }
    }
    let mut names = BTreeMap::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        let at = |f: &str| format!("ports[{i}].{f}");
        if let Some(port) = p.port {
            v.range(&at("port"), port, PORTS);
        }
        v.one_of(&at("protocol"), p.protocol.as_deref().unwrap_or("TCP"), &["TCP", "UDP", "SCTP"]);
        let name = p.name.clone().unwrap_or_default();
        if !name.is_empty() {
            v.dns_label(&at("name"), &name, false);
        }
        if let Some(j) = names.insert(name.clone(), i) {
            v.error(&at("name"), format!("{name:?} duplicates ports[{j}].name"));
        }
    }
}
