//! Packets per second of a service's NAT path in the lab: skiff (XDP redirect → AF_XDP worker →
//! DNAT → AF_XDP transmit to the pod) against the kernel's nftables DNAT with conntrack doing
//! the same service, same generator, same run, alternating, medians of 3. One established UDP
//! flow of 64-byte frames from the client to `VIP:80`, DNATed to the pod's port 8080, counted
//! where it ends: an nftables drop rule on the pod's interface (the same sink for both).
//!
//! Then transmission onto another interface over AF_XDP, the two ways a worker can do it: a
//! copy into the other socket's own UMEM (what `io::afxdp` does), or a second socket sharing
//! the receiving socket's UMEM, transmitting the received frame itself. Frames from the uplink
//! go out of the pod's veth unchanged, 64 and 1500 bytes, counted by the same sink.
//!
//! CPU 0 runs the generator; CPU 1 runs everything of the node: the uplink's threaded NAPI and,
//! for skiff, the worker (pinned there, at a worker's priority). Writes
//! `target/bench-report/fastpath-lab.json`, which `bench-report` adds to `fastpath.json`. Root
//! only. `SKIFF_LAB_FRAMES` sets the frames per run (default 2^24).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use skiff_common::{
    config::XdpConfig,
    lb::{BackendId, FrontendKind},
};
use skiff_engine::{
    lb::Backend,
    tables::{Frontend, Neighbor, Service, ServiceConfig, Tables},
};
use skiff_fastpath::{
    datapath::{Config, Datapath, Io},
    io::{BATCH, PacketIo, afxdp::XskPort, wait_readable},
};
use skiff_lab::Topology;
use skiff_perf::{
    Record,
    lab::{
        FRAMES, Result, generate, generate_sized, ifindex, median, nft, nft_counter, nft_drop_rule,
        set_affinity, split_layout, udp_frame,
    },
    write_report,
};
use skiff_xdp::{CountProgram, Ingress, XdpMode, bpffs};
use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
    config::{LibxdpFlags, SocketConfig, UmemConfig},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const ROUNDS: usize = 3;
