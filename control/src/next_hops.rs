//! Next hops from the kernel of the node's network namespace, over rtnetlink: which device
//! and MACs reach an address. Neighbour entries with a link-layer address on the datapath's
//! devices are taken as they are (clients on the uplink, pods on their veths); an address the
//! kernel routes through a gateway is reached through the gateway's entry; the default
//! route's gateway becomes the entry for the unspecified address, the fallback for any other
//! destination. The kernel's notifications of link, neighbour and route changes say when to
//! read again, and a gateway lookup is remembered until one comes. Until the slow path
//! resolves neighbours itself, the kernel's tables are the source; an address wanted without
//! a neighbour entry is probed so the kernel resolves it. In native routing the agent also
//! adds its routes to other nodes' pod CIDRs here.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, channel::mpsc::UnboundedReceiver};
use ipnet::IpNet;
use rtnetlink::{
    Handle, MulticastGroup, RouteMessageBuilder,
    packet_core::NetlinkMessage,
    packet_route::{
        RouteNetlinkMessage,
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol},
    },
    sys::SocketAddr,
};
use skiff_engine::tables::Neighbor;

/// The routing protocol number of the routes skiff adds (unassigned in `rt_protos`).
pub const RTPROT_SKIFF: u8 = 83;

/// Notifications of the kernel's link, neighbour and route changes.
pub type Changes = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// The kernel's routing tables as the datapath's devices see them.
pub struct Kernel {
    handle: Handle,
    /// The datapath's devices by port number.
    devices: Vec<(usize, String)>,
    /// Gateway and output device of addresses looked up in the kernel's FIB (`ip route get`)
    /// since the last change.
    routed: HashMap<IpAddr, Option<(IpAddr, u32)>>,
    /// When the kernel was last asked to resolve an address it had no neighbour for.
    probed: HashMap<IpAddr, Instant>,
}

/// A datapath device as the kernel knows it now.
struct Device {
    port: usize,
    index: u32,
    mac: [u8; 6],
}

