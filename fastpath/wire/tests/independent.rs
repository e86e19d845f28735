//! VXLAN (RFC 7348) and Geneve (RFC 8926) as another implementation writes and reads them:
//! scapy (Debian's python3-scapy, installed by `cargo xtask setup`; only /usr/bin/python3 sees
//! it) builds frames that skiff-wire must parse to the fields scapy was given, and decodes the
//! frames skiff-testkit builds (skiff-wire's `emit`) to the fields skiff put in. A machine
//! without scapy fails these tests; it does not skip them.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr},
    process::{Command, Stdio},
};

use skiff_testkit::eth;
use skiff_wire::{
    geneve::{self, GeneveOption},
    layers::{self, L3, L4},
    vxlan,
};

const PYTHON: &str = "/usr/bin/python3";

/// Runs a scapy script with `input` on its stdin; its stdout, line by line.
fn scapy(script: &str, input: &str) -> Vec<String> {
    let mut child = Command::new(PYTHON)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 runs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "scapy failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// The tunnel header of an outer frame (its UDP payload) and its destination port.
fn tunnel(frame: &[u8]) -> (u16, &[u8]) {
    let p = layers::parse(frame).expect("the outer frame parses");
    let (L3::Ip(ip), L4::Udp { dst_port, .. }) = (p.l3, p.l4) else { panic!("not UDP: {p:?}") };
    (dst_port, &frame[p.l4_offset + 8..p.l3_offset + ip.len])
}

/// The inner frame's flow: source, destination, destination port.
fn inner_flow(frame: &[u8]) -> (IpAddr, IpAddr, u16) {
    let f = layers::parse(frame).expect("the inner frame parses").flow(frame).expect("an IP flow");
    (f.src, f.dst, f.dst_port)
}

const BUILD: &str = r#"
from scapy.all import Ether, IP, IPv6, UDP, TCP, raw
from scapy.layers.vxlan import VXLAN
from scapy.contrib.geneve import GENEVE, GeneveOptions
inner = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.0.2", dst="198.19.0.1") / TCP(sport=1234, dport=80, flags="S")
outer4 = Ether() / IP(src="198.18.0.2", dst="198.18.0.1")
outer6 = Ether() / IPv6(src="fd00::2", dst="fd00::1")
opts = [GeneveOptions(classid=0xfff0, type=0x01, data=b"\x00\x00\x01\x2c"),
        GeneveOptions(classid=0x0103, type=0x80, data=b"\x00\x00\x00\x07\x00\x00\x00\x08")]
cases = [
    ("vxlan", outer4 / UDP(sport=40000, dport=8472) / VXLAN(vni=0x123456, flags=0x08) / inner),
    ("vxlan6", outer6 / UDP(sport=40001, dport=4789) / VXLAN(vni=1, flags=0x08) / inner),
    ("geneve", outer4 / UDP(sport=40002, dport=6081) / GENEVE(vni=0xabcdef, proto=0x6558) / inner),
    ("geneve-options", outer4 / UDP(sport=40003, dport=6081) / GENEVE(vni=42, proto=0x6558, optionlen=5, critical=1, options=opts) / inner),
    ("geneve-oam6", outer6 / UDP(sport=40004, dport=6081) / GENEVE(vni=7, proto=0x6558, oam=1) / inner),
]
for name, p in cases:
    print(name, raw(p).hex())
"#;

/// Frames scapy builds parse to the fields it was given, the inner frame included.
#[test]
fn skiff_parses_what_scapy_builds() {
    let frames: Vec<(String, Vec<u8>)> = scapy(BUILD, "")
        .iter()
        .map(|l| {
            let (name, frame) = l.split_once(' ').unwrap();
            (name.to_owned(), unhex(frame))
        })
        .collect();
    assert_eq!(frames.len(), 5, "{frames:?}");
    let want_inner = (Ipv4Addr::new(198, 18, 0, 2).into(), Ipv4Addr::new(198, 19, 0, 1).into(), 80);
    for (name, frame) in &frames {
        let (port, header) = tunnel(frame);
        match name.as_str() {
            "vxlan" | "vxlan6" => {
                let p = vxlan::Packet::new_checked(header).expect("VXLAN");
                let want = if name == "vxlan" { (8472, 0x12_3456) } else { (4789, 1) };
                assert_eq!((port, p.vni(), p.flags()), (want.0, want.1, 0x08), "{name}");
                assert_eq!(inner_flow(p.payload()), want_inner, "{name}");
            }
            _ => {
                let p = geneve::Packet::new_checked(header).expect("Geneve");
                assert_eq!((port, p.version(), p.protocol()), (6081, 0, geneve::PROTOCOL_ETHERNET), "{name}");
                let options: Vec<(u16, u8, Vec<u8>)> =
                    p.options().map(|o| o.unwrap()).map(|o| (o.class, o.kind, o.data.to_vec())).collect();
                let want = match name.as_str() {
                    "geneve" => (0xab_cdef, false, false, vec![]),
                    "geneve-options" => (
                        42,
                        false,
                        true,
                        vec![
                            (0xfff0, 0x01, vec![0, 0, 1, 0x2c]),
                            (0x0103, 0x80, vec![0, 0, 0, 7, 0, 0, 0, 8]),
                        ],
                    ),
                    _ => (7, true, false, vec![]),
                };
                assert_eq!((p.vni(), p.oam(), p.critical(), options), want, "{name}");
                assert_eq!(inner_flow(p.payload()), want_inner, "{name}");
            }
        }
    }
}

const DECODE: &str = r#"
import sys
from scapy.all import Ether, UDP, IP, TCP
from scapy.layers.vxlan import VXLAN
from scapy.contrib.geneve import GENEVE
for line in sys.stdin:
    p = Ether(bytes.fromhex(line.strip()))
    if VXLAN in p:
        t = p[VXLAN]
        print("vxlan", t.vni, int(t.flags))
    else:
        t = p[GENEVE]
        print("geneve", t.vni, t.version, t.optionlen, t.oam, t.critical, hex(t.proto),
              ";".join("%x/%x/%s" % (o.classid, o.type, o.data.hex()) for o in t.options))
    i = t.payload
    print("inner", i[IP].src, i[IP].dst, i[TCP].dport)
"#;

/// scapy reads the tunnel headers skiff writes as skiff meant them.
#[test]
fn scapy_reads_what_skiff_builds() {
    let inner = |b: skiff_testkit::Builder| {
        b.eth().ipv4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 19, 0, 1)).tcp(1234, 80).syn().build()
    };
    let outer = || eth().ipv4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
    let mut option = [0u8; 8];
    GeneveOption { class: 0xfff0, kind: 0x01, data: &[0, 0, 1, 0x2c] }.emit(&mut option);
    let frames = [
        inner(outer().udp(40000, 8472).vxlan(0x12_3456)),
        inner(outer().udp(40000, 6081).geneve(0xab_cdef, &[])),
        inner(outer().udp(40000, 6081).geneve(42, &option)),
    ];
    let input: String = frames.iter().map(|f| hex(f) + "\n").collect();
    let lines = scapy(DECODE, &input);
    let inner_line = "inner 198.18.0.2 198.19.0.1 80";
    assert_eq!(
        lines,
        [
            "vxlan 1193046 8",
            inner_line,
            "geneve 11259375 0 0 0 0 0x6558 ",
            inner_line,
            "geneve 42 0 2 0 0 0x6558 fff0/1/0000012c",
            inner_line,
        ]
    );
}
