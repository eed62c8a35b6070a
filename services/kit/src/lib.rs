//! # meridian-kit
//!
//! Plumbing shared by every Meridian service, and nothing domain-specific:
//!
//! - [`bus`]: connect to NATS, create or update streams, publish events with
//!   `Nats-Msg-Id` and awaited acks (many in flight).
//! - [`projection`]: the consumer loop that folds a stream into local state,
//!   with the checkpoint committed in the same batch as the state.
//! - [`store`]: local state on disk (one small façade over the engine).
//! - [`http`]: the shared JSON error shape, extractors that reject with it,
//!   the admin-key check, `/healthz` and `/readyz`, serving with shutdown.
//! - [`config`]: typed configuration from `MERIDIAN_<SERVICE>__*` variables.
//! - `nats_server` (feature `nats-server`): find, check and start a local
//!   `nats-server -js`, for the launcher and the tests.
//! - [`relay`]: an internal stream's changes to the public stream, as CloudEvents.
//! - [`report`]: an error with its causes, for messages.
//! - [`retry`]: every retry loop (jittered backoff, stop signal, give-up log).
//! - [`tyk`]: the Tyk-compatible admin surface (`/tyk/...`): Tyk's error
//!   shape, the Gateway API secret, bodies read as Tyk reads them.
//! - [`writer`]: compare-and-set writes decided on an in-memory fold.
//! - [`listen`]: a server's open-files limit and its listen backlog.
//! - [`invalid`]: the refused-field type every domain answers with.
//! - [`telemetry`], [`shutdown`], [`time`], [`hex`].

pub mod bus;
pub mod config;
pub mod error;
pub mod headers;
pub mod hex;
pub mod http;
pub mod invalid;
pub mod listen;
pub mod metrics;
#[cfg(feature = "nats-server")]
pub mod nats_server;
pub mod projection;
pub mod relay;
pub mod report;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tyk;
pub mod writer;

pub use tokio_util::sync::CancellationToken;
