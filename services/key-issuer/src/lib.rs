//! # meridian-key-issuer
//!
//! Keys, policies, organisation sessions and OAuth clients behind Tyk's
//! Gateway API (`/tyk/...`, `x-tyk-authorization`), so scripts written for
//! Tyk work unchanged. Every change is an event on `KEYS`; every replica
//! (and the proxy, and portal-sync) folds it into the same view, with each
//! key's effective session (the key merged with its policies, by Tyk's
//! rules: see [`domain::merge`]) ready for a lookup without I/O.
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
//! Modules: [`domain`] (pure), [`adapters`] (fold, writer, relay, token
//! records), [`api`] (REST), [`app`] (wiring).

#![cfg_attr(test, recursion_limit = "1024")] // the json! fixture of Tyk's merge table

pub mod adapters;
pub mod api;
pub mod app;
pub mod domain;

pub use app::{App, Config, DigestView, rebuild};
