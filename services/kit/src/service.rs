//! The skeleton every service binary shares: logs and traces, the
//! configuration from the environment, the service run until a signal, and
//! the exit code a bad configuration gets (64, naming the variable, never a
//! crash). Each `main.rs` keeps only what is its own: its `--help` and how
//! its listeners are bound and its app built and served.

use std::future::Future;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};
use crate::metrics::Metrics;
use crate::{shutdown, telemetry};

/// A service's start or run failure that may be a configuration error found
/// while building (a missing secret, a key too short): that one exits 64.
pub trait Failure: std::error::Error {
    /// The configuration error this failure is, if it is one.
    fn bad_config(&self) -> Option<&ConfigError>;
}

/// Runs a service binary: `name` for its logs and traces, its configuration
/// read under `prefix` (a bad variable exits 64 naming it), then `run` with
/// that configuration, a fresh metrics registry and a token cancelled on
/// SIGINT or SIGTERM; traces are flushed before it returns.
pub async fn main<C, E, F, Fut>(name: &'static str, prefix: &str, run: F) -> Result<(), E>
where
    C: DeserializeOwned,
    E: Failure,
    F: FnOnce(C, Metrics, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    telemetry::init(name);
    let config: C = config::from_env_or_exit(prefix);
    let result = run(config, Metrics::new(), shutdown::on_signal()).await;
    if let Err(e) = &result
        && let Some(bad) = e.bad_config()
    {
        eprintln!("{bad}");
        std::process::exit(config::EXIT_BAD_CONFIG);
    }
    telemetry::shutdown();
    result
}

/// Implements [`Failure`] for a service's error enum whose `Config` variant
/// holds the [`ConfigError`].
#[macro_export]
macro_rules! config_failure {
    ($error:ty) => {
        impl $crate::service::Failure for $error {
            fn bad_config(&self) -> Option<&$crate::config::ConfigError> {
                match self {
                    Self::Config(e) => Some(e),
                    _ => None,
                }
            }
        }
    };
}