const SINK: &str = "skiffsink";

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let lab = Topology::new().pods(1).build()?;
    let (client, node, pod) = (lab.client().clone(), lab.node().clone(), lab.pods()[0].clone());
    let frame = udp_frame(&client, SocketAddrV4::new(client.ipv4, 40000), SocketAddrV4::new(VIP, 80), 64)?;
    let out = ifindex(&client.netns, &client.iface)?;
    nft_drop_rule(&pod.netns, SINK, &pod.iface, client.ipv4)?;
    let delivered = || nft_counter(&pod.netns, "netdev", SINK);
    let dir = PathBuf::from(format!("/sys/fs/bpf/skiff-bench-nat-{}", std::process::id()));

    let frames = std::env::var("SKIFF_LAB_FRAMES").ok().and_then(|f| f.parse().ok()).unwrap_or(FRAMES);
    let send = || -> Result<f64> {
        let before = delivered()?;
        let elapsed = generate(&client.netns, frame, out, frames)?;
        Ok((delivered()? - before) as f64 / elapsed.as_secs_f64())
    };
    let (mut skiff, mut kernel) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // skiff: the ingress program on the uplink and the pod's veth, one worker on CPU 1.
        let mut ingress = Ingress::load(&dir)?;
        ingress.set_config(&XdpConfig::DEFAULT)?;
        let backend = Backend { id: BackendId(1), addr: pod.ipv4.into(), port: 8080, weight: 1, local: true };
        let service = Service::new(vec![backend], ServiceConfig::default())?;
        let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 17 };
        let to_pod = Neighbor { port: 1, src_mac: pod.node_mac, dst_mac: pod.mac };
        let tables = Tables {
            services: [(frontend, service)].into_iter().collect(),
            next_hops: [(pod.ipv4.into(), to_pod)].into_iter().collect(),
            ..Tables::default()
        };
        let config = Config {
            interfaces: vec![client.node_iface.clone(), pod.node_iface.clone()],
            io: Io::AfXdp(XdpMode::Native),
            cores: vec![1],
            ..Config::default()
        };
        let datapath = node.netns.run(|| Datapath::start(config, tables, Some(ingress)))??;
        split_layout(&node.netns, &client.node_iface)?;
        skiff.push(send()?);
        let stats = datapath.stop();
        println!(
            "skiff worker: received {}, forwarded {}, dropped {}",
            stats.received, stats.forwarded, stats.dropped
        );
        bpffs::remove_pins(&dir)?;

        // The kernel: DNAT in prerouting, conntrack, forwarding. The uplink needs an XDP
        // program for the generator's redirect to arrive: the counting one, which passes.
        let mut pass = CountProgram::load()?;
        node.netns.run(|| pass.attach(&client.node_iface, XdpMode::Native))??;
        split_layout(&node.netns, &client.node_iface)?;
        nft(
            &node.netns,
            &format!(
                "table ip skiffnat {{\n  chain prerouting {{\n    type nat hook prerouting priority -100;\n    ip daddr {VIP} udp dport 80 dnat to {}:8080\n  }}\n}}\n",
                pod.ipv4
            ),
        )?;
        kernel.push(send()?);
        node.netns.exec("nft", &["delete", "table", "ip", "skiffnat"])?;
        drop(pass);
    }
    println!("rounds: skiff {skiff:.0?} pps, nftables {kernel:.0?} pps");
    let (skiff, kernel) = (median(skiff), median(kernel));
    println!(
        "NAT path, 1 established UDP flow: skiff AF_XDP {:.2} Mpps, nftables DNAT + conntrack {:.2} Mpps ({:.2}x)",
        skiff / 1e6,
        kernel / 1e6,
        skiff / kernel
    );
    let mut records = vec![
        Record::new("lab_pps_dnat_afxdp_vs_nftables_dnat_conntrack", skiff, "pps").with_baseline(kernel),
    ];

    // Transmission onto another interface: shared UMEM against a copy.
    for len in [64, 1500] {
        let frame =
            udp_frame(&client, SocketAddrV4::new(client.ipv4, 40000), SocketAddrV4::new(VIP, 80), len)?;
        let (mut copy, mut shared) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            for (mode, rates) in [(Tx::Copy, &mut copy), (Tx::SharedUmem, &mut shared)] {
                let mut ingress = Ingress::load(&dir)?;
                ingress.set_config(&XdpConfig::DEFAULT)?;
                node.netns.run(|| ingress.attach(&client.node_iface, XdpMode::Native))??;
                let uplink = ifindex(&node.netns, &client.node_iface)?;
                let (from, to) = (client.node_iface.clone(), pod.node_iface.clone());
                let forwarder = node.netns.run(move || Forwarder::start(mode, &from, &to))??;
                ingress.set_worker(uplink, 0, forwarder.fd)?;
                ingress.set_services(&[(VIP.into(), 80, 17, FrontendKind::ClusterIp)])?;
                split_layout(&node.netns, &client.node_iface)?;
                let before = delivered()?;
                let elapsed = generate_sized(&client.netns, frame, len, out, frames)?;
                rates.push((delivered()? - before) as f64 / elapsed.as_secs_f64());
                forwarder.stop()?;
                drop(ingress);
                bpffs::remove_pins(&dir)?;
            }
        }
        println!("rounds, {len}-byte frames: copy {copy:.0?} pps, shared UMEM {shared:.0?} pps");
        let (copy, shared) = (median(copy), median(shared));
        println!(
            "AF_XDP transmit onto another interface, {len}-byte frames: shared UMEM {:.2} Mpps, copy {:.2} Mpps ({:.2}x)",
            shared / 1e6,
            copy / 1e6,
            shared / copy
        );
        records.push(
            Record::new(format!("lab_pps_xsk_tx_other_interface_{len}b_shared_umem_vs_copy"), shared, "pps")
                .with_baseline(copy),
        );
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(&target, "fastpath-lab", &records)?;
    Ok(())
}

/// How frames received on one interface leave by another.
#[derive(Clone, Copy)]
enum Tx {
    /// Copied into the transmitting socket's own UMEM (the datapath's way).
    Copy,
    /// Transmitted from the receiving socket's UMEM by a socket sharing it.
    SharedUmem,
}

