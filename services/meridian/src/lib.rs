//! # meridian
//!
//! The `meridian` command: `meridian up` runs the whole hub on one machine
//! (a child `nats-server -js`, every hub service in this process with all REST
//! endpoints on one URL, a demo Tyk-compatible provider and a demo agent);
//! `meridian events tail` follows the public events on NATS; the other
//! subcommands call the hub's REST API.
//!
//! Modules: [`hub`] (in-process composition), [`up`] (the launcher),
//! [`rebuild`] (`meridian rebuild`), [`import`] (`meridian import`: a Tyk
//! estate into Meridian),
//! [`cli`] (REST client commands), [`events`] (`events tail`),
//! [`route`] (`meridian route`: the hub URL in front of separately deployed
//! services), [`console`] (the web console both serve at `/`), [`demo_provider`]. The demo agent is `meridian-agent`'s session with the
//! demo provider as its one Tyk provider.

pub mod cli;
pub mod console;
pub mod demo_provider;
pub mod events;
pub mod hub;
pub mod import;
pub mod rebuild;
pub mod route;
pub mod up;
