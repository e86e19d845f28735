//! IPv4 (RFC 791): header with options, fragment flags and offset, header checksum.

use core::net::Ipv4Addr;

use crate::{Error, IpProtocol, Layer, Problem, Result, be16, checksum};

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// The length of a header without options.
pub const HEADER_LEN: usize = 20;
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;

/// A view of an IPv4 packet. After [`Packet::new_checked`], the header (with options) and the
/// `total length` bytes it declares are inside the buffer; trailing bytes (Ethernet padding)
/// are ignored by [`Packet::payload`].
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks; only accessors of fields inside it are safe to call.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after checking version, header length and total length.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        p.check_header()?;
        let len = p.buffer.as_ref().len();
        let total = usize::from(p.total_len());
        if total < p.header_len() {
            return Err(Error::new(Layer::Ipv4, Problem::BadLength));
        }
        if total > len {
            return Err(Error::new(Layer::Ipv4, Problem::Truncated));
        }
        Ok(p)
    }

    /// Like [`new_checked`](Self::new_checked) but allows the packet to be cut short after its
    /// header: the original datagram quoted inside an ICMP error. [`payload`](Self::payload)
    /// then returns what is there.
    pub fn new_quoted(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        p.check_header()?;
        if usize::from(p.total_len()) < p.header_len() {
            return Err(Error::new(Layer::Ipv4, Problem::BadLength));
        }
        Ok(p)
    }

    fn check_header(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::new(Layer::Ipv4, Problem::Truncated));
        }
        if self.version() != 4 {
            return Err(Error::new(Layer::Ipv4, Problem::BadVersion));
        }
        if self.header_len() < HEADER_LEN {
            return Err(Error::new(Layer::Ipv4, Problem::BadHeaderLength));
        }
        if self.header_len() > data.len() {
            return Err(Error::new(Layer::Ipv4, Problem::Truncated));
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }
    pub fn total_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }
    pub fn ident(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::IDENT])
    }
    pub fn dont_frag(&self) -> bool {
        be16(&self.buffer.as_ref()[field::FLG_OFF]) & FLAG_DF != 0
    }
    pub fn more_frags(&self) -> bool {
        be16(&self.buffer.as_ref()[field::FLG_OFF]) & FLAG_MF != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (be16(&self.buffer.as_ref()[field::FLG_OFF]) & 0x1fff) << 3
    }
    /// Whether this is a fragment (first, middle or last) rather than a whole datagram.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(crate::array(&self.buffer.as_ref()[field::SRC]))
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(crate::array(&self.buffer.as_ref()[field::DST]))
    }
    /// The options bytes (header beyond the first 20 bytes).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.buffer.as_ref()[..self.header_len()])) == 0xffff
    }
    /// The payload up to `total length` (or the end of a quoted, cut-short packet).
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.total_len()).min(data.len());
        &data[self.header_len()..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_be16(&mut self, at: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[at].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }
    pub fn set_src(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }
    pub fn set_dst(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }
    pub fn set_checksum(&mut self, c: u16) {
        self.set_be16(field::CHECKSUM, c);
    }
    pub fn set_total_len(&mut self, len: u16) {
        self.set_be16(field::LENGTH, len);
    }
    /// Recomputes the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::sum(&self.buffer.as_ref()[..self.header_len()]));
        self.set_checksum(c);
    }
    /// Decrements the TTL, updating the checksum incrementally; returns the new TTL.
    pub fn decrement_ttl(&mut self) -> u8 {
        let ttl = self.ttl();
        let new = ttl.saturating_sub(1);
        // TTL and protocol share a 16-bit word.
        let proto = self.buffer.as_ref()[field::PROTOCOL];
        let c = checksum::update16(
            self.checksum(),
            u16::from_be_bytes([ttl, proto]),
            u16::from_be_bytes([new, proto]),
        );
        self.set_ttl(new);
        self.set_checksum(c);
        new
    }
    /// Rewrites the destination address, updating the header checksum incrementally.
    /// Returns the old address (the L4 checksum must be updated by the caller, see
    /// [`checksum::update32`]).
    pub fn rewrite_dst(&mut self, new: Ipv4Addr) -> Ipv4Addr {
        let old = self.dst();
        let c = checksum::update32(self.checksum(), old.octets(), new.octets());
        self.set_dst(new);
        self.set_checksum(c);
        old
    }
    /// Rewrites the source address, as [`rewrite_dst`](Self::rewrite_dst).
    pub fn rewrite_src(&mut self, new: Ipv4Addr) -> Ipv4Addr {
        let old = self.src();
        let c = checksum::update32(self.checksum(), old.octets(), new.octets());
        self.set_src(new);
        self.set_checksum(c);
        old
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        let end = usize::from(self.total_len()).min(self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[hl..end]
    }
}

