//! Compare-and-set writes to a stream folded in memory: a change is decided
//! on the fold as this replica has it, then published expecting the log to
//! end where that fold ends (the entity's subject, or the whole stream).
//! When another replica wrote meanwhile, the publish is refused; the writer
//! catches up and decides again on the new state, up to [`ATTEMPTS`] times,
//! then gives up with [`WriteError::Conflict`]. A refusal is answered only
//! after deciding again on a fold caught up with the log (never from a view
//! that is behind). A retried publish carries the same event (and so the
//! same `Nats-Msg-Id`), so it is stored once.
//!
//! key-issuer (per entity), the proxy (whole stream) and portal-sync (per
//! entity) write this way.

use std::sync::Arc;

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard};
use std::time::Duration;

use meridian_schemas::{Event, EventMeta};

use crate::bus::{BusError, Publisher};
use crate::projection::Progress;
use crate::telemetry;
use crate::time::now_ms;

/// Decisions tried before a write gives up with a conflict.
pub const ATTEMPTS: usize = 4;

/// How long a write waits for its own event to be folded (so the next read
/// on this replica sees it).
pub const VISIBLE_WITHIN: Duration = Duration::from_secs(5);

/// Where the log must end for a decision to still hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The event's subject ends at this sequence (0: the subject is new).
    Subject(u64),
    /// The whole stream ends at this sequence.
    Stream(u64),
    /// The log already holds what the event would store (written at this
    /// sequence): nothing is published, and the answer is given as if it
    /// had been stored. A write that changes nothing appends nothing.
    Unchanged(u64),
}

/// Why a write stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<R> {
    /// The change was refused on the state it was decided on.
    #[error("refused")]
    Refused(R),
    /// Other writers changed the same thing at every attempt.
    #[error("it kept changing under {ATTEMPTS} attempts to write it")]
    Conflict,
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// An answer a write's failure can be given: a 409 when other writers kept
/// changing the same thing, a 503 when the log is away.
pub trait Answer {
    /// 409.
    fn conflict(message: String) -> Self;
    /// 503.
    fn unavailable(message: String) -> Self;
}

impl<R: Answer> WriteError<R> {
    /// The answer to the caller: a refusal is its own answer.
    pub fn answer(self) -> R {
        match self {
            Self::Refused(refusal) => refusal,
            Self::Conflict => R::conflict(format!(
                "{}; another writer keeps changing it, try again",
                Self::Conflict
            )),
            Self::Bus(e) => R::unavailable(format!("the event log is not available: {e}")),
        }
    }
}

/// Decides and publishes changes over the fold `S`; see the module
/// documentation.
pub struct Writer<S> {
    publisher: Publisher,
    state: Arc<Lock<S>>,
    progress: Progress,
}

impl<S> Clone for Writer<S> {
    fn clone(&self) -> Self {
        Self {
            publisher: self.publisher.clone(),
            state: self.state.clone(),
            progress: self.progress.clone(),
        }
    }
}

/// The lock every in-memory fold is kept behind: crossbeam's sharded
/// reader-writer lock. A read locks only the reading thread's shard (a
/// cache line of its own), so threads that read a fold on every request,
/// the gateway's workers reading the routing table and the key view, share
/// no lock word and no written cache line; a write (the runner applying a
/// batch, a few times a second at most under load) locks every shard.
/// Threads get shards in the order they first read, eight shards in all:
/// up to eight readers never meet.
pub type Lock<S> = ShardedLock<S>;

/// A read of a [`Lock`]ed fold.
pub type ReadGuard<'a, S> = ShardedLockReadGuard<'a, S>;

/// Reads a fold. A panic while applying halts its runner anyway, so a
/// poisoned lock still holds the last consistent state.
pub fn read<S>(state: &Lock<S>) -> ReadGuard<'_, S> {
    state.read().unwrap_or_else(|p| p.into_inner())
}

fn meta() -> EventMeta {
    EventMeta {
        occurred_at_ms: now_ms(),
        traceparent: telemetry::current_traceparent(),
        ..Default::default()
    }
}

impl<S> Writer<S> {
    /// A writer over a shared fold and its progress.
    pub fn new(publisher: Publisher, state: Arc<Lock<S>>, progress: Progress) -> Self {
        Self {
            publisher,
            state,
            progress,
        }
    }

    /// Decides with `decide` on the current fold (the event to store, what
    /// to answer and where the log must end, or a refusal) and stores the
    /// event as a compare-and-set. Returns the answer and the event's
    /// sequence once this replica's fold includes it.
    pub async fn write<E: Event, A, R>(
        &self,
        decide: impl Fn(&S) -> Result<(E, A, Expect), R>,
    ) -> Result<(A, u64), WriteError<R>> {
        for attempt in 0..ATTEMPTS {
            let decided = decide(&read(&self.state));
            // A refusal may come from a fold that is behind (a policy
            // another replica just created is "not found"): it stands only
            // once decided again on everything the log holds now.
            let decided = match decided {
                Err(_) if attempt == 0 => {
                    self.progress.catch_up(VISIBLE_WITHIN).await;
                    decide(&read(&self.state))
                }
                decided => decided,
            };
            let (event, answer, expect) = decided.map_err(WriteError::Refused)?;
            let published = match expect {
                Expect::Unchanged(seq) => return Ok((answer, seq)),
                Expect::Subject(last) => {
                    self.publisher.publish_expecting(&event, meta(), last).await
                }
                Expect::Stream(last) => {
                    self.publisher
                        .publish_expecting_stream(&event, meta(), last)
                        .await
                }
            };
            match published {
                Ok(ack) => {
                    self.wait_visible(ack.sequence).await;
                    return Ok((answer, ack.sequence));
                }
                Err(BusError::WrongLastSequence { subject }) => {
                    tracing::debug!(%subject, attempt, "concurrent change; deciding again");
                    self.progress.catch_up(VISIBLE_WITHIN).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(WriteError::Conflict)
    }

    /// Stores an event that depends on no state. Returns its sequence once
    /// this replica folded it.
    pub async fn append<E: Event>(&self, event: &E) -> Result<u64, BusError> {
        let ack = self.publisher.publish(event, meta()).await?;
        self.wait_visible(ack.sequence).await;
        Ok(ack.sequence)
    }

    async fn wait_visible(&self, seq: u64) {
        if !self.progress.wait_for(seq, VISIBLE_WITHIN).await {
            tracing::warn!(
                seq,
                "a change was stored but this replica has not folded it yet"
            );
        }
    }

    /// Catches up with everything the stream holds now (before a "not
    /// found", or a read that must see other replicas' writes).
    pub async fn catch_up(&self) {
        self.progress.catch_up(VISIBLE_WITHIN).await;
    }

    /// The fold.
    pub fn state(&self) -> &Arc<Lock<S>> {
        &self.state
    }

    /// Reads the fold.
    pub fn read(&self) -> ReadGuard<'_, S> {
        read(&self.state)
    }
}

/// What `/api/.../digest` answers.
impl<S: crate::projection::Digested> Writer<S> {
    /// The view's digest and position, after catching up with the log.
    pub async fn digest_view(&self) -> crate::http::DigestView {
        self.catch_up().await;
        let state = self.read();
        crate::http::DigestView {
            digest: state.digest(),
            position: state.position(),
        }
    }
}
