//! # meridian-proxy
//!
//! Meridian's gateway. The data plane forwards requests to each API's
//! upstream (longest listen path first), checking keys issued by
//! key-issuer; the admin side keeps API definitions behind Tyk's Gateway
//! API (`/tyk/apis`, `/tyk/reload`, `/hello`, `x-tyk-authorization`), so
//! Tyk scripts work unchanged.
//!
//! Every replica folds `APIS` (the definitions, written only here) and
//! `KEYS` (written by key-issuer) into memory and serves from those views:
//! no network call per request but the upstream. A change reaches every
//! replica as it is stored; each announces what it applied, so a blocking
//! reload can wait for all of them (see [`adapters::replicas`]).
//!
//! Publishes: `APIS`; core NATS `meridian.proxy.applied`.
//! Consumes: `APIS`, `KEYS` (ordered consumers, rebuilt at start).
//!
//! Modules: [`domain`] (pure), [`adapters`] (folds, writer, replicas, data
//! plane), [`api`] (REST), [`app`] (wiring).

pub mod adapters;
pub mod api;
pub mod app;
pub mod domain;

pub use app::{App, Config};
