//! VXLAN (RFC 7348): an 8-byte header after UDP (port 4789, or Linux's 8472).

use skiff_common::tunnel::VXLAN_FLAG_VNI as FLAG_I;

use crate::{Error, Layer, Problem, Result, be32};

pub const HEADER_LEN: usize = 8;

/// A view of a VXLAN header and the Ethernet frame it carries.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks length and the I flag.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::new(Layer::Vxlan, Problem::Truncated));
        }
        if b[0] & FLAG_I == 0 {
            return Err(Error::new(Layer::Vxlan, Problem::BadFlags));
        }
        Ok(Packet { buffer })
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    /// The 24-bit VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        be32(&self.buffer.as_ref()[4..8]) >> 8
    }
    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// A parsed VXLAN header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: u32,
}

impl VxlanRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> VxlanRepr {
        VxlanRepr { vni: p.vni() }
    }
    pub fn emit(&self, buf: &mut [u8]) {
        buf[..4].copy_from_slice(&[FLAG_I, 0, 0, 0]);
        buf[4..8].copy_from_slice(&(self.vni << 8).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_and_i_flag() {
        let mut b = [0u8; 8];
        VxlanRepr { vni: 0x00ab_cdef }.emit(&mut b);
        assert_eq!(b, [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        assert_eq!(VxlanRepr::parse(&Packet::new_checked(&b[..]).unwrap()).vni, 0xabcdef);
        b[0] = 0;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::new(Layer::Vxlan, Problem::BadFlags));
        assert_eq!(Packet::new_checked(&b[..7]).unwrap_err(), Error::new(Layer::Vxlan, Problem::Truncated));
    }
}