/// A thread forwarding every frame of one interface's queue 0 out of another's, on CPU 1 at a
/// worker's priority.
struct Forwarder {
    fd: RawFd,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Forwarder {
    /// Binds the sockets (in the calling thread's namespace) and starts forwarding.
    fn start(mode: Tx, from: &str, to: &str) -> std::io::Result<Forwarder> {
        let stop = Arc::new(AtomicBool::new(false));
        let (fd, run): (RawFd, Box<dyn FnMut() -> std::io::Result<usize> + Send>) = match mode {
            Tx::Copy => {
                let (mut rx, mut tx) =
                    (XskPort::bind(from, 0, 4096, None)?, XskPort::bind(to, 0, 4096, None)?);
                let fd = rx.fd().expect("a socket");
                (
                    fd,
                    Box::new(move || {
                        let n = rx.recv(BATCH, |frame| {
                            let _ = tx.send(frame);
                        })?;
                        let _ = tx.flush();
                        Ok(n)
                    }),
                )
            }
            Tx::SharedUmem => {
                let mut shared = SharedUmem::bind(from, to)?;
                (shared.fd(), Box::new(move || shared.forward()))
            }
        };
        let nice = Config::default().worker_nice;
        let thread = {
            let (stop, mut run) = (stop.clone(), run);
            std::thread::spawn(move || {
                set_affinity(0, 1)?;
                // SAFETY: setpriority on this thread only.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
                while !stop.load(Ordering::Relaxed) {
                    if run()? == 0 {
                        wait_readable(&[fd], 10)?;
                    }
                }
                Ok(())
            })
        };
        Ok(Forwarder { fd, stop, thread })
    }

    fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| "the forwarder panicked")??;
        Ok(())
    }
}

/// Two sockets on one UMEM: frames received on the first are transmitted by the second as
/// they are, and return to the first's fill ring once sent.
struct SharedUmem {
    rx: RxQueue,
    fill: FillQueue,
    tx: TxQueue,
    comp: CompQueue,
    batch: Vec<FrameDesc>,
    done: Vec<FrameDesc>,
    _sockets: (TxQueue, RxQueue, FillQueue, CompQueue),
    /// Last: the UMEM outlives its sockets.
    _umem: Umem,
}

impl SharedUmem {
    fn bind(from: &str, to: &str) -> std::io::Result<SharedUmem> {
        let err = |e: String| std::io::Error::other(e);
        // As many frames as the fill ring holds: they circulate fill → rx → tx → completion.
        let frames = NonZeroU32::new(2048).expect("nonzero");
        let (umem, descs) =
            Umem::new(UmemConfig::default(), frames, false).map_err(|e| err(e.to_string()))?;
        let config =
            SocketConfig::builder().libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD).build();
        let name = |n: &str| n.parse().map_err(|e| err(format!("{e:?}")));
        // SAFETY: the UMEM is dropped last (the struct's last field), after every queue.
        let (tx_a, rx, fq_a) =
            unsafe { Socket::new(config, &umem, &name(from)?, 0) }.map_err(|e| err(e.to_string()))?;
        // SAFETY: as above; a second (interface, queue) on a shared UMEM gets its own rings.
        let (tx, rx_b, fq_b) =
            unsafe { Socket::new(config, &umem, &name(to)?, 0) }.map_err(|e| err(e.to_string()))?;
        let ((mut fill, comp_a), (fill_b, comp)) = (
            fq_a.ok_or_else(|| err("no fill ring".into()))?,
            fq_b.ok_or_else(|| err("no fill ring".into()))?,
        );
        // SAFETY: this UMEM's frames, in no other ring.
        unsafe { fill.produce(&descs) };
        Ok(SharedUmem {
            rx,
            fill,
            tx,
            comp,
            batch: descs.clone(),
            done: descs,
            _sockets: (tx_a, rx_b, fill_b, comp_a),
            _umem: umem,
        })
    }

    fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// One round: received frames out, completed frames back to the fill ring.
    fn forward(&mut self) -> std::io::Result<usize> {
        // SAFETY: every frame is in exactly one place: fill ring, rx ring, `batch`, tx ring or
        // completion ring, and moves between them only here.
        unsafe {
            let n = self.rx.consume(&mut self.batch[..BATCH]);
            if n > 0 && self.tx.produce(&self.batch[..n]) == 0 {
                // The transmit ring is full: these are dropped, back to receiving.
                self.fill.produce(&self.batch[..n]);
            }
            // In copy mode the kernel sends at most 32 frames per wakeup.
            for _ in 0..n.div_ceil(32) {
                if self.tx.needs_wakeup() {
                    self.tx.wakeup()?;
                }
            }
            let done = self.comp.consume(&mut self.done);
            self.fill.produce(&self.done[..done]);
            if self.fill.needs_wakeup() {
                self.fill.wakeup(self.rx.fd_mut(), 0)?;
            }
            Ok(n + done)
        }
    }
}
