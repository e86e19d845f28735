//! skiff-testkit: what tests and benches build packets and fixtures with.
//!
//! - [`builder`]: `eth().ipv4(a, b).tcp(1234, 80).syn().payload(b"..").build()`, with VLAN
//!   tags, IPv6 extension headers, ICMP, and `.vxlan(vni)` / `.geneve(vni, options)` to start an
//!   encapsulated frame inside the current one.
//! - [`pcap`]: read and write classic pcap files (fixtures captured in the lab with tcpdump).
//! - [`fixture`]: the `{description, input, expected action, expected output}` table that the
//!   engine, the XDP tests and the benches share.
//! - [`fuzz_seeds`]: the seed corpus of skiff-wire's fuzz targets.

pub mod builder;
pub mod fixture;
pub mod fuzz_seeds;
pub mod ingress;
pub mod pcap;

pub use builder::{Builder, eth};
pub use fixture::{Expect, Fixture};
