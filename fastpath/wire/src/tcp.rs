//! TCP (RFC 9293): header fields, flags, data offset and a safe walk over options.

use crate::{Error, IpProtocol, Layer, Problem, Result, be16, be32, checksum, checksum::IpPair};

pub const HEADER_LEN: usize = 20;
pub const MAX_OPTIONS_LEN: usize = 40;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// The eight flag bits of byte 13.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);
    pub const ECE: TcpFlags = TcpFlags(0x40);
    pub const CWR: TcpFlags = TcpFlags(0x80);

    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        self.union(rhs)
    }
}

/// A view of a TCP segment. After [`Packet::new_checked`] the header and its options are
/// inside the buffer; the payload is the rest of the buffer (the IP layer bounds it).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::new(Layer::Tcp, Problem::Truncated));
        }
        if p.header_len() < HEADER_LEN {
            return Err(Error::new(Layer::Tcp, Problem::BadHeaderLength));
        }
        if p.header_len() > len {
            return Err(Error::new(Layer::Tcp, Problem::Truncated));
        }
        Ok(p)
    }

    pub fn src_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SRC_PORT])
    }
    pub fn dst_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::DST_PORT])
    }
    pub fn seq(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::SEQ])
    }
    pub fn ack(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::ACK])
    }
    /// Data offset in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }
    pub fn window(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::WINDOW])
    }
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }
    pub fn urgent(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::URGENT])
    }
    /// The options area (between the 20-byte header and the data offset).
    pub fn options_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// The options, decoded one at a time; a malformed option ends the walk with an error.
    pub fn options(&self) -> TcpOptions<'_> {
        TcpOptions { rest: self.options_bytes() }
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
    pub fn verify_checksum(&self, ips: IpPair) -> bool {
        let seg = self.buffer.as_ref();
        checksum::fold(ips.pseudo(IpProtocol::TCP.0, seg.len()) + checksum::sum(seg)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, p: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&p.to_be_bytes());
    }
    pub fn set_dst_port(&mut self, p: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&p.to_be_bytes());
    }
    pub fn set_flags(&mut self, f: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS] = f.0;
    }
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
    pub fn fill_checksum(&mut self, ips: IpPair) {
        self.set_checksum(0);
        let seg = self.buffer.as_ref();
        let c = checksum::finish(ips.pseudo(IpProtocol::TCP.0, seg.len()) + checksum::sum(seg));
        self.set_checksum(c);
    }
    /// Updates the checksum for a rewritten 16-bit field (a port).
    pub fn update_checksum16(&mut self, old: u16, new: u16) {
        self.set_checksum(checksum::update16(self.checksum(), old, new));
    }
    /// Updates the checksum for a rewritten pseudo-header address (IPv4 or IPv6 bytes).
    pub fn update_checksum_addr(&mut self, old: &[u8], new: &[u8]) {
        self.set_checksum(checksum::update_bytes(self.checksum(), old, new));
    }
}

/// One TCP option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpOption<'a> {
    Nop,
    Mss(u16),
    WindowScale(u8),
    SackPermitted,
    /// The SACK blocks, 8 bytes each.
    Sack(&'a [u8]),
    Timestamps {
        value: u32,
        echo: u32,
    },
    Unknown {
        kind: u8,
        data: &'a [u8],
    },
}

/// Iterator over [`TcpOption`]s; stops at end-of-list, yields one error on a malformed option.
#[derive(Clone, Debug)]
pub struct TcpOptions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TcpOptions<'a> {
    type Item = Result<TcpOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, after) = self.rest.split_first()?;
        match kind {
            0 => {
                self.rest = &[];
                return None;
            }
            1 => {
                self.rest = after;
                return Some(Ok(TcpOption::Nop));
            }
            _ => {}
        }
        let len = after.first().map_or(0, |&l| usize::from(l));
        let Some(data) = self.rest.get(2..len.max(2)).filter(|_| len >= 2) else {
            self.rest = &[];
            return Some(Err(Error::new(Layer::Tcp, Problem::BadOption)));
        };
        self.rest = &self.rest[len..];
        let bad = || Err(Error::new(Layer::Tcp, Problem::BadOption));
        Some(match (kind, data.len()) {
            (2, 2) => Ok(TcpOption::Mss(be16(data))),
            (3, 1) => Ok(TcpOption::WindowScale(data[0])),
            (4, 0) => Ok(TcpOption::SackPermitted),
            (5, n) if n % 8 == 0 && n > 0 => Ok(TcpOption::Sack(data)),
            (8, 8) => Ok(TcpOption::Timestamps { value: be32(&data[..4]), echo: be32(&data[4..]) }),
            (2..=5 | 8, _) => bad(),
            _ => Ok(TcpOption::Unknown { kind, data }),
        })
    }
}

