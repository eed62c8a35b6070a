//! Writes to `KEYS`: a change is decided on the view as this replica has
//! it, then published expecting the entity's subject to end at the sequence
//! that view knows ([`meridian_kit::writer`]). When another replica changed
//! the entity meanwhile, the writer catches up and decides again on the new
//! state (a read-modify-write like `suppress_reset=1` then keeps the other
//! writer's change), then answers 409 after a few attempts. A retried
//! publish reuses the change id, so it is stored once.

use meridian_kit::bus::{BusError, Publisher};
use meridian_kit::projection::Progress;
use meridian_kit::writer::Expect;
pub use meridian_kit::writer::{ATTEMPTS, WriteError};
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::streams::KeysEntity;

use super::fold::Shared;
use crate::domain::KeysState;

/// Decides and publishes changes; see the module documentation.
#[derive(Clone)]
pub struct Writer(meridian_kit::writer::Writer<KeysState>);

impl Writer {
    /// A writer over the shared fold and its progress.
    pub fn new(publisher: Publisher, state: Shared, progress: Progress) -> Self {
        Self(meridian_kit::writer::Writer::new(
            publisher, state, progress,
        ))
    }

    /// Decides with `decide` on the current view (the event to store and
    /// what to answer, or a refusal) and stores the event as a
    /// compare-and-set on `(entity, id)`, unless the view already holds
    /// what it would store (a key, policy or organisation saved again
    /// unchanged: nothing is appended, the answer is the same). Returns the
    /// answer and the event's sequence (or the unchanged entity's last one)
    /// once this replica's view includes it.
    pub async fn write<A, R>(
        &self,
        entity: KeysEntity,
        id: &str,
        decide: impl Fn(&KeysState) -> Result<(KeysEvent, A), R>,
    ) -> Result<(A, u64), WriteError<R>> {
        self.0
            .write(|state| {
                let (event, answer) = decide(state)?;
                let expect = match state.holds(&event) {
                    Some(seq) => Expect::Unchanged(seq),
                    None => Expect::Subject(state.last_seq(entity, id)),
                };
                Ok((event, answer, expect))
            })
            .await
    }

    /// Stores an event that depends on no entity's state (token revocations,
    /// purges). Returns its sequence once this replica folded it.
    pub async fn append(&self, event: &KeysEvent) -> Result<u64, BusError> {
        self.0.append(event).await
    }

    /// Catches up with everything `KEYS` holds now (before a "not found").
    pub async fn catch_up(&self) {
        self.0.catch_up().await;
    }

    /// The view's digest and position, after catching up with the log.
    pub async fn digest_view(&self) -> meridian_kit::http::DigestView {
        self.0.digest_view().await
    }

    /// The fold.
    pub fn state(&self) -> &Shared {
        self.0.state()
    }
}
