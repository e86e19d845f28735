//! The XDP program's flow table as a worker writes it ([`NicFlows`]): a new flow's replies
//! steered to the worker, an established flow's two directions forwarded at the NIC, taken
//! back when it closes or its backend goes, removed when it ends; and the observers' channel
//! of new flows.

use crossbeam_channel::Sender;
use skiff_common::conntrack::{CtEntry, CtKey};
use skiff_engine::{conntrack::Entry, engine::NewFlow, offload};
use skiff_xdp::FlowTable;

use crate::worker::Flows;

/// A worker's flows as the datapath hears of them: the XDP program's flow table (with
/// AF_XDP) and the observers' channel.
pub struct NicFlows {
    table: Option<FlowTable>,
    observers: Sender<NewFlow>,
}

impl NicFlows {
    /// Writes into `table` (none: the worker forwards every flow itself, over AF_PACKET) and
    /// tells `observers` of new flows (dropped when they lag).
    pub fn new(table: Option<FlowTable>, observers: Sender<NewFlow>) -> NicFlows {
        NicFlows { table, observers }
    }
}

impl Flows for NicFlows {
    fn started(&mut self, flow: &NewFlow) -> bool {
        let _ = self.observers.try_send(*flow);
        let Some(table) = &mut self.table else { return true };
        let (key, entry) = offload::to_worker(&flow.original, &flow.reply, flow.backend);
        table.insert(key, &entry).is_ok()
    }

    fn ended(&mut self, flow: &Entry) {
        if let Some(table) = &mut self.table {
            let _ = table.remove(offload::key(&flow.reply));
            if flow.offloaded() {
                let _ = table.remove(offload::key(&flow.original));
            }
        }
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
                last_seen_ns: e.last_seen_ns,
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
            .map(|e| e.last_seen_ns)
            .max()?;
        (seen != 0).then_some(seen / 1_000_000_000)
    }
}
