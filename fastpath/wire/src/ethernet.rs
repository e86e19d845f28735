//! Ethernet II with up to two VLAN tags (802.1Q, and 802.1ad QinQ outside it).

use skiff_common::proto::ethertype;

use crate::{Error, Layer, Problem, Result, be16};

/// An EtherType.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EtherType(pub u16);

impl EtherType {
    pub const IPV4: EtherType = EtherType(ethertype::IPV4);
    pub const ARP: EtherType = EtherType(ethertype::ARP);
    pub const VLAN: EtherType = EtherType(ethertype::VLAN);
    pub const IPV6: EtherType = EtherType(ethertype::IPV6);
    pub const QINQ: EtherType = EtherType(ethertype::QINQ);

    /// Whether a VLAN tag (802.1Q or 802.1ad) follows instead of the payload.
    pub const fn is_vlan(self) -> bool {
        self.0 == Self::VLAN.0 || self.0 == Self::QINQ.0
    }
}

/// A MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
}

impl core::fmt::Display for Mac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const HEADER_LEN: usize = 14;
    /// A VLAN tag: TCI (PCP, DEI, VID) then the next EtherType.
    pub const TCI: Range<usize> = 0..2;
    pub const INNER_TYPE: Range<usize> = 2..4;
    pub const TAG_LEN: usize = 4;
}

/// The Ethernet II header length (without tags).
pub const HEADER_LEN: usize = field::HEADER_LEN;
/// The length of one VLAN tag.
pub const TAG_LEN: usize = field::TAG_LEN;
/// Tags followed: an 802.1ad outer tag and an 802.1Q inner one.
pub const MAX_TAGS: usize = 2;

/// A view of an Ethernet II frame (the 14-byte header; tags are part of the payload).
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer after checking it holds the header; no accessor can panic afterwards.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < field::HEADER_LEN {
            return Err(Error::new(Layer::Ethernet, Problem::Truncated));
        }
        Ok(Frame { buffer })
    }

    pub fn dst(&self) -> Mac {
        Mac(crate::array(&self.buffer.as_ref()[field::DST]))
    }
    pub fn src(&self) -> Mac {
        Mac(crate::array(&self.buffer.as_ref()[field::SRC]))
    }
    pub fn ethertype(&self) -> EtherType {
        EtherType(be16(&self.buffer.as_ref()[field::ETHERTYPE]))
    }
    /// Everything after the 14-byte header (VLAN tags included).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER_LEN..]
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst(&mut self, mac: Mac) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }
    pub fn set_src(&mut self, mac: Mac) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }
    pub fn set_ethertype(&mut self, t: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&t.0.to_be_bytes());
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::HEADER_LEN..]
    }
}

/// A view of one VLAN tag (4 bytes: TCI, then the EtherType it wraps).
#[derive(Debug, Clone)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < field::TAG_LEN {
            return Err(Error::new(Layer::Vlan, Problem::Truncated));
        }
        Ok(VlanTag { buffer })
    }
    /// The 12-bit VLAN identifier.
    pub fn vid(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::TCI]) & 0x0fff
    }
    /// Priority code point (3 bits).
    pub fn pcp(&self) -> u8 {
        self.buffer.as_ref()[0] >> 5
    }
    pub fn tci(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::TCI])
    }
    pub fn inner_type(&self) -> EtherType {
        EtherType(be16(&self.buffer.as_ref()[field::INNER_TYPE]))
    }
}

/// A parsed Ethernet header with its tags, outermost first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EthernetRepr {
    pub dst: Mac,
    pub src: Mac,
    /// TCIs of the VLAN tags, outermost first; an outer tag uses TPID 0x88a8 when there are
    /// two (QinQ), 0x8100 when there is one.
    pub vlans: Vlans,
    /// The EtherType of the payload after all tags.
    pub ethertype: EtherType,
}

impl Default for EtherType {
    fn default() -> Self {
        EtherType::IPV4
    }
}

/// Up to [`MAX_TAGS`] VLAN TCIs, outermost first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vlans {
    tags: [u16; MAX_TAGS],
    len: u8,
}

