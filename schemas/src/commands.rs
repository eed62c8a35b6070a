//! Commands sent between services over core NATS request/reply (not stored).

use serde::{Deserialize, Serialize};

use crate::ids::RunId;

/// Ask the agent-gateway replica holding an agent's sync stream to start
/// runs. Sent on [`crate::streams::sync_request_subject`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSync {
    /// One provider, or every provider the agent reported when `None`.
    pub provider: Option<String>,
}

/// One run started by [`TriggerSync`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted {
    /// The provider.
    pub provider: String,
    /// The run id the agent will echo.
    pub run_id: RunId,
}

/// The answer to [`TriggerSync`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriggerSyncReply {
    /// Requests were pushed to the agent.
    Started(Vec<RunStarted>),
    /// The agent did not report that provider.
    UnknownProvider(String),
    /// The agent's health stream is up but its sync stream is not.
    SyncStreamDown,
}

/// Encodes a command or reply (postcard).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encoding into a Vec cannot fail")
}

/// Decodes a command or reply (postcard).
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
