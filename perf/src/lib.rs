//! skiff-perf: benchmarks and their report.
//!
//! Every suite writes `target/bench-report/<suite>.json`: an array of records
//! `{name, value, unit}`, with `baseline` and `ratio` (baseline ÷ value for times, so above 1
//! means skiff is faster) where a baseline was measured in the same run. This machine is
//! noisy: compare ratios, not absolute figures.

pub mod lab;

use std::{fs, io, path::Path};

/// One figure of a suite.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// The same measurement of the reference (kernel, another library, a naive version).
    pub baseline: Option<f64>,
}

impl Record {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Record { name: name.into(), value, unit, baseline: None }
    }
    pub fn with_baseline(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self
    }
    /// baseline ÷ value for costs (ns, s, bytes), value ÷ baseline for rates (pps).
    pub fn ratio(&self) -> Option<f64> {
        let b = self.baseline?;
        Some(if self.unit.ends_with("/s") || self.unit == "pps" { self.value / b } else { b / self.value })
    }
}

/// Writes a suite's records to `<dir>/<suite>.json` and prints them as a table.
pub fn write_report(dir: &Path, suite: &str, records: &[Record]) -> io::Result<()> {
    let json: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let mut v = serde_json::json!({ "name": r.name, "value": r.value, "unit": r.unit });
            if let (Some(b), Some(ratio)) = (r.baseline, r.ratio()) {
                v["baseline"] = b.into();
                v["ratio"] = ratio.into();
            }
            v
        })
        .collect();
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("{suite}.json"));
    fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!(
        "{:<44} {:>12} {:>6} {:>12} {:>8}",
        format!("{suite} ({})", path.display()),
        "value",
        "unit",
        "baseline",
        "ratio"
    );
    for r in records {
        let baseline = r.baseline.map_or(String::new(), |b| format!("{b:.2}"));
        let ratio = r.ratio().map_or(String::new(), |x| format!("{x:.2}×"));
        println!("{:<44} {:>12.2} {:>6} {:>12} {:>8}", r.name, r.value, r.unit, baseline, ratio);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_say_how_much_faster() {
        assert_eq!(Record::new("t", 2.0, "ns").with_baseline(10.0).ratio(), Some(5.0));
        assert_eq!(Record::new("r", 4e6, "pps").with_baseline(1e6).ratio(), Some(4.0));
        assert_eq!(Record::new("x", 1.0, "ns").ratio(), None);
    }
}
