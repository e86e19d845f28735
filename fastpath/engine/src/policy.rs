//! Network policy as the workers enforce it, compiled by the control plane: the **ipcache**
//! (the security identity of any address: a pod, a node, a CIDR of a rule, or the world) and
//! each local endpoint's rules for ingress and egress, keyed by peer identity as Cilium's
//! policy maps are. A flow's verdict is decided on its first packet; an allowed flow is
//! tracked, so its later packets and its replies never look at policy again.

use std::{net::IpAddr, sync::Arc};

use hashbrown::HashMap;
use ipnet::IpNet;
use skiff_common::{DropReason, identity::Identity};

use crate::prefix::PrefixMap;

/// Which compiled rule decided a verdict: an index into the control plane's list of rules
/// (`skiff policy get` numbers them the same way).
pub type RuleId = u32;

/// The ports a rule covers, of one protocol (`0`: any protocol). For ICMP and ICMPv6 the
/// "port" is the message type, as Cilium's `icmps` rules name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Every protocol, every port: an L3-only rule.
    pub const ANY: PortRange = PortRange { protocol: 0, first: 0, last: u16::MAX };

    #[inline]
    fn contains(&self, protocol: u8, port: u16) -> bool {
        (self.protocol == 0 || self.protocol == protocol) && self.first <= port && port <= self.last
    }
}

/// One entry of a direction's rules: for a peer, these ports are allowed (or denied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ports: PortRange,
    pub deny: bool,
    pub rule: RuleId,
}

/// How one direction of an endpoint is decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    /// By peer identity (`Identity::UNKNOWN`: any peer), where its entries sit in `entries`
    /// (start, count): plain values, so a copy of 10 000 peers' rules is one memcpy, not
    /// 10 000 allocations (the control plane copies rules to add a new identity to them).
    by_peer: HashMap<Identity, (u32, u32)>,
    entries: Vec<Entry>,
    /// What no entry matches is allowed: the endpoint is not isolated in this direction, only
    /// its deny rules (and allows, which change nothing) apply (Cilium's
    /// `enableDefaultDeny: false`).
    pub default_allow: bool,
}

/// What policy says about a new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by this rule, or with no rule when the direction is not enforced.
    Allowed(Option<RuleId>),
    /// Denied by a deny rule, which takes precedence over every allow.
    DeniedByRule(RuleId),
    /// Denied because no rule allows it (the endpoint is isolated in that direction).
    Denied,
}

impl Verdict {
    pub fn drop_reason(self) -> Option<DropReason> {
        match self {
            Verdict::Allowed(_) => None,
            Verdict::DeniedByRule(_) => Some(DropReason::PolicyDeniedByDenyRule),
            Verdict::Denied => Some(DropReason::PolicyDenied),
        }
    }
}

impl Rules {
    /// Adds an entry for `peer` (`Identity::UNKNOWN`: any peer).
    pub fn insert(&mut self, peer: Identity, entry: Entry) {
        let end = self.entries.len();
        let (start, count) = self.by_peer.get(&peer).map_or((end, 0), |&(s, c)| (s as usize, c as usize));
        if self.entries[start..start + count].contains(&entry) {
            return;
        }
        let start = if start + count == end {
            start
        } else {
            // Not the last peer's: its entries move to the end (the old ones stay unused).
            self.entries.extend_from_within(start..start + count);
            end
        };
        self.entries.push(entry);
        let index = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.by_peer.insert(peer, (index(start), index(count + 1)));
    }

    /// `peer`'s entries.
    #[inline]
    fn of(&self, peer: Identity) -> &[Entry] {
        self.by_peer.get(&peer).map_or(&[], |&(start, count)| {
            self.entries.get(start as usize..(start + count) as usize).unwrap_or_default()
        })
    }

    /// The verdict for a flow with `peer` on `protocol`/`port`: a matching deny wins, then a
    /// matching allow, else denied (allowed when the direction is not isolated).
    #[inline]
    pub fn verdict(&self, peer: Identity, protocol: u8, port: u16) -> Verdict {
        let mut allowed = None;
        for entry in self.of(peer).iter().chain(self.of(Identity::UNKNOWN)) {
            if entry.ports.contains(protocol, port) {
                if entry.deny {
                    return Verdict::DeniedByRule(entry.rule);
                }
                allowed.get_or_insert(entry.rule);
            }
        }
        match allowed {
            Some(rule) => Verdict::Allowed(Some(rule)),
            None if self.default_allow => Verdict::Allowed(None),
            None => Verdict::Denied,
        }
    }
}

