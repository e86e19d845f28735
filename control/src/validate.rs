//! Every object is checked before it takes effect: the rules Kubernetes' own validation
//! applies to the fields skiff uses, and what skiff's datapath cannot do (SCTP services).
//! Each error names the field and the allowed values or range.

use std::{collections::BTreeMap, net::IpAddr, ops::RangeInclusive};

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Node, Pod, Service, ServiceSpec},
        discovery::v1::EndpointSlice,
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use skiff_api::FieldError;

use crate::{
    crd::{self, PolicySpec},
    objects::Object,
};

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
        Object::NetworkPolicy(p) => network_policy(&mut v, p),
        Object::CiliumNetworkPolicy(p) => cilium_policy(&mut v, &p.spec),
        Object::CiliumClusterwideNetworkPolicy(p) => cilium_policy(&mut v, &p.spec.policy),
    }
    if v.errors.is_empty() { Ok(()) } else { Err(v.errors) }
}

fn service(v: &mut Check, s: &Service, limits: &Limits) {
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

fn endpoint_slice(v: &mut Check, s: &EndpointSlice) {
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

fn network_policy(v: &mut Check, p: &NetworkPolicy) {
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
        if let Some(net) = v.cidr(&format!("{at}.ipBlock.cidr"), &block.cidr) {
            for (k, except) in block.except.iter().flatten().enumerate() {
                let field = format!("{at}.ipBlock.except[{k}]");
                if let Some(inner) = v.cidr(&field, except)
                    && !(inner.prefix_len() > net.prefix_len() && net.contains(&inner))
                {
                    v.error(&field, format!("{except} is not strictly inside ipBlock.cidr {}", block.cidr));
                }
            }
        }
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

fn cilium_policy(v: &mut Check, spec: &PolicySpec) {
    v.cilium_selector("spec.endpointSelector", &spec.endpoint_selector);
    for (direction, rules) in [("ingress", &spec.ingress), ("egress", &spec.egress)] {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("spec.{direction}[{i}]");
            for (field, selectors) in
                [("fromEndpoints", &rule.from_endpoints), ("toEndpoints", &rule.to_endpoints)]
            {
                for (j, s) in selectors.iter().enumerate() {
                    v.cilium_selector(&format!("{at}.{field}[{j}]"), s);
                }
            }
            for (field, cidrs) in [("fromCIDR", &rule.from_cidr), ("toCIDR", &rule.to_cidr)] {
                for (j, cidr) in cidrs.iter().enumerate() {
                    v.cidr(&format!("{at}.{field}[{j}]"), cidr);
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
                                v.range(
                                    &format!("{field}.endPort"),
                                    end,
                                    i32::try_from(n).unwrap_or(0)..=65535,
                                );
                            }
                        }
                        Err(_) => v.port_name(&format!("{field}.port"), &p.port),
                    }
                }
            }
        }
    }
}

