//! skiff-fastpath: the packet engine of the workers, one module per concern (as Cilium's
//! `bpf/lib/`): [`lb`] (service load balancing), [`conntrack`], [`nat`], [`reply`] (answers to
//! refused flows), tied together by [`engine`]; the [`io`] backends (AF_XDP, AF_PACKET, memory),
//! the [`worker`] that runs an engine over its ports, and the [`datapath`] that runs the
//! workers on their cores.

pub mod conntrack;
pub mod datapath;
pub mod engine;
pub mod handoff;
pub mod hash;
pub mod io;
pub mod lb;
pub mod nat;
pub mod reply;
pub mod worker;
