//! Cilium's policy custom resources, `cilium.io/v2` CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy: the subset skiff reads (endpoint selectors, CIDR and
//! endpoint peers, ports), with an openAPIV3Schema strict enough that the API server itself
//! rejects a bad value such as port 65536. `control/crds/cilium.yaml` is generated from these
//! types (`skiff-agent crds`); a test keeps the shipped file equal to the types.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Cilium's own pattern: a port number 0–65535 or an IANA port name.
pub const PORT_PATTERN: &str = r"^(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})$|^([a-zA-Z0-9]-?)*[a-zA-Z](-?[a-zA-Z0-9])*$";

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNetworkPolicy",
    plural = "ciliumnetworkpolicies",
    shortname = "cnp",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// The endpoints the rules apply to.
    pub endpoint_selector: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

/// The same policy, cluster-wide (no namespace).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumClusterwideNetworkPolicy",
    plural = "ciliumclusterwidenetworkpolicies",
    shortname = "ccnp",
    derive = "PartialEq"
)]
pub struct ClusterwidePolicySpec {
    #[serde(flatten)]
    pub policy: PolicySpec,
}

/// A Kubernetes label selector, as Cilium's endpoint selectors are.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One ingress or egress rule: peers (`fromEndpoints`/`toEndpoints`, CIDRs) and ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_endpoints: Vec<Selector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<Selector>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<String>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PortRule {
    #[schemars(length(max = 40))]
    pub ports: Vec<PortProtocol>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortProtocol {
    /// A port number or name; a string, as in Cilium.
    #[schemars(regex(pattern = PORT_PATTERN))]
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub end_port: Option<i32>,
    #[serde(default)]
    pub protocol: L4Proto,
}

/// A policy port's protocol (Cilium's `L4Proto`: ANY matches every protocol).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum L4Proto {
    TCP,
    UDP,
    SCTP,
    ICMP,
    ICMPv6,
    #[default]
    ANY,
}

/// The CustomResourceDefinitions skiff reads, as multi-document YAML: what
/// `control/crds/cilium.yaml` ships and `skiff-agent crds` prints.
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    let yaml = |crd| serde_saphyr::to_string(&crd).expect("a CRD serializes");
    format!("---\n{}---\n{}", yaml(CiliumNetworkPolicy::crd()), yaml(CiliumClusterwideNetworkPolicy::crd()))
}
