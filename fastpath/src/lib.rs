//! skiff-fastpath: the workers that run [`skiff_engine`] on frames: the [`io`] backends
//! (AF_XDP, AF_PACKET, memory), the [`worker`] that runs an engine over its ports, the
//! [`handoff`] of frames between workers, the [`nic`] flow table the workers write (flows
//! forwarded by the XDP program once established), and the [`datapath`] that runs the workers
//! on their cores and keeps the XDP program's maps in step.

pub mod datapath;
pub mod handoff;
pub mod io;
pub mod nic;
pub mod worker;
