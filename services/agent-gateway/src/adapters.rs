//! Adapters: the registry projection, tokens, and the gRPC service.

pub mod grpc;
pub mod registry;
pub mod tokens;