/// Collects field errors.
#[derive(Default)]
struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.to_owned(), message: message.into() });
    }

    /// Whether `value` is in `range` (an error when not).
    fn range(&mut self, field: &str, value: i32, range: RangeInclusive<i32>) -> bool {
        let ok = range.contains(&value);
        if !ok {
            self.error(field, format!("{value} is out of range {}..={}", range.start(), range.end()));
        }
        ok
    }

    fn one_of(&mut self, field: &str, value: &str, allowed: &[&str]) {
        if value.is_empty() {
            self.error(field, format!("missing: one of {}", allowed.join(", ")));
        } else if !allowed.contains(&value) {
            self.error(field, format!("{value:?} is not one of {}", allowed.join(", ")));
        }
    }

    fn ip(&mut self, field: &str, text: &str) {
        if text.parse::<IpAddr>().is_err() {
            self.error(field, format!("{text:?} is not an IP address"));
        }
    }

    fn cidr(&mut self, field: &str, text: &str) -> Option<IpNet> {
        let parsed = text.parse::<IpNet>().ok();
        if parsed.is_none() {
            self.error(field, format!("{text:?} is not a CIDR (address/length, length 0..=32 or 0..=128)"));
        }
        parsed
    }

    /// An RFC 1123 label (`dns1035`: starting with a letter, as Service names must).
    fn dns_label(&mut self, field: &str, text: &str, dns1035: bool) {
        let shape = label_shape(text, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let first_ok = !dns1035 || text.starts_with(|c: char| c.is_ascii_lowercase());
        if text.is_empty() {
            self.error(field, "missing");
        } else if text.len() > 63 || !shape || !first_ok {
            let first = if dns1035 { "start with a letter, " } else { "" };
            self.error(
                field,
                format!(
                    "{:?} ({} characters) must be 1..=63 lowercase letters, digits or '-', {first}start and end alphanumeric",
                    truncate(text),
                    text.len()
                ),
            );
        }
    }

    fn dns_subdomain(&mut self, field: &str, text: &str) {
        if text.is_empty() {
            return self.error(field, "missing");
        }
        let ok = text.len() <= 253
            && text
                .split('.')
                .all(|l| label_shape(l, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        if !ok {
            self.error(
                field,
                format!(
                    "{:?} ({} characters) must be 1..=253 characters of dot-separated lowercase labels",
                    truncate(text),
                    text.len()
                ),
            );
        }
    }

    /// An IANA service name, as named ports are: 1..=15 lowercase letters, digits and '-', at
    /// least one letter, no "--".
    fn port_name(&mut self, field: &str, text: &str) {
        let ok = (1..=15).contains(&text.len())
            && label_shape(text, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && text.chars().any(|c| c.is_ascii_lowercase())
            && !text.contains("--");
        if !ok {
            self.error(
                field,
                format!(
                    "{text:?} is neither a port number (1..=65535) nor a port name (1..=15 of a-z, 0-9, '-')"
                ),
            );
        }
    }

    fn labels(&mut self, field: &str, labels: Option<&BTreeMap<String, String>>) {
        for (key, value) in labels.into_iter().flatten() {
            self.label(&format!("{field}[{key}]"), key, value);
        }
    }

    fn label(&mut self, field: &str, key: &str, value: &str) {
        let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
        let name_ok =
            name.len() <= 63 && label_shape(name, |c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let prefix_ok = prefix.is_none_or(|p| {
            p.len() <= 253
                && p.split('.')
                    .all(|l| label_shape(l, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        });
        if !name_ok || !prefix_ok {
            self.error(
                field,
                format!("key {:?}: [prefix/]name, name 1..=63 of A-Z a-z 0-9 - _ .", truncate(key)),
            );
        }
        if !value.is_empty()
            && (value.len() > 63 || !label_shape(value, |c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            self.error(
                field,
                format!(
                    "value {:?}: 0..=63 of A-Z a-z 0-9 - _ ., alphanumeric at both ends",
                    truncate(value)
                ),
            );
        }
    }

    fn selector(&mut self, field: &str, s: &LabelSelector) {
        self.labels(&format!("{field}.matchLabels"), s.match_labels.as_ref());
        for (i, r) in s.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            let values = r.values.as_deref().unwrap_or_default();
            self.requirement(&at, &r.key, &r.operator, values);
        }
    }

    fn cilium_selector(&mut self, field: &str, s: &crd::Selector) {
        for (key, value) in &s.match_labels {
            // Cilium's source prefixes (`k8s:app`, `any:app`) are part of the key.
            let key = key.split_once(':').map_or(key.as_str(), |(_, k)| k);
            self.label(&format!("{field}.matchLabels[{key}]"), key, value);
        }
        for (i, r) in s.match_expressions.iter().enumerate() {
            let operator = format!("{:?}", r.operator);
            self.requirement(&format!("{field}.matchExpressions[{i}]"), &r.key, &operator, &r.values);
        }
    }

    fn requirement(&mut self, at: &str, key: &str, operator: &str, values: &[String]) {
        self.label(&format!("{at}.key"), key, "");
        match operator {
            "In" | "NotIn" if values.is_empty() => {
                self.error(&format!("{at}.values"), format!("empty: {operator} needs at least one value"))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                self.error(&format!("{at}.values"), format!("must be empty for {operator}"))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                self.one_of(&format!("{at}.operator"), other, &["In", "NotIn", "Exists", "DoesNotExist"])
            }
        }
        for (i, value) in values.iter().enumerate() {
            self.label(&format!("{at}.values[{i}]"), "value", value);
        }
    }
}

/// Non-empty, made of `allowed` characters, alphanumeric at both ends.
fn label_shape(text: &str, allowed: impl Fn(char) -> bool) -> bool {
    !text.is_empty()
        && text.chars().all(allowed)
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Long values are quoted by their start only.
fn truncate(text: &str) -> String {
    if text.len() <= 40 { text.to_owned() } else { format!("{}…", &text[..text.floor_char_boundary(40)]) }
}
