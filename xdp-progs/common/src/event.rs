//! Events the XDP programs send to userspace through [`EVENTS`](crate::maps::EVENTS).

use crate::drop_reason::DropReason;

/// Packet bytes a [`DropEvent`] keeps: the headers of a VXLAN-in-IPv4 TCP packet (104 bytes)
/// fit, outer and inner.
pub const CAPTURE_LEN: usize = 128;

/// A dropped frame, for `skiff observe` (host byte order; `headers` as on the wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct DropEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at the drop.
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub rx_queue: u32,
    /// The frame's length on the wire.
    pub len: u32,
    /// How many bytes of `headers` hold the frame: `len` up to `CAPTURE_LEN`.
    pub captured: u16,
    /// A [`DropReason`] code.
    pub reason: u8,
    pub _pad: [u8; 1],
    /// The frame's first bytes.
    pub headers: [u8; CAPTURE_LEN],
}
const _: () = assert!(size_of::<DropEvent>() == 152 && align_of::<DropEvent>() == 8);

// `Default` is derived only for arrays up to 32 elements.
impl Default for DropEvent {
    fn default() -> Self {
        DropEvent {
            timestamp_ns: 0,
            ifindex: 0,
            rx_queue: 0,
            len: 0,
            captured: 0,
            reason: 0,
            _pad: [0],
            headers: [0; CAPTURE_LEN],
        }
    }
}

impl DropEvent {
    /// The reason; `None` for a code this version does not know.
    pub const fn reason(&self) -> Option<DropReason> {
        DropReason::from_u8(self.reason)
    }

    /// The captured bytes of the frame.
    pub fn headers(&self) -> &[u8] {
        &self.headers[..CAPTURE_LEN.min(usize::from(self.captured))]
    }
}

pod!(DropEvent);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_stop_at_captured() {
        let mut event =
            DropEvent { captured: 3, reason: DropReason::DeniedCidr.code(), ..Default::default() };
        event.headers[..4].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(event.headers(), [1, 2, 3]);
        assert_eq!(event.reason(), Some(DropReason::DeniedCidr));
        event.captured = u16::MAX;
        assert_eq!(event.headers().len(), CAPTURE_LEN);
    }
}
