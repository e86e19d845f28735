//! Socket-LB in the agent: where its programs attach, and their tables from the tables the
//! workers get, in the same publish.

use anyhow::{Context, Result};
use skiff_api::SocketLb as State;
use skiff_engine::tables::Tables;
use skiff_xdp::{SocketBackend, SocketFrontend, SocketLb};

use super::Options;

/// Loads and attaches socket-LB as `options` ask. Socket-LB is off when asked, or when the
/// node cannot have it (no cgroup v2 and no right to mount one, a kernel without the hooks):
/// the agent runs without it and the state says why.
pub(super) fn start(options: &Options) -> (Option<SocketLb>, State) {
    if !options.socket_lb {
        return (None, State::Off { reason: "--socket-lb false".into() });
    }
    match attach(options) {
        Ok(lb) => {
            let state = State::On {
                cgroup: options.cgroup_root.clone(),
                host_namespace_only: options.socket_lb_host_namespace_only,
            };
            tracing::info!("socket-LB: {state}");
            (Some(lb), state)
        }
        Err(e) => {
            // Each cause once (an error's message may already quote its source).
            let mut reason = String::new();
            for cause in e.chain().map(ToString::to_string) {
                if !reason.contains(&cause) {
                    reason += &if reason.is_empty() { cause } else { format!(": {cause}") };
                }
            }
            let state = State::Off { reason };
            tracing::warn!("socket-LB: {state}; the node's own connections to services are not translated");
            (None, state)
        }
    }
}

fn attach(options: &Options) -> Result<SocketLb> {
    let mut lb = SocketLb::load(&options.pin_dir).context("loading the socket programs")?;
    lb.set_config(options.socket_lb_host_namespace_only)?;
    lb.attach(&options.cgroup_root)?;
    Ok(lb)
}

/// Fills socket-LB's tables from `tables`: every frontend with the backends a connection from
/// inside the cluster may take, NodePorts on every node's address.
pub(super) fn publish(lb: &mut SocketLb, tables: &Tables) -> Result<()> {
    let frontends: Vec<SocketFrontend> = tables
        .services
        .iter()
        .map(|(f, s)| SocketFrontend {
            addr: f.addr,
            port: f.port,
            protocol: f.protocol,
            kind: s.config().kind,
            on_this_node: tables.node.addresses.contains(&f.addr),
            backends: s
                .internal_backends()
                .map(|b| SocketBackend { id: b.id, addr: b.addr, port: b.port, weight: b.weight })
                .collect(),
            affinity_timeout: s.config().affinity_timeout,
        })
        .collect();
    lb.set_services(&frontends, &tables.node_addresses).context("socket-LB tables")
}
