//! Events of the `SCHEDULE` stream, written by the scheduler: sync jobs, each
//! firing of a job at a due time, and what became of the firing.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::commands::RunStarted;
use crate::envelope::Event;
use crate::ids::{AgentId, JobId};
use crate::streams;

/// When a job is due: `start_from_ms + k * repeat_every_ms` for whole `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cadence {
    /// Interval between due times, in milliseconds (at least 1).
    pub repeat_every_ms: u64,
    /// The due time every other due time is aligned to (ms since the epoch).
    pub start_from_ms: i64,
}

/// A change to the schedule, or a firing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleEvent {
    /// An operator created a job.
    JobCreated {
        /// The job.
        job_id: JobId,
        /// The agent to sync.
        agent_id: AgentId,
        /// The provider to sync.
        provider: String,
        /// When it is due.
        cadence: Cadence,
        /// When it was created; no due time before this fires.
        at_ms: i64,
    },
    /// An operator changed a job's cadence or paused or resumed it.
    JobChanged {
        /// The job.
        job_id: JobId,
        /// Its agent.
        agent_id: AgentId,
        /// The new cadence.
        cadence: Cadence,
        /// Whether it is paused.
        paused: bool,
        /// When; due times before this that were not fired never fire.
        at_ms: i64,
        /// Distinguishes successive changes for deduplication.
        change_id: Uuid,
    },
    /// An operator deleted a job.
    JobDeleted {
        /// The job.
        job_id: JobId,
        /// Its agent.
        agent_id: AgentId,
    },
    /// A scheduler replica claimed a due time of a job and is about to ask
    /// the agent to sync. Published expecting the job's fire subject to end
    /// at the firing the replica knows of, so only one replica fires.
    Fired {
        /// The job.
        job_id: JobId,
        /// Its agent.
        agent_id: AgentId,
        /// The due time fired (the latest one reached).
        due_ms: i64,
        /// Earlier due times passed while no scheduler was running; they are
        /// folded into this firing rather than fired one by one.
        missed: u64,
        /// When the replica fired (ms since the epoch).
        fired_at_ms: i64,
        /// Which replica fired.
        replica: String,
    },
    /// What became of a firing.
    FireOutcome {
        /// The job.
        job_id: JobId,
        /// Its agent.
        agent_id: AgentId,
        /// The due time it answers.
        due_ms: i64,
        /// What happened.
        outcome: Outcome,
    },
}

/// What became of a firing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Agent-gateway pushed the sync request to the agent; these runs began.
    Delivered {
        /// The runs started.
        runs: Vec<RunStarted>,
    },
    /// The agent was not connected (or its sync stream was down): skipped.
    AgentOffline {
        /// Why, in words.
        reason: String,
    },
    /// Agent-gateway refused the request (for example the agent no longer
    /// reports the provider).
    Refused {
        /// Why, in words.
        reason: String,
    },
}

impl ScheduleEvent {
    /// The job the event is about.
    pub fn job_id(&self) -> JobId {
        match self {
            Self::JobCreated { job_id, .. }
            | Self::JobChanged { job_id, .. }
            | Self::JobDeleted { job_id, .. }
            | Self::Fired { job_id, .. }
            | Self::FireOutcome { job_id, .. } => *job_id,
        }
    }

    /// The agent of the job.
    pub fn agent_id(&self) -> AgentId {
        match self {
            Self::JobCreated { agent_id, .. }
            | Self::JobChanged { agent_id, .. }
            | Self::JobDeleted { agent_id, .. }
            | Self::Fired { agent_id, .. }
            | Self::FireOutcome { agent_id, .. } => *agent_id,
        }
    }
}

impl Event for ScheduleEvent {
    const SCHEMA_VERSION: u16 = 1;
    const STREAM: &'static str = streams::SCHEDULE;

    fn event_type(&self) -> &'static str {
        match self {
            Self::JobCreated { .. } => "schedule.job_created",
            Self::JobChanged { .. } => "schedule.job_changed",
            Self::JobDeleted { .. } => "schedule.job_deleted",
            Self::Fired { .. } => "schedule.fired",
            Self::FireOutcome { .. } => "schedule.fire_outcome",
        }
    }

    fn subject(&self) -> String {
        let job = self.job_id();
        match self {
            Self::JobCreated { .. } | Self::JobChanged { .. } | Self::JobDeleted { .. } => {
                streams::job_subject(self.agent_id(), job)
            }
            Self::Fired { .. } => streams::job_fire_subject(job),
            Self::FireOutcome { .. } => streams::job_outcome_subject(job),
        }
    }

    fn dedup_id(&self) -> String {
        let job = self.job_id();
        match self {
            Self::JobCreated { .. } => format!("job:{job}:created"),
            Self::JobChanged { change_id, .. } => format!("job:{job}:changed:{change_id}"),
            Self::JobDeleted { .. } => format!("job:{job}:deleted"),
            Self::Fired { due_ms, .. } => format!("job:{job}:fired:{due_ms}"),
            Self::FireOutcome { due_ms, .. } => format!("job:{job}:outcome:{due_ms}"),
        }
    }
}
