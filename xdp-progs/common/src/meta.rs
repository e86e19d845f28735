//! What an XDP program tells the AF_XDP worker about a frame it redirects.

use crate::identity::Identity;

/// Metadata written just in front of the packet with `bpf_xdp_adjust_meta`, where the worker
/// finds it in the UMEM frame (host byte order). The kernel wants the area to be a multiple of
/// 4 bytes and at most 32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct XdpMeta {
    /// [`XdpMeta::MAGIC`] when the program wrote the area. Drivers without metadata support
    /// fail `bpf_xdp_adjust_meta`, and the worker would otherwise read stale headroom.
    pub magic: u32,
    /// The VNI of the tunnel the frame came in, with `DECAPSULATED`.
    pub vni: u32,
    /// The source's security identity, from the tunnel header or the ipcache.
    pub src_identity: Identity,
    /// `XdpMeta::DECAPSULATED`.
    pub flags: u32,
}
const _: () = assert!(size_of::<XdpMeta>() == 16 && align_of::<XdpMeta>() == 4);
const _: () = assert!(size_of::<XdpMeta>().is_multiple_of(4) && size_of::<XdpMeta>() <= 32);

impl XdpMeta {
    /// "skif", marking metadata this program wrote.
    pub const MAGIC: u32 = u32::from_be_bytes(*b"skif");
    /// The outer headers have been removed and `vni` is meaningful (VNI 0 is a valid VNI).
    pub const DECAPSULATED: u32 = 1 << 0;

    /// Metadata carrying `MAGIC`.
    pub const fn new(vni: u32, src_identity: Identity, flags: u32) -> Self {
        XdpMeta { magic: Self::MAGIC, vni, src_identity, flags }
    }

    /// Whether the program wrote this area.
    pub const fn is_valid(&self) -> bool {
        self.magic == Self::MAGIC
    }
}

pod!(XdpMeta);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_marks_written_metadata() {
        assert!(XdpMeta::new(7, Identity::WORLD, XdpMeta::DECAPSULATED).is_valid());
        assert!(!XdpMeta::default().is_valid());
    }
}
