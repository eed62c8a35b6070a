//! REST API: sync jobs of an agent and their run history. Every route needs
//! the admin key.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use meridian_kit::bus::Publisher;
use meridian_kit::config::{format_duration, parse_duration};
use meridian_kit::http::{ApiError, ErrorBody, Json};
use meridian_kit::projection::Progress;
use meridian_kit::time::{now_ms, rfc3339};
use meridian_schemas::schedule::{Cadence, Outcome, ScheduleEvent};
use meridian_schemas::{AgentId, EventMeta, JobId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::adapters::folds::{State as Folds, read};
use crate::domain::{self, Firing, Job, RunState};

/// A firing without outcome this long after it fired is shown as `unknown`:
/// the replica that fired it stopped before reporting.
const OUTCOME_GRACE: Duration = Duration::from_secs(60);

/// Handler state.
#[derive(Clone)]
pub struct ApiState {
    /// The folds.
    pub folds: Folds,
    /// Progress of the jobs fold (read-your-writes).
    pub jobs_progress: Progress,
    /// Progress of the agents fold (to catch up before saying "unknown").
    pub agents_progress: Progress,
    /// Appends to `SCHEDULE`.
    pub publisher: Publisher,
    /// Shortest `repeat_every` accepted.
    pub min_interval: Duration,
}

/// The routes with their OpenAPI description.
pub fn router(state: ApiState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job, update_job, delete_job))
        .routes(routes!(job_runs))
        .route(
            "/api/agents/{id}/sync-jobs/",
            axum::routing::post(create_job).get(list_jobs),
        )
        .with_state(state)
}

/// `POST /api/agents/{id}/sync-jobs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Interval (required): Go duration syntax plus days and weeks (`90s`,
    /// `1h30m`, `12h`, `7d`), at least the service's minimum (1 minute by
    /// default), at most 100 years.
    #[schema(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$")]
    pub repeat_every: Option<String>,
    /// A provider the agent reported (required).
    #[schema(min_length = 1, max_length = 128)]
    pub provider: Option<String>,
    /// RFC 3339; due times are aligned to it. Default: now.
    #[schema(format = DateTime)]
    pub start_from: Option<String>,
}

/// `PUT`/`PATCH /api/agents/{id}/sync-jobs/{job_id}` body: any subset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateJob {
    /// New interval (as in `POST`).
    #[schema(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$")]
    pub repeat_every: Option<String>,
    /// New alignment, RFC 3339.
    #[schema(format = DateTime)]
    pub start_from: Option<String>,
    /// Pause (`true`) or resume (`false`).
    pub paused: Option<bool>,
}

/// A sync job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: Uuid,
    /// The agent.
    pub agent_id: Uuid,
    /// The provider synced.
    pub provider: String,
    /// Interval, normalized (`12h`, `1h30m`, `7d`).
    pub repeat_every: String,
    /// RFC 3339.
    pub start_from: String,
    /// Whether it is paused.
    pub paused: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: the next due time; null while paused. In the past when a
    /// due time is being fired right now.
    pub next_run_at: Option<String>,
}

/// One due time of a job and what became of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FiringView {
    /// RFC 3339: the due time.
    pub due_at: String,
    /// RFC 3339: when the scheduler fired it.
    pub fired_at: String,
    /// Milliseconds between the due time and the firing.
    pub late_ms: i64,
    /// Earlier due times that passed while no scheduler ran, folded into this one.
    pub missed_due_times: u64,
    /// The scheduler replica that fired it.
    pub replica: String,
    /// `delivered` (the agent got the request), `agent_offline` (skipped),
    /// `refused`, `pending` (fired, outcome not recorded yet) or `unknown`
    /// (the replica stopped before recording it).
    pub status: String,
    /// Why it was not delivered.
    pub reason: Option<String>,
    /// The runs it started, with their result from the sync log.
    pub runs: Vec<RunResultView>,
}

