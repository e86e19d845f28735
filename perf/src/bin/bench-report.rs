//! Writes `target/bench-report/<suite>.json` for the criterion suites (`wire`, `fastpath`)
//! from criterion's estimates of the benches just run
//! (`target/criterion/<group>/<bench>/new/estimates.json`: the mean and its 95% confidence
//! interval), pairing each skiff figure with the baseline measured beside it where there is
//! one; `fastpath` also takes the lab's records (`fastpath-lab.json`, written by the `nat`
//! bench). `cargo xtask bench` runs it after `cargo bench`.
//!
//! usage: bench-report TARGET_DIR

use std::path::Path;

use skiff_perf::{Figure, Record, read_report, write_report};

/// A record: its name, criterion group, skiff's bench in it ("" for a bench outside a
/// group), and the baseline's bench and name, if it has one.
type Row = (&'static str, &'static str, &'static str, Option<(&'static str, &'static str)>);

const WIRE: &[Row] = &[
    (
        "parse_eth_ipv4_tcp_headers",
        "parse/eth_ipv4_tcp",
        "skiff_headers",
        Some(("etherparse", "etherparse 0.21")),
    ),
    ("parse_eth_ipv4_tcp_flow_key", "parse/eth_ipv4_tcp", "skiff", Some(("etherparse", "etherparse 0.21"))),
    (
        "parse_eth_ipv6_2ext_udp_headers",
        "parse/eth_ipv6_2ext_udp",
        "skiff_headers",
        Some(("etherparse", "etherparse 0.21")),
    ),
    (
        "parse_eth_ipv6_2ext_udp_flow_key",
        "parse/eth_ipv6_2ext_udp",
        "skiff",
        Some(("etherparse", "etherparse 0.21")),
    ),
    (
        "dnat_rewrite_payload_64",
        "dnat/payload_64",
        "incremental",
        Some(("recompute", "checksums recomputed whole")),
    ),
    (
        "dnat_rewrite_payload_1400",
        "dnat/payload_1400",
        "incremental",
        Some(("recompute", "checksums recomputed whole")),
    ),
];

const FASTPATH: &[Row] = &[
    ("established_flow_dnat_plus_reverse_nat_2_packets", "engine/established", "dnat_and_reverse_nat", None),
    (
        "established_flow_2_packets_flow_events_on",
        "engine/established",
        "dnat_and_reverse_nat",
        Some(("flow_events_off", "the same flow with flow events off")),
    ),
    (
        "established_flow_2_packets_backend_under_policy",
        "engine/established",
        "under_policy",
        Some(("dnat_and_reverse_nat", "the same flow with no policy")),
    ),
    (
        "policy_verdict_new_flow_1000_rules_10k_identities",
        "policy_verdict_1000_rules_10k_identities",
        "identity_map",
        Some(("rule_list", "the same rules evaluated one by one (first match)")),
    ),
    ("new_flow_ct_miss_maglev_pick_and_ct_insert", "engine/new_flow_maglev_and_ct_insert", "", None),
    ("maglev_build_1000_backends_m16381", "maglev_build_1000_backends", "m16381", None),
    ("maglev_build_1000_backends_m131071", "maglev_build_1000_backends", "m131071", None),
    (
        "conntrack_reply_lookup_owned_uncontended",
        "conntrack_ownership",
        "owned",
        Some(("shared_uncontended", "one table for all workers, 64 mutex shards, uncontended")),
    ),
    (
        "conntrack_reply_lookup_owned_contended",
        "conntrack_ownership",
        "owned",
        Some(("shared_contended", "one table for all workers, 64 mutex shards, a second thread on them")),
    ),
    // The copy every forwarded frame gets is a floor, a record of its own: no competitor.
    ("staging_copy_1400_bytes_floor", "tunnel/encapsulate_1400", "copy_only", None),
    ("encapsulate_vxlan_ipv4_1400_bytes", "tunnel/encapsulate_1400", "vxlan_ipv4", None),
    ("encapsulate_geneve_ipv4_1400_bytes", "tunnel/encapsulate_1400", "geneve_ipv4", None),
    ("encapsulate_vxlan_ipv6_1400_bytes", "tunnel/encapsulate_1400", "vxlan_ipv6", None),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::args().nth(1).ok_or("usage: bench-report TARGET_DIR")?;
    let target = Path::new(&target);
    let criterion = target.join("criterion");
    let reports = target.join("bench-report");
    for (suite, table) in [("wire", WIRE), ("fastpath", FASTPATH)] {
        let mut records = Vec::new();
        for &(name, group, skiff, baseline) in table {
            let mut record = Record::new(name, "ns", mean_ns(&criterion, group, skiff)?);
            if let Some((bench, baseline_name)) = baseline {
                record = record.against(baseline_name, mean_ns(&criterion, group, bench)?);
            }
            records.push(record);
        }
        let lab = reports.join(format!("{suite}-lab.json"));
        if lab.exists() {
            records.extend(read_report(&lab).map_err(|e| format!("{}: {e}", lab.display()))?);
        }
        write_report(&reports, suite, &records)?;
    }
    Ok(())
}

/// The mean of a bench's last run, in nanoseconds, with its 95% confidence interval.
fn mean_ns(criterion: &Path, group: &str, bench: &str) -> Result<Figure, Box<dyn std::error::Error>> {
    // Criterion stores a group "a/b" in the folder "a_b".
    let path = criterion.join(group.replace('/', "_")).join(bench).join("new/estimates.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (run the benches first)", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let mean = &json["mean"];
    let number = |v: &serde_json::Value| v.as_f64().ok_or_else(|| format!("{}: no {v}", path.display()));
    Ok(Figure::interval(
        number(&mean["point_estimate"])?,
        number(&mean["confidence_interval"]["lower_bound"])?,
        number(&mean["confidence_interval"]["upper_bound"])?,
    ))
}
