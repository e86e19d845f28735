//! The socket-LB bench's client and server, run inside lab namespaces (and the agent's cgroup):
//!
//! - `tcp-rate serve`: accepts on port 8081 and closes at once (for connection rates), and
//!   echoes on port 8082 (for request/response rates), until killed.
//! - `tcp-rate connect ADDR:PORT SECONDS`: new TCP connections, one after another, each
//!   closed with a reset (no TIME_WAIT to run out of ports); prints connections per second.
//! - `tcp-rate rr ADDR:PORT SECONDS`: one-byte requests and answers on one connection;
//!   prints round trips per second.

use std::{
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Where `serve` accepts and closes.
const CLOSE_PORT: u16 = 8081;
/// Where `serve` echoes.
const ECHO_PORT: u16 = 8082;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve"] => serve(),
        [mode @ ("connect" | "rr"), to, seconds] => {
            let to: SocketAddr = to.parse()?;
            let time = Duration::from_secs_f64(seconds.parse()?);
            let rate = if mode == "connect" { connects(to, time)? } else { round_trips(to, time)? };
            println!("{rate:.1}");
            Ok(())
        }
        _ => Err("usage: tcp-rate serve | connect ADDR:PORT SECONDS | rr ADDR:PORT SECONDS".into()),
    }
}

fn serve() -> Result<()> {
    let any = |port| SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let (close, echo) = (TcpListener::bind(any(CLOSE_PORT))?, TcpListener::bind(any(ECHO_PORT))?);
    std::thread::spawn(move || {
        for stream in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_nodelay(true);
                let mut byte = [0u8; 1];
                while stream.read_exact(&mut byte).is_ok() && stream.write_all(&byte).is_ok() {}
            });
        }
    });
    // Each accepted connection dropped at once.
    for _ in close.incoming() {}
    Ok(())
}

fn connects(to: SocketAddr, time: Duration) -> Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < time {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        reset_on_close(&stream)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// SO_LINGER 0: closing sends a reset and leaves no TIME_WAIT.
fn reset_on_close(stream: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let len = libc::socklen_t::try_from(size_of::<libc::linger>()).map_err(std::io::Error::other)?;
    // SAFETY: setsockopt reads `len` bytes of `linger`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn round_trips(to: SocketAddr, time: Duration) -> Result<f64> {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    let start = Instant::now();
    let (mut n, mut byte) = (0u64, [0u8; 1]);
    while start.elapsed() < time {
        stream.write_all(b"x")?;
        stream.read_exact(&mut byte)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