/// A run started by a firing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunResultView {
    /// Run id, as in the sync log and the repository.
    pub run_id: Uuid,
    /// The provider.
    pub provider: String,
    /// `requested` (not started yet), `running`, `completed` or `failed`.
    pub status: String,
    /// APIs sent, for a completed run.
    pub count: Option<u64>,
    /// Why it failed.
    pub reason: Option<String>,
}

fn parse_id<T>(field: &str, raw: &str, wrap: fn(Uuid) -> T) -> Result<T, ApiError> {
    Uuid::parse_str(raw)
        .map(wrap)
        .map_err(|_| ApiError::invalid_field(field, format!("{raw:?} is not a UUID")))
}

fn parse_interval(raw: &str, min: Duration) -> Result<u64, ApiError> {
    let d = parse_duration(raw).map_err(|e| ApiError::invalid_field("repeat_every", e))?;
    let ms = u64::try_from(d.as_millis())
        .map_err(|_| ApiError::invalid_field("repeat_every", "too long"))?;
    let min_ms = u64::try_from(min.as_millis()).unwrap_or(u64::MAX);
    domain::check_interval(ms, min_ms)?;
    Ok(ms)
}

fn parse_time(raw: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            ApiError::invalid_field(
                "start_from",
                format!("{raw:?} is not an RFC 3339 time such as 2023-06-01T12:00:00Z ({e})"),
            )
        })
}

/// How long a read waits for a fold to catch up before "not found".
const CATCH_UP: Duration = Duration::from_secs(3);

impl ApiState {
    /// The agent's reported providers, or 404. An agent the fold does not
    /// know yet may have just been registered: catch up with `AGENTS` first.
    async fn agent(&self, agent: AgentId) -> Result<domain::AgentInfo, ApiError> {
        if let Some(info) = read(&self.folds.agents).get(agent) {
            return Ok(info.clone());
        }
        self.catch_up_agents().await;
        read(&self.folds.agents)
            .get(agent)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no agent with id {agent}")))
    }

    async fn catch_up_agents(&self) {
        self.agents_progress.catch_up(CATCH_UP).await;
    }

    /// The agent's job; when this replica does not know it, first catch up
    /// with everything `SCHEDULE` holds now.
    async fn job(&self, agent: AgentId, job: JobId) -> Result<Job, ApiError> {
        let find = || {
            read(&self.folds.jobs)
                .get(job)
                .filter(|j| j.agent_id == agent)
                .cloned()
        };
        if let Some(found) = find() {
            return Ok(found);
        }
        self.jobs_progress.catch_up(CATCH_UP).await;
        find().ok_or_else(|| ApiError::not_found(format!("agent {agent} has no sync job {job}")))
    }

    /// Appends an event and waits until the jobs fold applied it.
    async fn append(&self, event: &ScheduleEvent, at_ms: i64) -> Result<(), ApiError> {
        let meta = EventMeta {
            occurred_at_ms: at_ms,
            ..Default::default()
        };
        let ack =
            self.publisher.publish(event, meta).await.map_err(|e| {
                ApiError::unavailable(format!("the event log is not available: {e}"))
            })?;
        if self
            .jobs_progress
            .wait_for(ack.sequence, Duration::from_secs(10))
            .await
        {
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "the change was recorded but is not visible yet; retry the read",
            ))
        }
    }
}

fn job_view(job: &Job, now: i64) -> JobView {
    JobView {
        id: job.job_id.0,
        agent_id: job.agent_id.0,
        provider: job.provider.clone(),
        repeat_every: format_duration(Duration::from_millis(job.cadence.repeat_every_ms)),
        start_from: rfc3339(job.cadence.start_from_ms),
        paused: job.paused,
        created_at: rfc3339(job.created_at_ms),
        next_run_at: job.next_run_at(now).map(rfc3339),
    }
}

