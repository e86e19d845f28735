//! Reachability probes as the NetworkPolicy conformance tools run them: servers on TCP and UDP
//! ports in each host's namespace, and every source trying every destination at once, a TCP
//! connect or a UDP echo each, with a deadline. A probe that gets through is `true`.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{LabError, Netns};

/// A transport protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// TCP echo and UDP echo servers on some ports of some namespaces (every address of each);
/// stopped when dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How often a server looks at its stop flag.
const TICK: Duration = Duration::from_millis(50);

impl Servers {
    /// Serves `ports` (TCP and UDP each) in every namespace of `hosts`, IPv4 and IPv6.
    pub fn start(hosts: &[&Netns], ports: &[u16]) -> Result<Servers, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for netns in hosts {
            let sockets = netns.run(|| -> std::io::Result<Vec<(TcpListener, UdpSocket)>> {
                ports
                    .iter()
                    .map(|&p| {
                        let any = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, p));
                        Ok((TcpListener::bind(any)?, UdpSocket::bind(any)?))
                    })
                    .collect()
            })?;
            let sockets = sockets.map_err(|source| LabError::Netns { name: netns.name().into(), source })?;
            for (tcp, udp) in sockets {
                let (for_tcp, for_udp) = (stop.clone(), stop.clone());
                threads.push(std::thread::spawn(move || serve_tcp(&tcp, &for_tcp)));
                threads.push(std::thread::spawn(move || serve_udp(&udp, &for_udp)));
            }
        }
        Ok(Servers { stop, threads })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: &TcpListener, stop: &AtomicBool) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                // Echoes until the peer closes (long-lived connections echo their data).
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let mut buf = [0u8; 512];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn serve_udp(socket: &UdpSocket, stop: &AtomicBool) {
    let _ = socket.set_read_timeout(Some(TICK));
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

/// One probe: from a namespace to an address and port.
#[derive(Clone, Debug)]
pub struct Probe {
    pub from: Netns,
    pub to: IpAddr,
    pub proto: Proto,
    pub port: u16,
}

/// Runs every probe at once; whether each got through within `deadline` (a TCP connection
/// established, or a UDP datagram echoed).
pub fn run(probes: &[Probe], deadline: Duration) -> Result<Vec<bool>, LabError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            probes.iter().map(|p| scope.spawn(move || p.from.run(|| attempt(p, deadline)))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(Ok(false))).collect()
    })
}

fn attempt(p: &Probe, deadline: Duration) -> bool {
    let to = SocketAddr::new(p.to, p.port);
    match p.proto {
        Proto::Tcp => TcpStream::connect_timeout(&to, deadline).is_ok(),
        Proto::Udp => {
            let Some(socket) = udp_socket(p.to.is_ipv4()) else { return false };
            let _ = socket.set_read_timeout(Some(deadline));
            let mut buf = [0u8; 16];
            socket.send_to(b"probe", to).is_ok()
                && socket.recv_from(&mut buf).is_ok_and(|(n, _)| &buf[..n] == b"probe")
        }
    }
}

/// Source ports UDP probes take in turn, so that no probe of a run reuses an earlier one's
/// tuple: a datagram on a tuple a datapath still tracks belongs to that flow, and would get
/// its verdict instead of a new one.
const UDP_PORTS: std::ops::Range<u16> = 20_000..60_000;

fn udp_socket(v4: bool) -> Option<UdpSocket> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(UDP_PORTS.end - UDP_PORTS.start);
    for _ in 0..16 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = UDP_PORTS.start + u16::try_from(offset).ok()?;
        let any: SocketAddr =
            if v4 { ([0, 0, 0, 0], port).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, port).into() };
        if let Ok(socket) = UdpSocket::bind(any) {
            return Some(socket);
        }
    }
    None
}
