//! Whether an interface takes frames that an XDP program redirects to it from another
//! (`NETDEV_XDP_ACT_NDO_XMIT`), as the kernel's `netdev` generic netlink family reports it. A
//! veth has it only while its peer can receive such frames (an XDP program or GRO on the
//! peer); redirecting to one without it loses the frame.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla, NlasIterator,
    Parseable, ParseableParametrized,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

/// `include/uapi/linux/netdev.h`.
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// A `netdev` family message: its command and attributes.
#[derive(Clone, Debug)]
struct Netdev {
    cmd: u8,
    nlas: Vec<DefaultNla>,
}

impl GenlFamily for Netdev {
    fn family_name() -> &'static str {
        "netdev"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for Netdev {
    fn buffer_len(&self) -> usize {
        self.nlas.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.nlas.as_slice().emit(buffer);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Netdev {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let nlas = NlasIterator::new(buf).map(|nla| DefaultNla::parse(&nla?)).collect::<Result<_, _>>()?;
        Ok(Netdev { cmd: header.cmd, nlas })
    }
}

/// Whether interface `ifindex` (in the calling thread's network namespace) takes redirected
/// XDP frames. A kernel without the `netdev` family (before 6.3) says no.
pub fn takes_xdp_frames(ifindex: u32) -> std::io::Result<bool> {
    let socket = connect()?;
    let Some(family) = ask::<GenlCtrl>(
        &socket,
        GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(Netdev::family_name().into())],
        },
        0,
    )?
    .and_then(|reply| {
        reply.nlas.into_iter().find_map(|a| if let GenlCtrlAttrs::FamilyId(id) = a { Some(id) } else { None })
    }) else {
        return Ok(false);
    };
    let request = Netdev {
        cmd: NETDEV_CMD_DEV_GET,
        nlas: vec![DefaultNla::new(NETDEV_A_DEV_IFINDEX, ifindex.to_ne_bytes().into())],
    };
    let features = ask(&socket, request, family)?.and_then(|reply| {
        let nla = reply.nlas.into_iter().find(|a| a.kind() == NETDEV_A_DEV_XDP_FEATURES)?;
        let mut value = [0; 8];
        nla.emit_value(&mut value);
        Some(u64::from_ne_bytes(value))
    });
    Ok(features.is_some_and(|f| f & NETDEV_XDP_ACT_NDO_XMIT != 0))
}

fn connect() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Sends one request of family `family` (0: its own fixed id) and reads its answer; `None`
/// when the kernel answers with an error (an unknown family or interface).
fn ask<F>(socket: &Socket, payload: F, family: u16) -> std::io::Result<Option<F>>
where
    F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
{
    let mut message = GenlMessage::from_payload(payload);
    if family != 0 {
        message.set_resolved_family_id(family);
    }
    message.finalize();
    let mut request = NetlinkMessage::from(message);
    request.header.flags = NLM_F_REQUEST;
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let (answer, _) = socket.recv_from_full()?;
    let answer = NetlinkMessage::<GenlMessage<F>>::deserialize(&answer)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(match answer.payload {
        NetlinkPayload::InnerMessage(m) => Some(m.payload),
        _ => None,
    })
}