fn firing_view(firing: &Firing, runs: &domain::Runs, now: i64) -> FiringView {
    let (status, reason, started) = match &firing.outcome {
        Some(Outcome::Delivered { runs }) => ("delivered", None, runs.as_slice()),
        Some(Outcome::AgentOffline { reason }) => ("agent_offline", Some(reason.clone()), &[][..]),
        Some(Outcome::Refused { reason }) => ("refused", Some(reason.clone()), &[][..]),
        None if now - firing.fired_at_ms > OUTCOME_GRACE.as_millis() as i64 => (
            "unknown",
            Some("the replica that fired it stopped before recording the outcome".to_owned()),
            &[][..],
        ),
        None => ("pending", None, &[][..]),
    };
    FiringView {
        due_at: rfc3339(firing.due_ms),
        fired_at: rfc3339(firing.fired_at_ms),
        late_ms: firing.fired_at_ms - firing.due_ms,
        missed_due_times: firing.missed,
        replica: firing.replica.clone(),
        status: status.to_owned(),
        reason,
        runs: started
            .iter()
            .map(|r| {
                let (status, count, reason) = match runs.get(r.run_id) {
                    None => ("requested", None, None),
                    Some(RunState::Running) => ("running", None, None),
                    Some(RunState::Completed { count }) => ("completed", Some(*count), None),
                    Some(RunState::Failed { reason }) => ("failed", None, Some(reason.clone())),
                };
                RunResultView {
                    run_id: r.run_id.0,
                    provider: r.provider.clone(),
                    status: status.to_owned(),
                    count,
                    reason,
                }
            })
            .collect(),
    }
}

