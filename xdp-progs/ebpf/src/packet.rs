//! Bounds-checked access to the frame, in the form the verifier accepts: every read is
//! preceded by a comparison of `data + offset + size` against `data_end`.

use aya_ebpf::programs::XdpContext;

/// Copies `N` bytes at `offset` out of the frame, or `None` past its end.
#[inline(always)]
pub fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return None;
    }
    // SAFETY: the range [start + offset, start + offset + N) lies inside the frame (checked
    // above); `[u8; N]` has no alignment requirement.
    Some(unsafe { *((start + offset) as *const [u8; N]) })
}

/// The frame's length.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// The `N` bytes at `offset`, to rewrite in place, or `None` past the frame's end.
#[inline(always)]
pub fn bytes_mut<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<&mut [u8; N]> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return None;
    }
    // SAFETY: the range lies inside the frame (checked above), which this program run owns;
    // `[u8; N]` has no alignment requirement.
    Some(unsafe { &mut *((start + offset) as *mut [u8; N]) })
}
