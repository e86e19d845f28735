//! skiff-fastpath: the packet engine of the AF_XDP workers, one module per concern (as
//! Cilium's `bpf/lib/`): [`lb`] (service load balancing, Maglev), then conntrack, NAT and the
//! I/O backends as they land.

pub mod conntrack;
pub mod engine;
pub mod hash;
pub mod io;
pub mod lb;
pub mod nat;
pub mod reply;
pub mod worker;