/// A local endpoint as policy sees it: its identity and, per direction, its rules (`None`:
/// that direction is not enforced and allows everything).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointPolicy {
    pub identity: Identity,
    pub ingress: Option<Arc<Rules>>,
    pub egress: Option<Arc<Rules>>,
}

impl EndpointPolicy {
    pub fn enforced(&self) -> bool {
        self.ingress.is_some() || self.egress.is_some()
    }
}

/// Addresses to identities, by longest prefix: pods and nodes as /32 and /128 entries, the
/// CIDRs of rules as their prefixes; any other address is the world's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ipcache(pub PrefixMap<Identity>);

impl Ipcache {
    /// Maps `net` to `identity`, replacing what it had.
    pub fn insert(&mut self, net: IpNet, identity: Identity) {
        self.0.insert(net, identity);
    }

    /// The identity of `addr`: its longest prefix's, or `WORLD`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Identity {
        self.0.longest(addr).unwrap_or(Identity::WORLD)
    }

    /// Every entry, as prefixes with their identities.
    pub fn entries(&self) -> Vec<(IpNet, Identity)> {
        self.0.entries()
    }
}

/// What the control plane gives the workers for policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub ipcache: Ipcache,
    /// This node's endpoints by address.
    pub endpoints: HashMap<IpAddr, Arc<EndpointPolicy>>,
}

/// The verdicts of both directions of a new flow, as `skiff policy trace` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    pub src_identity: Identity,
    pub dst_identity: Identity,
    /// The source endpoint's egress verdict (`None`: not a local endpoint).
    pub egress: Option<Verdict>,
    /// The destination endpoint's ingress verdict (`None`: not a local endpoint).
    pub ingress: Option<Verdict>,
}

impl Trace {
    /// The flow's outcome: the first denial, egress before ingress.
    pub fn verdict(&self) -> Verdict {
        let denied =
            [self.egress, self.ingress].into_iter().flatten().find(|v| !matches!(v, Verdict::Allowed(_)));
        denied.unwrap_or(Verdict::Allowed(match (self.egress, self.ingress) {
            (_, Some(Verdict::Allowed(Some(rule)))) | (Some(Verdict::Allowed(Some(rule))), _) => Some(rule),
            _ => None,
        }))
    }
}

impl Policy {
    /// Whether `addr` is a local endpoint under policy in some direction: its flows need a
    /// verdict.
    #[inline]
    pub fn enforces(&self, addr: IpAddr) -> bool {
        !self.endpoints.is_empty() && self.endpoints.get(&addr).is_some_and(|e| e.enforced())
    }

