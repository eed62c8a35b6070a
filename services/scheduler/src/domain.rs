//! The scheduler's rules, pure: due times, what to fire at a given instant,
//! the checks on job requests, and the state folded from the three streams
//! the scheduler reads. No I/O and no clock: every instant comes in as a
//! value, so the tests choose it.
//!
//! Due times are `start_from + k * repeat_every` for whole `k`, computed from
//! the cadence and never from the time the previous firing happened, so late
//! firings do not drift. A due time counts only if it is at or after the
//! moment the job took its current shape (created, changed, resumed). When
//! several due times passed unfired (no scheduler was running), the job fires
//! once, for the latest of them, and records how many it folded in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meridian_schemas::agents::{AgentEvent, ProviderRef};
use meridian_schemas::schedule::{Cadence, Outcome, ScheduleEvent};
use meridian_schemas::sync::{SyncEvent, SyncEventKind};
use meridian_schemas::{AgentId, JobId, RunId};

/// The first due time at or after `t`.
pub fn first_due_at_or_after(cadence: Cadence, t: i64) -> i64 {
    let start = i128::from(cadence.start_from_ms);
    let every = i128::from(cadence.repeat_every_ms.max(1));
    let t = i128::from(t);
    if t <= start {
        return cadence.start_from_ms;
    }
    let k = (t - start + every - 1) / every;
    clamp(start + k * every)
}

/// The latest due time at or before `t`, if one is.
pub fn last_due_at_or_before(cadence: Cadence, t: i64) -> Option<i64> {
    let start = i128::from(cadence.start_from_ms);
    let every = i128::from(cadence.repeat_every_ms.max(1));
    let t = i128::from(t);
    (t >= start).then(|| clamp(start + (t - start) / every * every))
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One firing of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    /// The due time fired.
    pub due_ms: i64,
    /// Earlier due times folded into it.
    pub missed: u64,
    /// When it fired.
    pub fired_at_ms: i64,
    /// Which replica fired it.
    pub replica: String,
    /// What became of it; `None` until the replica reported.
    pub outcome: Option<Outcome>,
}

/// A sync job as the log built it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The job.
    pub job_id: JobId,
    /// Its agent.
    pub agent_id: AgentId,
    /// Its provider.
    pub provider: String,
    /// When it is due.
    pub cadence: Cadence,
    /// Paused jobs do not fire.
    pub paused: bool,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it took its current shape; earlier due times never fire.
    pub shaped_at_ms: i64,
    /// Every firing, oldest first.
    pub firings: Vec<Firing>,
    /// Stream sequence of the newest firing (0: none), which the next
    /// firing must expect.
    pub last_fire_seq: u64,
}

/// A due time to fire now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The latest due time reached.
    pub due_ms: i64,
    /// Earlier unfired due times folded into this one.
    pub missed: u64,
}

impl Job {
    /// The earliest due time that has neither fired nor been passed over.
    pub fn next_due(&self) -> i64 {
        let floor = match self.firings.last() {
            Some(f) => (f.due_ms.saturating_add(1)).max(self.shaped_at_ms),
            None => self.shaped_at_ms,
        };
        first_due_at_or_after(self.cadence, floor)
    }

    /// What to fire at `now`, if anything. Paused jobs never fire.
    pub fn due_at(&self, now_ms: i64) -> Option<Due> {
        if self.paused {
            return None;
        }
        let next = self.next_due();
        if now_ms < next {
            return None;
        }
        let latest = last_due_at_or_before(self.cadence, now_ms)?;
        let every = self.cadence.repeat_every_ms.max(1);
        let missed = u64::try_from(latest - next).unwrap_or(0) / every;
        Some(Due {
            due_ms: latest,
            missed,
        })
    }

    /// When it will next fire, as seen at `now_ms`: `None` while paused.
    pub fn next_run_at(&self, now_ms: i64) -> Option<i64> {
        if self.paused {
            return None;
        }
        Some(match self.due_at(now_ms) {
            Some(due) => due.due_ms,
            None => self.next_due(),
        })
    }
}

/// Every job, folded from the `SCHEDULE` stream, with an index of each
/// unpaused job's next due time so the firing loop finds due jobs without
/// looking at the others.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: BTreeMap<JobId, Job>,
    by_next_due: BTreeSet<(i64, JobId)>,
}

