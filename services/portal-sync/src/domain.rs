//! Pure rules: the portal's entities and the checks on what an admin sends
//! ([`model`]), the write rules of provisioning and the catalogue ([`rules`]),
//! the fold of `PORTAL` ([`state`]) and what a provider sync
//! decides ([`sync`]). No I/O, no clock: time comes in as a value.

pub mod model;
pub mod rules;
pub mod state;
pub mod sync;

pub use state::PortalState;

use sha2::{Digest, Sha256};

/// SHA-256 (hex) of a key: how the portal names a credential.
pub fn hash_key(key: &str) -> String {
    format!("{:x}", Sha256::digest(key.as_bytes()))
}
