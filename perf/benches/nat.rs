//! Packets per second of a service's NAT path in the lab, same generator, same run, rounds in
//! alternating order: one established UDP flow of 64-byte frames from the client to `VIP:80`,
//! DNATed to the pod's port 8080, counted where it ends: an nftables drop rule on the pod's
//! interface (one sink, the same for every side). Four sides: skiff with the flow established
//! (the pod answered it, so the worker offloaded it: the XDP program translates each frame and
//! redirects it to the pod's veth), skiff with the flow on the worker path (XDP redirect →
//! AF_XDP worker → DNAT → AF_XDP transmit), the kernel's nftables DNAT with conntrack, and the
//! ceiling: an XDP program redirecting every frame between the same devices untouched.
//!
//! Then transmission onto another interface over AF_XDP: what skiff ships, a copy into the
//! other socket's own UMEM (`io::afxdp`), against a second socket sharing the receiving
//! socket's UMEM that transmits the received frame itself (measured to decide, not shipped).
//! Frames from the uplink go out of the pod's veth unchanged, 64 and 1500 bytes, counted by
//! the same sink.
//!
//! CPU 0 runs the generator; CPU 1 runs everything of the node: the uplink's threaded NAPI and,
//! for skiff, the worker (pinned there, at a worker's priority). Writes
//! `target/bench-report/fastpath-lab.json`, which `bench-report` adds to `fastpath.json`. Root
//! only. `SKIFF_LAB_FRAMES` sets the frames per round (default 2^24).

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use skiff_common::{
    config::XdpConfig,
    conntrack::FlowPath,
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
use skiff_lab::{Lab, Topology};
use skiff_perf::{
    Record,
    lab::{
        FRAMES, ROUNDS, Result, abba, alternate, generate_sized, ifindex, nft, nft_counter, nft_drop_rule,
        set_affinity, split_layout, udp_frame,
    },
    write_report,
};
use skiff_xdp::{CountProgram, Ingress, RedirectProgram, XdpMode, bpffs};
use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
    config::{LibxdpFlags, SocketConfig, UmemConfig},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const SINK: &str = "skiffsink";

/// The lab, the generator's frames and the sink.
struct Bench {
    lab: Lab,
    dir: PathBuf,
    frames: u32,
    out: u32,
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let lab = Topology::new().pods(1).build()?;
    let (client, pod) = (lab.client().clone(), lab.pods()[0].clone());
    nft_drop_rule(&pod.netns, SINK, &pod.iface, client.ipv4)?;
    // The pod's end receives through NAPI (as skiff-cni sets it), for every side alike: XDP
    // may redirect into its veth.
    pod.netns.exec("ethtool", &["-K", &pod.iface, "gro", "on"])?;
    let bench = Bench {
        out: ifindex(&client.netns, &client.iface)?,
        frames: std::env::var("SKIFF_LAB_FRAMES").ok().and_then(|f| f.parse().ok()).unwrap_or(FRAMES),
        dir: PathBuf::from(format!("/sys/fs/bpf/skiff-bench-nat-{}", std::process::id())),
        lab,
    };
    let mut records = bench.nat_path()?;
    for len in [64, 1500] {
        records.push(bench.transmit(len)?);
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    write_report(&target, "fastpath-lab", &records)?;
    Ok(())
}

impl Bench {
    /// Frames of `len` bytes to `VIP:80` that reach the pod's sink per second of generating.
    fn delivered(&self, len: usize) -> Result<f64> {
        let (client, pod) = (self.lab.client(), &self.lab.pods()[0]);
        let frame =
            udp_frame(client, SocketAddrV4::new(client.ipv4, 40000), SocketAddrV4::new(VIP, 80), len)?;
        let before = nft_counter(&pod.netns, "netdev", SINK)?;
        let elapsed = generate_sized(&client.netns, frame, len, self.out, self.frames)?;
        Ok((nft_counter(&pod.netns, "netdev", SINK)? - before) as f64 / elapsed.as_secs_f64())
    }

    /// skiff's NAT path, one established flow forwarded at the NIC (its reply seen, the flow
    /// table translates and redirects) and one left on the worker path (never answered: AF_XDP
    /// to the worker, DNAT, AF_XDP out), against nftables DNAT + conntrack; beside them the
    /// ceiling: every frame redirected between the same devices untouched.
    fn nat_path(&self) -> Result<Vec<Record>> {
        let (client, node) = (self.lab.client(), self.lab.node());
        let mut at_nic = || self.skiff(true);
        let mut worker = || self.skiff(false);
        let mut kernel = || -> Result<f64> {
            // DNAT in prerouting, conntrack, forwarding. The uplink needs an XDP program for
            // the generator's redirect to arrive: the counting one, which passes.
            let mut pass = CountProgram::load()?;
            node.netns.run(|| pass.attach(&client.node_iface, XdpMode::Native))??;
            split_layout(&node.netns, &client.node_iface)?;
            nft(
                &node.netns,
                &format!(
                    "table ip skiffnat {{\n  chain prerouting {{\n    type nat hook prerouting priority -100;\n    ip daddr {VIP} udp dport 80 dnat to {}:8080\n  }}\n}}\n",
                    self.lab.pods()[0].ipv4
                ),
            )?;
            let pps = self.delivered(64);
            node.netns.exec("nft", &["delete", "table", "ip", "skiffnat"])?;
            pps
        };
        let mut ceiling = || -> Result<f64> {
            let to = ifindex(&node.netns, &self.lab.pods()[0].node_iface)?;
            let iface = client.node_iface.clone();
            let _redirect = node.netns.run(move || -> std::result::Result<RedirectProgram, String> {
                let mut program = RedirectProgram::load(to).map_err(|e| e.to_string())?;
                program.attach(&iface, XdpMode::Native).map_err(|e| e.to_string())?;
                Ok(program)
            })??;
            split_layout(&node.netns, &client.node_iface)?;
            self.delivered(64)
        };
        let figures = alternate(ROUNDS, &mut [&mut at_nic, &mut worker, &mut kernel, &mut ceiling])?;
        let [at_nic, worker, kernel, ceiling] = <[_; 4]>::try_from(figures).map_err(|_| "four sides")?;
        println!(
            "NAT path, 1 established UDP flow: skiff at the NIC {:.2} Mpps, on the worker path {:.2} Mpps, nftables DNAT + conntrack {:.2} Mpps, bare XDP_REDIRECT {:.2} Mpps; rounds {:.0?}, {:.0?}, {:.0?} and {:.0?}",
            at_nic.value / 1e6,
            worker.value / 1e6,
            kernel.value / 1e6,
            ceiling.value / 1e6,
            at_nic.rounds,
            worker.rounds,
            kernel.rounds,
            ceiling.rounds
        );
        Ok(vec![
            Record::new("lab_pps_nat_established_udp", "pps", at_nic)
                .against("nftables DNAT + conntrack", kernel.clone()),
            Record::new("lab_pps_nat_worker_path_udp", "pps", worker)
                .against("nftables DNAT + conntrack", kernel),
            Record::new("lab_pps_xdp_redirect_ceiling", "pps", ceiling),
        ])
    }

    /// skiff's side: the ingress program on the uplink and the pod's veth, one worker on CPU 1.
    /// `established`: the pod answers the flow's first frame, so that the worker offloads it.
    fn skiff(&self, established: bool) -> Result<f64> {
        let (client, node, pod) = (self.lab.client(), self.lab.node(), &self.lab.pods()[0]);
        let mut ingress = Ingress::load(&self.dir)?;
        ingress.set_config(&XdpConfig::DEFAULT)?;
        let backend = Backend { id: BackendId(1), addr: pod.ipv4.into(), port: 8080, weight: 1, local: true };
        let service = Service::new(vec![backend], ServiceConfig::default())?;
        let frontend = Frontend { addr: VIP.into(), port: 80, protocol: 17 };
        let to_client = Neighbor { port: 0, src_mac: client.node_mac, dst_mac: client.mac };
        let to_pod = Neighbor { port: 1, src_mac: pod.node_mac, dst_mac: pod.mac };
        let tables = Tables {
            services: [(frontend, service)].into_iter().collect(),
            next_hops: [(client.ipv4.into(), to_client), (pod.ipv4.into(), to_pod)].into_iter().collect(),
            ..Tables::default()
        };
        let config = Config {
            interfaces: vec![client.node_iface.clone(), pod.node_iface.clone()],
            io: Io::AfXdp(XdpMode::Native),
            cores: vec![1],
            ..Config::default()
        };
        let datapath = node.netns.run(|| Datapath::start(config, Some(tables), Some(ingress)))??;
        split_layout(&node.netns, &client.node_iface)?;
        if established {
            self.establish(&datapath)?;
        }
        let pps = self.delivered(64);
        let at_nic = datapath.flow_paths()?.into_iter().find(|(p, _)| *p == FlowPath::Forwarded);
        let stats = datapath.stop();
        println!(
            "  skiff ({}): worker received {}, forwarded {}, dropped {}; forwarded at the NIC {}",
            if established { "established" } else { "worker path" },
            stats.received,
            stats.forwarded,
            stats.dropped,
            at_nic.map_or(0, |(_, c)| c.packets)
        );
        bpffs::remove_pins(&self.dir)?;
        pps
    }

    /// Starts the flow and has the pod answer it; returns once the worker offloaded it.
    fn establish(&self, datapath: &Datapath) -> Result<()> {
        let (client, pod) = (self.lab.client(), &self.lab.pods()[0]);
        let frame = udp_frame(client, SocketAddrV4::new(client.ipv4, 40000), SocketAddrV4::new(VIP, 80), 64)?;
        generate_sized(&client.netns, frame, 64, self.out, 1)?;
        let (from, to) = (SocketAddrV4::new(pod.ipv4, 8080), SocketAddrV4::new(client.ipv4, 40000));
        pod.netns.run(move || UdpSocket::bind(from)?.send_to(b"answer", to))??;
        let deadline = Instant::now() + Duration::from_secs(2);
        while datapath.stats().offloaded == 0 {
            if Instant::now() > deadline {
                return Err(format!("the flow was not offloaded: {:?}", datapath.stats()).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Transmission onto another interface: a copy (skiff's way) against a shared UMEM.
    fn transmit(&self, len: usize) -> Result<Record> {
        let (client, node, pod) = (self.lab.client(), self.lab.node(), &self.lab.pods()[0]);
        let run = |mode: Tx| -> Result<f64> {
            let mut ingress = Ingress::load(&self.dir)?;
            ingress.set_config(&XdpConfig::DEFAULT)?;
            node.netns.run(|| ingress.attach(&client.node_iface, XdpMode::Native))??;
            let uplink = ifindex(&node.netns, &client.node_iface)?;
            let (from, to) = (client.node_iface.clone(), pod.node_iface.clone());
            let forwarder = node.netns.run(move || Forwarder::start(mode, &from, &to))??;
            ingress.set_worker(uplink, 0, forwarder.fd)?;
            ingress.set_services(&[(VIP.into(), 80, 17, FrontendKind::ClusterIp)])?;
            split_layout(&node.netns, &client.node_iface)?;
            let pps = self.delivered(len);
            forwarder.stop()?;
            drop(ingress);
            bpffs::remove_pins(&self.dir)?;
            pps
        };
        let (copy, shared) = abba(ROUNDS, || run(Tx::Copy), || run(Tx::SharedUmem))?;
        println!(
            "AF_XDP transmit onto another interface, {len}-byte frames: copy {:.2} Mpps, shared UMEM {:.2} Mpps; rounds {:.0?} and {:.0?}",
            copy.value / 1e6,
            shared.value / 1e6,
            copy.rounds,
            shared.rounds
        );
        Ok(Record::new(format!("lab_pps_xsk_tx_other_interface_{len}b_copy"), "pps", copy)
            .against("a shared UMEM (not shipped)", shared))
    }
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
                        let n = rx.recv(BATCH, |frame, _| {
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
