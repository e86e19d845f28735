//! The kernel's tick count (jiffies), the clock the flow table records last-seen times in
//! (the XDP program reads it with a load; any clock helper would be a call), told in
//! CLOCK_MONOTONIC, the workers' clock.

use std::sync::OnceLock;

use aya::EbpfLoader;
use skiff_common::programs;

use crate::XdpError;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/clock"));

/// Where jiffies stood at one CLOCK_MONOTONIC time, and a tick's length. Both clocks come
/// from the kernel's timekeeping, which advances jiffies by whole ticks of the monotonic
/// clock: one reading serves for good, to within a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jiffies {
    jiffies: u64,
    monotonic_ns: u64,
    tick_ns: u64,
}

impl Jiffies {
    /// The reading this process took first.
    pub fn get() -> Result<Jiffies, XdpError> {
        static READ: OnceLock<Jiffies> = OnceLock::new();
        if let Some(clock) = READ.get() {
            return Ok(*clock);
        }
        let clock = Jiffies::read()?;
        Ok(*READ.get_or_init(|| clock))
    }

    /// Reads jiffies (`skiff_xdp_clock`, run by `BPF_PROG_TEST_RUN`) and the tick's length
    /// (CLOCK_MONOTONIC_COARSE's resolution is one tick). The program relocates nothing, so
    /// the kernel's BTF is not parsed (a tenth of a second).
    fn read() -> Result<Jiffies, XdpError> {
        let mut ebpf = EbpfLoader::new().btf(None).load(OBJECT).map_err(Box::new)?;
        crate::load_xdp(&mut ebpf, programs::CLOCK)?;
        let before = monotonic_ns();
        let run = crate::run_xdp(&ebpf, programs::CLOCK, &[0; 64], 1)?;
        let after = monotonic_ns();
        let jiffies = run.output.first_chunk().map(|b| u64::from_ne_bytes(*b));
        let jiffies = jiffies.ok_or_else(|| XdpError::Invalid(format!("{}: no output", programs::CLOCK)))?;
        let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_getres writes one timespec we own.
        unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut res) };
        let tick_ns = u64::try_from(res.tv_nsec).unwrap_or(0).max(1);
        Ok(Jiffies { jiffies, monotonic_ns: before + (after - before) / 2, tick_ns })
    }

    /// The CLOCK_MONOTONIC time (ns) at which jiffies read `jiffies`.
    pub fn monotonic_ns(&self, jiffies: u64) -> u64 {
        let ticks = i128::from(jiffies) - i128::from(self.jiffies);
        let ns = i128::from(self.monotonic_ns) + ticks * i128::from(self.tick_ns);
        u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut t) };
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_ticks_either_side_of_the_reading() {
        let clock = Jiffies { jiffies: 1000, monotonic_ns: 5_000_000_000, tick_ns: 4_000_000 };
        assert_eq!(clock.monotonic_ns(1000), 5_000_000_000);
        assert_eq!(clock.monotonic_ns(1250), 6_000_000_000);
        assert_eq!(clock.monotonic_ns(750), 4_000_000_000);
        assert_eq!(clock.monotonic_ns(0), 1_000_000_000);
    }
}
