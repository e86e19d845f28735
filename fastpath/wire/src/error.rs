//! One error type for every parser: which layer, and what was wrong with it.

use core::fmt;

/// The protocol layer an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    Ethernet,
    Vlan,
    Arp,
    Ipv4,
    Ipv6,
    Ipv6Ext,
    Tcp,
    Udp,
    Icmpv4,
    Icmpv6,
    Vxlan,
    Geneve,
}

/// What was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Problem {
    /// The buffer ends before the header (or a length it declares) does.
    Truncated,
    /// A version field holds a version this parser does not speak.
    BadVersion,
    /// A header-length field is below the minimum or beyond the buffer.
    BadHeaderLength,
    /// A total- or payload-length field disagrees with the buffer.
    BadLength,
    /// The checksum does not verify.
    BadChecksum,
    /// A flag that must be set is clear (or the reverse).
    BadFlags,
    /// An option or TLV runs past the area that holds it.
    BadOption,
    /// More extension headers (or VLAN tags) than the parser follows.
    TooManyHeaders,
    /// A header in a position where the protocol forbids it.
    Misplaced,
    /// A well-formed value this implementation does not handle (e.g. ARP for non-IPv4).
    Unsupported,
}

/// A parse error: `layer` is where, `problem` is what.
// Aligned so that results carrying it are moved as whole words: byte-aligned, the compiler
// spliced it with neighbouring bytes at odd offsets and stalled store forwarding on the parse
// hot path (measured with perf: half of `layers::parse`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Error {
    pub layer: Layer,
    pub problem: Problem,
}

impl Error {
    pub const fn new(layer: Layer, problem: Problem) -> Self {
        Error { layer, problem }
    }
}

pub type Result<T> = core::result::Result<T, Error>;

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "ethernet",
            Layer::Vlan => "802.1Q tag",
            Layer::Arp => "arp",
            Layer::Ipv4 => "ipv4",
            Layer::Ipv6 => "ipv6",
            Layer::Ipv6Ext => "ipv6 extension header",
            Layer::Tcp => "tcp",
            Layer::Udp => "udp",
            Layer::Icmpv4 => "icmpv4",
            Layer::Icmpv6 => "icmpv6",
            Layer::Vxlan => "vxlan",
            Layer::Geneve => "geneve",
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Problem::Truncated => "truncated",
            Problem::BadVersion => "unsupported version",
            Problem::BadHeaderLength => "header length out of range",
            Problem::BadLength => "length field disagrees with the packet",
            Problem::BadChecksum => "bad checksum",
            Problem::BadFlags => "invalid flags",
            Problem::BadOption => "option runs past its area",
            Problem::TooManyHeaders => "too many chained headers",
            Problem::Misplaced => "header out of place",
            Problem::Unsupported => "unsupported",
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.layer, self.problem)
    }
}

impl core::error::Error for Error {}
