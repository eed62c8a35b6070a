//! The firing loop. It sleeps until the earliest due time of any job (or until
//! the jobs change), then for each due job:
//!
//! 1. claims the due time by publishing `Fired` on the job's fire subject,
//!    expecting the subject's last sequence to be the job's newest firing as
//!    this replica knows it. JetStream stores the claim only if nobody fired
//!    since, and deduplicates the same (job, due time) from another replica,
//!    so with any number of replicas one claim wins per due time;
//! 2. the winner asks agent-gateway, over core NATS, to push a sync request
//!    to the agent (no responder: the agent is offline, and the firing is
//!    reported as skipped);
//! 3. the winner appends the outcome (`FireOutcome`), with the run ids that
//!    the run history joins with the sync log.
//!
//! The outcome is retried (jittered backoff) until it is stored; a replica
//! that stops first waits a grace period for it, and says in its log which
//! firing it could not record. A replica that dies between 1 and 3 leaves a
//! firing without outcome; the run history shows it as such. Firing again
//! would break "once per due time".

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::bus::{self, BusError, Publisher, RequestError};
use meridian_kit::projection::Progress;
use meridian_kit::retry::{Backoff, retry};
use meridian_kit::time::now_ms;
use meridian_schemas::commands::{SyncRefused, TriggerSync, TriggerSyncReply};
use meridian_schemas::schedule::{Outcome, ScheduleEvent};
use meridian_schemas::{AgentId, EventMeta, JobId, streams};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::adapters::folds::{State, read};
use crate::domain::Due;

/// Longest sleep between two looks at the schedule, so a missed wake-up costs
/// at most this much lateness.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long a stopping replica waits for the outcomes of its firings.
const OUTCOME_GRACE: Duration = Duration::from_secs(5);
/// Between attempts to record an outcome.
const OUTCOME_BACKOFF: Backoff =
    Backoff::forever(Duration::from_millis(100), Duration::from_secs(2));

/// What the loop needs.
#[derive(Clone)]
pub struct Firer {
    /// The folds.
    pub state: State,
    /// Progress of the jobs fold, to read our own claims back.
    pub jobs_progress: Progress,
    /// Appends to `SCHEDULE`.
    pub publisher: Publisher,
    /// Core NATS, for sync requests.
    pub client: async_nats::Client,
    /// This replica's name, recorded in each firing.
    pub replica: String,
    /// How long to wait for agent-gateway to answer a sync request.
    pub request_patience: Duration,
}

/// A due job, copied out of the fold.
struct Claim {
    job_id: JobId,
    agent_id: AgentId,
    provider: String,
    expected_last: u64,
    due: Due,
}

