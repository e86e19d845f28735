//! IPv6 (RFC 8200): the fixed header and a bounded walk over extension headers.

use core::net::Ipv6Addr;

use crate::{Error, IpProtocol, Layer, Problem, Result, be16, be32};

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

pub const HEADER_LEN: usize = 40;
/// Extension headers followed before giving up (Cilium follows 4; real traffic rarely has
/// more than 2, and a bound keeps the XDP verifier and the worker loop finite). The XDP
/// program follows as many.
pub use skiff_common::proto::MAX_EXT_HEADERS;

/// A view of an IPv6 packet. After [`Packet::new_checked`] the fixed header and the
/// `payload length` bytes it declares are inside the buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet::new_quoted(buffer)?;
        if HEADER_LEN + usize::from(p.payload_len()) > p.buffer.as_ref().len() {
            return Err(Error::new(Layer::Ipv6, Problem::Truncated));
        }
        Ok(p)
    }

    /// Allows the payload to be cut short: the packet quoted inside an ICMPv6 error.
    pub fn new_quoted(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::new(Layer::Ipv6, Problem::Truncated));
        }
        if p.version() != 6 {
            return Err(Error::new(Layer::Ipv6, Problem::BadVersion));
        }
        Ok(p)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }
    pub fn traffic_class(&self) -> u8 {
        // Bits 4..12 of the first word.
        ((be32(&self.buffer.as_ref()[field::VER_TC_FLOW]) >> 20) & 0xff) as u8
    }
    pub fn flow_label(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::VER_TC_FLOW]) & 0x000f_ffff
    }
    pub fn payload_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::NXT_HDR])
    }
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }
    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(crate::array::<16>(&self.buffer.as_ref()[field::SRC]))
    }
    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(crate::array::<16>(&self.buffer.as_ref()[field::DST]))
    }
    /// Everything after the fixed header up to `payload length` (or what a quote holds).
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(data.len());
        &data[HEADER_LEN..end]
    }
    /// Walks the extension headers to the upper-layer protocol.
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        walk_extension_headers(self.next_header(), self.payload())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }
    pub fn set_src(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }
    pub fn set_dst(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// Where the walk over extension headers ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (TCP, UDP, ICMPv6, …, or NO_NEXT_HEADER).
    pub protocol: IpProtocol,
    /// Its offset from the start of the IPv6 payload.
    pub offset: usize,
    /// Present when a fragment header was crossed.
    pub fragment: Option<FragmentInfo>,
    /// Extension headers crossed.
    pub ext_headers: u8,
}

/// What a fragment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentInfo {
    /// In bytes.
    pub offset: u16,
    pub more: bool,
    pub ident: u32,
}

impl FragmentInfo {
    /// Only the first fragment (offset 0) carries the upper-layer header.
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// Follows hop-by-hop, routing, fragment and destination-options headers (at most
/// [`MAX_EXT_HEADERS`]) from `next` over `payload`. Hop-by-hop is accepted only first.
pub fn walk_extension_headers(mut next: IpProtocol, payload: &[u8]) -> Result<UpperLayer> {
    let mut offset = 0;
    let mut fragment = None;
    for crossed in 0..=MAX_EXT_HEADERS {
        if !next.is_ipv6_extension() {
            // Truncation is impossible: `crossed` is at most MAX_EXT_HEADERS.
            #[allow(clippy::cast_possible_truncation)]
            return Ok(UpperLayer { protocol: next, offset, fragment, ext_headers: crossed as u8 });
        }
        if crossed == MAX_EXT_HEADERS {
            break;
        }
        if next == IpProtocol::HOP_BY_HOP && crossed != 0 {
            return Err(Error::new(Layer::Ipv6Ext, Problem::Misplaced));
        }
        let header = ExtHeader::new_checked(payload.get(offset..).unwrap_or_default())?;
        let len = if next == IpProtocol::FRAGMENT {
            fragment = Some(header.fragment_info());
            FRAGMENT_HEADER_LEN
        } else {
            header.declared_len()
        };
        if offset + len > payload.len() {
            return Err(Error::new(Layer::Ipv6Ext, Problem::Truncated));
        }
        next = header.next_header();
        offset += len;
    }
    Err(Error::new(Layer::Ipv6Ext, Problem::TooManyHeaders))
}

/// The fragment header's fixed size; its second byte is reserved, not a length.
pub const FRAGMENT_HEADER_LEN: usize = 8;

/// A view of the first 8 bytes of an extension header: next header, then either a length
/// (in 8-octet units beyond the first 8) or, in a fragment header, offset, M flag and ident.
#[derive(Debug, Clone)]
pub struct ExtHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ExtHeader<T> {
    /// Checks that the 8 bytes every extension header has are present.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < 8 {
            return Err(Error::new(Layer::Ipv6Ext, Problem::Truncated));
        }
        Ok(ExtHeader { buffer })
    }
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[0])
    }
    /// The length the header declares, in bytes (not meaningful for a fragment header).
    pub fn declared_len(&self) -> usize {
        (usize::from(self.buffer.as_ref()[1]) + 1) * 8
    }
    /// Reads the header as a fragment header (RFC 8200 §4.5).
    pub fn fragment_info(&self) -> FragmentInfo {
        let b = self.buffer.as_ref();
        let off_m = be16(&b[2..4]);
        FragmentInfo { offset: off_m & 0xfff8, more: off_m & 1 != 0, ident: be32(&b[4..8]) }
    }
}

