//! The kinds of failure an answer can report, shared by every service's
//! HTTP and gRPC edge and named by the domains that decide them (a domain
//! says "not found" or "permission denied", the edge picks the status).

use axum::http::StatusCode;

/// The kinds of failure a request can meet, shared by HTTP and gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid.
    InvalidArgument,
    /// Missing or wrong credentials.
    Unauthenticated,
    /// The thing named does not exist.
    NotFound,
    /// The path exists, but not with this method.
    MethodNotAllowed,
    /// The request body is larger than the service accepts.
    TooLarge,
    /// The request conflicts with current state.
    Conflict,
    /// A dependency (NATS, the agent) is not available now.
    Unavailable,
    /// A service Meridian called on the caller's behalf (a provider) failed
    /// or answered something unusable.
    BadGateway,
    /// A bug or an unexpected failure; details are in the log only.
    Internal,
    /// Known, but not allowed this (Tyk's 403s: a key without access, a
    /// quota spent, a wrong Gateway API secret).
    PermissionDenied,
    /// Too many requests in the window (Tyk's 429).
    RateLimited,
    /// A service Meridian waited on did not answer in time (a 504).
    GatewayTimeout,
}

impl ErrorCode {
    /// The HTTP status.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::InvalidArgument => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::NotFound => tonic::Code::NotFound,
            Self::MethodNotAllowed => tonic::Code::Unimplemented,
            Self::TooLarge => tonic::Code::ResourceExhausted,
            Self::Conflict => tonic::Code::FailedPrecondition,
            Self::Unavailable | Self::BadGateway => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::RateLimited => tonic::Code::ResourceExhausted,
            Self::GatewayTimeout => tonic::Code::DeadlineExceeded,
        }
    }

    /// The snake-case name used in the `error` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::Unauthenticated => "unauthenticated",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge => "too_large",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::BadGateway => "bad_gateway",
            Self::Internal => "internal",
            Self::PermissionDenied => "permission_denied",
            Self::RateLimited => "rate_limited",
            Self::GatewayTimeout => "gateway_timeout",
        }
    }
}