/// Schedule syncs of one provider of an agent.
#[utoipa::path(post, path = "/api/agents/{id}/sync-jobs", tag = "sync jobs", params(("id" = uuid::Uuid, Path)),
    request_body = CreateJob, security(("api_key" = [])),
    responses((status = 201, body = JobView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_job(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(body): Json<CreateJob>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = parse_id("id", &id, AgentId)?;
    let repeat_every_ms = parse_interval(
        body.repeat_every.as_deref().ok_or_else(|| {
            ApiError::invalid_field("repeat_every", "is required (for example 12h)")
        })?,
        s.min_interval,
    )?;
    let provider = body
        .provider
        .ok_or_else(|| ApiError::invalid_field("provider", "is required"))?;
    let now = now_ms();
    let start_from_ms = body
        .start_from
        .as_deref()
        .map(parse_time)
        .transpose()?
        .unwrap_or(now);
    let mut info = s.agent(agent).await?;
    if domain::check_provider(agent, &info, &provider).is_err() {
        // The agent may have just connected: catch up before refusing.
        s.catch_up_agents().await;
        info = s.agent(agent).await?;
    }
    domain::check_provider(agent, &info, &provider)?;
    let job_id = JobId::new_random();
    let event = ScheduleEvent::JobCreated {
        job_id,
        agent_id: agent,
        provider: provider.clone(),
        cadence: Cadence {
            repeat_every_ms,
            start_from_ms,
        },
        at_ms: now,
    };
    s.append(&event, now).await?;
    let job = s.job(agent, job_id).await?;
    tracing::info!(job = %job_id, %agent, %provider, repeat_every_ms, start_from_ms, "sync job created");
    Ok((StatusCode::CREATED, Json(job_view(&job, now_ms()))))
}

/// An agent's sync jobs.
#[utoipa::path(get, path = "/api/agents/{id}/sync-jobs", tag = "sync jobs", params(("id" = uuid::Uuid, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Vec<JobView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_jobs(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let agent = parse_id("id", &id, AgentId)?;
    s.agent(agent).await?;
    let now = now_ms();
    Ok(Json(
        read(&s.folds.jobs)
            .of_agent(agent)
            .map(|j| job_view(j, now))
            .collect(),
    ))
}

/// One sync job.
#[utoipa::path(get, path = "/api/agents/{id}/sync-jobs/{job_id}", tag = "sync jobs",
    params(("id" = uuid::Uuid, Path), ("job_id" = uuid::Uuid, Path)), security(("api_key" = [])),
    responses((status = 200, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(s): State<ApiState>,
    Path((id, job_id)): Path<(String, String)>,
) -> Result<Json<JobView>, ApiError> {
    let agent = parse_id("id", &id, AgentId)?;
    let job_id = parse_id("job_id", &job_id, JobId)?;
    s.agent(agent).await?;
    Ok(Json(job_view(&s.job(agent, job_id).await?, now_ms())))
}

/// Change a job's interval or alignment, or pause or resume it. Due times
/// that passed before the change never fire.
#[utoipa::path(method(put, patch), path = "/api/agents/{id}/sync-jobs/{job_id}", tag = "sync jobs",
    params(("id" = uuid::Uuid, Path), ("job_id" = uuid::Uuid, Path)), request_body = UpdateJob, security(("api_key" = [])),
    responses((status = 200, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_job(
    State(s): State<ApiState>,
    Path((id, job_id)): Path<(String, String)>,
    Json(body): Json<UpdateJob>,
) -> Result<Json<JobView>, ApiError> {
    let agent = parse_id("id", &id, AgentId)?;
    let job_id = parse_id("job_id", &job_id, JobId)?;
    let repeat_every_ms = body
        .repeat_every
        .as_deref()
        .map(|r| parse_interval(r, s.min_interval))
        .transpose()?;
    let start_from_ms = body.start_from.as_deref().map(parse_time).transpose()?;
    s.agent(agent).await?;
    let job = s.job(agent, job_id).await?;
    let now = now_ms();
    let event = ScheduleEvent::JobChanged {
        job_id,
        agent_id: agent,
        cadence: Cadence {
            repeat_every_ms: repeat_every_ms.unwrap_or(job.cadence.repeat_every_ms),
            start_from_ms: start_from_ms.unwrap_or(job.cadence.start_from_ms),
        },
        paused: body.paused.unwrap_or(job.paused),
        at_ms: now,
        change_id: Uuid::new_v4(),
    };
    s.append(&event, now).await?;
    Ok(Json(job_view(&s.job(agent, job_id).await?, now_ms())))
}

/// Delete a job; it never fires again.
#[utoipa::path(delete, path = "/api/agents/{id}/sync-jobs/{job_id}", tag = "sync jobs",
    params(("id" = uuid::Uuid, Path), ("job_id" = uuid::Uuid, Path)), security(("api_key" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_job(
    State(s): State<ApiState>,
    Path((id, job_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let agent = parse_id("id", &id, AgentId)?;
    let job_id = parse_id("job_id", &job_id, JobId)?;
    s.agent(agent).await?;
    s.job(agent, job_id).await?;
    let event = ScheduleEvent::JobDeleted {
        job_id,
        agent_id: agent,
    };
    s.append(&event, now_ms()).await?;
    tracing::info!(job = %job_id, %agent, "sync job deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A job's firings, newest first, each with what became of it and the result
/// of the runs it started (joined from the sync log).
#[utoipa::path(get, path = "/api/agents/{id}/sync-jobs/{job_id}/runs", tag = "sync jobs",
    params(("id" = uuid::Uuid, Path), ("job_id" = uuid::Uuid, Path)), security(("api_key" = [])),
    responses((status = 200, body = Vec<FiringView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn job_runs(
    State(s): State<ApiState>,
    Path((id, job_id)): Path<(String, String)>,
) -> Result<Json<Vec<FiringView>>, ApiError> {
    let agent = parse_id("id", &id, AgentId)?;
    let job_id = parse_id("job_id", &job_id, JobId)?;
    s.agent(agent).await?;
    let job = s.job(agent, job_id).await?;
    let runs = read(&s.folds.runs);
    let now = now_ms();
    Ok(Json(
        job.firings
            .iter()
            .rev()
            .map(|f| firing_view(f, &runs, now))
            .collect(),
    ))
}
