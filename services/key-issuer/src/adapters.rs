//! Everything that touches NATS: the fold of `KEYS` ([`fold`]), the writer
//! that turns a checked change into an event published as a
//! compare-and-set on its entity ([`writer`]), the relay of changes to the
//! public stream ([`relay`]) and the responder that records the OAuth
//! tokens the proxy issues ([`tokens`]); and a read-only fold of the
//! gateway's API definitions (`APIS`, [`apis`]) for the OAuth client checks.

pub mod apis;
pub mod fold;
pub mod relay;
pub mod tokens;
pub mod writer;
