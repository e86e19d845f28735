//! ICMP errors about tracked flows, translated like the flows they quote.

use skiff_common::DropReason;
use skiff_wire::{
    icmp,
    layers::{self, L3, Parsed},
};

use super::{Action, Own};
use crate::{
    conntrack::Entry,
    flow::{Direction, Tuple, unmap},
    nat::{self, Side},
    tables::{Frontend, Tables},
};

impl Own {
    /// An ICMP error quotes a packet as it was sent; the reverse of the quote is the direction
    /// the error travels in. About a tracked flow it is translated like the flow (the client
    /// must see it come from the frontend, the backend must see it about its own packet);
    /// about no flow it is dropped if it targets a frontend address, and left alone otherwise.
    pub(super) fn icmp_error(
        &mut self,
        tables: &Tables,
        frame: &mut [u8],
        p: &Parsed,
        may_hand_off: bool,
    ) -> Result<Action, DropReason> {
        let L3::Ip(ip) = p.l3 else { return Ok(Action::Pass) };
        let (_, dst) = p.addrs(frame).ok_or(DropReason::Internal)?;
        let quote = frame
            .get(p.l4_offset + icmp::HEADER_LEN..p.l3_offset + ip.len)
            .ok_or(DropReason::IcmpTruncated)?;
        // The quote reversed: the tuple of a packet of the flow going the way the error goes.
        let key = layers::parse_quoted(quote, ip.v6)
            .ok()
            .map(|q| Tuple::new(q.dst, q.src, q.protocol.0, q.dst_port, q.src_port));
        let tracked = key.as_ref().and_then(|key| self.conntrack.lookup(key));
        if tracked.is_none()
            && may_hand_off
            && let Some(key) = key
        {
            let (src, dst) = (unmap(key.src, ip.v6), unmap(key.dst, ip.v6));
            let frontend = Frontend { addr: dst, port: key.dst_port, protocol: key.protocol };
            let to_frontend = tables.services.contains_key(&frontend);
            let under_policy = tables.policy.enforces(src) || tables.policy.enforces(dst);
            if let Some(worker) = self.owner_elsewhere(tables, &key, to_frontend, under_policy) {
                return Ok(Action::Handoff { worker });
            }
        }
        let Some((id, dir)) = tracked else {
            return Ok(if tables.is_frontend_address(dst) {
                Action::Drop(DropReason::UnsolicitedIcmpError)
            } else {
                Action::Pass
            });
        };
        let entry = self.conntrack.get(id).ok_or(DropReason::Internal)?;
        nat::decrement_ttl(frame, p)?;
        translate_icmp_error(frame, p, entry, dir)?;
        Ok(Action::Forward)
    }
}

/// Translates an ICMP error about a tracked flow, travelling in `dir`, like the flow's own
/// packets: it leaves looking like the other direction's tuple reversed. The far end always
/// changes (errors from the backend's side come from the frontend, the client's errors reach
/// the backend); the near end only for a masqueraded flow.
fn translate_icmp_error(
    frame: &mut [u8],
    p: &Parsed,
    entry: &Entry,
    dir: Direction,
) -> Result<(), DropReason> {
    let L3::Ip(ip) = p.l3 else { return Err(DropReason::UnsupportedEthertype) };
    let other = entry.other(dir);
    let endpoint = |side| match side {
        Side::Source => (other.dst, other.dst_port),
        Side::Destination => (other.src, other.src_port),
    };
    let (far, near) = match dir {
        Direction::Original => (Side::Destination, Side::Source),
        Direction::Reply => (Side::Source, Side::Destination),
    };
    let (addr, port) = endpoint(far);
    nat::translate_icmp_error(frame, p, far, unmap(addr, ip.v6), port)?;
    if entry.masqueraded() {
        let (addr, port) = endpoint(near);
        nat::translate_icmp_error(frame, p, near, unmap(addr, ip.v6), port)?;
    }
    Ok(())
}
