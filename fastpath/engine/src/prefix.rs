//! Values by address prefix, found by longest match: the ipcache, the prefilter and the
//! overlay's pod CIDRs use it.

use std::net::IpAddr;

use hashbrown::HashMap;
use ipnet::IpNet;

/// Values by longest prefix: one hash lookup per prefix length in use, longest first (a
/// handful: host entries and the rules' CIDRs).
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixMap<V> {
    v4: Vec<(u8, HashMap<u32, V>)>,
    v6: Vec<(u8, HashMap<u128, V>)>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap { v4: Vec::new(), v6: Vec::new() }
    }
}

impl<V: Copy> PrefixMap<V> {
    /// Maps `net` (its address truncated to the prefix) to `value`, replacing what it had.
    pub fn insert(&mut self, net: IpNet, value: V) {
        let len = net.prefix_len();
        match net.trunc() {
            IpNet::V4(n) => insert_at(&mut self.v4, len, u32::from(n.network()), value),
            IpNet::V6(n) => insert_at(&mut self.v6, len, u128::from(n.network()), value),
        }
    }

    /// The value of the longest prefix holding `addr`.
    #[inline]
    pub fn longest(&self, addr: IpAddr) -> Option<V> {
        match addr {
            IpAddr::V4(a) => {
                let mask = |a: u32, len: u8| if len == 0 { 0 } else { a & (u32::MAX << (32 - len)) };
                self.v4.iter().find_map(|(len, m)| m.get(&mask(u32::from(a), *len)).copied())
            }
            IpAddr::V6(a) => {
                let mask = |a: u128, len: u8| if len == 0 { 0 } else { a & (u128::MAX << (128 - len)) };
                self.v6.iter().find_map(|(len, m)| m.get(&mask(u128::from(a), *len)).copied())
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Every entry, by prefix.
    pub fn entries(&self) -> Vec<(IpNet, V)> {
        let v4 = self.v4.iter().flat_map(|(len, m)| {
            m.iter()
                .filter_map(|(&a, &v)| Some((IpNet::new(std::net::Ipv4Addr::from(a).into(), *len).ok()?, v)))
        });
        let v6 = self.v6.iter().flat_map(|(len, m)| {
            m.iter()
                .filter_map(|(&a, &v)| Some((IpNet::new(std::net::Ipv6Addr::from(a).into(), *len).ok()?, v)))
        });
        let mut all: Vec<(IpNet, V)> = v4.chain(v6).collect();
        all.sort_by_key(|(net, _)| *net);
        all
    }
}

fn insert_at<K: std::hash::Hash + Eq, V>(levels: &mut Vec<(u8, HashMap<K, V>)>, len: u8, key: K, value: V) {
    let i = match levels.iter().position(|(l, _)| *l <= len) {
        Some(i) if levels[i].0 == len => i,
        Some(i) => {
            levels.insert(i, (len, HashMap::new()));
            i
        }
        None => {
            levels.push((len, HashMap::new()));
            levels.len() - 1
        }
    };
    levels[i].1.insert(key, value);
}
