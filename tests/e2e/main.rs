//! End-to-end tests: real nats-server, real services, agents over gRPC.

mod agent;
mod aws;
mod bad_input;
mod console;
mod deploy;
mod election;
mod events;
mod fastpath;
mod hardening;
mod hub;
mod import;
mod keys;
mod limits;
mod middleware;
mod oas;
mod oauth;
mod observe;
mod portal;
mod proxy;
mod readme;
mod restart;
mod schedule;
mod story;
mod tls;
