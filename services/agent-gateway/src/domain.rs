//! The gateway's rules, pure: no I/O, no clock (time comes in as a value).
//!
//! - [`registry`]: agents, their tokens and fencing, as a fold of `AGENTS`.
//! - [`runs`]: the sync-run protocol of one sync stream (what an agent may
//!   send, in which order), as a state machine.
//! - [`orphans`]: the open runs of `SYNC`, and which to check for a holder.

pub mod orphans;
pub mod registry;
pub mod runs;

pub use registry::*;
