//! The XDP program's flow table as a worker writes it ([`NicFlows`]): a new flow's replies
//! steered to the worker, an established flow's two directions forwarded at the NIC, taken
//! back when it closes or its backend goes, removed when it ends.

use skiff_common::conntrack::{CtEntry, CtKey};
use skiff_engine::{conntrack::Entry, engine::NewFlow, offload};
use skiff_xdp::FlowTable;

use crate::worker::Flows;

/// A worker's flows as the XDP program's flow table (with AF_XDP) holds them.
pub struct NicFlows {
    table: Option<FlowTable>,
}

impl NicFlows {
    /// Writes into `table` (none: the worker forwards every flow itself, over AF_PACKET).
    pub fn new(table: Option<FlowTable>) -> NicFlows {
        NicFlows { table }
    }
}

impl Flows for NicFlows {
    fn started(&mut self, flow: &NewFlow) -> bool {
        let Some(table) = &mut self.table else { return true };
        let (key, entry) = offload::to_worker(&flow.original, &flow.reply, flow.backend);
        table.insert(key, &entry).is_ok()
    }

    fn ended(&mut self, flow: &Entry) -> (u64, u64) {
        let Some(table) = &mut self.table else { return (0, 0) };
        let mut forwarded = (0, 0);
        let keys = [offload::key(&flow.reply), offload::key(&flow.original)];
        // A flow on the worker path has its reply's entry only.
        for key in &keys[..if flow.offloaded() { 2 } else { 1 }] {
            if flow.offloaded()
                && let Some(e) = table.get(*key)
            {
                forwarded = (forwarded.0 + e.packets, forwarded.1 + e.bytes);
            }
            let _ = table.remove(*key);
        }
        forwarded
    }

    fn offload(&mut self, directions: &[(CtKey, CtEntry); 2]) -> bool {
        let Some(table) = &mut self.table else { return false };
        // The original direction's key is new and may find no room; the reply's exists (it
        // steers the replies to the worker) and is replaced in place, which cannot fail for
        // room: a flow is never half offloaded. An entry that says the same already (new
        // tables that leave the flow alone) is not written again, and one rewritten keeps
        // what the XDP program recorded.
        directions.iter().all(|(key, entry)| {
            let now = table.get(*key);
            let wanted = now.map_or(*entry, |e| CtEntry {
                last_seen: e.last_seen,
                packets: e.packets,
                bytes: e.bytes,
                ..*entry
            });
            now == Some(wanted) || table.insert(*key, &wanted).is_ok()
        })
    }

    fn take_back(&mut self, flow: &Entry) {
        if let Some(table) = &mut self.table {
            let (key, entry) = offload::to_worker(&flow.original, &flow.reply, flow.backend);
            let _ = table.insert(key, &entry);
            let _ = table.remove(offload::key(&flow.original));
        }
    }

    fn nic_last_seen(&mut self, flow: &Entry) -> Option<u64> {
        let table = self.table.as_ref()?;
        let seen = [&flow.original, &flow.reply]
            .into_iter()
            .filter_map(|t| table.get(offload::key(t)))
            .filter_map(|e| table.seen_ns(&e))
            .max()?;
        Some(seen / 1_000_000_000)
    }
}
