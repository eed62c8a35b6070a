//! Everything that touches NATS: the fold of `KEYS` ([`fold`], from the
//! shared `meridian-keys` crate), the writer
//! that turns a checked change into an event published as a
//! compare-and-set on its entity ([`writer`]), the relay of changes to the
//! public stream ([`relay`]) and the responder that records the OAuth
//! tokens the proxy issues ([`tokens`]); and a read-only fold of the
//! gateway's API definitions (`APIS`, [`apis`]) for the OAuth client checks.

pub mod apis;
pub use meridian_keys::fold;
pub mod relay;
pub mod tokens;
pub mod writer;
