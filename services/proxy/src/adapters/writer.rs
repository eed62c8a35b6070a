//! Writes to `APIS`. A change is decided on the whole table as this replica
//! has it (a listen path must be unique among every API), then published
//! expecting the stream to end where that table ends
//! ([`meridian_kit::writer`]). When another replica wrote meanwhile, the
//! writer catches up and decides again, then answers 409 after a few
//! attempts. A retried publish reuses the change id, so it is stored once.

use meridian_kit::bus::Publisher;
use meridian_kit::projection::Progress;
use meridian_kit::writer::Expect;
pub use meridian_kit::writer::{ATTEMPTS, WriteError};
use meridian_schemas::apis::ApisEvent;

use super::fold::SharedApis;
use crate::domain::ApisState;

/// Decides and publishes changes; see the module documentation.
#[derive(Clone)]
pub struct Writer(meridian_kit::writer::Writer<ApisState>);

impl Writer {
    /// A writer over the shared fold and its progress.
    pub fn new(publisher: Publisher, state: SharedApis, progress: Progress) -> Self {
        Self(meridian_kit::writer::Writer::new(
            publisher, state, progress,
        ))
    }

    /// Decides with `decide` on the current table (the event to store and
    /// what to answer, or a refusal) and stores the event as a
    /// compare-and-set on the whole stream, unless the table already holds
    /// what it would store (a definition saved again unchanged: nothing is
    /// appended). Returns the answer once this replica's table includes the
    /// change.
    pub async fn write<A, R>(
        &self,
        decide: impl Fn(&ApisState) -> Result<(ApisEvent, A), R>,
    ) -> Result<A, WriteError<R>> {
        self.0
            .write(|state| {
                let (event, answer) = decide(state)?;
                let expect = match state.holds(&event) {
                    Some(seq) => Expect::Unchanged(seq),
                    None => Expect::Stream(state.position()),
                };
                Ok((event, answer, expect))
            })
            .await
            .map(|(answer, _)| answer)
    }

    /// Catches up with everything `APIS` holds now (before a "not found").
    pub async fn catch_up(&self) {
        self.0.catch_up().await;
    }

    /// The fold.
    pub fn state(&self) -> &SharedApis {
        self.0.state()
    }
}