impl Kernel {
    /// Connects to rtnetlink in the calling thread's network namespace, subscribed to link,
    /// neighbour and route changes.
    pub fn connect(devices: Vec<(usize, String)>) -> Result<(Kernel, Changes)> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ];
        let (connection, handle, changes) =
            rtnetlink::new_multicast_connection(&groups).context("opening an rtnetlink socket")?;
        tokio::spawn(connection);
        Ok((Kernel { handle, devices, routed: HashMap::new(), probed: HashMap::new() }, changes))
    }

    /// The datapath's devices changed (a pod's veth was attached or detached).
    pub fn set_devices(&mut self, devices: Vec<(usize, String)>) {
        self.devices = devices;
        self.routed.clear();
    }

    /// Forgets the gateway lookups: routes or neighbours changed.
    pub fn changed(&mut self) {
        self.routed.clear();
    }

    /// The next hops for the devices (a next hop's `port` is its device's port number) and
    /// for the `wanted` addresses the kernel routes through a gateway on one of them.
    pub async fn next_hops(
        &mut self,
        wanted: impl IntoIterator<Item = IpAddr>,
    ) -> Result<HashMap<IpAddr, Neighbor>> {
        let devices = self.devices().await?;
        let device_of = |index: u32| devices.iter().find(|d| d.index == index);
        let mut hops = HashMap::new();
        let mut by_gateway = HashMap::new();
        let mut neighbours = self.handle.neighbours().get().execute();
        while let Some(n) = neighbours.try_next().await.context("reading the neighbour table")? {
            let Some((addr, mac)) = usable(&n) else { continue };
            let Some(device) = device_of(n.header.ifindex) else { continue };
            let hop = Neighbor { port: device.port, src_mac: device.mac, dst_mac: mac };
            hops.insert(addr, hop);
            by_gateway.insert((addr, n.header.ifindex), hop);
        }
        let mut routes = self.handle.route().get(RouteMessageBuilder::<IpAddr>::new().build()).execute();
        while let Some(r) = routes.try_next().await.context("reading the routes")? {
            let default =
                r.header.destination_prefix_length == 0 && r.header.table == RouteHeader::RT_TABLE_MAIN;
            if let (true, Some(via)) = (default, gateway(&r))
                && let Some(&hop) = by_gateway.get(&via)
            {
                let any = if via.0.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                };
                hops.insert(any, hop);
            }
        }
        for addr in wanted {
            if hops.contains_key(&addr) {
                continue;
            }
            let via = match self.routed.get(&addr) {
                Some(via) => *via,
                None => {
                    let via = self.route_get(addr).await?;
                    self.routed.insert(addr, via);
                    via
                }
            };
            match via.and_then(|via| by_gateway.get(&via)) {
                Some(&hop) => {
                    hops.insert(addr, hop);
                }
                None => self.probe(via.map_or(addr, |(gateway, _)| gateway)),
            }
        }
        Ok(hops)
    }

    /// Has the kernel resolve `addr`'s neighbour (ARP or ND) by sending it a datagram (to
    /// the discard port), at most once a second: the neighbour entry that follows is a
    /// change, and the next hops are read again. Other nodes and backends on the uplink's
    /// subnet need no static entry.
    fn probe(&mut self, addr: IpAddr) {
        let now = Instant::now();
        if self.probed.get(&addr).is_some_and(|at| now.duration_since(*at) < Duration::from_secs(1)) {
            return;
        }
        self.probed.insert(addr, now);
        let socket = if addr.is_ipv4() {
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
        };
        // An address with no route fails here, and stays without a next hop.
        if let Ok(socket) = socket {
            let _ = socket.send_to(&[], (addr, 9));
        }
    }

    /// Adds `addresses` (as /32 and /128) to the loopback device; those there already stay.
    pub async fn add_to_loopback(&self, addresses: &[IpAddr]) -> Result<()> {
        let lo = self.handle.link().get().match_name("lo").execute().try_next().await?;
        let index = lo.context("no loopback device")?.header.index;
        for &address in addresses {
            let host = if address.is_ipv4() { 32 } else { 128 };
            match self.handle.address().add(index, address, host).execute().await {
                Ok(()) => tracing::info!("the pods' gateway {address} is on lo"),
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("adding the pods' gateway {address} to lo")),
            }
        }
        Ok(())
    }

    /// Makes skiff's routes (protocol [`RTPROT_SKIFF`], `proto 83` in `ip route`) exactly
    /// `routes` (pod CIDR via a node's address): adds the missing, deletes the others, those
    /// a previous agent left included.
    pub async fn set_node_routes(&self, routes: &[(IpNet, IpAddr)]) -> Result<()> {
        let mut kept = Vec::new();
        let mut dump = self.handle.route().get(RouteMessageBuilder::<IpAddr>::new().build()).execute();
        let mut stale = Vec::new();
        while let Some(r) = dump.try_next().await.context("reading the routes")? {
            if r.header.protocol != RouteProtocol::Other(RTPROT_SKIFF) {
                continue;
            }
            let route = destination(&r).zip(gateway(&r).map(|(via, _)| via));
            match route.filter(|route| routes.contains(route)) {
                Some(route) => kept.push(route),
                None => stale.push(r),
            }
        }
        for r in stale {
            let what = format!("{:?}", destination(&r));
            self.handle
                .route()
                .del(r)
                .execute()
                .await
                .with_context(|| format!("deleting the route to {what}"))?;
        }
        for &(cidr, via) in routes.iter().filter(|r| !kept.contains(r)) {
            let bad = |e| anyhow::anyhow!("a route to {cidr} via {via}: {e}");
            let route = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(cidr.addr(), cidr.prefix_len())
                .map_err(bad)?
                .gateway(via)
                .map_err(bad)?
                .protocol(RouteProtocol::Other(RTPROT_SKIFF))
                .build();
            self.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .with_context(|| format!("adding a route to {cidr} via {via}"))?;
            tracing::info!("route to {cidr} via {via}");
        }
        Ok(())
    }

    /// Each datapath device's index and MAC, as they are now. A device that is gone (a
    /// pod's veth whose namespace went before its DEL came) has no next hops.
    /// One dump of the links, not a request per device: with a veth per pod, a node has
    /// a hundred devices (110 requests took 9 ms on every change).
    async fn devices(&self) -> Result<Vec<Device>> {
        let mut devices = Vec::with_capacity(self.devices.len());
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.context("reading the links")? {
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            });
            let Some((port, name)) = self.devices.iter().find(|(_, d)| Some(d) == name) else { continue };
            let mac = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            });
            let Some(mac) = mac else { bail!("the device {name} has no Ethernet address") };
            devices.push(Device { port: *port, index: link.header.index, mac });
        }
        Ok(devices)
    }

    /// The gateway and output device through which the kernel routes `addr`, if through a
    /// gateway.
    async fn route_get(&self, addr: IpAddr) -> Result<Option<(IpAddr, u32)>> {
        let host = if addr.is_ipv4() { 32 } else { 128 };
        let query = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, host)
            .map_err(|e| anyhow::anyhow!("a route query for {addr}: {e}"))?
            .build();
        // An unroutable address is an error reply: no next hop, not a failure.
        let found = self.handle.route().get(query).execute().next().await;
        Ok(found.and_then(Result::ok).as_ref().and_then(gateway))
    }
}

/// The errno of a netlink error reply.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A neighbour entry's address and MAC, if it has a usable one.
fn usable(n: &NeighbourMessage) -> Option<(IpAddr, [u8; 6])> {
    if matches!(n.header.state, NeighbourState::Incomplete | NeighbourState::Failed) {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => addr = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => addr = Some(IpAddr::V6(*v6)),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    addr.zip(mac)
}

/// A route's destination prefix.
fn destination(r: &RouteMessage) -> Option<IpNet> {
    let len = r.header.destination_prefix_length;
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => IpNet::new(IpAddr::V4(*v4), len).ok(),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => IpNet::new(IpAddr::V6(*v6), len).ok(),
        _ => None,
    })
}

/// A route's gateway and output device.
fn gateway(r: &RouteMessage) -> Option<(IpAddr, u32)> {
    let mut via = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => via = Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => via = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    via.zip(oif)
}
