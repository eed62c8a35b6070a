//! Pure rules: API definitions ([`apidef`]), batch requests ([`batch`]), the response cache's rules ([`cache`]), their checks and the routing
//! table ([`routes`]), the fold of `APIS` ([`state`]), a request's one
//! normalised path ([`path`]), CORS ([`cors`]), the steps a request goes through
//! ([`pipeline`]), what a request may do ([`access`]), how limits are
//! counted ([`limits`]), which headers are injected or removed
//! ([`transforms`]), OAuth 2.0's grants ([`oauth`]) and Tyk OAS
//! definitions ([`oas`]). No I/O, no
//! clock: time comes in.

pub mod access;
pub mod apidef;
pub mod batch;
pub mod cache;
pub mod cors;
pub mod endpoints;
pub mod limits;
pub mod oas;
pub mod oauth;
pub mod path;
pub mod pipeline;
pub mod routes;
pub mod state;
pub mod transforms;
pub mod validate;

/// A refused write: which field, and why (shared with key-issuer).
pub use meridian_kit::invalid::Invalid;

pub use apidef::ApiDefinition;
pub use routes::{Route, RouteTable};
pub use state::ApisState;
