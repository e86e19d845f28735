//! Writes `target/bench-report/<suite>.json` for the criterion suites (`wire`, `fastpath`)
//! from criterion's estimates of the benches just run
//! (`target/criterion/<group>/<bench>/new/estimates.json`), pairing each skiff figure with the
//! baseline measured beside it where there is one; `fastpath` also takes the lab's records
//! (`fastpath-lab.json`, written by the `nat` bench). `cargo xtask bench` runs it after
//! `cargo bench`.
//!
//! usage: bench-report TARGET_DIR

use std::{fs, path::Path};

use skiff_perf::{Record, write_report};

/// (record name, criterion group, skiff bench ("" for a bench outside a group), baseline bench
/// or "")
const WIRE: &[(&str, &str, &str, &str)] = &[
    ("parse_eth_ipv4_tcp_headers", "parse/eth_ipv4_tcp", "skiff_headers", "etherparse"),
    ("parse_eth_ipv4_tcp_flow_key", "parse/eth_ipv4_tcp", "skiff", "etherparse"),
    ("parse_eth_ipv6_2ext_udp_headers", "parse/eth_ipv6_2ext_udp", "skiff_headers", "etherparse"),
    ("parse_eth_ipv6_2ext_udp_flow_key", "parse/eth_ipv6_2ext_udp", "skiff", "etherparse"),
    ("dnat_rewrite_payload_64", "dnat/payload_64", "incremental", "recompute"),
    ("dnat_rewrite_payload_1400", "dnat/payload_1400", "incremental", "recompute"),
];

const FASTPATH: &[(&str, &str, &str, &str)] = &[
    ("established_flow_dnat_plus_reverse_nat_2_packets", "engine/established_dnat_and_reverse_nat", "", ""),
    ("new_flow_maglev_pick_and_ct_insert", "engine/new_flow_maglev_and_ct_insert", "", ""),
    ("maglev_build_1000_backends_m16381", "maglev_build_1000_backends", "m16381", ""),
    ("maglev_build_1000_backends_m131071", "maglev_build_1000_backends", "m131071", ""),
    (
        "conntrack_reply_lookup_owned_vs_shared_uncontended",
        "conntrack_ownership",
        "owned",
        "shared_uncontended",
    ),
    ("conntrack_reply_lookup_owned_vs_shared_contended", "conntrack_ownership", "owned", "shared_contended"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::args().nth(1).ok_or("usage: bench-report TARGET_DIR")?;
    let target = Path::new(&target);
    let criterion = target.join("criterion");
    for (suite, table) in [("wire", WIRE), ("fastpath", FASTPATH)] {
        let mut records = Vec::new();
        for &(name, group, skiff, baseline) in table {
            let mut record = Record::new(name, mean_ns(&criterion, group, skiff)?, "ns");
            if !baseline.is_empty() {
                record = record.with_baseline(mean_ns(&criterion, group, baseline)?);
            }
            records.push(record);
        }
        let lab = target.join("bench-report").join(format!("{suite}-lab.json"));
        if let Ok(text) = fs::read_to_string(&lab) {
            records.extend(read_records(&text).map_err(|e| format!("{}: {e}", lab.display()))?);
        }
        write_report(&target.join("bench-report"), suite, &records)?;
    }
    Ok(())
}

/// The mean of a bench's last run, in nanoseconds.
fn mean_ns(criterion: &Path, group: &str, bench: &str) -> Result<f64, Box<dyn std::error::Error>> {
    // Criterion stores a group "a/b" in the folder "a_b".
    let path = criterion.join(group.replace('/', "_")).join(bench).join("new/estimates.json");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("{}: {e} (run the benches first)", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    json["mean"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{}: no mean.point_estimate", path.display()).into())
}

/// The records of a report file (as `write_report` wrote them).
fn read_records(text: &str) -> Result<Vec<Record>, Box<dyn std::error::Error>> {
    let json: Vec<serde_json::Value> = serde_json::from_str(text)?;
    json.iter()
        .map(|r| {
            let name = r["name"].as_str().ok_or("a record without a name")?;
            let value = r["value"].as_f64().ok_or("a record without a value")?;
            let unit = match r["unit"].as_str() {
                Some("pps") => "pps",
                Some("ns") => "ns",
                other => return Err(format!("unit {other:?} of {name}").into()),
            };
            let record = Record::new(name, value, unit);
            Ok(match r["baseline"].as_f64() {
                Some(b) => record.with_baseline(b),
                None => record,
            })
        })
        .collect()
}
