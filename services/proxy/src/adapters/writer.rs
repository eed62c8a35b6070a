//! Writes to `APIS`. A change is decided on the whole table as this replica
//! has it (a listen path must be unique among every API), then published
//! expecting the stream to end where that table ends. When another replica
//! wrote meanwhile, the publish is refused; the writer catches up and
//! decides again, up to [`ATTEMPTS`] times, then answers 409. A retried
//! publish reuses the change id, so it is stored once.

use std::time::Duration;

use meridian_kit::bus::{BusError, Publisher};
use meridian_kit::projection::Progress;
use meridian_kit::telemetry;
use meridian_kit::time::now_ms;
use meridian_schemas::EventMeta;
use meridian_schemas::apis::ApisEvent;

use super::fold::{SharedApis, read};
use crate::domain::ApisState;

/// Decisions tried before a write gives up with a conflict.
pub const ATTEMPTS: usize = 4;

/// How long a write waits for its own event to be folded (so the next read
/// on this replica sees it).
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);

/// Why a write stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<R> {
    /// The change was refused on the table it was decided on.
    #[error("refused")]
    Refused(R),
    /// Other writers changed the table at every attempt.
    #[error("the API definitions kept changing under {ATTEMPTS} attempts to write")]
    Conflict,
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Decides and publishes changes; see the module documentation.
#[derive(Clone)]
pub struct Writer {
    publisher: Publisher,
    state: SharedApis,
    progress: Progress,
}

impl Writer {
    /// A writer over the shared fold and its progress.
    pub fn new(publisher: Publisher, state: SharedApis, progress: Progress) -> Self {
        Self {
            publisher,
            state,
            progress,
        }
    }

    /// Decides with `decide` on the current table (the event to store and
    /// what to answer, or a refusal) and stores the event as a
    /// compare-and-set on the whole stream. Returns the answer once this
    /// replica's table includes the change.
    pub async fn write<A, R>(
        &self,
        decide: impl Fn(&ApisState) -> Result<(ApisEvent, A), R>,
    ) -> Result<A, WriteError<R>> {
        for attempt in 0..ATTEMPTS {
            let (event, answer, expected) = {
                let state = read(&self.state);
                let (event, answer) = decide(&state).map_err(WriteError::Refused)?;
                (event, answer, state.position())
            };
            let meta = EventMeta {
                occurred_at_ms: now_ms(),
                traceparent: telemetry::current_traceparent(),
                ..Default::default()
            };
            match self
                .publisher
                .publish_expecting_stream(&event, meta, expected)
                .await
            {
                Ok(ack) => {
                    if !self.progress.wait_for(ack.sequence, VISIBLE_WITHIN).await {
                        tracing::warn!(
                            seq = ack.sequence,
                            "a change was stored but this replica has not folded it yet"
                        );
                    }
                    return Ok(answer);
                }
                Err(BusError::WrongLastSequence { .. }) => {
                    tracing::debug!(attempt, "concurrent change; deciding again");
                    self.progress.catch_up(VISIBLE_WITHIN).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(WriteError::Conflict)
    }

    /// Catches up with everything `APIS` holds now (before a "not found").
    pub async fn catch_up(&self) {
        self.progress.catch_up(VISIBLE_WITHIN).await;
    }

    /// The fold.
    pub fn state(&self) -> &SharedApis {
        &self.state
    }
}
