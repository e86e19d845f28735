//! The NIC prefilter (`skiff prefilter`, as `cilium-dbg prefilter`): source prefixes dropped
//! on arrival, before anything else looks at a frame. Kept in the agent's data folder, so a
//! restarted agent drops the same sources.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Result;
use ipnet::IpNet;
use skiff_api::PrefilterView;
use skiff_engine::prefix::PrefixMap;

use crate::endpoints::{read_json, write_atomically};

/// Prefixes the prefilter holds at most (the XDP program's tries hold 2^17 of each family).
pub const MAX: usize = 100_000;

#[derive(Default)]
pub struct Prefilter {
    /// Where they are kept; `None`: in memory only.
    path: Option<PathBuf>,
    cidrs: BTreeSet<IpNet>,
    /// The table the datapath gets, built again at each change.
    table: Arc<PrefixMap<u32>>,
}

impl Prefilter {
    pub fn open(path: &Path) -> Result<Prefilter> {
        let cidrs: BTreeSet<IpNet> = read_json(path)?.unwrap_or_default();
        let mut prefilter = Prefilter { path: Some(path.to_owned()), cidrs, table: Arc::default() };
        prefilter.rebuild();
        Ok(prefilter)
    }

    /// Adds `cidrs` (their host bits cleared), saved before it returns.
    pub fn update(&mut self, cidrs: &[IpNet]) -> Result<()> {
        let mut next = self.cidrs.clone();
        next.extend(cidrs.iter().map(IpNet::trunc));
        if next.len() > MAX {
            anyhow::bail!("the prefilter holds at most {MAX} prefixes; {} asked", next.len());
        }
        self.replace(next)
    }

    /// Removes `cidrs`, saved before it returns.
    pub fn delete(&mut self, cidrs: &[IpNet]) -> Result<()> {
        let mut next = self.cidrs.clone();
        for cidr in cidrs {
            next.remove(&cidr.trunc());
        }
        self.replace(next)
    }

    fn replace(&mut self, cidrs: BTreeSet<IpNet>) -> Result<()> {
        if let Some(path) = &self.path {
            write_atomically(path, &serde_json::to_vec_pretty(&cidrs)?)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        self.cidrs = cidrs;
        self.rebuild();
        Ok(())
    }

    fn rebuild(&mut self) {
        let mut table = PrefixMap::default();
        for (cidr, rule) in self.cidrs.iter().zip(1..) {
            table.insert(*cidr, rule);
        }
        self.table = Arc::new(table);
    }

    pub fn table(&self) -> &Arc<PrefixMap<u32>> {
        &self.table
    }

    pub fn len(&self) -> usize {
        self.cidrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }

    pub fn view(&self) -> PrefilterView {
        PrefilterView { cidrs: self.cidrs.iter().copied().zip(1..).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_kept_across_a_restart() {
        let dir = std::env::temp_dir().join(format!("skiff-prefilter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prefilter.json");
        let mut p = Prefilter::open(&path).unwrap();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        p.update(&[net("198.18.0.66/28"), net("fd00::/64")]).unwrap();
        assert_eq!(p.table().longest("198.18.0.70".parse().unwrap()), Some(1), "host bits cleared");
        let mut again = Prefilter::open(&path).unwrap();
        assert_eq!(again.view().cidrs, [(net("198.18.0.64/28"), 1), (net("fd00::/64"), 2)]);
        again.delete(&[net("198.18.0.64/28")]).unwrap();
        assert_eq!(Prefilter::open(&path).unwrap().len(), 1);
        assert_eq!(again.table().longest("198.18.0.70".parse().unwrap()), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
