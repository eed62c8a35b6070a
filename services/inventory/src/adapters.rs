//! Adapters: sled storage of the repository and the lifecycle outbox publisher.

pub mod outbox;
pub mod store;