impl Jobs {
    /// Applies one event stored at `seq`. Replays and duplicates are no-ops.
    pub fn apply(&mut self, event: ScheduleEvent, seq: u64) {
        let job_id = event.job_id();
        if let Some(job) = self.jobs.get(&job_id).filter(|j| !j.paused) {
            self.by_next_due.remove(&(job.next_due(), job_id));
        }
        self.apply_to_jobs(event, seq);
        if let Some(job) = self.jobs.get(&job_id).filter(|j| !j.paused) {
            self.by_next_due.insert((job.next_due(), job_id));
        }
    }

    /// Unpaused jobs whose next due time is at or before `now_ms`, earliest
    /// first.
    pub fn due_by(&self, now_ms: i64) -> impl Iterator<Item = &Job> {
        self.by_next_due
            .range(..=(now_ms, JobId(uuid::Uuid::max())))
            .filter_map(|(_, id)| self.jobs.get(id))
    }

    /// The earliest next due time after `now_ms` of any unpaused job.
    pub fn next_due_after(&self, now_ms: i64) -> Option<i64> {
        self.by_next_due
            .range((now_ms.saturating_add(1), JobId(uuid::Uuid::nil()))..)
            .next()
            .map(|(at, _)| *at)
    }

    fn apply_to_jobs(&mut self, event: ScheduleEvent, seq: u64) {
        match event {
            ScheduleEvent::JobCreated {
                job_id,
                agent_id,
                provider,
                cadence,
                at_ms,
            } => {
                self.jobs.entry(job_id).or_insert(Job {
                    job_id,
                    agent_id,
                    provider,
                    cadence,
                    paused: false,
                    created_at_ms: at_ms,
                    shaped_at_ms: at_ms,
                    firings: Vec::new(),
                    last_fire_seq: 0,
                });
            }
            ScheduleEvent::JobChanged {
                job_id,
                cadence,
                paused,
                at_ms,
                ..
            } => {
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.cadence = cadence;
                    job.paused = paused;
                    job.shaped_at_ms = job.shaped_at_ms.max(at_ms);
                }
            }
            ScheduleEvent::JobDeleted { job_id, .. } => {
                self.jobs.remove(&job_id);
            }
            ScheduleEvent::Fired {
                job_id,
                due_ms,
                missed,
                fired_at_ms,
                replica,
                ..
            } => {
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.last_fire_seq = seq;
                    if job.firings.last().is_none_or(|f| f.due_ms < due_ms) {
                        job.firings.push(Firing {
                            due_ms,
                            missed,
                            fired_at_ms,
                            replica,
                            outcome: None,
                        });
                    }
                }
            }
            ScheduleEvent::FireOutcome {
                job_id,
                due_ms,
                outcome,
                ..
            } => {
                if let Some(firing) = self
                    .jobs
                    .get_mut(&job_id)
                    .and_then(|j| j.firings.iter_mut().rev().find(|f| f.due_ms == due_ms))
                {
                    firing.outcome.get_or_insert(outcome);
                }
            }
        }
    }

    /// One job.
    pub fn get(&self, job: JobId) -> Option<&Job> {
        self.jobs.get(&job)
    }

    /// The jobs of one agent, by id.
    pub fn of_agent(&self, agent: AgentId) -> impl Iterator<Item = &Job> {
        self.jobs.values().filter(move |j| j.agent_id == agent)
    }
}

/// What the scheduler knows of an agent, folded from `AGENTS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    /// The providers of its latest connection; `None` until it connects.
    pub providers: Option<Vec<ProviderRef>>,
}

/// Registered agents, folded from `AGENTS`. Deleted agents are gone.
#[derive(Debug, Default)]
pub struct Agents {
    agents: HashMap<AgentId, AgentInfo>,
}

impl Agents {
    /// Applies one registry event.
    pub fn apply(&mut self, event: AgentEvent) {
        match event {
            AgentEvent::Registered { agent_id, .. } => {
                self.agents.entry(agent_id).or_default();
            }
            AgentEvent::Connected {
                agent_id,
                providers,
                ..
            } => {
                if let Some(info) = self.agents.get_mut(&agent_id) {
                    info.providers = Some(providers);
                }
            }
            AgentEvent::Deleted { agent_id } => {
                self.agents.remove(&agent_id);
            }
            AgentEvent::Updated { .. }
            | AgentEvent::TokenIssued { .. }
            | AgentEvent::TokenRevoked { .. }
            | AgentEvent::LeaderFenced { .. } => {}
        }
    }

