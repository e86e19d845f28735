//! The checks every object's fields go through, each error naming the field and the allowed
//! values or range.

use std::{collections::BTreeMap, net::IpAddr, ops::RangeInclusive};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use skiff_api::FieldError;

use crate::crd;

/// Collects field errors.
#[derive(Default)]
pub(super) struct Check {
    pub(super) errors: Vec<FieldError>,
}

impl Check {
    pub(super) fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.to_owned(), message: message.into() });
    }

    /// Whether `value` is in `range` (an error when not).
    pub(super) fn range(&mut self, field: &str, value: i32, range: RangeInclusive<i32>) -> bool {
        let ok = range.contains(&value);
        if !ok {
            self.error(field, format!("{value} is out of range {}..={}", range.start(), range.end()));
        }
        ok
    }

    pub(super) fn one_of(&mut self, field: &str, value: &str, allowed: &[&str]) {
        if value.is_empty() {
            self.error(field, format!("missing: one of {}", allowed.join(", ")));
        } else if !allowed.contains(&value) {
            self.error(field, format!("{value:?} is not one of {}", allowed.join(", ")));
        }
    }

    pub(super) fn ip(&mut self, field: &str, text: &str) {
        if text.parse::<IpAddr>().is_err() {
            self.error(field, format!("{text:?} is not an IP address"));
        }
    }

    pub(super) fn cidr(&mut self, field: &str, text: &str) -> Option<IpNet> {
        let parsed = text.parse::<IpNet>().ok();
        if parsed.is_none() {
            self.error(field, format!("{text:?} is not a CIDR (address/length, length 0..=32 or 0..=128)"));
        }
        parsed
    }

    /// An RFC 1123 label (`dns1035`: starting with a letter, as Service names must).
    pub(super) fn dns_label(&mut self, field: &str, text: &str, dns1035: bool) {
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

    pub(super) fn dns_subdomain(&mut self, field: &str, text: &str) {
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
    pub(super) fn port_name(&mut self, field: &str, text: &str) {
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

    pub(super) fn labels(&mut self, field: &str, labels: Option<&BTreeMap<String, String>>) {
        for (key, value) in labels.into_iter().flatten() {
            self.label(&format!("{field}[{key}]"), key, value);
        }
    }

    pub(super) fn label(&mut self, field: &str, key: &str, value: &str) {
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

    pub(super) fn selector(&mut self, field: &str, s: &LabelSelector) {
        self.labels(&format!("{field}.matchLabels"), s.match_labels.as_ref());
        for (i, r) in s.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            let values = r.values.as_deref().unwrap_or_default();
            self.requirement(&at, &r.key, &r.operator, values);
        }
    }

    pub(super) fn cilium_selector(&mut self, field: &str, s: &crd::Selector) {
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

    pub(super) fn requirement(&mut self, at: &str, key: &str, operator: &str, values: &[String]) {
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