/// A parsed IPv4 header without options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: IpProtocol,
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp_ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In bytes; a multiple of 8.
    pub frag_offset: u16,
}

impl Ipv4Repr {
    /// Parses a checked packet; the header checksum must verify. Options are skipped.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Ipv4Repr> {
        if !p.verify_checksum() {
            return Err(Error::new(Layer::Ipv4, Problem::BadChecksum));
        }
        Ok(Ipv4Repr {
            src: p.src(),
            dst: p.dst(),
            protocol: p.protocol(),
            payload_len: p.payload().len(),
            ttl: p.ttl(),
            dscp_ecn: p.dscp_ecn(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
            more_frags: p.more_frags(),
            frag_offset: p.frag_offset(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with a valid checksum at the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        b[field::VER_IHL] = 0x45;
        b[field::DSCP_ECN] = self.dscp_ecn;
        // The total length of an emitted packet fits in 16 bits by construction.
        #[allow(clippy::cast_possible_truncation)]
        let total = (HEADER_LEN + self.payload_len) as u16;
        b[field::LENGTH].copy_from_slice(&total.to_be_bytes());
        b[field::IDENT].copy_from_slice(&self.ident.to_be_bytes());
        let flags = if self.dont_frag { FLAG_DF } else { 0 } | if self.more_frags { FLAG_MF } else { 0 };
        b[field::FLG_OFF].copy_from_slice(&(flags | (self.frag_offset >> 3)).to_be_bytes());
        b[field::TTL] = self.ttl;
        b[field::PROTOCOL] = self.protocol.0;
        b[field::SRC].copy_from_slice(&self.src.octets());
        b[field::DST].copy_from_slice(&self.dst.octets());
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(b));
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/ICMP echo request header (ping 198.18.0.1 from 198.18.0.2), 84 bytes total.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x54, 0x6b, 0x1d, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 198, 18, 0, 2, 198, 18, 0, 1,
    ];

    fn packet() -> [u8; 84] {
        let mut b = [0u8; 84];
        b[..20].copy_from_slice(&HEADER);
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.fill_checksum();
        b
    }

    #[test]
    fn parse_and_emit() {
        let b = packet();
        let p = Packet::new_checked(&b[..]).unwrap();
        let r = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(
            (r.src, r.dst, r.protocol, r.payload_len, r.ttl),
            (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1), IpProtocol::ICMP, 64, 64)
        );
        assert!(r.dont_frag && !p.is_fragment());
        let mut out = [0u8; 20];
        r.emit(&mut out);
        assert_eq!(out, b[..20]);
    }

    #[test]
    fn rejects_bad_headers() {
        let b = packet();
        let err = |bytes: &[u8]| Packet::new_checked(bytes).err().map(|e| e.problem);
        assert_eq!(err(&b[..19]), Some(Problem::Truncated));
        let mut ihl4 = b;
        ihl4[0] = 0x44;
        assert_eq!(err(&ihl4), Some(Problem::BadHeaderLength));
        let mut v6 = b;
        v6[0] = 0x65;
        assert_eq!(err(&v6), Some(Problem::BadVersion));
        assert_eq!(err(&b[..83]), Some(Problem::Truncated), "total length beyond the frame");
        let mut short = b;
        short[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(err(&short), Some(Problem::BadLength));
        let mut bad = b;
        bad[8] = 1;
        assert_eq!(
            Ipv4Repr::parse(&Packet::new_checked(&bad[..]).unwrap()).unwrap_err().problem,
            Problem::BadChecksum
        );
    }

    #[test]
    fn ttl_and_nat_rewrites_keep_the_checksum_valid() {
        let mut b = packet();
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.decrement_ttl(), 63);
        p.rewrite_dst(Ipv4Addr::new(198, 18, 128, 10));
        p.rewrite_src(Ipv4Addr::new(198, 19, 0, 1));
        assert!(p.verify_checksum());
    }

    #[test]
    fn fragment_fields() {
        let mut b = packet();
        b[6..8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
    }
}
