//! UDP (RFC 768).

use crate::{Error, Layer, Problem, Result, be16, checksum, checksum::IpPair};

pub const HEADER_LEN: usize = 8;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// A view of a UDP datagram. After [`Packet::new_checked`] the header and the `length` it
/// declares are inside the buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet::new_header_checked(buffer)?;
        let len = usize::from(p.length());
        if len < HEADER_LEN {
            return Err(Error::new(Layer::Udp, Problem::BadLength));
        }
        if len > p.buffer.as_ref().len() {
            return Err(Error::new(Layer::Udp, Problem::Truncated));
        }
        Ok(p)
    }

    /// Checks only that the 8-byte header is present (ports of a datagram quoted in an ICMP
    /// error, or a fragment's first bytes).
    pub fn new_header_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::new(Layer::Udp, Problem::Truncated));
        }
        Ok(Packet { buffer })
    }

    pub fn src_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SRC_PORT])
    }
    pub fn dst_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::DST_PORT])
    }
    /// The length field: header plus payload.
    pub fn length(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }
    /// The payload up to `length` (what there is, if only the header was checked).
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.length()).clamp(HEADER_LEN, data.len());
        &data[HEADER_LEN..end]
    }
    fn datagram(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[..usize::from(self.length()).clamp(HEADER_LEN, data.len())]
    }
    /// Whether the checksum verifies. Zero means "not computed", valid over IPv4 only
    /// (RFC 8200 §8.1).
    pub fn verify_checksum(&self, ips: IpPair) -> bool {
        if self.checksum() == 0 {
            return matches!(ips, IpPair::V4(..));
        }
        let d = self.datagram();
        checksum::fold(ips.pseudo(crate::IpProtocol::UDP.0, d.len()) + checksum::sum(d)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, p: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&p.to_be_bytes());
    }
    pub fn set_dst_port(&mut self, p: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&p.to_be_bytes());
    }
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
    pub fn fill_checksum(&mut self, ips: IpPair) {
        self.set_checksum(0);
        let d = self.datagram();
        let c = checksum::finish(ips.pseudo(crate::IpProtocol::UDP.0, d.len()) + checksum::sum(d));
        // A computed zero is sent as all ones; zero means "no checksum".
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
    /// Updates the checksum for a rewritten 16-bit field (a port), keeping "no checksum" as is.
    pub fn update_checksum16(&mut self, old: u16, new: u16) {
        self.update_with(|c| checksum::update16(c, old, new));
    }
    /// Updates the checksum for a rewritten pseudo-header address (IPv4 or IPv6 bytes).
    pub fn update_checksum_addr(&mut self, old: &[u8], new: &[u8]) {
        self.update_with(|c| checksum::update_bytes(c, old, new));
    }
    fn update_with(&mut self, f: impl FnOnce(u16) -> u16) {
        let c = self.checksum();
        if c != 0 {
            let n = f(c);
            self.set_checksum(if n == 0 { 0xffff } else { n });
        }
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.length()).clamp(HEADER_LEN, self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// A parsed UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl<'a> UdpRepr<'a> {
    /// Parses a checked datagram whose checksum must verify against `ips`.
    pub fn parse(p: &Packet<&'a [u8]>, ips: IpPair) -> Result<UdpRepr<'a>> {
        if !p.verify_checksum(ips) {
            return Err(Error::new(Layer::Udp, Problem::BadChecksum));
        }
        let bytes: &'a [u8] = p.buffer;
        let end = usize::from(p.length()).clamp(HEADER_LEN, bytes.len());
        Ok(UdpRepr { src_port: p.src_port(), dst_port: p.dst_port(), payload: &bytes[HEADER_LEN..end] })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
    /// Writes header, payload and checksum into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8], ips: IpPair) {
        let b = &mut buf[..self.buffer_len()];
        b[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        b[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        // Emitted datagrams fit the 16-bit length by construction.
        #[allow(clippy::cast_possible_truncation)]
        b[field::LENGTH].copy_from_slice(&(self.buffer_len() as u16).to_be_bytes());
        b[HEADER_LEN..].copy_from_slice(self.payload);
        Packet { buffer: b }.fill_checksum(ips);
    }
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;

    const IPS: IpPair = IpPair::V4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));

    #[test]
    fn emit_parse_and_rewrite() {
        let mut b = [0u8; 13];
        UdpRepr { src_port: 40000, dst_port: 53, payload: b"hello" }.emit(&mut b, IPS);
        let p = Packet::new_checked(&b[..]).unwrap();
        let r = UdpRepr::parse(&p, IPS).unwrap();
        assert_eq!((r.src_port, r.dst_port, r.payload), (40000, 53, &b"hello"[..]));

        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_dst_port(5353);
        p.update_checksum16(53, 5353);
        let new_dst = [198, 18, 128, 10];
        p.update_checksum_addr(&[198, 18, 0, 1], &new_dst);
        assert!(p.verify_checksum(IpPair::V4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::from(new_dst))));
    }

    #[test]
    fn length_errors() {
        let mut b = [0u8; 13];
        UdpRepr { src_port: 1, dst_port: 2, payload: b"hello" }.emit(&mut b, IPS);
        assert_eq!(Packet::new_checked(&b[..12]).unwrap_err(), Error::new(Layer::Udp, Problem::Truncated));
        b[5] = 7;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::new(Layer::Udp, Problem::BadLength));
        assert_eq!(Packet::new_checked(&b[..7]).unwrap_err(), Error::new(Layer::Udp, Problem::Truncated));
    }
}
