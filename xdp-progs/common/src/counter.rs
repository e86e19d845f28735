//! Per-CPU packet counters: one slot per program, per XDP action, per drop reason.

/// Packets and bytes (host byte order): the value of a per-CPU counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16 && align_of::<Counter>() == 8);

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

code_enum! {
    /// What an XDP program did with a frame: the index into
    /// [`VERDICT_COUNTS`](crate::maps::VERDICT_COUNTS). Codes are the kernel's `xdp_action`
    /// values, so the single exit counts the action it returns without translating it.
    pub enum XdpAction: u32, fn from_u32 {
        Aborted = 0, "aborted", "The program failed; the kernel dropped the frame.";
        Drop = 1, "drop", "Dropped on purpose; the reason is counted in DROP_COUNTS.";
        Pass = 2, "pass", "Handed to the kernel network stack.";
        Tx = 3, "tx", "Sent back out of the interface it arrived on.";
        Redirect = 4, "redirect", "Redirected to an AF_XDP socket or another interface.";
    }
}

pod!(Counter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_wraps() {
        let a = Counter { packets: u64::MAX, bytes: 10 };
        assert_eq!(a.plus(Counter { packets: 2, bytes: 5 }), Counter { packets: 1, bytes: 15 });
    }

    #[test]
    fn codes_are_xdp_actions() {
        XdpAction::assert_well_formed();
        // include/uapi/linux/bpf.h: enum xdp_action.
        let actions = [
            (XdpAction::Aborted, 0),
            (XdpAction::Drop, 1),
            (XdpAction::Pass, 2),
            (XdpAction::Tx, 3),
            (XdpAction::Redirect, 4),
        ];
        for (xdp_action, code) in actions {
            assert_eq!(xdp_action.code(), code);
        }
        assert_eq!(XdpAction::COUNT, 5);
    }
}