    /// The agent, unless unknown or deleted.
    pub fn get(&self, agent: AgentId) -> Option<&AgentInfo> {
        self.agents.get(&agent)
    }
}

/// How a sync run stands, from its start and end in `SYNC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Started, not ended yet.
    Running,
    /// The agent completed it with this many APIs.
    Completed {
        /// APIs sent.
        count: u64,
    },
    /// The agent (or the gateway, for a broken stream) failed it.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Runs by id, folded from the run events of `SYNC`.
#[derive(Debug, Default)]
pub struct Runs {
    runs: HashMap<RunId, RunState>,
}

impl Runs {
    /// Applies one run event (API messages are ignored).
    pub fn apply(&mut self, event: &SyncEvent) {
        let state = match &event.kind {
            SyncEventKind::Started { .. } => RunState::Running,
            SyncEventKind::Completed { count } => RunState::Completed { count: *count },
            SyncEventKind::Failed { reason } => RunState::Failed {
                reason: reason.clone(),
            },
            SyncEventKind::Api { .. } | SyncEventKind::Apis { .. } => return,
        };
        let entry = self.runs.entry(event.run_id).or_insert(RunState::Running);
        if *entry == RunState::Running {
            *entry = state;
        }
    }

    /// A run's state; `None` when its start has not arrived yet.
    pub fn get(&self, run: RunId) -> Option<&RunState> {
        self.runs.get(&run)
    }
}

/// A request to create a job, as parsed from the API.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The provider.
    pub provider: String,
    /// The cadence.
    pub cadence: Cadence,
}

pub use meridian_kit::invalid::Invalid;

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid::new(field, message)
}

/// Checks an interval against the configured minimum.
pub fn check_interval(repeat_every_ms: u64, min_interval_ms: u64) -> Result<(), Invalid> {
    if repeat_every_ms < min_interval_ms {
        return Err(invalid(
            "repeat_every",
            format!(
                "must be at least {} (the scheduler's minimum interval)",
                meridian_kit::config::format_duration(std::time::Duration::from_millis(
                    min_interval_ms
                ))
            ),
        ));
    }
    Ok(())
}

