//! Cilium's policy custom resources, `cilium.io/v2` CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy: the fields skiff models (endpoint selectors, CIDR and
//! endpoint peers, ports) with an openAPIV3Schema strict enough that the API server itself
//! rejects a bad value such as port 65536, and every other field of Cilium's schema kept
//! whole (`x-kubernetes-preserve-unknown-fields`, `unmodelled`): a policy written for Cilium
//! applies unchanged and reaches skiff as written, so that what skiff does not enforce is
//! known and never pruned into a wider rule. `docker/crds.yaml` is generated from these types
//! (`skiff-agent crds`); a test keeps the shipped file equal to the types.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Fields of Cilium's schema that skiff does not model, by name, as the API server stored them.
pub type Unmodelled = BTreeMap<String, Value>;

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
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct PolicySpec {
    /// The endpoints the rules apply to (a host policy has a `nodeSelector` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<Selector>,
    /// The nodes a host policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<Rule>,
    /// Whether this policy isolates the endpoints it selects (in each direction it has rules
    /// for; `false`: it only adds to what others allow or deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    /// `labels`, …
    #[serde(flatten)]
    #[schemars(skip)]
    pub unmodelled: Unmodelled,
    /// The other specs of a policy given as a list (`specs`), filled by decoding.
    #[serde(skip)]
    #[schemars(skip)]
    pub more: Vec<PolicySpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// Cilium's entities: reserved identities, and sets of them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    All,
    World,
    #[serde(rename = "world-ipv4")]
    WorldIpv4,
    #[serde(rename = "world-ipv6")]
    WorldIpv6,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Health,
    Init,
    Unmanaged,
    Ingress,
}

/// A CIDR with exceptions (`fromCIDRSet`, `toCIDRSet`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct CidrRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// `cidrGroupRef`, `cidrGroupSelector`.
    #[serde(flatten)]
    #[schemars(skip)]
    pub unmodelled: Unmodelled,
}

/// ICMP messages a rule allows (`icmps`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct IcmpRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 40))]
    pub fields: Vec<IcmpField>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct IcmpField {
    /// A message type: its number, or its name as Cilium spells it (`EchoRequest`).
    #[serde(rename = "type")]
    #[schemars(schema_with = "int_or_string")]
    pub type_: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    /// IPv4 unless said (an `Option` would put `null` among the schema's enum values, which
    /// the API server refuses).
    #[serde(default)]
    pub family: IcmpFamily,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IcmpFamily {
    #[default]
    IPv4,
    IPv6,
}

fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-int-or-string": true })
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

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One ingress or egress rule: peers (`fromEndpoints`/`toEndpoints`, CIDRs) and ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_endpoints: Vec<Selector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<Selector>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<String>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<String>,
    #[serde(default, rename = "fromCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr_set: Vec<CidrRule>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr_set: Vec<CidrRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_entities: Vec<Entity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_entities: Vec<Entity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,
    /// `toFQDNs`, `toServices`, `toGroups`, `fromRequires`, `authentication`, …: kept, and
    /// reported as not enforced (an allow that allows nothing, a deny of every peer).
    #[serde(flatten)]
    #[schemars(skip)]
    pub unmodelled: Unmodelled,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 40))]
    pub ports: Vec<PortProtocol>,
    /// L7 `rules`, `listener`, `serverNames`, TLS contexts, …
    #[serde(flatten)]
    #[schemars(skip)]
    pub unmodelled: Unmodelled,
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
/// `docker/crds.yaml` ships and `skiff-agent crds` prints.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| format!("---\n{}", serde_saphyr::to_string(crd).expect("a CRD serializes")))
        .collect()
}

/// Marks the CRDs that are skiff's, installed by an agent or from `docker/crds.yaml` (an
/// agent updates those of an older schema, and leaves Cilium's own as they are) …
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "skiff-agent");
/// … and which of skiff's schemas each holds (a SHA-256 of its spec).
pub const SCHEMA_DIGEST: &str = "skiff.dev/schema-digest";

