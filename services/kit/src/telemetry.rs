//! Logging. `RUST_LOG` (or `MERIDIAN_LOG`) picks the filter, default `info`;
//! `MERIDIAN_LOG_FORMAT=json` switches to JSON lines.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls do nothing.
pub fn init(service: &str) {
    init_at(service, "info");
}

/// [`init`] with another default level (`debug`, `info`, `warn`, `error`)
/// when neither variable is set.
pub fn init_at(service: &str, level: &str) {
    let filter = std::env::var("MERIDIAN_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| {
            format!("{level},sled=warn,async_nats=warn,h2=warn,tower=warn,hyper=warn")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_target(false);
    let result = builder.try_init();
    if result.is_ok() {
        tracing::debug!(service, "logging initialised");
    }
}
