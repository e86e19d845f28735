//! `skiff_xdp_redirect`: sends every frame out of the one interface in `REDIRECT_TO`
//! (XDP_REDIRECT through a devmap), untouched. The ceiling the flow table's forwarding is
//! measured against: the least a frame forwarded at the NIC can cost.
#![no_std]
#![no_main]

use skiff_xdp_ebpf as _;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::DevMap,
    programs::XdpContext,
};

/// One slot: the interface to send out of. The name is `skiff_common::maps::REDIRECT_TO`.
#[map]
static REDIRECT_TO: DevMap = DevMap::with_max_entries(1, 0);

#[xdp]
pub fn skiff_xdp_redirect(_ctx: XdpContext) -> u32 {
    REDIRECT_TO.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
}

/// GPL-compatible, so the program may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