impl Firer {
    /// Fires due jobs until `stop`.
    pub async fn run_until_stopped(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let mut in_flight: HashSet<JobId> = HashSet::new();
        let mut tasks = JoinSet::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<JobId>();
        let mut changes = this.jobs_progress.subscribe();
        // Cancelled once the grace period after `stop` is over: outcomes
        // still unrecorded then are given up (and named in the log).
        let give_up = CancellationToken::new();
        tracing::info!(replica = %this.replica, "scheduler firing loop started");
        loop {
            let now = now_ms();
            let (due, next) = this.plan(now, &in_flight);
            for claim in due {
                in_flight.insert(claim.job_id);
                let firer = this.clone();
                let done = done_tx.clone();
                let give_up = give_up.clone();
                tasks.spawn(async move {
                    let job = claim.job_id;
                    firer.fire(claim, &give_up).await;
                    let _ = done.send(job);
                });
            }
            let sleep = next
                .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                () = stop.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
                Some(job) = done_rx.recv() => {
                    in_flight.remove(&job);
                    while let Ok(job) = done_rx.try_recv() {
                        in_flight.remove(&job);
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
        // Let claims already made report their outcome.
        let finished = tokio::time::timeout(OUTCOME_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            give_up.cancel();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// The jobs due at `now` (not already being fired), and the earliest
    /// future due time. Jobs of deleted agents never fire.
    fn plan(&self, now: i64, in_flight: &HashSet<JobId>) -> (Vec<Claim>, Option<i64>) {
        let jobs = read(&self.state.jobs);
        let agents = read(&self.state.agents);
        let due = jobs
            .due_by(now)
            .filter(|job| !in_flight.contains(&job.job_id) && agents.get(job.agent_id).is_some())
            .filter_map(|job| {
                job.due_at(now).map(|due| Claim {
                    job_id: job.job_id,
                    agent_id: job.agent_id,
                    provider: job.provider.clone(),
                    expected_last: job.last_fire_seq,
                    due,
                })
            })
            .collect();
        (due, jobs.next_due_after(now))
    }

    async fn fire(&self, claim: Claim, give_up: &CancellationToken) {
        let fired_at_ms = now_ms();
        let fired = ScheduleEvent::Fired {
            job_id: claim.job_id,
            agent_id: claim.agent_id,
            due_ms: claim.due.due_ms,
            missed: claim.due.missed,
            fired_at_ms,
            replica: self.replica.clone(),
        };
        let meta = EventMeta {
            occurred_at_ms: fired_at_ms,
            ..Default::default()
        };
        match self
            .publisher
            .publish_expecting(&fired, meta, claim.expected_last)
            .await
        {
            Ok(ack) if !ack.duplicate => {
                self.jobs_progress
                    .wait_for(ack.sequence, Duration::from_secs(10))
                    .await;
            }
            Ok(_) | Err(BusError::WrongLastSequence { .. }) => {
                tracing::debug!(job = %claim.job_id, due = claim.due.due_ms, "another replica fired this due time");
                self.wait_until_fired(claim.job_id, claim.due.due_ms).await;
                return;
            }
            Err(e) => {
                tracing::warn!(job = %claim.job_id, error = %e, "could not claim a due time; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
        }
        let trigger = TriggerSync {
            provider: Some(claim.provider.clone()),
        };
        let subject = streams::sync_request_subject(claim.agent_id);
        let answer = bus::request::<_, TriggerSyncReply>(
            &self.client,
            subject,
            &trigger,
            self.request_patience,
        )
        .await;
        let agent = claim.agent_id;
        let outcome = match answer.map(TriggerSyncReply::into_runs) {
            Ok(Ok(runs)) => Outcome::Delivered { runs },
            Ok(Err(e @ SyncRefused::UnknownProvider(_))) => Outcome::Refused {
                reason: e.to_string(),
            },
            Ok(Err(SyncRefused::SyncStreamDown)) => Outcome::AgentOffline {
                reason: format!("agent {agent} is not connected (its sync stream just closed)"),
            },
            Err(RequestError::NoResponders(_)) => Outcome::AgentOffline {
                reason: format!("agent {agent} is not connected (no open sync stream)"),
            },
            Err(e @ RequestError::TimedOut { .. }) => Outcome::AgentOffline {
                reason: format!("the agent's gateway replica did not answer: {e}"),
            },
            Err(e @ (RequestError::Failed { .. } | RequestError::Malformed { .. })) => {
                Outcome::Refused {
                    reason: e.to_string(),
                }
            }
        };
        match &outcome {
            Outcome::Delivered { runs } => tracing::info!(
                job = %claim.job_id, agent = %claim.agent_id, provider = %claim.provider,
                due = claim.due.due_ms, late_ms = fired_at_ms - claim.due.due_ms,
                missed = claim.due.missed, runs = runs.len(), "sync job fired"
            ),
            Outcome::AgentOffline { reason } | Outcome::Refused { reason } => tracing::warn!(
                job = %claim.job_id, agent = %claim.agent_id, provider = %claim.provider,
                due = claim.due.due_ms, %reason, "sync job fired but not delivered"
            ),
        }
        let report = ScheduleEvent::FireOutcome {
            job_id: claim.job_id,
            agent_id: claim.agent_id,
            due_ms: claim.due.due_ms,
            outcome,
        };
        let what = format!(
            "recording the outcome of job {} due at {}",
            claim.job_id, claim.due.due_ms
        );
        let recorded = retry(&what, OUTCOME_BACKOFF, give_up, || {
            let meta = EventMeta {
                occurred_at_ms: now_ms(),
                ..Default::default()
            };
            self.publisher.publish(&report, meta)
        })
        .await;
        if recorded.is_err() {
            tracing::error!(
                job = %claim.job_id, due = claim.due.due_ms,
                "the scheduler stopped before it could record this firing's outcome; \
                 the run history shows the firing without one"
            );
        }
    }

    /// Waits (a bounded time) until the jobs fold shows a firing of `job` at
    /// or after `due_ms`, so the loop does not try the same due time again.
    async fn wait_until_fired(&self, job: JobId, due_ms: i64) {
        let mut changes = self.jobs_progress.subscribe();
        let seen = || {
            read(&self.state.jobs)
                .get(job)
                .is_none_or(|j| j.firings.last().is_some_and(|f| f.due_ms >= due_ms))
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while !seen() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}
