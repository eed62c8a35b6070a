//! # meridian-portal-sync
//!
//! The developer portal's admin side, under `/portal-api/` with the resource
//! names of Tyk's Enterprise Developer Portal: API providers (Tyk Dashboards,
//! or Meridian's own key-issuer), the Products and Plans their tagged
//! policies become, developers' apps, provisioning requests and the
//! credentials their approval issues.
//!
//! Every provider is synchronised at start, every `REFRESH_INTERVAL` and on
//! demand: tagged policies become placeholder Products (access policies) and
//! Plans (limit policies); one whose policy is not retrieved is hidden and
//! unpublished, and shown again with all its configuration when the policy
//! comes back. A failed or partial fetch hides nothing. Replicas claim each
//! provider's sync through the log, so one runs it.
//!
//! Publishes: `PORTAL` (every change; provider secrets sealed, keys only as
//! hashes); the public `MERIDIAN_EVENTS` (`io.meridian.product.*`,
//! `io.meridian.plan.*`, `io.meridian.provisioning.*`).
//! Consumes: `PORTAL` (an ordered consumer, rebuilt in memory at start).
//! Calls: providers' APIs (see [`adapters::providers`]).
//!
//! Modules: [`domain`] (pure), [`adapters`] (fold, seal, providers, syncer,
//! relay), [`api`] (REST), [`app`] (wiring).

pub mod adapters;
pub mod api;
pub mod app;
pub mod domain;

pub use app::{App, Config, rebuild};
pub use meridian_kit::http::DigestView;