/// Checks that the agent reported the provider in its latest connection.
pub fn check_provider(agent: AgentId, info: &AgentInfo, provider: &str) -> Result<(), Invalid> {
    if provider.is_empty() {
        return Err(invalid("provider", "is required"));
    }
    match &info.providers {
        None => Err(invalid(
            "provider",
            format!("agent {agent} has not reported any provider yet (it has never connected)"),
        )),
        Some(known) if !known.iter().any(|p| p.name == provider) => Err(invalid(
            "provider",
            format!(
                "agent {agent} has not reported a provider named {provider:?} (it reported: {})",
                known
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: u64 = 3_600_000;

    fn job(start_from_ms: i64, every: u64, created: i64) -> Job {
        let mut jobs = Jobs::default();
        let id = JobId::new_random();
        jobs.apply(
            ScheduleEvent::JobCreated {
                job_id: id,
                agent_id: AgentId::new_random(),
                provider: "p".into(),
                cadence: Cadence {
                    repeat_every_ms: every,
                    start_from_ms,
                },
                at_ms: created,
            },
            1,
        );
        jobs.get(id).unwrap().clone()
    }

    fn fired(job: &mut Job, due: Due, at: i64) {
        job.firings.push(Firing {
            due_ms: due.due_ms,
            missed: due.missed,
            fired_at_ms: at,
            replica: "r".into(),
            outcome: None,
        });
    }

    #[test]
    fn due_times_are_aligned_to_start_from() {
        let c = Cadence {
            repeat_every_ms: 12 * HOUR,
            start_from_ms: 1_000,
        };
        assert_eq!(first_due_at_or_after(c, 0), 1_000);
        assert_eq!(first_due_at_or_after(c, 1_000), 1_000);
        assert_eq!(first_due_at_or_after(c, 1_001), 1_000 + 12 * HOUR as i64);
        assert_eq!(last_due_at_or_before(c, 999), None);
        assert_eq!(
            last_due_at_or_before(c, 1_000 + 25 * HOUR as i64),
            Some(1_000 + 24 * HOUR as i64)
        );
    }

    #[test]
    fn given_a_past_start_when_created_then_the_first_due_is_the_next_aligned_time() {
        // start_from two and a half hours ago, every hour: nothing from
        // before the job existed fires; the next aligned time does.
        let now = 100 * HOUR as i64;
        let j = job(now - 150 * MIN, HOUR, now);
        assert_eq!(j.due_at(now), None);
        assert_eq!(j.next_due(), now + 30 * MIN);
        assert_eq!(
            j.due_at(now + 30 * MIN + 5),
            Some(Due {
                due_ms: now + 30 * MIN,
                missed: 0
            })
        );
    }

    #[test]
    fn given_start_from_now_then_it_fires_at_once() {
        let now = 5 * HOUR as i64;
        assert_eq!(
            job(now, HOUR, now).due_at(now),
            Some(Due {
                due_ms: now,
                missed: 0
            })
        );
    }

    #[test]
    fn given_a_late_firing_then_the_next_due_time_does_not_drift() {
        let mut j = job(0, HOUR, 0);
        let due = j.due_at(40 * MIN).unwrap(); // fired 40 minutes late
        assert_eq!(due.due_ms, 0);
        fired(&mut j, due, 40 * MIN);
        assert_eq!(j.due_at(59 * MIN), None);
        assert_eq!(j.next_due(), HOUR as i64);
    }

    #[test]
    fn given_the_scheduler_was_down_across_due_times_then_it_fires_once_for_the_latest() {
        let mut j = job(0, HOUR, 0);
        let first = j.due_at(0).unwrap();
        fired(&mut j, first, 0);
        // Down from 0:10 to 3:20: due times 1:00, 2:00 and 3:00 passed.
        let at = 3 * HOUR as i64 + 20 * MIN;
        let due = j.due_at(at).unwrap();
        assert_eq!(
            due,
            Due {
                due_ms: 3 * HOUR as i64,
                missed: 2
            }
        );
        fired(&mut j, due, at);
        assert_eq!(j.due_at(at + 1), None);
        assert_eq!(j.next_due(), 4 * HOUR as i64);
    }

    #[test]
    fn given_a_paused_job_then_it_never_fires_and_resuming_skips_what_passed() {
        let mut jobs = Jobs::default();
        let id = JobId::new_random();
        let agent = AgentId::new_random();
        let cadence = Cadence {
            repeat_every_ms: HOUR,
            start_from_ms: 0,
        };
        jobs.apply(
            ScheduleEvent::JobCreated {
                job_id: id,
                agent_id: agent,
                provider: "p".into(),
                cadence,
                at_ms: 0,
            },
            1,
        );
        let change = |paused, at_ms| ScheduleEvent::JobChanged {
            job_id: id,
            agent_id: agent,
            cadence,
            paused,
            at_ms,
            change_id: uuid::Uuid::new_v4(),
        };
        jobs.apply(change(true, 10 * MIN), 2);
        assert_eq!(jobs.get(id).unwrap().due_at(5 * HOUR as i64), None);
        assert_eq!(jobs.get(id).unwrap().next_run_at(5 * HOUR as i64), None);
        jobs.apply(change(false, 5 * HOUR as i64 + MIN), 3);
        let j = jobs.get(id).unwrap();
        assert_eq!(j.due_at(5 * HOUR as i64 + MIN), None);
        assert_eq!(j.next_due(), 6 * HOUR as i64);
    }

    #[test]
    fn firings_and_outcomes_fold_once() {
        let mut jobs = Jobs::default();
        let id = JobId::new_random();
        let agent = AgentId::new_random();
        jobs.apply(
            ScheduleEvent::JobCreated {
                job_id: id,
                agent_id: agent,
                provider: "p".into(),
                cadence: Cadence {
                    repeat_every_ms: HOUR,
                    start_from_ms: 0,
                },
                at_ms: 0,
            },
            1,
        );
        let fire = ScheduleEvent::Fired {
            job_id: id,
            agent_id: agent,
            due_ms: 0,
            missed: 0,
            fired_at_ms: 3,
            replica: "a".into(),
        };
        jobs.apply(fire.clone(), 2);
        jobs.apply(fire, 2);
        let outcome = |reason: &str| ScheduleEvent::FireOutcome {
            job_id: id,
            agent_id: agent,
            due_ms: 0,
            outcome: Outcome::AgentOffline {
                reason: reason.into(),
            },
        };
        jobs.apply(outcome("first"), 3);
        jobs.apply(outcome("second"), 4);
        let j = jobs.get(id).unwrap();
        assert_eq!(j.firings.len(), 1);
        assert_eq!(j.last_fire_seq, 2);
        assert_eq!(
            j.firings[0].outcome,
            Some(Outcome::AgentOffline {
                reason: "first".into()
            })
        );
    }

    #[test]
    fn the_due_index_follows_firings_pauses_and_deletions() {
        let mut jobs = Jobs::default();
        let agent = AgentId::new_random();
        let ids: Vec<JobId> = (0..3).map(|_| JobId::new_random()).collect();
        for (i, id) in ids.iter().enumerate() {
            jobs.apply(
                ScheduleEvent::JobCreated {
                    job_id: *id,
                    agent_id: agent,
                    provider: "p".into(),
                    cadence: Cadence {
                        repeat_every_ms: HOUR,
                        start_from_ms: i as i64 * MIN,
                    },
                    at_ms: 0,
                },
                i as u64 + 1,
            );
        }
        let due = |jobs: &Jobs, at| jobs.due_by(at).map(|j| j.job_id).collect::<Vec<_>>();
        assert_eq!(due(&jobs, MIN), vec![ids[0], ids[1]]);
        assert_eq!(jobs.next_due_after(MIN), Some(2 * MIN));
        jobs.apply(
            ScheduleEvent::Fired {
                job_id: ids[0],
                agent_id: agent,
                due_ms: 0,
                missed: 0,
                fired_at_ms: 1,
                replica: "r".into(),
            },
            4,
        );
        jobs.apply(
            ScheduleEvent::JobChanged {
                job_id: ids[1],
                agent_id: agent,
                cadence: jobs.get(ids[1]).unwrap().cadence,
                paused: true,
                at_ms: 0,
                change_id: uuid::Uuid::new_v4(),
            },
            5,
        );
        jobs.apply(
            ScheduleEvent::JobDeleted {
                job_id: ids[2],
                agent_id: agent,
            },
            6,
        );
        assert_eq!(due(&jobs, 30 * MIN), Vec::<JobId>::new());
        assert_eq!(jobs.next_due_after(30 * MIN), Some(HOUR as i64));
        assert_eq!(due(&jobs, HOUR as i64), vec![ids[0]]);
    }

    #[test]
    fn provider_checks_name_the_field_and_the_reason() {
        let agent = AgentId::new_random();
        let never = AgentInfo::default();
        let err = check_provider(agent, &never, "tyk").unwrap_err();
        assert_eq!(err.field, "provider");
        assert!(err.message.contains("never connected"), "{err}");
        let info = AgentInfo {
            providers: Some(vec![ProviderRef {
                name: "tyk".into(),
                provider_type: "tyk".into(),
            }]),
        };
        assert!(check_provider(agent, &info, "tyk").is_ok());
        assert!(
            check_provider(agent, &info, "aws")
                .unwrap_err()
                .message
                .contains("reported: tyk")
        );
        assert_eq!(
            check_provider(agent, &info, "").unwrap_err().message,
            "is required"
        );
        assert_eq!(
            check_interval(59_000, 60_000).unwrap_err().field,
            "repeat_every"
        );
        assert!(check_interval(60_000, 60_000).is_ok());
    }

    #[test]
    fn run_states_keep_the_first_end() {
        let mut runs = Runs::default();
        let run = RunId::new_random();
        let ev = |kind| SyncEvent {
            run_id: run,
            agent_id: AgentId::new_random(),
            provider: "p".into(),
            kind,
        };
        runs.apply(&ev(SyncEventKind::Started {
            provider_type: "tyk".into(),
        }));
        assert_eq!(runs.get(run), Some(&RunState::Running));
        runs.apply(&ev(SyncEventKind::Completed { count: 3 }));
        runs.apply(&ev(SyncEventKind::Failed {
            reason: "late".into(),
        }));
        assert_eq!(runs.get(run), Some(&RunState::Completed { count: 3 }));
    }
}
