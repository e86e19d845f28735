//! AF_PACKET ports: the fallback for machines without AF_XDP, so kernel bypass stays optional.
//!
//! A raw socket per (interface, worker) receives every frame the interface receives, in
//! batches (`recvmmsg`), before the kernel's ingress hooks; with several workers the sockets of
//! one interface form a fanout group (flow hash), so each frame reaches one worker. Transmits
//! are queued and sent in one `sendmmsg`. The kernel still sees every received frame too:
//! [`steer`] installs the nftables rules that drop, at netdev ingress (after the socket has its
//! copy), the frames the workers forward, which is what the XDP program's redirect does for
//! AF_XDP.

use std::{
    io::{self, Write},
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    process::{Command, Stdio},
};

use super::{BATCH, FRAME_ROOM, PacketIo};
use skiff_common::{endpoint::PodSources, meta::XdpMeta};
use skiff_engine::engine::SNAT_PORTS;

const ETH_P_ALL: u16 = 0x0003;
/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): do not receive the frames this host sends.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_FANOUT_HASH: u32 = 0;

/// An AF_PACKET socket on one interface, with its batch buffers.
pub struct PacketPort {
    fd: OwnedFd,
    ifindex: u32,
    rx: Box<[u8]>,
    tx: Box<[u8]>,
    tx_lens: Vec<usize>,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn setsockopt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small");
    // SAFETY: `value` is a valid int for the duration of the call.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const value).cast(), len) })
}

impl PacketPort {
    /// Opens a non-blocking socket on `iface` (in the calling thread's network namespace);
    /// with `fanout`, it joins the interface's fanout group (one per worker).
    pub fn open(iface: &str, fanout: bool) -> io::Result<PacketPort> {
        let index = super::ifindex(iface)?;
        let proto = ETH_P_ALL.to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                proto.into(),
            )
        };
        check(raw)?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20)?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("small constant");
        addr.sll_protocol = proto;
        addr.sll_ifindex = i32::try_from(index).map_err(|_| io::Error::other("ifindex"))?;
        let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).expect("small struct");
        // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes for the duration of the call.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        if fanout {
            let group = (index & 0xffff) | PACKET_FANOUT_HASH << 16;
            setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_FANOUT, group as libc::c_int)?;
        }
        Ok(PacketPort {
            fd,
            ifindex: index,
            rx: vec![0; BATCH * FRAME_ROOM].into_boxed_slice(),
            tx: vec![0; BATCH * FRAME_ROOM].into_boxed_slice(),
            tx_lens: Vec::with_capacity(BATCH),
        })
    }

    /// Sends one frame at once (not batched).
    pub fn send_now(&mut self, frame: &[u8]) -> io::Result<()> {
        self.send(frame)?;
        self.flush()
    }
}

/// One `mmsghdr` per buffer slot of `buf`, pointing at `iov`.
fn headers(buf: &mut [u8], lens: impl Iterator<Item = usize>, iov: &mut [libc::iovec; BATCH]) -> usize {
    let mut n = 0;
    for ((slot, len), v) in buf.chunks_exact_mut(FRAME_ROOM).zip(lens).zip(iov.iter_mut()) {
        *v = libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: len };
        n += 1;
    }
    n
}

/// A message count for `recvmmsg`/`sendmmsg` (at most `BATCH`).
fn vlen(n: usize) -> libc::c_uint {
    libc::c_uint::try_from(n).expect("at most BATCH")
}

fn messages(iov: &mut [libc::iovec; BATCH], n: usize) -> [libc::mmsghdr; BATCH] {
    // SAFETY: mmsghdr is plain data; all-zero is valid (no name, no control data).
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()).take(n) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    msgs
}

impl PacketIo for PacketPort {
    fn recv(&mut self, batch: usize, mut f: impl FnMut(&mut [u8], Option<XdpMeta>)) -> io::Result<usize> {
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
        let n = headers(&mut self.rx, std::iter::repeat_n(FRAME_ROOM, batch.min(BATCH)), &mut iov);
        let mut msgs = messages(&mut iov, n);
        // SAFETY: `msgs` holds `n` headers whose buffers (in `self.rx`) live across the call.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                vlen(n),
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        let got = got as usize;
        for (m, slot) in msgs[..got].iter().zip(self.rx.chunks_exact_mut(FRAME_ROOM)) {
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                // Longer than `FRAME_ROOM`: a GRO aggregate, which this port cannot carry.
                // The kernel has its copy, but for a service frame the steering drops it there:
                // AF_PACKET needs GRO off on the devices it serves (veth has it off).
                continue;
            }
            f(&mut slot[..m.msg_len as usize], None);
        }
        Ok(got)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let slot = self.tx_lens.len();
        if slot == BATCH {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "transmit batch full"));
        }
        if frame.len() > FRAME_ROOM {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame longer than a buffer"));
        }
        self.tx[slot * FRAME_ROOM..slot * FRAME_ROOM + frame.len()].copy_from_slice(frame);
        self.tx_lens.push(frame.len());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.tx_lens.is_empty() {
            return Ok(());
        }
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
        let n = headers(&mut self.tx, self.tx_lens.iter().copied(), &mut iov);
        let mut msgs = messages(&mut iov, n);
        self.tx_lens.clear();
        // SAFETY: `msgs` holds `n` headers whose buffers (in `self.tx`) live across the call.
        let sent = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), vlen(n), 0) };
        match usize::try_from(sent) {
            Ok(s) if s == n => Ok(()),
            Ok(s) => Err(io::Error::other(format!("{} of {n} frames not sent", n - s))),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn ifindex(&self) -> Option<u32> {
        Some(self.ifindex)
    }
}

