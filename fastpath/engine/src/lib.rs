//! skiff-engine: what a worker does with a frame, with no I/O and no allocation per packet.
//! One module per concern, as Cilium's `bpf/lib/`: [`tables`] (what the control plane
//! publishes), [`flow`] (the tuple a flow is keyed by), [`lb`] (service load balancing),
//! [`conntrack`], [`nat`], [`offload`] (what the XDP program's flow table holds), [`policy`] (identities and verdicts), [`prefix`] (longest-prefix maps), [`tunnel`] (the overlay), [`reply`] (answers to refused flows), tied together by [`engine`], which tells observers
//! what it decided ([`event`]).
//! It builds and is benchmarked without the eBPF toolchain; `skiff-fastpath` runs it.

pub mod conntrack;
pub mod engine;
pub mod event;
pub mod flow;
pub mod hash;
pub mod lb;
pub mod nat;
pub mod offload;
pub mod policy;
pub mod prefix;
pub mod reply;
pub mod tables;
pub mod tunnel;
