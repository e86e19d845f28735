//! Label selectors over identities' labels, as Cilium matches them: a key may carry its source
//! (`k8s:app`, `any:app`: the same as `app` for a pod's labels; `reserved:host` for a reserved
//! identity), and a namespaced policy's peer selectors are scoped to its namespace unless they
//! name a namespace or a reserved label themselves.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::{
    crd::{self, Operator},
    labels::{Labels, NAMESPACE, NAMESPACE_LABELS},
};

/// The prefix of a reserved identity's label key (`reserved:host`).
pub const RESERVED: &str = "reserved:";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// Requirements that must all hold (an empty selector selects every label set).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    /// `key` equal to `value`.
    pub fn with(mut self, key: &str, value: &str) -> Selector {
        self.0.push(Requirement { key: key.into(), operator: Operator::In, values: vec![value.into()] });
        self
    }

    /// `key` set, to any value.
    pub fn with_key(mut self, key: &str) -> Selector {
        self.0.push(Requirement { key: key.into(), operator: Operator::Exists, values: Vec::new() });
        self
    }

    /// From Cilium's selector (keys keep their meaning: `k8s:` and `any:` are dropped).
    pub fn of_cilium(s: &crd::Selector) -> Selector {
        let labels = s.match_labels.iter().map(|(k, v)| Requirement {
            key: key(k),
            operator: Operator::In,
            values: vec![v.clone()],
        });
        let expressions = s.match_expressions.iter().map(|r| Requirement {
            key: key(&r.key),
            operator: r.operator,
            values: r.values.clone(),
        });
        Selector(labels.chain(expressions).collect())
    }

    /// From a Kubernetes label selector, on a pod's own labels (`prefix` empty) or on its
    /// namespace's (`io.cilium.k8s.namespace.labels.`). Validation has checked the operators.
    pub fn of_kubernetes(s: &LabelSelector, prefix: &str) -> Selector {
        let labels = s.match_labels.iter().flatten().map(|(k, v)| Requirement {
            key: format!("{prefix}{k}"),
            operator: Operator::In,
            values: vec![v.clone()],
        });
        let expressions = s.match_expressions.iter().flatten().map(|r| Requirement {
            key: format!("{prefix}{}", r.key),
            operator: match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                _ => Operator::DoesNotExist,
            },
            values: r.values.clone().unwrap_or_default(),
        });
        Selector(labels.chain(expressions).collect())
    }

    /// Scoped to `namespace` as a namespaced policy's peer selector is, unless it names a
    /// namespace (its name or its labels) or a reserved label itself.
    pub fn in_namespace(self, namespace: &str) -> Selector {
        let own_scope = self.0.iter().any(|r| {
            r.key == NAMESPACE || r.key.starts_with(NAMESPACE_LABELS) || r.key.starts_with(RESERVED)
        });
        if own_scope { self } else { self.with(NAMESPACE, namespace) }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.operator {
                Operator::In => value.is_some_and(|v| r.values.contains(v)),
                Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }

    /// A `key=value` pair every matching label set has, to look candidates up by.
    pub fn anchor(&self) -> Option<(&str, &str)> {
        self.0.iter().find_map(|r| match (r.operator, r.values.as_slice()) {
            (Operator::In, [value]) => Some((r.key.as_str(), value.as_str())),
            _ => None,
        })
    }

    /// As Cilium prints a selector: `k8s:app=web, k8s:io.kubernetes.pod.namespace=x`.
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "(all)".into();
        }
        let shown = |key: &str| if key.starts_with(RESERVED) { key.to_owned() } else { format!("k8s:{key}") };
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match (r.operator, r.values.as_slice()) {
                (Operator::In, [v]) => format!("{}={v}", shown(&r.key)),
                (Operator::Exists, _) => shown(&r.key),
                (Operator::DoesNotExist, _) => format!("!{}", shown(&r.key)),
                (op, values) => format!("{} {op:?} ({})", shown(&r.key), values.join(",")),
            })
            .collect();
        parts.join(", ")
    }
}

/// A selector key without its source prefix, except `reserved:`, which only reserved
/// identities' labels carry.
fn key(k: &str) -> String {
    for source in ["k8s:", "any:"] {
        if let Some(rest) = k.strip_prefix(source) {
            return rest.to_owned();
        }
    }
    k.to_owned()
}

/// Label sets indexed by their `key=value` pairs, so that a selector with an equality looks
/// at the sets that have it rather than at all.
pub struct Index<'l, T> {
    all: Vec<(&'l Labels, T)>,
    by_pair: HashMap<(&'l str, &'l str), Vec<usize>>,
}

impl<T> Default for Index<'_, T> {
    fn default() -> Self {
        Index { all: Vec::new(), by_pair: HashMap::new() }
    }
}

impl<'l, T: Copy> Index<'l, T> {
    pub fn insert(&mut self, labels: &'l Labels, value: T) {
        let at = self.all.len();
        for (k, v) in labels {
            self.by_pair.entry((k.as_str(), v.as_str())).or_default().push(at);
        }
        self.all.push((labels, value));
    }

    /// The values of the label sets `selector` matches.
    pub fn select<'a>(&'a self, selector: &'a Selector) -> Box<dyn Iterator<Item = T> + 'a> {
        match selector.anchor() {
            Some(pair) => {
                let candidates = self.by_pair.get(&pair).map_or(&[][..], Vec::as_slice);
                Box::new(
                    candidates
                        .iter()
                        .map(|&i| &self.all[i])
                        .filter(|(l, _)| selector.matches(l))
                        .map(|(_, t)| *t),
                )
            }
            None => Box::new(self.all.iter().filter(|(l, _)| selector.matches(l)).map(|(_, t)| *t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn cilium_keys_lose_their_source_and_peers_stay_in_the_namespace() {
        let s = crd::Selector {
            match_labels: [("k8s:app".into(), "web".into())].into(),
            match_expressions: vec![crd::Requirement {
                key: "any:tier".into(),
                operator: Operator::NotIn,
                values: vec!["db".into()],
            }],
        };
        let s = Selector::of_cilium(&s).in_namespace("x");
        assert!(s.matches(&labels(&[("app", "web"), (NAMESPACE, "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), (NAMESPACE, "y")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db"), (NAMESPACE, "x")])));
        let host = Selector::default().with("reserved:host", "").in_namespace("x");
        assert_eq!(host.0.len(), 1, "a reserved label is not scoped");
        let other = Selector::default().with(NAMESPACE, "y").in_namespace("x");
        assert!(other.matches(&labels(&[(NAMESPACE, "y")])));
    }

    #[test]
    fn the_index_finds_what_a_full_scan_finds() {
        let sets: Vec<Labels> = ["web", "db", "web"]
            .iter()
            .enumerate()
            .map(|(i, app)| labels(&[("app", app), ("n", &i.to_string())]))
            .collect();
        let mut index = Index::default();
        for (i, set) in sets.iter().enumerate() {
            index.insert(set, i);
        }
        let web = Selector::default().with("app", "web");
        assert_eq!(index.select(&web).collect::<Vec<_>>(), [0, 2]);
        let not_web = Selector(vec![Requirement {
            key: "app".into(),
            operator: Operator::NotIn,
            values: vec!["web".into()],
        }]);
        assert_eq!(index.select(&not_web).collect::<Vec<_>>(), [1]);
        assert_eq!(index.select(&Selector::default()).count(), 3);
    }
}