/// What the AF_PACKET workers take from the kernel: frames to these frontends, on any of the
/// node's interfaces, and their replies: from these backends (address, protocol, port), and to
/// the node's masquerading ports; frames to and from pods under policy, except to the node.
#[derive(Clone, Debug, Default)]
pub struct Steering {
    pub interfaces: Vec<String>,
    pub frontends: Vec<(IpAddr, u8, u16)>,
    pub backends: Vec<(IpAddr, u8, u16)>,
    pub masquerade: Vec<IpAddr>,
    pub enforced: Vec<IpAddr>,
    /// The node's own addresses.
    pub host: Vec<IpAddr>,
    /// Pods' interfaces with the addresses their frames may come from (others are dropped).
    pub sources: Vec<(String, PodSources)>,
    /// Sources dropped on arrival (the prefilter).
    pub denied: Vec<ipnet::IpNet>,
}

/// The nftables table the fallback's rules live in.
pub const NFT_TABLE: &str = "skiff_steer";

impl Steering {
    /// The ruleset: one netdev table with an ingress chain over the interfaces, replacing any
    /// previous version atomically (`nft -f` applies a file as one transaction).
    pub fn ruleset(&self) -> String {
        let (low, high) = (SNAT_PORTS.start(), SNAT_PORTS.end());
        let devices: Vec<String> = self.interfaces.iter().map(|i| format!("\"{i}\"")).collect();
        let mut sets = String::new();
        let mut rules = String::new();
        for (v4, ip, addr_type) in [(true, "ip", "ipv4_addr"), (false, "ip6", "ipv6_addr")] {
            let endpoints = |list: &[(IpAddr, u8, u16)]| {
                list.iter()
                    .filter(|(a, ..)| a.is_ipv4() == v4)
                    .map(|(a, proto, port)| format!("{a} . {proto} . {port}"))
                    .collect::<Vec<_>>()
            };
            let addresses = |list: &[IpAddr]| -> Vec<String> {
                list.iter().filter(|a| a.is_ipv4() == v4).map(ToString::to_string).collect()
            };
            for (name, key, elements) in [
                ("frontends", "inet_proto . inet_service", endpoints(&self.frontends)),
                ("backends", "inet_proto . inet_service", endpoints(&self.backends)),
                ("masquerade", "", addresses(&self.masquerade)),
                ("enforced", "", addresses(&self.enforced)),
                ("host", "", addresses(&self.host)),
            ] {
                let key = if key.is_empty() { addr_type.to_owned() } else { format!("{addr_type} . {key}") };
                let elements = if elements.is_empty() {
                    String::new()
                } else {
                    format!(" elements = {{ {} }};", elements.join(", "))
                };
                sets += &format!("  set {name}_{ip} {{ type {key};{elements} }}\n");
            }
            rules += &format!(
                "    {ip} daddr . meta l4proto . th dport @frontends_{ip} drop\n    \
                 {ip} saddr . meta l4proto . th sport @backends_{ip} drop\n    \
                 {ip} daddr @masquerade_{ip} th dport {low}-{high} drop\n    \
                 {ip} daddr @enforced_{ip} drop\n    \
                 {ip} saddr @enforced_{ip} {ip} daddr != @host_{ip} drop\n"
            );
        }
        for (v4, ip) in [(true, "ip"), (false, "ip6")] {
            let denied: Vec<String> =
                self.denied.iter().filter(|n| n.addr().is_ipv4() == v4).map(ToString::to_string).collect();
            if !denied.is_empty() {
                rules += &format!("    {ip} saddr {{ {} }} drop\n", denied.join(", "));
            }
        }
        for (iface, own) in &self.sources {
            // A pod's frame from an address not its own (IPv6 neighbour discovery aside).
            let (v4, v6) = (std::net::Ipv4Addr::from(own.v4), std::net::Ipv6Addr::from(own.v6));
            rules += &format!(
                "    iifname \"{iface}\" ip saddr != {v4} drop\n    \
                 iifname \"{iface}\" ip6 saddr != {{ {v6}, fe80::/10, :: }} drop\n"
            );
        }
        format!(
            "table netdev {NFT_TABLE} {{}}\ndelete table netdev {NFT_TABLE}\ntable netdev {NFT_TABLE} {{\n{sets}  \
             chain ingress {{\n    type filter hook ingress devices = {{ {} }} priority -500;\n{rules}  }}\n}}\n",
            devices.join(", ")
        )
    }

    /// Installs (or replaces) the rules, in the calling thread's network namespace.
    pub fn apply(&self) -> io::Result<()> {
        nft(&self.ruleset())
    }

    /// Removes the rules.
    pub fn remove() -> io::Result<()> {
        nft(&format!("table netdev {NFT_TABLE} {{}}\ndelete table netdev {NFT_TABLE}\n"))
    }
}

fn nft(script: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running nft: {e}")))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}
