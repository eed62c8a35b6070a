//! Writes to `KEYS`: a change is decided on the view as this replica has
//! it, then published expecting the entity's subject to end at the sequence
//! that view knows. When another replica changed the entity meanwhile, the
//! publish is refused; the writer catches up and decides again on the new
//! state (a read-modify-write like `suppress_reset=1` then keeps the other
//! writer's change), up to [`ATTEMPTS`] times, then answers 409. A retried
//! publish reuses the change id, so it is stored once.

use std::time::Duration;

use meridian_kit::bus::{BusError, Publisher};
use meridian_kit::projection::Progress;
use meridian_kit::telemetry;
use meridian_kit::time::now_ms;
use meridian_schemas::EventMeta;
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::streams::KeysEntity;

use super::fold::{Shared, read};
use crate::domain::KeysState;

/// Decisions tried before a write gives up with a conflict.
pub const ATTEMPTS: usize = 4;

/// How long a write waits for its own event to be folded (so the next read
/// on this replica sees it).
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);

/// Why a write stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<R> {
    /// The change was refused on the state it was decided on.
    #[error("refused")]
    Refused(R),
    /// Other writers changed the entity at every attempt.
    #[error("{entity:?} {id:?} kept changing under {ATTEMPTS} attempts to write it")]
    Conflict {
        /// The entity.
        entity: KeysEntity,
        /// Its id.
        id: String,
    },
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Decides and publishes changes; see the module documentation.
#[derive(Clone)]
pub struct Writer {
    publisher: Publisher,
    state: Shared,
    progress: Progress,
}

impl Writer {
    /// A writer over the shared fold and its progress.
    pub fn new(publisher: Publisher, state: Shared, progress: Progress) -> Self {
        Self {
            publisher,
            state,
            progress,
        }
    }

    /// Decides with `decide` on the current view (the event to store and
    /// what to answer, or a refusal) and stores the event as a
    /// compare-and-set on `(entity, id)`. Returns the answer and the event's
    /// sequence once this replica's view includes it.
    pub async fn write<A, R>(
        &self,
        entity: KeysEntity,
        id: &str,
        decide: impl Fn(&KeysState) -> Result<(KeysEvent, A), R>,
    ) -> Result<(A, u64), WriteError<R>> {
        for attempt in 0..ATTEMPTS {
            let (event, answer, expected) = {
                let state = read(&self.state);
                let (event, answer) = decide(&state).map_err(WriteError::Refused)?;
                (event, answer, state.last_seq(entity, id))
            };
            let meta = EventMeta {
                occurred_at_ms: now_ms(),
                traceparent: telemetry::current_traceparent(),
                ..Default::default()
            };
            match self
                .publisher
                .publish_expecting(&event, meta, expected)
                .await
            {
                Ok(ack) => {
                    if !self.progress.wait_for(ack.sequence, VISIBLE_WITHIN).await {
                        tracing::warn!(
                            seq = ack.sequence,
                            "a change was stored but this replica has not folded it yet"
                        );
                    }
                    return Ok((answer, ack.sequence));
                }
                Err(BusError::WrongLastSequence { .. }) => {
                    tracing::debug!(?entity, attempt, "concurrent change; deciding again");
                    self.progress.catch_up(VISIBLE_WITHIN).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(WriteError::Conflict {
            entity,
            id: id.to_owned(),
        })
    }

    /// Stores an event that depends on no entity's state (token revocations,
    /// purges). Returns its sequence once this replica folded it.
    pub async fn append(&self, event: &KeysEvent) -> Result<u64, BusError> {
        let meta = EventMeta {
            occurred_at_ms: now_ms(),
            traceparent: telemetry::current_traceparent(),
            ..Default::default()
        };
        let ack = self.publisher.publish(event, meta).await?;
        self.progress.wait_for(ack.sequence, VISIBLE_WITHIN).await;
        Ok(ack.sequence)
    }

    /// Catches up with everything `KEYS` holds now (before a "not found").
    pub async fn catch_up(&self) {
        self.progress.catch_up(VISIBLE_WITHIN).await;
    }

    /// The fold.
    pub fn state(&self) -> &Shared {
        &self.state
    }
}
