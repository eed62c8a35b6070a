//! I/O around the domain: batch requests sent back through the gateway
//! ([`batch`]), the response cache ([`cache`]), the folds of `APIS` and `KEYS` ([`fold`]), the
//! writer of `APIS` ([`writer`]), the replicas' announcements of what they
//! applied ([`replicas`]), the data plane ([`dataplane`], its HTTP/1.1 fast path [`fastpath`]) with its kept
//! upstream connections ([`upstream`]) and its leases on the shared
//! rate-limit and quota counters ([`limits`]), and OAuth 2.0's endpoints
//! ([`oauth`]).

pub mod batch;
pub mod cache;
pub mod dataplane;
pub mod fastpath;
pub mod fold;
pub mod limits;
pub mod oauth;
pub mod replicas;
pub mod upstream;
pub mod writer;
