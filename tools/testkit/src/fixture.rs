//! The fixture table shared by the engine tests, the XDP tests (`BPF_PROG_TEST_RUN`) and the
//! benches, after Katran's: what goes in, what the datapath must do with it, and what the packet must look
//! like afterwards.

use skiff_common::drop_reason::DropReason;

/// What the datapath must do with a fixture's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Hand it to the kernel stack unchanged (XDP_PASS).
    Pass,
    /// Drop it, counting this reason.
    Drop(DropReason),
    /// Redirect it to an AF_XDP worker (XDP_REDIRECT into the XSKMAP); with none bound, the
    /// kernel has it.
    Redirect,
    /// Redirect it to an AF_XDP worker for a policy verdict; with none bound, drop it
    /// (`NoXskSocket`): never let through unjudged.
    Judge,
    /// Send it back out (XDP_TX, or a worker's transmit).
    Tx,
}

/// One row: `{description, input, expected action, expected output}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixture {
    pub description: &'static str,
    pub input: Vec<u8>,
    pub expect: Expect,
    /// The frame after processing, where the datapath changes it (decap, NAT); `None` when
    /// the output is not checked (drops) or equals the input.
    pub output: Option<Vec<u8>>,
}

impl Fixture {
    pub fn new(description: &'static str, input: Vec<u8>, expect: Expect) -> Self {
        Fixture { description, input, expect, output: None }
    }
    /// Expects this output frame.
    pub fn output(mut self, frame: Vec<u8>) -> Self {
        self.output = Some(frame);
        self
    }
}