/// A parsed TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    pub urgent: u16,
    /// Raw options, a multiple of 4 bytes, at most 40.
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses a checked segment whose checksum must verify and whose options must be well formed.
    pub fn parse(p: &Packet<&'a [u8]>, ips: IpPair) -> Result<TcpRepr<'a>> {
        if !p.verify_checksum(ips) {
            return Err(Error::new(Layer::Tcp, Problem::BadChecksum));
        }
        if let Some(Err(e)) = p.options().find(Result::is_err) {
            return Err(e);
        }
        let bytes: &'a [u8] = p.buffer;
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq(),
            ack: p.ack(),
            flags: p.flags(),
            window: p.window(),
            urgent: p.urgent(),
            options: &bytes[HEADER_LEN..p.header_len()],
            payload: &bytes[p.header_len()..],
        })
    }

    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }
    /// Bytes [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes the segment with its checksum into `buf[..self.buffer_len()]`. The options must
    /// be a multiple of 4 bytes and at most 40 (debug-asserted).
    pub fn emit(&self, buf: &mut [u8], ips: IpPair) {
        debug_assert!(self.options.len().is_multiple_of(4) && self.options.len() <= MAX_OPTIONS_LEN);
        let b = &mut buf[..self.buffer_len()];
        b[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        b[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        b[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        b[field::ACK].copy_from_slice(&self.ack.to_be_bytes());
        // At most 60 bytes of header: the data offset fits its 4 bits.
        #[allow(clippy::cast_possible_truncation)]
        let words = (self.header_len() / 4) as u8;
        b[field::DATA_OFF] = words << 4;
        b[field::FLAGS] = self.flags.0;
        b[field::WINDOW].copy_from_slice(&self.window.to_be_bytes());
        b[field::URGENT].copy_from_slice(&self.urgent.to_be_bytes());
        b[HEADER_LEN..self.header_len()].copy_from_slice(self.options);
        b[self.header_len()..].copy_from_slice(self.payload);
        Packet { buffer: b }.fill_checksum(ips);
    }
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;

    const IPS: IpPair = IpPair::V4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 128, 10));
    /// The options of a Linux SYN: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
    const SYN_OPTIONS: [u8; 20] = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];

    fn syn() -> [u8; 40] {
        let mut b = [0u8; 40];
        TcpRepr {
            src_port: 45000,
            dst_port: 80,
            seq: 7,
            ack: 0,
            flags: TcpFlags::SYN,
            window: 64240,
            urgent: 0,
            options: &SYN_OPTIONS,
            payload: &[],
        }
        .emit(&mut b, IPS);
        b
    }

    #[test]
    fn syn_round_trip_and_options() {
        let b = syn();
        let p = Packet::new_checked(&b[..]).unwrap();
        let r = TcpRepr::parse(&p, IPS).unwrap();
        assert!(r.flags.contains(TcpFlags::SYN) && !r.flags.contains(TcpFlags::ACK));
        let mut opts = p.options();
        assert_eq!(opts.next(), Some(Ok(TcpOption::Mss(1460))));
        assert_eq!(opts.next(), Some(Ok(TcpOption::SackPermitted)));
        assert_eq!(opts.next(), Some(Ok(TcpOption::Timestamps { value: 1, echo: 0 })));
        assert_eq!(opts.next(), Some(Ok(TcpOption::Nop)));
        assert_eq!(opts.next(), Some(Ok(TcpOption::WindowScale(7))));
        assert_eq!(opts.next(), None);
        let mut out = [0u8; 40];
        r.emit(&mut out, IPS);
        assert_eq!(out, b);
    }

    #[test]
    fn bad_data_offset_and_options() {
        let mut b = syn();
        b[12] = 0x40;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            Error::new(Layer::Tcp, Problem::BadHeaderLength)
        );
        b[12] = 0xf0;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::new(Layer::Tcp, Problem::Truncated));
        let mut b = syn();
        b[21] = 30; // MSS option claims 30 bytes
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.options().next(), Some(Err(Error::new(Layer::Tcp, Problem::BadOption))));
        let mut b = syn();
        b[21] = 1; // length below 2
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap().options().next(),
            Some(Err(Error::new(Layer::Tcp, Problem::BadOption)))
        );
    }

    #[test]
    fn dnat_rewrite_by_incremental_update_verifies() {
        let mut b = syn();
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_dst_port(8080);
        p.update_checksum16(80, 8080);
        p.update_checksum_addr(&[198, 18, 128, 10], &[198, 18, 128, 11]);
        assert!(p.verify_checksum(IpPair::V4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 128, 11))));
    }
}
