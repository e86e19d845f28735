//! IP address family, and the 16-byte address field that holds either family.
//!
//! Types that serve both families (backends, tunnel endpoints, NAT addresses) keep the address
//! in network byte order in a `[u8; 16]`: an IPv4 address in the first 4 bytes, the rest zero,
//! as Katran does. A `family` byte beside it says which.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

code_enum! {
    /// The family of an address in a 16-byte field. Codes are the IP version numbers, so raw
    /// dumps read as they are; 0 means no address.
    pub enum Family: u8, fn from_u8 {
        V4 = 4, "ipv4", "IPv4, in the first 4 bytes; the other 12 are zero.";
        V6 = 6, "ipv6", "IPv6, in all 16 bytes.";
    }
}

/// Splits an address into its family and the 16-byte field (network byte order).
pub const fn encode(addr: IpAddr) -> (Family, [u8; 16]) {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            (Family::V4, [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        }
        IpAddr::V6(v6) => (Family::V6, v6.octets()),
    }
}

/// Reads a 16-byte field back, given its family code; `None` for an unknown family.
pub fn decode(family: u8, bytes: [u8; 16]) -> Option<IpAddr> {
    match Family::from_u8(family)? {
        Family::V4 => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()),
        Family::V6 => Some(Ipv6Addr::from(bytes).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_codes() {
        Family::assert_well_formed();
        assert_eq!(Family::V4.code(), 4);
        assert_eq!(Family::V6.code(), 6);
        assert_eq!(Family::from_u8(0), None);
    }

    #[test]
    fn round_trip() {
        let v4: IpAddr = Ipv4Addr::new(198, 18, 0, 1).into();
        let (family, bytes) = encode(v4);
        assert_eq!(family, Family::V4);
        assert_eq!(bytes[..4], [198, 18, 0, 1]);
        assert_eq!(bytes[4..], [0; 12]);
        assert_eq!(decode(family.code(), bytes), Some(v4));

        let v6: IpAddr = "fd00::1".parse().unwrap();
        let (family, bytes) = encode(v6);
        assert_eq!((family, bytes[0], bytes[15]), (Family::V6, 0xfd, 1));
        assert_eq!(decode(family.code(), bytes), Some(v6));

        assert_eq!(decode(0, bytes), None);
    }
}
