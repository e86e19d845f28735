//! Next hops from the kernel of the node's network namespace, over rtnetlink: which device
//! and MACs reach an address. Neighbour entries with a link-layer address on the datapath's
//! devices are taken as they are (clients on the uplink, pods on their veths); an address the
//! kernel routes through a gateway is reached through the gateway's entry; the default
//! route's gateway becomes the entry for the unspecified address, the fallback for any other
//! destination. The kernel's notifications of link, neighbour and route changes say when to
//! read again, and a gateway lookup is remembered until one comes. Until the slow path
//! resolves neighbours itself, the kernel's tables are the source.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    Handle, MulticastGroup, RouteMessageBuilder,
    packet_core::NetlinkMessage,
    packet_route::{
        RouteNetlinkMessage,
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
    },
    sys::SocketAddr,
};
use skiff_engine::tables::Neighbor;

/// Notifications of the kernel's link, neighbour and route changes.
pub type Changes = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// The kernel's routing tables as the datapath's devices see them.
pub struct Kernel {
    handle: Handle,
    devices: Vec<String>,
    /// Gateway and output device of addresses looked up in the kernel's FIB (`ip route get`)
    /// since the last change.
    routed: HashMap<IpAddr, Option<(IpAddr, u32)>>,
}

/// A datapath device as the kernel knows it now.
struct Device {
    index: u32,
    mac: [u8; 6],
}

impl Kernel {
    /// Connects to rtnetlink in the calling thread's network namespace, subscribed to link,
    /// neighbour and route changes.
    pub fn connect(devices: &[String]) -> Result<(Kernel, Changes)> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ];
        let (connection, handle, changes) =
            rtnetlink::new_multicast_connection(&groups).context("opening an rtnetlink socket")?;
        tokio::spawn(connection);
        Ok((Kernel { handle, devices: devices.to_vec(), routed: HashMap::new() }, changes))
    }

    /// Forgets the gateway lookups: routes or neighbours changed.
    pub fn changed(&mut self) {
        self.routed.clear();
    }

    /// The next hops for the devices (a next hop's `port` is its device's index in the list)
    /// and for the `wanted` addresses the kernel routes through a gateway on one of them.
    pub async fn next_hops(
        &mut self,
        wanted: impl IntoIterator<Item = IpAddr>,
    ) -> Result<HashMap<IpAddr, Neighbor>> {
        let devices = self.devices().await?;
        let port_of = |index: u32| devices.iter().position(|d| d.index == index);
        let mut hops = HashMap::new();
        let mut by_gateway = HashMap::new();
        let mut neighbours = self.handle.neighbours().get().execute();
        while let Some(n) = neighbours.try_next().await.context("reading the neighbour table")? {
            let Some((addr, mac)) = usable(&n) else { continue };
            let Some(port) = port_of(n.header.ifindex) else { continue };
            let hop = Neighbor { port, src_mac: devices[port].mac, dst_mac: mac };
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
            if let Some(&hop) = via.and_then(|via| by_gateway.get(&via)) {
                hops.insert(addr, hop);
            }
        }
        Ok(hops)
    }

    /// Each datapath device's index and MAC, as they are now.
    async fn devices(&self) -> Result<Vec<Device>> {
        let mut devices = Vec::with_capacity(self.devices.len());
        for name in &self.devices {
            let link = self.handle.link().get().match_name(name.clone()).execute().try_next().await;
            let link = link
                .with_context(|| format!("reading the device {name}"))?
                .with_context(|| format!("no device {name}"))?;
            let mac = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            });
            let Some(mac) = mac else { bail!("the device {name} has no Ethernet address") };
            devices.push(Device { index: link.header.index, mac });
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
