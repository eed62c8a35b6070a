//! # meridian-scheduler
//!
//! Hub-side sync jobs: "sync provider P of agent A every `repeat_every`,
//! aligned to `start_from`". At each due time one scheduler replica (of any
//! number) claims the due time in the log and asks agent-gateway to push a
//! sync request to the agent; what became of it is recorded and joined with
//! the sync log in each job's run history. See [`domain`] for the due-time
//! rules and [`adapters::firing`] for how a due time fires exactly once.
//!
//! Publishes: `SCHEDULE` (jobs, firings, outcomes).
//! Consumes: `SCHEDULE`, `AGENTS` and the run starts and ends of `SYNC`
//! (ordered consumers, rebuilt in memory at start).
//! Requests: `meridian.agent.<id>.sync` (served by agent-gateway).
//!
//! Modules: [`domain`] (pure), [`adapters`] (folds, firing loop), [`api`]
//! (REST), [`app`] (wiring).

pub mod adapters;
pub mod api;
pub mod app;
pub mod domain;

pub use app::{App, Config};
