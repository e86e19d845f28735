//! What an engine tells observers: one record per decision (a flow started, answered, judged
//! or ended; a packet dropped), never one per forwarded packet, in Hubble's medium monitor
//! aggregation. Records are plain values kept in a bounded buffer: the packet path neither
//! allocates nor waits for an observer; past the buffer's room records are counted lost.

use skiff_common::{DropReason, identity::Identity, lb::BackendId};

use crate::{flow::Tuple, policy::Verdict};

/// Records remembered between two drains (a round holds at most 320 frames).
pub const EVENTS_PER_ROUND: usize = 512;

/// One decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The packet's tuple as it arrived: a flow's original direction for `Started` and
    /// `Ended`, its reply direction for `Replied`.
    pub tuple: Tuple,
    /// The same packet as it leaves the node: after DNAT to a backend and SNAT for a
    /// `Started` flow, after reverse NAT (from the frontend) for `Replied`; `tuple` where
    /// nothing is translated.
    pub translated: Tuple,
    pub backend: BackendId,
    /// The identities policy judged the flow by (`UNKNOWN` unless judged).
    pub src_identity: Identity,
    pub dst_identity: Identity,
    /// An ended flow's packets and bytes, both directions (the NIC's included).
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC when the worker passed it on (0 until then).
    pub at_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A new flow's first packet, forwarded (translated to its backend, masqueraded).
    Started,
    /// A flow's first reply.
    Replied,
    /// A flow ended (closed, expired, evicted or replaced), with its counts.
    Ended,
    /// Policy judged a new flow, in the direction that decided (`ingress`: the destination's
    /// rules; else the source's egress rules).
    Judged { verdict: Verdict, ingress: bool },
    /// A packet dropped.
    Dropped(DropReason),
    /// A packet the kernel never saw handed to the slow path (ARP/ND, ICMP, the node's own).
    ToSlowPath,
}

impl Event {
    /// A record about `tuple` alone (no flow, no backend, no identities).
    pub fn of(kind: EventKind, tuple: Tuple) -> Event {
        Event {
            kind,
            tuple,
            translated: tuple,
            backend: BackendId::NONE,
            src_identity: Identity::UNKNOWN,
            dst_identity: Identity::UNKNOWN,
            packets: 0,
            bytes: 0,
            at_ns: 0,
        }
    }
}

/// A bounded buffer of records between two drains; what finds no room is counted.
#[derive(Debug)]
pub struct Events {
    buffer: Vec<Event>,
    /// Records that found no room since the last drain.
    lost: u64,
    /// Off: nothing is recorded (`--flow-events=false`).
    pub on: bool,
}

impl Default for Events {
    fn default() -> Events {
        Events { buffer: Vec::with_capacity(EVENTS_PER_ROUND), lost: 0, on: true }
    }
}

impl Events {
    #[inline]
    pub fn push(&mut self, event: Event) {
        if !self.on {
            return;
        }
        if self.buffer.len() < EVENTS_PER_ROUND {
            self.buffer.push(event);
        } else {
            self.lost += 1;
        }
    }

    /// Hands every record, in order, to `f`; returns how many found no room since the last
    /// drain.
    pub fn drain(&mut self, mut f: impl FnMut(Event)) -> u64 {
        for e in self.buffer.drain(..) {
            f(e);
        }
        std::mem::take(&mut self.lost)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_full_buffer_counts_what_it_loses_and_off_records_nothing() {
        let tuple =
            Tuple::new(Ipv4Addr::new(198, 18, 0, 1).into(), Ipv4Addr::new(198, 18, 0, 2).into(), 6, 1, 2);
        let mut events = Events::default();
        for _ in 0..EVENTS_PER_ROUND + 3 {
            events.push(Event::of(EventKind::Started, tuple));
        }
        let mut got = 0;
        assert_eq!(events.drain(|_| got += 1), 3);
        assert_eq!(got, EVENTS_PER_ROUND);
        events.on = false;
        events.push(Event::of(EventKind::Started, tuple));
        assert_eq!(events.drain(|_| got += 1), 0, "off: neither kept nor lost");
        assert_eq!(got, EVENTS_PER_ROUND);
    }
}
