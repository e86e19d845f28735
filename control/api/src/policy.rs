//! What `skiff policy get` and `skiff policy trace` show: the compiled rules with the object
//! each came from, and the verdict on a flow with the rule that decided it.

use std::net::IpAddr;

use ipnet::IpNet;

use serde::{Deserialize, Serialize};

use crate::{PodRef, Protocol};

/// The compiled policy: how it is enforced, and every rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    /// `default`, `always` or `never` (`--policy-enforcement`).
    pub enforcement: String,
    /// The policies compiled (`CiliumNetworkPolicy x/allow-web`), also those with no rule.
    pub policies: Vec<String>,
    pub rules: Vec<RuleView>,
}

/// One rule as compiled, numbered as the datapath's verdicts name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    pub id: u32,
    /// `CiliumNetworkPolicy x/allow-web`, or what the agent adds (`allow-localhost`).
    pub source: String,
    /// Where in the object: `spec.ingress[0]`.
    pub at: String,
    /// `ingress` or `egress`.
    pub direction: String,
    pub deny: bool,
    /// Who the policy applies to (`k8s:app=web, k8s:io.kubernetes.pod.namespace=x`).
    pub subject: String,
    /// The peers, as written (`k8s:role=frontend`, `entity:world`, `cidr:198.18.0.0/16 except …`).
    pub peers: Vec<String>,
    /// `80/TCP`, `8000-8080/UDP`, `any`, `icmp 8`.
    pub ports: Vec<String>,
    /// Why the rule (or part of it) is not enforced as written, and what skiff does instead.
    pub not_enforced: Option<String>,
}

/// One end of a traced flow: a pod (its first address of the other end's family) or an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceEnd {
    Pod(PodRef),
    Ip(IpAddr),
}

/// The verdict of one direction's rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictView {
    /// `allowed`, `denied` (no rule allows it) or `denied-by-rule`.
    pub verdict: String,
    /// The rule that decided, when one did.
    pub rule: Option<RuleView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceView {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub protocol: Protocol,
    pub port: u16,
    /// The source endpoint's egress (`None`: not an endpoint of this node).
    pub egress: Option<VerdictView>,
    /// The destination endpoint's ingress (`None`: not an endpoint of this node).
    pub ingress: Option<VerdictView>,
    /// `allowed` or why not.
    pub verdict: String,
}

/// The NIC prefilter (`skiff prefilter`): sources dropped on arrival, kept across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefilterView {
    /// Each prefix with its rule number (as drops name it).
    pub cidrs: Vec<(IpNet, u32)>,
}
