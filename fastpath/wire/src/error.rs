//! One error type for every parser: which layer, and what was wrong with it, and the drop
//! reason the datapath counts it under.

use core::fmt;

use skiff_common::DropReason;

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

impl From<Error> for DropReason {
    /// The counted reason for a frame the parser refused.
    fn from(e: Error) -> DropReason {
        use DropReason as D;
        match (e.layer, e.problem) {
            (Layer::Ethernet, _) => D::EthernetTruncated,
            (Layer::Vlan, Problem::TooManyHeaders) => D::VlanTooDeep,
            (Layer::Vlan, _) => D::VlanTruncated,
            (Layer::Ipv4, Problem::BadVersion) => D::Ipv4BadVersion,
            (Layer::Ipv4, Problem::BadHeaderLength) => D::Ipv4BadHeaderLength,
            (Layer::Ipv4, Problem::BadLength) => D::Ipv4BadTotalLength,
            (Layer::Ipv4, Problem::BadChecksum) => D::Ipv4BadChecksum,
            (Layer::Ipv4, _) => D::Ipv4Truncated,
            (Layer::Ipv6, Problem::BadVersion) => D::Ipv6BadVersion,
            (Layer::Ipv6, Problem::Truncated) => D::Ipv6Truncated,
            (Layer::Ipv6, _) => D::Ipv6BadPayloadLength,
            (Layer::Ipv6Ext, Problem::TooManyHeaders) => D::Ipv6ExtHeaderLimit,
            (Layer::Ipv6Ext, _) => D::Ipv6BadExtHeader,
            (Layer::Tcp, Problem::BadHeaderLength) => D::TcpBadDataOffset,
            (Layer::Tcp | Layer::Udp | Layer::Icmpv4 | Layer::Icmpv6, Problem::BadChecksum) => {
                D::L4BadChecksum
            }
            (Layer::Tcp, _) => D::TcpTruncated,
            (Layer::Udp, Problem::BadLength) => D::UdpBadLength,
            (Layer::Udp, _) => D::UdpTruncated,
            (Layer::Icmpv4 | Layer::Icmpv6, _) => D::IcmpTruncated,
            (Layer::Arp, _) => D::UnsupportedEthertype,
            (Layer::Vxlan, Problem::BadFlags) => D::VxlanBadFlags,
            (Layer::Vxlan, _) => D::VxlanTruncated,
            (Layer::Geneve, Problem::BadVersion) => D::GeneveBadVersion,
            (Layer::Geneve, Problem::BadOption) => D::GeneveOptionOverflow,
            (Layer::Geneve, _) => D::GeneveTruncated,
        }
    }
}
