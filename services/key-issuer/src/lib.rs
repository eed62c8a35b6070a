//! # meridian-key-issuer
//!
//! Keys, policies, organisation sessions and OAuth clients behind Tyk's
//! Gateway API (`/tyk/...`, `x-tyk-authorization`), so scripts written for
//! Tyk work unchanged. Every change is an event on `KEYS`; every replica
//! (and the proxy, and portal-sync) folds it into the same view, with each
//! key's effective session (the key merged with its policies, by Tyk's
//! rules: see [`meridian_keys::merge`]) ready for a lookup without I/O.
//!
//! Keys, tokens and client secrets never travel or rest in clear: the log
//! and the view name them by their SHA-256.
//!
//! Publishes: `KEYS`; the public `MERIDIAN_EVENTS` (`io.meridian.key.*`,
//! `io.meridian.policy.*`, `io.meridian.oauth_client.*`).
//! Consumes: `KEYS` (an ordered consumer, rebuilt in memory at start).
//! Answers: `meridian.keys.tokens.record` (the proxy records the OAuth
//! tokens it issued).
//!
//! Modules: [`domain`] (pure, the `meridian-keys` crate), [`adapters`]
//! (writer, relay, token records; the fold is `meridian_keys::fold`),
//! [`api`] (REST), [`app`] (wiring).

pub mod adapters;
pub mod api;
pub mod app;

/// The pure keys domain lives in its own crate, shared with the proxy
/// (which must not depend on this service): model, merge, state, checks.
pub use meridian_keys as domain;

pub use app::{App, Config, rebuild};
pub use meridian_kit::http::DigestView;
