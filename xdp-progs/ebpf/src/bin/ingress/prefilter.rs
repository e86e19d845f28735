//! The prefilter: a source address in a denied CIDR (the deny LPM tries) is dropped before
//! anything else looks at the frame.

use aya_ebpf::maps::lpm_trie::Key;
use skiff_common::DropReason;

use crate::maps::{DENY_V4, DENY_V6};

#[inline(always)]
pub fn check_v4(src: [u8; 4]) -> Result<(), DropReason> {
    match DENY_V4.get(Key::new(32, src)) {
        Some(_) => Err(DropReason::DeniedCidr),
        None => Ok(()),
    }
}

#[inline(always)]
pub fn check_v6(src: [u8; 16]) -> Result<(), DropReason> {
    match DENY_V6.get(Key::new(128, src)) {
        Some(_) => Err(DropReason::DeniedCidr),
        None => Ok(()),
    }
}