impl Vlans {
    pub const NONE: Vlans = Vlans { tags: [0; MAX_TAGS], len: 0 };

    /// Tags from a slice of TCIs (at most [`MAX_TAGS`]; more is an error).
    pub fn from_tcis(tcis: &[u16]) -> Result<Self> {
        let mut v = Vlans::NONE;
        for &tci in tcis {
            v.push(tci)?;
        }
        Ok(v)
    }
    fn push(&mut self, tci: u16) -> Result<()> {
        let slot = self
            .tags
            .get_mut(usize::from(self.len))
            .ok_or(Error::new(Layer::Vlan, Problem::TooManyHeaders))?;
        *slot = tci;
        self.len += 1;
        Ok(())
    }
    pub fn as_slice(&self) -> &[u16] {
        &self.tags[..usize::from(self.len)]
    }
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl EthernetRepr {
    /// Parses the header and its tags; returns the repr and the offset of the payload.
    pub fn parse(frame: &[u8]) -> Result<(EthernetRepr, usize)> {
        let eth = Frame::new_checked(frame)?;
        let mut repr =
            EthernetRepr { dst: eth.dst(), src: eth.src(), vlans: Vlans::NONE, ethertype: eth.ethertype() };
        let mut offset = HEADER_LEN;
        while repr.ethertype.is_vlan() {
            let tag = VlanTag::new_checked(frame.get(offset..).unwrap_or_default())?;
            repr.vlans.push(tag.tci())?;
            repr.ethertype = tag.inner_type();
            offset += TAG_LEN;
        }
        Ok((repr, offset))
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.vlans.len() * TAG_LEN
    }

    /// Writes the header and tags at the start of `buf` (which must hold `header_len()`).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::DST].copy_from_slice(&self.dst.0);
        buf[field::SRC].copy_from_slice(&self.src.0);
        let mut at = field::ETHERTYPE.start;
        let tags = self.vlans.as_slice();
        for (i, tci) in tags.iter().enumerate() {
            let tpid = if tags.len() > 1 && i == 0 { EtherType::QINQ } else { EtherType::VLAN };
            buf[at..at + 2].copy_from_slice(&tpid.0.to_be_bytes());
            buf[at + 2..at + 4].copy_from_slice(&tci.to_be_bytes());
            at += TAG_LEN;
        }
        buf[at..at + 2].copy_from_slice(&self.ethertype.0.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QINQ_IPV4: [u8; 26] = [
        0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, // dst, src
        0x88, 0xa8, 0x00, 0x64, // S-tag, VID 100
        0x81, 0x00, 0x20, 0x0a, // C-tag, PCP 1, VID 10
        0x08, 0x00, 0x45, 0, 0, 20, // IPv4 …
    ];

    #[test]
    fn parses_qinq() {
        let (repr, offset) = EthernetRepr::parse(&QINQ_IPV4).unwrap();
        assert_eq!(repr.vlans.as_slice(), &[0x0064, 0x200a]);
        assert_eq!(repr.ethertype, EtherType::IPV4);
        assert_eq!(offset, 22);
        assert_eq!(VlanTag::new_checked(&QINQ_IPV4[18..]).unwrap().pcp(), 1);
        let mut out = [0u8; 22];
        repr.emit(&mut out);
        assert_eq!(out, QINQ_IPV4[..22]);
    }

    #[test]
    fn truncated_tag_and_tag_limit() {
        assert_eq!(EthernetRepr::parse(&QINQ_IPV4[..17]), Err(Error::new(Layer::Vlan, Problem::Truncated)));
        assert_eq!(
            EthernetRepr::parse(&QINQ_IPV4[..13]),
            Err(Error::new(Layer::Ethernet, Problem::Truncated))
        );
        let mut three = [0u8; 30];
        three[..12].copy_from_slice(&QINQ_IPV4[..12]);
        for i in 0..3 {
            three[12 + 4 * i..14 + 4 * i].copy_from_slice(&[0x81, 0x00]);
        }
        assert_eq!(EthernetRepr::parse(&three), Err(Error::new(Layer::Vlan, Problem::TooManyHeaders)));
    }
}
