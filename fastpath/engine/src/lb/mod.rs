//! Service load balancing: choosing a backend for a new flow, by Maglev consistent hashing or
//! at random, in proportion to the backends' weights.

pub mod maglev;

use std::net::IpAddr;

use skiff_common::lb::{Algorithm, BackendId};

use self::maglev::{Maglev, MaglevError};

/// A service backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub id: BackendId,
    pub addr: IpAddr,
    pub port: u16,
    /// 0 leaves the backend out of new flows (a terminating endpoint keeps the flows it has).
    pub weight: u16,
    /// On this node: the only backends a `Local` traffic policy uses, and never masqueraded.
    pub local: bool,
}

/// A built chooser over a set of backends.
#[derive(Clone, Debug)]
pub enum Selector {
    Maglev(Maglev),
    /// Cumulative weights: a draw below `total` lands on the first entry above it.
    Random {
        cumulative: Vec<(u64, BackendId)>,
    },
}

impl Selector {
    pub fn build<'a>(
        backends: impl IntoIterator<Item = &'a Backend>,
        algorithm: Algorithm,
    ) -> Result<Selector, MaglevError> {
        Ok(match algorithm {
            Algorithm::Maglev { table_size } => Selector::Maglev(Maglev::build(backends, table_size)?),
            Algorithm::Random => {
                let mut total = 0;
                let cumulative = backends
                    .into_iter()
                    .filter(|b| b.weight > 0)
                    .map(|b| {
                        total += u64::from(b.weight);
                        (total, b.id)
                    })
                    .collect();
                Selector::Random { cumulative }
            }
        })
    }

    /// Whether no backend takes new flows.
    pub fn is_empty(&self) -> bool {
        match self {
            Selector::Maglev(m) => m.is_empty(),
            Selector::Random { cumulative } => cumulative.is_empty(),
        }
    }

    /// The backend for a new flow with hash `flow_hash`; `random` is a fresh random number
    /// (used by `Random` only). `None` when no backend takes new flows.
    #[inline]
    pub fn pick(&self, flow_hash: u64, random: u64) -> Option<BackendId> {
        match self {
            Selector::Maglev(m) => m.pick(flow_hash),
            Selector::Random { cumulative } => {
                let total = cumulative.last()?.0;
                let draw = random % total;
                let i = cumulative.partition_point(|(upto, _)| *upto <= draw);
                cumulative.get(i).map(|(_, id)| *id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::hash::mix64;

    #[test]
    fn random_follows_the_weights_and_skips_weight_zero() {
        let backend = |i: u32, weight| Backend {
            id: BackendId(i),
            addr: Ipv4Addr::new(198, 18, 128, 10).into(),
            port: 8080,
            weight,
            local: true,
        };
        let backends = [backend(1, 1), backend(2, 0), backend(3, 3)];
        let s = Selector::build(&backends, Algorithm::Random).unwrap();
        let mut counts = [0u32; 4];
        for n in 0..40_000u64 {
            counts[s.pick(0, mix64(n)).unwrap().0 as usize] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 gets no new flow");
        let share = f64::from(counts[3]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "weight 3 of 4 got {share:.3}");
        assert_eq!(Selector::build(&[], Algorithm::Random).unwrap().pick(0, 7), None);
    }
}
