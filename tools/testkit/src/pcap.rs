//! Classic pcap files (the format tcpdump writes with `-w`): Ethernet link type, microsecond
//! or nanosecond timestamps, either byte order on read.

use std::{fs, io, path::Path};

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const LINKTYPE_ETHERNET: u32 = 1;

/// Reads every frame of a pcap file, in order.
pub fn read(path: impl AsRef<Path>) -> io::Result<Vec<Vec<u8>>> {
    parse(&fs::read(path)?)
}

/// Parses pcap bytes; a truncated record or a non-Ethernet link type is an error.
pub fn parse(bytes: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("pcap: {what}"));
    let header = bytes.get(..24).ok_or_else(|| bad("shorter than its 24-byte header"))?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let little = match magic {
        MAGIC_MICROS | MAGIC_NANOS => true,
        m if m.swap_bytes() == MAGIC_MICROS || m.swap_bytes() == MAGIC_NANOS => false,
        _ => return Err(bad("not a pcap file (bad magic)")),
    };
    let u32_at = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little { u32::from_le_bytes(w) } else { u32::from_be_bytes(w) }
    };
    if u32_at(header, 20) != LINKTYPE_ETHERNET {
        return Err(bad("link type is not Ethernet"));
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let rec = bytes.get(at..at + 16).ok_or_else(|| bad("truncated record header"))?;
        let len = usize::try_from(u32_at(rec, 8)).map_err(|_| bad("record too large"))?;
        let data = bytes.get(at + 16..at + 16 + len).ok_or_else(|| bad("truncated record"))?;
        frames.push(data.to_vec());
        at += 16 + len;
    }
    Ok(frames)
}

/// Writes frames as a microsecond pcap file (timestamps count up by one millisecond).
pub fn write(path: impl AsRef<Path>, frames: &[Vec<u8>]) -> io::Result<()> {
    fs::write(path, to_bytes(frames))
}

pub fn to_bytes(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = MAGIC_MICROS.to_le_bytes().to_vec();
    // Version 2.4, then time zone, accuracy, snap length and link type.
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for word in [0u32, 0, 65535, LINKTYPE_ETHERNET] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).expect("frames are small");
        let micros = u32::try_from(i % 1000 * 1000).expect("below a million");
        for word in [u32::try_from(i / 1000).unwrap_or(u32::MAX), micros, len, len] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(frame);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn write_then_read() {
        let frames = vec![vec![1, 2, 3], vec![], vec![0xff; 1500]];
        assert_eq!(super::parse(&super::to_bytes(&frames)).unwrap(), frames);
        assert!(super::parse(&super::to_bytes(&frames)[..30]).is_err());
        assert!(super::parse(b"not a pcap file at all, no").is_err());
    }
}
