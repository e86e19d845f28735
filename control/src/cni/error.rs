//! The CNI error result: a code (the spec's well-known ones where they fit, 100 and up for
//! skiff's own), a short message and the details a person needs.

use serde::Serialize;
use skiff_api::{ApiError, ClientError, ErrorCode};

/// A failed operation, as the runtime gets it on standard out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// The spec's codes (Section 5, "Error") and skiff's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The interface to create already exists in the container.
    pub const INTERFACE_EXISTS: u32 = 100;
    /// The node's pod addresses are all taken.
    pub const ADDRESSES_EXHAUSTED: u32 = 101;
    /// Making or removing the interfaces failed.
    pub const INTERFACE_FAILED: u32 = 102;
    /// The agent refused the request.
    pub const AGENT_REFUSED: u32 = 103;
    /// CHECK found the attachment other than ADD made it.
    pub const CHECK_FAILED: u32 = 104;
}

impl CniError {
    pub fn new(code: u32, msg: &str, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }
}

/// The agent's answers as CNI errors: an agent that cannot be reached is transient ("try
/// again later", naming its socket); what it refuses says why.
impl From<ClientError> for CniError {
    fn from(e: ClientError) -> CniError {
        match e {
            ClientError::Connect { ref socket, .. } => CniError::new(
                code::TRY_AGAIN_LATER,
                "skiff-agent is not reachable",
                format!("{e} (is skiff-agent running with --socket {}?)", socket.display()),
            ),
            ClientError::Agent(ApiError { code: ErrorCode::NotReady, message }) => {
                CniError::new(code::TRY_AGAIN_LATER, "skiff-agent is not ready", message)
            }
            ClientError::Agent(ApiError { code: ErrorCode::Exhausted, message }) => {
                CniError::new(code::ADDRESSES_EXHAUSTED, "no pod address left", message)
            }
            ClientError::Agent(ApiError { code: ErrorCode::NotFound, message }) => {
                CniError::new(code::UNKNOWN_CONTAINER, "skiff-agent does not know this container", message)
            }
            other => CniError::new(code::AGENT_REFUSED, "skiff-agent refused", other.to_string()),
        }
    }
}