/// The CustomResourceDefinitions skiff reads, as the agent installs them, marked as skiff's.
/// Beside `spec`, a policy may hold a list of them in `specs`, and a `status`, as in
/// Cilium's schema.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    let mut crds = vec![CiliumNetworkPolicy::crd(), CiliumClusterwideNetworkPolicy::crd()];
    for version in crds.iter_mut().flat_map(|crd| crd.spec.versions.iter_mut()) {
        let Some(root) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else {
            continue;
        };
        // `spec` or `specs`.
        root.required = None;
        let Some(properties) = root.properties.as_mut() else { continue };
        let Some(spec) = properties.get("spec").cloned() else { continue };
        let specs = JSONSchemaProps {
            type_: Some("array".into()),
            items: Some(JSONSchemaPropsOrArray::Schema(Box::new(spec))),
            ..JSONSchemaProps::default()
        };
        properties.insert("specs".into(), specs);
        let status = JSONSchemaProps {
            type_: Some("object".into()),
            x_kubernetes_preserve_unknown_fields: Some(true),
            ..JSONSchemaProps::default()
        };
        properties.insert("status".into(), status);
    }
    crds.push(CiliumIdentity::crd());
    for crd in &mut crds {
        mark(crd);
    }
    crds
}

fn mark(crd: &mut CustomResourceDefinition) {
    use std::fmt::Write;

    use sha2::{Digest, Sha256};
    let spec = serde_json::to_vec(&crd.spec).unwrap_or_default();
    let digest = Sha256::digest(spec).iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    });
    crd.metadata.labels = Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into());
    crd.metadata.annotations = Some([(SCHEMA_DIGEST.to_owned(), digest)].into());
}

/// Cilium's CiliumIdentity (cluster-scoped, `cilium.io/v2`): a security identity, named by its
/// number, and the labels it stands for (`security-labels`, each key `k8s:`-prefixed as
/// Cilium's agents write a pod's). Created by the first agent that needs the number; read by
/// all, so every node numbers a label set alike.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CiliumIdentity {
    #[serde(default)]
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(rename = "security-labels", default)]
    pub security_labels: BTreeMap<String, String>,
}

impl CiliumIdentity {
    /// The source prefix of a pod's labels.
    const K8S: &str = "k8s:";

    /// Identity `id` for a pod label set, as the API server takes it.
    pub fn object(id: u32, labels: &BTreeMap<String, String>) -> Value {
        let security: BTreeMap<String, &String> =
            labels.iter().map(|(k, v)| (format!("{}{k}", Self::K8S), v)).collect();
        serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumIdentity",
            "metadata": {"name": id.to_string()},
            "security-labels": security,
        })
    }

    /// Its number, if its name is one.
    pub fn number(&self) -> Option<u32> {
        self.metadata.name.as_deref()?.parse().ok()
    }

    /// The pod label set it stands for; `None` when a label comes from another source than
    /// Kubernetes (a reserved or CIDR identity of Cilium's).
    pub fn pod_labels(&self) -> Option<BTreeMap<String, String>> {
        self.security_labels
            .iter()
            .map(|(k, v)| Some((k.strip_prefix(Self::K8S)?.to_owned(), v.clone())))
            .collect()
    }

    fn crd() -> CustomResourceDefinition {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "ciliumidentities.cilium.io"},
            "spec": {
                "group": "cilium.io",
                "names": {
                    "kind": "CiliumIdentity",
                    "plural": "ciliumidentities",
                    "singular": "ciliumidentity",
                    "shortNames": ["ciliumid"],
                    "listKind": "CiliumIdentityList",
                },
                "scope": "Cluster",
                "versions": [{
                    "name": "v2",
                    "served": true,
                    "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "required": ["metadata", "security-labels"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "security-labels": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    }},
                }],
            },
        }))
        .expect("the CiliumIdentity CRD is well formed")
    }
}
