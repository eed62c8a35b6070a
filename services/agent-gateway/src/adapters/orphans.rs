//! The sweeper of runs nobody finishes (see [`crate::domain::orphans`]): the
//! fold of `SYNC`'s run starts and ends, and the loop that asks for each old
//! open run whether a sync stream holds it, failing the ones nobody holds.

use std::sync::Arc;

use meridian_kit::writer::Lock;
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::bus::{self, Publisher, RequestError};
use meridian_kit::projection::{Fold, StoredEvent};
use meridian_kit::time::now_ms;
use meridian_schemas::commands::RunProbe;
use meridian_schemas::sync::{SyncEvent, SyncEventKind};
use meridian_schemas::{DecodeError, EventMeta, streams};

use crate::domain::orphans::{OpenRun, OpenRuns, orphan_reason};

impl Fold for OpenRuns {
    type Error = DecodeError;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), DecodeError> {
        let event: SyncEvent = stored.envelope.open()?;
        OpenRuns::apply(self, &event, stored.envelope.occurred_at_ms);
        Ok(())
    }
}

/// How long a holder has to answer a probe.
const PROBE_PATIENCE: Duration = Duration::from_secs(2);

/// Every `interval`, fails the runs open for longer than it that no sync
/// stream holds, until `stop`.
pub async fn sweep_until_stopped(
    open: Arc<Lock<OpenRuns>>,
    client: async_nats::Client,
    publisher: Publisher,
    interval: Duration,
    stop: CancellationToken,
) {
    let min_age = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let candidates = open
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .to_check(now_ms(), min_age);
        for run in candidates {
            if stop.is_cancelled() {
                return;
            }
            if !held(&client, &run).await {
                fail(&publisher, &run).await;
            }
        }
    }
}

/// Whether a live sync stream holds the run (a failed probe counts as held:
/// only a clear "nobody" fails a run).
async fn held(client: &async_nats::Client, run: &OpenRun) -> bool {
    let probe = RunProbe { run_id: run.run_id };
    let subject = streams::run_probe_subject(run.agent_id);
    match bus::request::<_, bool>(client, subject, &probe, PROBE_PATIENCE).await {
        Ok(held) => held,
        Err(RequestError::NoResponders(_) | RequestError::TimedOut { .. }) => false,
        Err(e) => {
            tracing::warn!(run = %run.run_id, error = %e, "could not ask who holds a run");
            true
        }
    }
}

async fn fail(publisher: &Publisher, run: &OpenRun) {
    let now = now_ms();
    let reason = orphan_reason(now - run.started_at_ms);
    let event = SyncEvent {
        run_id: run.run_id,
        agent_id: run.agent_id,
        provider: run.provider.clone(),
        kind: SyncEventKind::Failed {
            reason: reason.clone(),
        },
    };
    let meta = EventMeta {
        occurred_at_ms: now,
        correlation_id: Some(run.run_id.0),
        ..Default::default()
    };
    match publisher.publish(&event, meta).await {
        Ok(ack) if !ack.duplicate => {
            tracing::warn!(run = %run.run_id, agent = %run.agent_id, provider = %run.provider, %reason, "failed a run nobody holds")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(run = %run.run_id, error = %e, "could not fail a run nobody holds; will try again")
        }
    }
}
