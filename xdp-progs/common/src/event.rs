//! Events the XDP programs send to userspace through [`EVENTS`](crate::maps::EVENTS).

use crate::drop_reason::DropReason;

/// Packet bytes an [`XdpEvent`] keeps: the headers of a VXLAN-in-IPv4 TCP packet (104 bytes)
/// fit, outer and inner.
pub const CAPTURE_LEN: usize = 128;

/// What the XDP program did with a frame, sampled for `skiff observe`: one drop in
/// `drop_sample_every` (per CPU and reason), one other decision in `trace_sample_every` (per
/// CPU and action). Host byte order; `headers` as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct XdpEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at the decision.
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub rx_queue: u32,
    /// The frame's length on the wire.
    pub len: u32,
    /// How many bytes of `headers` hold the frame: `len` up to `CAPTURE_LEN`.
    pub captured: u16,
    /// A [`DropReason`] code, for a drop.
    pub reason: u8,
    /// A [`Decision`] code.
    pub decision: u8,
    /// The frame's first bytes.
    pub headers: [u8; CAPTURE_LEN],
}
const _: () = assert!(size_of::<XdpEvent>() == 152 && align_of::<XdpEvent>() == 8);

// `Default` is derived only for arrays up to 32 elements.
impl Default for XdpEvent {
    fn default() -> Self {
        XdpEvent {
            timestamp_ns: 0,
            ifindex: 0,
            rx_queue: 0,
            len: 0,
            captured: 0,
            reason: 0,
            decision: 0,
            headers: [0; CAPTURE_LEN],
        }
    }
}

impl XdpEvent {
    pub const fn decision(&self) -> Option<Decision> {
        Decision::from_u8(self.decision)
    }

    /// The reason of a drop; `None` for a code this version does not know.
    pub const fn reason(&self) -> Option<DropReason> {
        DropReason::from_u8(self.reason)
    }

    /// The captured bytes of the frame.
    pub fn headers(&self) -> &[u8] {
        &self.headers[..CAPTURE_LEN.min(usize::from(self.captured))]
    }
}

pod!(XdpEvent);

/// What the XDP program did with a frame.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Dropped, for the event's `reason`.
    Dropped = 1,
    /// Passed to the kernel's stack.
    Passed = 2,
    /// Redirected to a worker's AF_XDP socket.
    ToWorker = 3,
    /// Forwarded out of another interface by the flow table at the NIC.
    Forwarded = 4,
}

impl Decision {
    pub const fn from_u8(code: u8) -> Option<Decision> {
        Some(match code {
            1 => Decision::Dropped,
            2 => Decision::Passed,
            3 => Decision::ToWorker,
            4 => Decision::Forwarded,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_stop_at_captured() {
        let mut event = XdpEvent { captured: 3, reason: DropReason::DeniedCidr.code(), ..Default::default() };
        event.headers[..4].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(event.headers(), [1, 2, 3]);
        assert_eq!(event.reason(), Some(DropReason::DeniedCidr));
        event.captured = u16::MAX;
        assert_eq!(event.headers().len(), CAPTURE_LEN);
    }
}
