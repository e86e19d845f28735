//! Types shared by the XDP programs (kernel side) and userspace.
//!
//! Every map key and value is `#[repr(C)]`, has no implicit padding and carries a size
//! assertion, so the kernel and userspace views cannot drift apart. Userspace gets `aya::Pod`
//! through the `user` feature.
#![no_std]

/// Packets and bytes seen by a program: the value of a per-CPU counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

impl Counter {
    /// Adds another slot's figures (summing a per-CPU value over CPUs).
    #[must_use]
    pub const fn plus(self, other: Counter) -> Counter {
        Counter {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: `Counter` is `repr(C)`, `Copy`, and has no padding (asserted above): any bit
// pattern is a valid value.
unsafe impl aya::Pod for Counter {}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// Counts every frame per CPU and passes it on.
    pub const COUNT: &str = "skiff_xdp_count";
}

/// Names of the maps in the eBPF object (the `static` names in `skiff-xdp-ebpf`).
pub mod maps {
    /// `PerCpuArray<Counter>` with one slot: what `skiff_xdp_count` saw.
    pub const COUNT: &str = "COUNT";
}
