//! The repository in the local store: its key layout ([`keys`]), the
//! projection of the `SYNC` stream into it ([`Repository`], applying the
//! rules of [`crate::domain`]), and the read queries ([`Queries`]).
//!
//! Keys (one tree; ids are raw 16-byte UUIDs, sequences big-endian):
//! - `a<api>` the [`ApiRecord`](crate::domain::ApiRecord); its definition
//!   stays in the `SYNC` log, the record names the message ([`definition`]
//!   reads it)
//! - `p<agent><provider>` the [`ProviderRecord`](crate::domain::ProviderRecord)
//! - `m<agent><provider>\0<chunk>` a provider's members: the ids of the APIs
//!   it created, in the order it created them, 1024 to a chunk (8 bytes;
//!   `ProviderRecord::members` says how many there are), each a list
//!   ([`meridian_kit::projection::items`]). A completion that may delete
//!   reads them and then each member's record. Where an API goes depends
//!   only on the events before it, so any batching builds the same lists.
//!   A write per batch instead of an index entry per API: that second random
//!   key per API was about a quarter of the projection's thread (memtable
//!   inserts), and the record already says what the entry did (the newest
//!   run that saw the API, and whether it is deleted).
//! - `r<run>` the [`RunRecord`](crate::domain::RunRecord); `s<run><api>`
//!   "seen in this run" for the few APIs a newer run saw first (see
//!   [`crate::domain::Sighting`]), removed when the run ends
//! - `\xff\xffoutbox/<seq>` lifecycle events not yet published, one entry
//!   per atomic batch (keyed by its first `SYNC` sequence) holding its
//!   events in order; kept out of the digest: publishing is not state
//! - `\xff\xfftrace/<run>` the run's W3C trace context, when it was traced,
//!   so its lifecycle events join the same trace (also out of the digest)
//!
//! The layout has a version ([`FORMAT`]): a repository in another layout is
//! replayed from the log at start (see
//! [`meridian_kit::projection::ensure_format`]); the commit history says
//! what each version changed.

mod keys;
mod projection;
mod queries;

use meridian_kit::projection::CorruptList;
use meridian_kit::store::StoreError;
use meridian_schemas::DecodeError;

pub use keys::{OUTBOX_PREFIX, trace_key};
pub use projection::{
    OutboxMark, PROJECTION_ID, Repository, lifecycle_event, outbox_entry, pending_events,
};
pub use queries::{ApiFilter, DefinitionError, Queries, StatusFilter, definition};

/// Layout version of the repository tree; bump it when a key or record
/// changes shape, and say in the commit what changed.
pub const FORMAT: u32 = 7;

/// Why the repository could not apply a message or answer a query.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// A `SYNC` message this build cannot read.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A stored record or outbox entry does not decode.
    #[error("corrupt record: {0}")]
    Corrupt(#[from] postcard::Error),
    /// A member list ends in the middle of an id.
    #[error("corrupt member list: {0}")]
    List(#[from] CorruptList),
    /// The records contradict each other.
    #[error("inconsistent repository: {0}; rebuild it")]
    Inconsistent(&'static str),
    /// The local store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}