/// A parsed fixed IPv6 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The protocol in the fixed header (possibly an extension header).
    pub next_header: IpProtocol,
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Ipv6Repr> {
        Ok(Ipv6Repr {
            src: p.src(),
            dst: p.dst(),
            next_header: p.next_header(),
            payload_len: usize::from(p.payload_len()),
            hop_limit: p.hop_limit(),
            traffic_class: p.traffic_class(),
            flow_label: p.flow_label(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        let word = (6u32 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000f_ffff);
        b[field::VER_TC_FLOW].copy_from_slice(&word.to_be_bytes());
        // Emitted payloads fit the 16-bit field by construction.
        #[allow(clippy::cast_possible_truncation)]
        b[field::LENGTH].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
        b[field::NXT_HDR] = self.next_header.0;
        b[field::HOP_LIMIT] = self.hop_limit;
        b[field::SRC].copy_from_slice(&self.src.octets());
        b[field::DST].copy_from_slice(&self.dst.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hop-by-hop (8 bytes, router alert), destination options (16 bytes), then UDP.
    fn with_extensions() -> [u8; 72] {
        let mut b = [0u8; 72];
        Ipv6Repr {
            src: "fd00::2".parse().unwrap(),
            dst: "fd00::1".parse().unwrap(),
            next_header: IpProtocol::HOP_BY_HOP,
            payload_len: 32,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0x12345,
        }
        .emit(&mut b);
        b[40..48].copy_from_slice(&[60, 0, 5, 2, 0, 0, 1, 0]);
        b[48..64].copy_from_slice(&[17, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        b[64..72].copy_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 8, 0, 0]);
        b
    }

    #[test]
    fn walks_extension_headers() {
        let b = with_extensions();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.flow_label(), 0x12345);
        let up = p.upper_layer().unwrap();
        assert_eq!(up, UpperLayer { protocol: IpProtocol::UDP, offset: 24, fragment: None, ext_headers: 2 });
    }

    #[test]
    fn fragment_header() {
        let mut b = with_extensions();
        b[6] = IpProtocol::FRAGMENT.0;
        b[40..48].copy_from_slice(&[17, 0, 0x05, 0xc9, 0, 0, 0x12, 0x34]);
        let up = Packet::new_checked(&b[..]).unwrap().upper_layer().unwrap();
        assert_eq!(up.protocol, IpProtocol::UDP);
        assert_eq!(up.offset, 8);
        assert_eq!(up.fragment, Some(FragmentInfo { offset: 1480, more: true, ident: 0x1234 }));
    }

    #[test]
    fn rejects_loops_misplaced_and_truncated_headers() {
        // Eight destination-options headers pointing at one another.
        let mut b = [0u8; 40 + 8 * 9];
        let n = b.len() - 40;
        Ipv6Repr {
            src: Ipv6Addr::LOCALHOST,
            dst: Ipv6Addr::LOCALHOST,
            next_header: IpProtocol(60),
            payload_len: n,
            hop_limit: 1,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(&mut b);
        for i in 0..9 {
            b[40 + 8 * i] = 60;
        }
        let err = Packet::new_checked(&b[..]).unwrap().upper_layer().unwrap_err();
        assert_eq!(err, Error::new(Layer::Ipv6Ext, Problem::TooManyHeaders));

        let mut hbh_late = with_extensions();
        hbh_late[48] = 0;
        assert_eq!(
            Packet::new_checked(&hbh_late[..]).unwrap().upper_layer().unwrap_err().problem,
            Problem::Misplaced
        );

        let mut long = with_extensions();
        long[49] = 200;
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap().upper_layer().unwrap_err(),
            Error::new(Layer::Ipv6Ext, Problem::Truncated)
        );
        assert_eq!(
            Packet::new_checked(&long[..71]).unwrap_err(),
            Error::new(Layer::Ipv6, Problem::Truncated)
        );
    }
}
