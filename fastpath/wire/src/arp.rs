//! ARP (RFC 826) for IPv4 over Ethernet, the only combination a node answers.

use core::net::Ipv4Addr;

use crate::{Error, Layer, Problem, Result, be16, ethernet::Mac};

mod field {
    use core::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

pub const PACKET_LEN: usize = 28;

/// ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation(pub u16);

impl Operation {
    pub const REQUEST: Operation = Operation(1);
    pub const REPLY: Operation = Operation(2);
}

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks length and that hardware/protocol are Ethernet (1, 6 bytes) and IPv4 (0x0800, 4).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < PACKET_LEN {
            return Err(Error::new(Layer::Arp, Problem::Truncated));
        }
        if be16(&b[field::HTYPE]) != 1
            || be16(&b[field::PTYPE]) != 0x0800
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(Error::new(Layer::Arp, Problem::Unsupported));
        }
        Ok(Packet { buffer })
    }
    pub fn operation(&self) -> Operation {
        Operation(be16(&self.buffer.as_ref()[field::OPER]))
    }
    pub fn sender_mac(&self) -> Mac {
        Mac(crate::array(&self.buffer.as_ref()[field::SHA]))
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(crate::array::<4>(&self.buffer.as_ref()[field::SPA]))
    }
    pub fn target_mac(&self) -> Mac {
        Mac(crate::array(&self.buffer.as_ref()[field::THA]))
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(crate::array::<4>(&self.buffer.as_ref()[field::TPA]))
    }
}

/// A parsed ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: Operation,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> ArpRepr {
        ArpRepr {
            operation: p.operation(),
            sender_mac: p.sender_mac(),
            sender_ip: p.sender_ip(),
            target_mac: p.target_mac(),
            target_ip: p.target_ip(),
        }
    }

    /// The reply a host owning `target_ip` with `mac` sends to this request.
    pub fn reply(&self, mac: Mac) -> ArpRepr {
        ArpRepr {
            operation: Operation::REPLY,
            sender_mac: mac,
            sender_ip: self.target_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        }
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..PACKET_LEN];
        b[field::HTYPE].copy_from_slice(&1u16.to_be_bytes());
        b[field::PTYPE].copy_from_slice(&0x0800u16.to_be_bytes());
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        b[field::OPER].copy_from_slice(&self.operation.0.to_be_bytes());
        b[field::SHA].copy_from_slice(&self.sender_mac.0);
        b[field::SPA].copy_from_slice(&self.sender_ip.octets());
        b[field::THA].copy_from_slice(&self.target_mac.0);
        b[field::TPA].copy_from_slice(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Who has 198.18.0.1? Tell 198.18.0.2", as the kernel sends it.
    const REQUEST: [u8; 28] =
        [0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 1, 0, 0, 2, 198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 198, 18, 0, 1];

    #[test]
    fn request_and_reply() {
        let r = ArpRepr::parse(&Packet::new_checked(&REQUEST[..]).unwrap());
        assert_eq!(
            (r.operation, r.sender_ip, r.target_ip),
            (Operation::REQUEST, Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1))
        );
        let mut out = [0u8; 28];
        r.emit(&mut out);
        assert_eq!(out, REQUEST);
        let reply = r.reply(Mac([2, 0, 1, 0, 0, 1]));
        assert_eq!((reply.target_mac, reply.sender_ip), (r.sender_mac, r.target_ip));
    }

    #[test]
    fn rejects_other_protocols() {
        let mut ipv6 = REQUEST;
        ipv6[2] = 0x86;
        assert_eq!(Packet::new_checked(&ipv6[..]).unwrap_err(), Error::new(Layer::Arp, Problem::Unsupported));
        assert_eq!(
            Packet::new_checked(&REQUEST[..27]).unwrap_err(),
            Error::new(Layer::Arp, Problem::Truncated)
        );
    }
}
