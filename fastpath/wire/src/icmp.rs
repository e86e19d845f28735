//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443). Both share one header layout (type, code,
//! checksum, four message-specific bytes, data); they differ in type numbers and in the
//! checksum, which covers an IPv6 pseudo-header but no IPv4 one. [`IpPair`] selects the family.
//! Error messages quote the start of the packet that caused them; [`crate::layers::parse_quoted`]
//! reads its flow.

use crate::{Error, IpProtocol, Layer, Problem, Result, be16, be32, checksum, checksum::IpPair};

pub const HEADER_LEN: usize = 8;

/// ICMPv4 message types.
pub mod v4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const DST_UNREACHABLE: u8 = 3;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAM_PROBLEM: u8 = 12;
    /// Destination-unreachable codes.
    pub const CODE_PORT_UNREACHABLE: u8 = 3;
    pub const CODE_FRAG_NEEDED: u8 = 4;
}

/// ICMPv6 message types.
pub mod v6 {
    pub const DST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAM_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
    pub const CODE_PORT_UNREACHABLE: u8 = 4;
}

/// The ICMP family of an [`IpPair`].
fn layer(ips: IpPair) -> Layer {
    match ips {
        IpPair::V4(..) => Layer::Icmpv4,
        IpPair::V6(..) => Layer::Icmpv6,
    }
}

/// Whether `msg_type` is an error message (it quotes an offending packet).
pub const fn is_error(ips_v6: bool, msg_type: u8) -> bool {
    if ips_v6 {
        msg_type < 128
    } else {
        matches!(msg_type, v4::DST_UNREACHABLE | v4::REDIRECT | v4::TIME_EXCEEDED | v4::PARAM_PROBLEM)
    }
}

/// A view of an ICMP message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the 8-byte header is present; `ips` only names the layer in the error.
    pub fn new_checked(buffer: T, ips: IpPair) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::new(layer(ips), Problem::Truncated));
        }
        Ok(Packet { buffer })
    }
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[2..4])
    }
    /// The four message-specific bytes (identifier and sequence, MTU, pointer, unused).
    pub fn rest(&self) -> u32 {
        be32(&self.buffer.as_ref()[4..8])
    }
    /// Echo identifier (the first half of `rest`).
    pub fn ident(&self) -> u16 {
        be16(&self.buffer.as_ref()[4..6])
    }
    /// Echo sequence number (the second half of `rest`).
    pub fn seq(&self) -> u16 {
        be16(&self.buffer.as_ref()[6..8])
    }
    /// The data after the header: echo payload, or the quoted packet of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
    pub fn verify_checksum(&self, ips: IpPair) -> bool {
        checksum::fold(accumulate(ips, self.buffer.as_ref())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&c.to_be_bytes());
    }
    pub fn set_ident(&mut self, ident: u16) {
        self.buffer.as_mut()[4..6].copy_from_slice(&ident.to_be_bytes());
    }
    pub fn fill_checksum(&mut self, ips: IpPair) {
        self.set_checksum(0);
        let c = checksum::finish(accumulate(ips, self.buffer.as_ref()));
        self.set_checksum(c);
    }
    /// Updates the checksum for a rewritten 16-bit field (the echo identifier under NAT).
    pub fn update_checksum16(&mut self, old: u16, new: u16) {
        self.set_checksum(checksum::update16(self.checksum(), old, new));
    }
}

fn accumulate(ips: IpPair, msg: &[u8]) -> u32 {
    let pseudo = match ips {
        IpPair::V4(..) => 0,
        IpPair::V6(..) => ips.pseudo(IpProtocol::ICMPV6.0, msg.len()),
    };
    pseudo + checksum::sum(msg)
}

/// A parsed ICMP message of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpRepr<'a> {
    pub msg_type: u8,
    pub code: u8,
    pub rest: u32,
    pub data: &'a [u8],
}

impl<'a> IcmpRepr<'a> {
    /// Parses a checked message whose checksum must verify.
    pub fn parse(p: &Packet<&'a [u8]>, ips: IpPair) -> Result<IcmpRepr<'a>> {
        if !p.verify_checksum(ips) {
            return Err(Error::new(layer(ips), Problem::BadChecksum));
        }
        let bytes: &'a [u8] = p.buffer;
        Ok(IcmpRepr { msg_type: p.msg_type(), code: p.code(), rest: p.rest(), data: &bytes[HEADER_LEN..] })
    }

    /// An echo request or reply.
    pub fn echo(msg_type: u8, ident: u16, seq: u16, data: &'a [u8]) -> Self {
        IcmpRepr { msg_type, code: 0, rest: (u32::from(ident) << 16) | u32::from(seq), data }
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data.len()
    }

    pub fn emit(&self, buf: &mut [u8], ips: IpPair) {
        let b = &mut buf[..self.buffer_len()];
        b[0] = self.msg_type;
        b[1] = self.code;
        b[4..8].copy_from_slice(&self.rest.to_be_bytes());
        b[HEADER_LEN..].copy_from_slice(self.data);
        Packet { buffer: b }.fill_checksum(ips);
    }
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn echo_v4_and_v6() {
        let v4 = IpPair::V4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
        let v6 = IpPair::V6(
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
        );
        for (ips, ty) in [(v4, v4::ECHO_REQUEST), (v6, v6::ECHO_REQUEST)] {
            let mut b = [0u8; 12];
            IcmpRepr::echo(ty, 0x1234, 7, b"ping").emit(&mut b, ips);
            let p = Packet::new_checked(&b[..], ips).unwrap();
            assert_eq!((p.ident(), p.seq(), p.data()), (0x1234, 7, &b"ping"[..]));
            assert_eq!(IcmpRepr::parse(&p, ips).unwrap(), IcmpRepr::echo(ty, 0x1234, 7, b"ping"));
        }
        // The v6 checksum covers the pseudo-header: the same bytes do not verify as v4.
        let mut b = [0u8; 12];
        IcmpRepr::echo(v6::ECHO_REQUEST, 1, 1, b"ping").emit(&mut b, v6);
        assert_eq!(
            IcmpRepr::parse(&Packet::new_checked(&b[..], v4).unwrap(), v4).unwrap_err(),
            Error::new(Layer::Icmpv4, Problem::BadChecksum)
        );
    }

    #[test]
    fn error_classification() {
        assert!(is_error(false, v4::DST_UNREACHABLE) && !is_error(false, v4::ECHO_REQUEST));
        assert!(is_error(true, v6::PACKET_TOO_BIG) && !is_error(true, v6::NEIGHBOR_SOLICIT));
    }
}