    /// The verdict on a new flow from `src` to `dst` (after service translation) on
    /// `protocol`/`port`: the source's egress, then the destination's ingress.
    #[inline]
    pub fn check(&self, src: IpAddr, dst: IpAddr, protocol: u8, port: u16) -> Result<(), DropReason> {
        match self.trace(src, dst, protocol, port).verdict().drop_reason() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Both directions' verdicts on a new flow, with the identities they were decided on.
    #[inline]
    pub fn trace(&self, src: IpAddr, dst: IpAddr, protocol: u8, port: u16) -> Trace {
        let (from, to) = (self.endpoints.get(&src), self.endpoints.get(&dst));
        let src_identity = from.map_or_else(|| self.ipcache.lookup(src), |e| e.identity);
        let dst_identity = to.map_or_else(|| self.ipcache.lookup(dst), |e| e.identity);
        let egress = from.map(|e| {
            e.egress.as_ref().map_or(Verdict::Allowed(None), |r| r.verdict(dst_identity, protocol, port))
        });
        let ingress = to.map(|e| {
            e.ingress.as_ref().map_or(Verdict::Allowed(None), |r| r.verdict(src_identity, protocol, port))
        });
        Trace { src_identity, dst_identity, egress, ingress }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: u8 = 6;
    const UDP: u8 = 17;

    fn entry(protocol: u8, first: u16, last: u16, deny: bool, rule: RuleId) -> Entry {
        Entry { ports: PortRange { protocol, first, last }, deny, rule }
    }

    #[test]
    fn deny_wins_then_allow_then_default_deny() {
        let mut rules = Rules::default();
        rules.insert(Identity(300), entry(TCP, 80, 81, false, 1));
        rules.insert(Identity::UNKNOWN, entry(0, 0, u16::MAX, false, 2));
        rules.insert(Identity(301), entry(UDP, 53, 53, true, 3));
        assert_eq!(rules.verdict(Identity(300), TCP, 81), Verdict::Allowed(Some(1)));
        assert_eq!(rules.verdict(Identity(302), UDP, 9), Verdict::Allowed(Some(2)), "any peer");
        assert_eq!(rules.verdict(Identity(301), UDP, 53), Verdict::DeniedByRule(3));
        assert_eq!(Rules::default().verdict(Identity(300), TCP, 80), Verdict::Denied);
        let mut open = Rules { default_allow: true, ..Rules::default() };
        open.insert(Identity(301), entry(UDP, 53, 53, true, 3));
        assert_eq!(
            open.verdict(Identity(301), UDP, 53),
            Verdict::DeniedByRule(3),
            "not isolated: denies deny"
        );
        assert_eq!(open.verdict(Identity(301), TCP, 9), Verdict::Allowed(None));
    }

    #[test]
    fn a_peers_entries_stay_together_when_added_to_later() {
        let mut rules = Rules::default();
        rules.insert(Identity(300), entry(TCP, 80, 80, false, 1));
        rules.insert(Identity(301), entry(TCP, 81, 81, false, 2));
        rules.insert(Identity(300), entry(UDP, 53, 53, false, 3));
        rules.insert(Identity(300), entry(UDP, 53, 53, false, 3));
        let copy = rules.clone();
        assert_eq!(copy.verdict(Identity(300), TCP, 80), Verdict::Allowed(Some(1)));
        assert_eq!(copy.verdict(Identity(300), UDP, 53), Verdict::Allowed(Some(3)));
        assert_eq!(copy.verdict(Identity(301), TCP, 81), Verdict::Allowed(Some(2)));
        assert_eq!(copy.verdict(Identity(301), UDP, 53), Verdict::Denied);
        assert_eq!(copy.of(Identity(300)).len(), 2, "once each");
    }

    #[test]
    fn ipcache_takes_the_longest_prefix_else_world() {
        let mut c = Ipcache::default();
        c.insert("198.18.0.0/15".parse().unwrap(), Identity(16_777_217));
        c.insert("198.18.1.0/24".parse().unwrap(), Identity(16_777_218));
        c.insert("198.18.1.7/32".parse().unwrap(), Identity(300));
        c.insert("fd00::/8".parse().unwrap(), Identity(16_777_219));
        let at = |a: &str| c.lookup(a.parse().unwrap()).0;
        assert_eq!((at("198.18.1.7"), at("198.18.1.8"), at("198.19.0.1")), (300, 16_777_218, 16_777_217));
        assert_eq!((at("203.0.113.1"), at("fd00::1"), at("2001:db8::1")), (2, 16_777_219, 2));
        assert_eq!(c.entries().len(), 4);
    }

    #[test]
    fn a_flow_needs_egress_and_ingress() {
        let (a, b): (IpAddr, IpAddr) = ("198.18.1.1".parse().unwrap(), "198.18.1.2".parse().unwrap());
        let mut ingress = Rules::default();
        ingress.insert(Identity(300), entry(TCP, 80, 80, false, 7));
        let mut policy = Policy::default();
        policy.ipcache.insert(IpNet::from(a), Identity(300));
        let endpoint = |identity, ingress, egress| Arc::new(EndpointPolicy { identity, ingress, egress });
        policy.endpoints.insert(a, endpoint(Identity(300), None, None));
        policy.endpoints.insert(b, endpoint(Identity(301), Some(Arc::new(ingress)), None));
        assert!(policy.enforces(b) && !policy.enforces(a));
        assert_eq!(policy.trace(a, b, TCP, 80).verdict(), Verdict::Allowed(Some(7)));
        assert_eq!(policy.check(a, b, TCP, 81), Err(DropReason::PolicyDenied));
        assert_eq!(policy.check(b, a, TCP, 80), Ok(()), "a is not isolated");
        policy.endpoints.insert(a, endpoint(Identity(300), None, Some(Arc::new(Rules::default()))));
        assert_eq!(policy.check(a, b, TCP, 80), Err(DropReason::PolicyDenied), "a's egress now denies");
    }
}
