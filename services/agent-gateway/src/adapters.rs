//! Adapters: the registry projection, tokens, the gRPC service, and the
//! sweeper of runs nobody finishes.

pub mod grpc;
pub mod orphans;
pub mod registry;
pub mod tokens;
