//! The interfaces of an attachment, over rtnetlink: a veth pair whose host side is named
//! after the attachment (`lxc` + 12 hex digits of a SHA-256, as Cilium names them) and whose
//! other side is made directly inside the container's namespace under `CNI_IFNAME`; the
//! pod's /32 and /128 with routes through the node's gateway, static neighbours both ways, and
//! transmit checksum offload off on both ends (AF_XDP and XDP see complete checksums).

use std::{
    fs::File,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
        route::{RouteMessage, RouteScope},
    },
};
use sha2::{Digest, Sha256};
use skiff_api::Attachment;

use super::result::Interface;
use crate::next_hops::errno;

/// The host side's name: the same for the same attachment, at most 15 bytes.
pub fn host_ifname(attachment: &Attachment) -> String {
    let digest = Sha256::digest(format!("{}/{}", attachment.container_id, attachment.ifname));
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("lxc{hex}")
}

/// rtnetlink in one network namespace.
pub struct Netlink {
    handle: Handle,
    /// For the ethtool ioctl, in the same namespace.
    ioctl: OwnedFd,
}

/// A link as it is now.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    pub up: bool,
}

impl Netlink {
    /// rtnetlink in the calling thread's namespace (inside the runtime: the socket registers
    /// with it).
    pub fn here() -> io::Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let ioctl = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { handle, ioctl })
    }

    /// rtnetlink inside the namespace `netns` (a path such as `/run/netns/<name>`): the
    /// sockets are opened there and keep working once this thread is back home.
    pub fn inside(netns: &File) -> io::Result<Netlink> {
        let home = File::open("/proc/thread-self/ns/net")?;
        enter(netns)?;
        let inside = Netlink::here();
        enter(&home).map_err(|e| io::Error::other(format!("returning to the host's namespace: {e}")))?;
        inside
    }

    /// The link named `name`, if it exists.
    pub async fn link(&self, name: &str) -> io::Result<Option<Link>> {
        let found = self.handle.link().get().match_name(name.to_owned()).execute().try_next().await;
        match found {
            Ok(Some(message)) => Ok(Some(link_of(&message))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(failed(&format!("reading the link {name}"), &e)),
        }
    }

    /// Makes the veth pair: `host` here, `peer` inside `netns`, `queues` queues each way.
    pub async fn add_veth(
        &self,
        host: &str,
        peer: &str,
        netns: &File,
        mtu: u32,
        queues: u32,
    ) -> io::Result<()> {
        let inner = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd())
            .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
            .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
            .build();
        let message = LinkVeth::new(host, peer)
            .mtu(mtu)
            .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
            .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
            .set_info_data(InfoData::Veth(InfoVeth::Peer(inner)))
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| failed(&format!("creating the veth pair {host} / {peer}"), &e))
    }

    /// Deletes the link `name`; `false` if there was none.
    pub async fn delete(&self, name: &str) -> io::Result<bool> {
        let Some(link) = self.link(name).await? else { return Ok(false) };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            // Gone meanwhile (its namespace was deleted): as good as deleted.
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(failed(&format!("deleting the link {name}"), &e)),
        }
    }

    pub async fn set_up(&self, index: u32) -> io::Result<()> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.handle.link().set(message).execute().await.map_err(|e| failed("bringing the link up", &e))
    }

    /// A host address on the link (IPv6 without duplicate address detection: the address
    /// is the pod's alone).
    pub async fn add_address(&self, index: u32, address: IpNet) -> io::Result<()> {
        let mut request = self.handle.address().add(index, address.addr(), address.prefix_len());
        if address.addr().is_ipv6() {
            request.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await.map_err(|e| failed(&format!("adding the address {address}"), &e))
    }

    /// The link's addresses.
    pub async fn addresses(&self, index: u32) -> io::Result<Vec<IpNet>> {
        let mut found = Vec::new();
        let mut messages = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(m) = messages.try_next().await.map_err(|e| failed("reading addresses", &e))? {
            let prefix = m.header.prefix_len;
            for a in &m.attributes {
                if let AddressAttribute::Address(addr) = a
                    && let Ok(net) = IpNet::new(*addr, prefix)
                {
                    found.push(net);
                }
            }
        }
        Ok(found)
    }

    /// A route to `to` through the link itself (scope link), replacing one there was.
    pub async fn route_to(&self, index: u32, to: IpNet) -> io::Result<()> {
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(to.addr(), to.prefix_len())
            .map_err(|e| io::Error::other(format!("a route to {to}: {e}")))?
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.replace_route(message, &format!("a route to {to}")).await
    }

    /// The default route of `via`'s family through `via` on the link.
    pub async fn default_via(&self, index: u32, via: IpAddr) -> io::Result<()> {
        let any = if via.is_ipv4() { IpNet::V4(Default::default()) } else { IpNet::V6(Default::default()) };
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(any.addr(), 0)
            .and_then(|b| b.gateway(via))
            .map_err(|e| io::Error::other(format!("a default route via {via}: {e}")))?
            .output_interface(index)
            .build();
        self.replace_route(message, &format!("the default route via {via}")).await
    }

    async fn replace_route(&self, route: RouteMessage, what: &str) -> io::Result<()> {
        self.handle.route().add(route).replace().execute().await.map_err(|e| failed(what, &e))
    }

    /// A permanent neighbour entry: `address` is at `mac` on the link.
    pub async fn neighbour(&self, index: u32, address: IpAddr, mac: [u8; 6]) -> io::Result<()> {
        self.handle
            .neighbours()
            .add(index, address)
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(|e| failed(&format!("the neighbour {address}"), &e))
    }

    /// Transmit checksum offload off (`ethtool -K <name> tx off`): frames leave with their
    /// checksums written, which AF_XDP and XDP need on a veth.
    pub fn tx_checksum_off(&self, name: &str) -> io::Result<()> {
        const ETHTOOL_STXCSUM: u32 = 0x17;
        self.ethtool(name, ETHTOOL_STXCSUM, 0, "turning transmit checksum offload off")
    }

    /// GRO on (`ethtool -K <name> gro on`): a veth with GRO receives through NAPI, so that
    /// skiff's XDP program on its peer may forward frames into it (its flow table).
    pub fn gro_on(&self, name: &str) -> io::Result<()> {
        const ETHTOOL_SGRO: u32 = 0x2c;
        self.ethtool(name, ETHTOOL_SGRO, 1, "turning GRO on")
    }

    /// One `SIOCETHTOOL` command with a value (`struct ethtool_value`).
    fn ethtool(&self, name: &str, cmd: u32, data: u32, what: &str) -> io::Result<()> {
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        let mut value = EthtoolValue { cmd, data };
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.len() >= ifr.ifr_name.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?}")));
        }
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
        // SAFETY: SIOCETHTOOL reads `ifr` and the ethtool_value it points to, both alive for
        // the call.
        let rc = unsafe { libc::ioctl(self.ioctl.as_raw_fd(), libc::SIOCETHTOOL, &raw mut ifr) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what} on {name}: {e}")));
        }
        Ok(())
    }
}

