//! Geneve (RFC 8926): version, option length, the O and C bits, protocol, VNI and option TLVs.

use crate::{Error, Layer, Problem, Result, be16, be32, ethernet::EtherType};

pub const HEADER_LEN: usize = 8;
/// Option length is 6 bits of 4-byte words.
pub const MAX_OPTIONS_LEN: usize = 63 * 4;
const FLAG_O: u8 = 0x80;
const FLAG_C: u8 = 0x40;
/// Transparent Ethernet bridging: the payload is an Ethernet frame.
pub const PROTOCOL_ETHERNET: EtherType = EtherType(skiff_common::proto::ethertype::TEB);

/// A view of a Geneve header, its options and payload. After [`Packet::new_checked`] the
/// options area lies inside the buffer; individual options are checked while iterating.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::new(Layer::Geneve, Problem::Truncated));
        }
        if p.version() != 0 {
            return Err(Error::new(Layer::Geneve, Problem::BadVersion));
        }
        if HEADER_LEN + p.options_len() > len {
            return Err(Error::new(Layer::Geneve, Problem::BadOption));
        }
        Ok(p)
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 6
    }
    /// The options length in bytes.
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x3f) * 4
    }
    /// The O bit: a control (OAM) packet, not data.
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[1] & FLAG_O != 0
    }
    /// The C bit: at least one option is critical.
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[1] & FLAG_C != 0
    }
    pub fn protocol(&self) -> EtherType {
        EtherType(be16(&self.buffer.as_ref()[2..4]))
    }
    pub fn vni(&self) -> u32 {
        be32(&self.buffer.as_ref()[4..8]) >> 8
    }
    pub fn options_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.options_len()]
    }
    pub fn options(&self) -> GeneveOptions<'_> {
        GeneveOptions { rest: self.options_bytes() }
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN + self.options_len()..]
    }
}

/// One Geneve option TLV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    pub class: u16,
    /// The type; its high bit marks the option critical.
    pub kind: u8,
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    pub const fn is_critical(&self) -> bool {
        self.kind & 0x80 != 0
    }
    /// Bytes this option takes: 4 of header plus its data.
    pub const fn wire_len(&self) -> usize {
        4 + self.data.len()
    }
    /// Writes the option into `buf` (data must be a multiple of 4 bytes, at most 124).
    pub fn emit(&self, buf: &mut [u8]) {
        debug_assert!(self.data.len().is_multiple_of(4) && self.data.len() <= 124);
        buf[..2].copy_from_slice(&self.class.to_be_bytes());
        buf[2] = self.kind;
        // At most 31 words by the assertion above.
        #[allow(clippy::cast_possible_truncation)]
        let words = (self.data.len() / 4) as u8;
        buf[3] = words & 0x1f;
        buf[4..self.wire_len()].copy_from_slice(self.data);
    }
}

/// Iterator over Geneve options; yields one error if an option runs past the options area.
#[derive(Clone, Debug)]
pub struct GeneveOptions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for GeneveOptions<'a> {
    type Item = Result<GeneveOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let opt = self.rest.get(..4).and_then(|h| {
            let len = 4 + usize::from(h[3] & 0x1f) * 4;
            let data = self.rest.get(4..len)?;
            Some((GeneveOption { class: be16(&h[..2]), kind: h[2], data }, len))
        });
        match opt {
            Some((opt, len)) => {
                self.rest = &self.rest[len..];
                Some(Ok(opt))
            }
            None => {
                self.rest = &[];
                Some(Err(Error::new(Layer::Geneve, Problem::BadOption)))
            }
        }
    }
}

/// A parsed Geneve header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneveRepr<'a> {
    pub vni: u32,
    pub protocol: EtherType,
    pub oam: bool,
    pub critical: bool,
    /// Raw option TLVs (a multiple of 4 bytes, at most 252).
    pub options: &'a [u8],
}

impl<'a> GeneveRepr<'a> {
    /// Parses a checked header; every option must be well formed.
    pub fn parse(p: &Packet<&'a [u8]>) -> Result<GeneveRepr<'a>> {
        if let Some(Err(e)) = p.options().find(Result::is_err) {
            return Err(e);
        }
        let bytes: &'a [u8] = p.buffer;
        Ok(GeneveRepr {
            vni: p.vni(),
            protocol: p.protocol(),
            oam: p.oam(),
            critical: p.critical(),
            options: &bytes[HEADER_LEN..HEADER_LEN + p.options_len()],
        })
    }
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }
    pub fn emit(&self, buf: &mut [u8]) {
        debug_assert!(self.options.len().is_multiple_of(4) && self.options.len() <= MAX_OPTIONS_LEN);
        // At most 63 words by the assertion above.
        #[allow(clippy::cast_possible_truncation)]
        let words = (self.options.len() / 4) as u8;
        buf[0] = words & 0x3f;
        buf[1] = if self.oam { FLAG_O } else { 0 } | if self.critical { FLAG_C } else { 0 };
        buf[2..4].copy_from_slice(&self.protocol.0.to_be_bytes());
        buf[4..8].copy_from_slice(&(self.vni << 8).to_be_bytes());
        buf[HEADER_LEN..self.header_len()].copy_from_slice(self.options);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_options() -> [u8; 28] {
        let mut b = [0u8; 28];
        let mut opts = [0u8; 20];
        GeneveOption { class: 0x0102, kind: 0x80 | 3, data: &[1, 2, 3, 4] }.emit(&mut opts);
        GeneveOption { class: 0xffff, kind: 1, data: &[9, 9, 9, 9, 9, 9, 9, 9] }.emit(&mut opts[8..]);
        GeneveRepr { vni: 77, protocol: PROTOCOL_ETHERNET, oam: false, critical: true, options: &opts }
            .emit(&mut b);
        b
    }

    #[test]
    fn options_iterate() {
        let b = with_options();
        let p = Packet::new_checked(&b[..]).unwrap();
        let r = GeneveRepr::parse(&p).unwrap();
        assert_eq!((r.vni, r.protocol, r.critical, r.options.len()), (77, PROTOCOL_ETHERNET, true, 20));
        let opts: [_; 2] = [p.options().next().unwrap().unwrap(), p.options().nth(1).unwrap().unwrap()];
        assert!(opts[0].is_critical() && !opts[1].is_critical());
        assert_eq!(opts[1].data, &[9; 8]);
        assert_eq!(p.options().count(), 2);
    }

    #[test]
    fn option_past_the_area_is_an_error() {
        let mut b = with_options();
        b[8 + 3] = 5; // the first option claims 20 bytes of data inside a 20-byte area
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(GeneveRepr::parse(&p).unwrap_err(), Error::new(Layer::Geneve, Problem::BadOption));
        let mut b = with_options();
        b[0] = 10; // 40 bytes of options in a 28-byte packet
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::new(Layer::Geneve, Problem::BadOption));
        b[0] = 0x40;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::new(Layer::Geneve, Problem::BadVersion));
    }
}
