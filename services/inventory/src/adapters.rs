//! Adapters: storage of the repository, the lifecycle outbox publisher,
//! and the public stream (relay, agent status watcher, reads).

pub mod outbox;
pub mod public;
pub mod store;