/// Opens the network namespace at `path`.
pub fn open_netns(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Moves the calling thread into the namespace `ns`.
fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns on the calling thread with a namespace descriptor we hold.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn link_of(message: &LinkMessage) -> Link {
    let mac = message
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or_default();
    Link { index: message.header.index, mac, up: message.header.flags.contains(LinkFlags::Up) }
}

impl Link {
    pub fn interface(&self, name: &str, sandbox: Option<&Path>) -> Interface {
        Interface { name: name.to_owned(), mac: self.mac, sandbox: sandbox.map(|p| p.display().to_string()) }
    }
}

fn failed(what: &str, e: &rtnetlink::Error) -> io::Error {
    match errno(e) {
        Some(n) => {
            let os = io::Error::from_raw_os_error(n);
            io::Error::new(os.kind(), format!("{what}: {os}"))
        }
        None => io::Error::other(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_and_follow_the_attachment() {
        let a = Attachment { container_id: "0123abcd".into(), ifname: "eth0".into() };
        let b = Attachment { container_id: "0123abcd".into(), ifname: "net1".into() };
        let name = host_ifname(&a);
        assert_eq!((name.len(), &name[..3]), (15, "lxc"));
        assert_eq!(name, host_ifname(&a.clone()));
        assert_ne!(name, host_ifname(&b));
        // `printf 0123abcd/eth0 | sha256sum` starts 2b30002f723a.
        assert_eq!(name, "lxc2b30002f723a");
    }
}
