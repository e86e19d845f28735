//! skiff-perf: benchmarks and their report.
//!
//! Every suite writes `target/bench-report/<suite>.json`, an array of [`Record`]s that follow
//! one convention (perf/README.md): `value` is always skiff's figure; where it is compared,
//! `baseline_name` says with what, `baseline` is that figure measured in the same run, and
//! `ratio` is how many times better skiff is (above 1: skiff wins). Floors and ceilings (an
//! empty XDP program, a bare forwarder) are records of their own, never baselines. Lab
//! figures keep every round beside their median. This machine is noisy: compare ratios.

pub mod lab;

use std::{fs, io, path::Path};

use serde::{Deserialize, Serialize};

/// One figure of a suite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    /// skiff's figure: a criterion mean, a single measurement, or the median of `rounds`.
    pub value: f64,
    /// `ns`, `s`, `ms`, `bytes` (costs: less is better) or `pps`, `conn/s`, `req/s` (rates:
    /// more is better).
    pub unit: String,
    /// Every round of a lab measurement, in the order they ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<f64>,
    /// The range `value` comes from: criterion's 95% confidence interval of the mean, or the
    /// lowest and highest round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<[f64; 2]>,
    /// What `value` is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline_rounds: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_spread: Option<[f64; 2]>,
    /// How many times better than the baseline skiff is: baseline ÷ value for costs, value ÷
    /// baseline for rates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

/// A measured figure: one value, or rounds and their median.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub value: f64,
    pub rounds: Vec<f64>,
    pub spread: Option<[f64; 2]>,
}

impl Figure {
    pub fn one(value: f64) -> Figure {
        Figure { value, rounds: Vec::new(), spread: None }
    }

    /// The median of `rounds`, with their range.
    pub fn rounds(rounds: Vec<f64>) -> Figure {
        let mut sorted = rounds.clone();
        sorted.sort_by(f64::total_cmp);
        let spread = sorted.first().zip(sorted.last()).map(|(lo, hi)| [*lo, *hi]);
        Figure { value: sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN), rounds, spread }
    }

    /// A mean and its confidence interval.
    pub fn interval(mean: f64, low: f64, high: f64) -> Figure {
        Figure { value: mean, rounds: Vec::new(), spread: Some([low, high]) }
    }
}

impl Record {
    /// skiff's figure, on its own.
    pub fn new(name: impl Into<String>, unit: &str, figure: Figure) -> Record {
        Record {
            name: name.into(),
            value: figure.value,
            unit: unit.into(),
            rounds: figure.rounds,
            spread: figure.spread,
            baseline_name: None,
            baseline: None,
            baseline_rounds: Vec::new(),
            baseline_spread: None,
            ratio: None,
        }
    }

    /// Compared with `name`'s figure, measured in the same run under the same conditions.
    pub fn against(mut self, name: impl Into<String>, baseline: Figure) -> Record {
        let rate = self.unit == "pps" || self.unit.ends_with("/s");
        self.ratio = Some(if rate { self.value / baseline.value } else { baseline.value / self.value });
        self.baseline_name = Some(name.into());
        self.baseline = Some(baseline.value);
        self.baseline_rounds = baseline.rounds;
        self.baseline_spread = baseline.spread;
        self
    }
}

/// Writes a suite's records to `<dir>/<suite>.json` and prints them as a table.
pub fn write_report(dir: &Path, suite: &str, records: &[Record]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("{suite}.json"));
    fs::write(&path, serde_json::to_string_pretty(records)?)?;
    println!("{suite}: {}", path.display());
    println!(
        "{:<52} {:>14} {:>5} {:>25}  {:<40} {:>14} {:>8}",
        "", "skiff", "unit", "spread", "against", "", "ratio"
    );
    for r in records {
        let spread = r.spread.map_or(String::new(), |[lo, hi]| format!("{lo:.2}..{hi:.2}"));
        let baseline = r.baseline.map_or(String::new(), |b| format!("{b:.2}"));
        let ratio = r.ratio.map_or(String::new(), |x| format!("{x:.2}×"));
        println!(
            "{:<52} {:>14.2} {:>5} {:>25}  {:<40} {:>14} {:>8}",
            r.name,
            r.value,
            r.unit,
            spread,
            r.baseline_name.as_deref().unwrap_or(""),
            baseline,
            ratio
        );
    }
    Ok(())
}

/// The records of a report file (as `write_report` wrote them).
pub fn read_report(path: &Path) -> io::Result<Vec<Record>> {
    Ok(serde_json::from_str(&fs::read_to_string(path)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_say_how_many_times_better_skiff_is() {
        let cost = Record::new("t", "ns", Figure::one(2.0)).against("naive", Figure::one(10.0));
        assert_eq!(cost.ratio, Some(5.0));
        let rate = Record::new("r", "pps", Figure::one(4e6)).against("kernel", Figure::one(1e6));
        assert_eq!(rate.ratio, Some(4.0));
        assert_eq!(Record::new("x", "ns", Figure::one(1.0)).ratio, None);
    }

    #[test]
    fn rounds_keep_their_order_and_give_the_median_and_range() {
        let f = Figure::rounds(vec![3.0, 1.0, 2.0, 5.0, 4.0]);
        assert_eq!((f.value, f.rounds, f.spread), (3.0, vec![3.0, 1.0, 2.0, 5.0, 4.0], Some([1.0, 5.0])));
    }

    #[test]
    fn a_report_reads_back() {
        let dir = std::env::temp_dir().join(format!("skiff-perf-test-{}", std::process::id()));
        let records = [Record::new("a", "pps", Figure::rounds(vec![1.0, 2.0, 3.0]))
            .against("kernel", Figure::rounds(vec![1.0, 1.0, 1.0]))];
        write_report(&dir, "t", &records).unwrap();
        assert_eq!(read_report(&dir.join("t.json")).unwrap(), records);
        fs::remove_dir_all(dir).unwrap();
    }
}
