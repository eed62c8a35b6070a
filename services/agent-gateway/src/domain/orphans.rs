//! Runs that no gateway finishes: the open runs of `SYNC` (started, not
//! ended), and which of them to check for a holder. Pure.
//!
//! A run is finished by the sync stream that holds it; when the gateway
//! replica holding the stream dies (kill -9, a lost node), nobody will. Every
//! replica folds the run starts and ends of `SYNC`, and now and then asks for
//! each run open longer than the check interval whether a live stream holds
//! it; a run nobody holds is appended as `failed`, once (its end shares one
//! `Nats-Msg-Id` with any other end), so no run stays open forever.

use std::collections::HashMap;

use meridian_schemas::sync::{SyncEvent, SyncEventKind};
use meridian_schemas::{AgentId, RunId};

/// An open run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRun {
    /// The run.
    pub run_id: RunId,
    /// Its agent.
    pub agent_id: AgentId,
    /// Its provider.
    pub provider: String,
    /// When it started (ms since the epoch).
    pub started_at_ms: i64,
}

/// The runs of `SYNC` that started and have not ended.
#[derive(Debug, Default)]
pub struct OpenRuns {
    runs: HashMap<RunId, OpenRun>,
}

impl OpenRuns {
    /// Folds one run event (`at_ms`: when it was appended); API messages
    /// change nothing.
    pub fn apply(&mut self, event: &SyncEvent, at_ms: i64) {
        match &event.kind {
            SyncEventKind::Started { .. } => {
                self.runs.entry(event.run_id).or_insert_with(|| OpenRun {
                    run_id: event.run_id,
                    agent_id: event.agent_id,
                    provider: event.provider.clone(),
                    started_at_ms: at_ms,
                });
            }
            SyncEventKind::Completed { .. } | SyncEventKind::Failed { .. } => {
                self.runs.remove(&event.run_id);
            }
            SyncEventKind::Api { .. } | SyncEventKind::Apis { .. } => {}
        }
    }

    /// The runs open for at least `min_age_ms` at `now_ms`: the ones to ask
    /// about (a younger run is most likely still being sent).
    pub fn to_check(&self, now_ms: i64, min_age_ms: i64) -> Vec<OpenRun> {
        let mut due: Vec<OpenRun> = self
            .runs
            .values()
            .filter(|r| now_ms - r.started_at_ms >= min_age_ms)
            .cloned()
            .collect();
        due.sort_by_key(|r| r.started_at_ms);
        due
    }

    /// How many runs are open.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Whether no run is open.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// Why a run with no holder is failed, for its `failed` event.
pub fn orphan_reason(open_for_ms: i64) -> String {
    format!(
        "no sync stream holds the run any more (the gateway replica that held it stopped \
         without ending it; open for {} s)",
        open_for_ms / 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn event(run: u128, kind: SyncEventKind) -> SyncEvent {
        SyncEvent {
            run_id: RunId(Uuid::from_u128(run)),
            agent_id: AgentId(Uuid::nil()),
            provider: "p".into(),
            kind,
        }
    }

    fn started(run: u128) -> SyncEvent {
        event(
            run,
            SyncEventKind::Started {
                provider_type: "tyk".into(),
            },
        )
    }

    #[test]
    fn runs_open_with_started_and_close_with_either_end() {
        let mut open = OpenRuns::default();
        open.apply(&started(1), 1_000);
        open.apply(&started(2), 2_000);
        open.apply(&started(3), 3_000);
        open.apply(&event(1, SyncEventKind::Completed { count: 0 }), 4_000);
        open.apply(
            &event(2, SyncEventKind::Failed { reason: "x".into() }),
            4_000,
        );
        assert_eq!(open.len(), 1);
        // A redelivered start keeps the first time.
        open.apply(&started(3), 9_000);
        let due = open.to_check(10_000, 5_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].started_at_ms, 3_000);
    }

    #[test]
    fn only_runs_older_than_the_interval_are_checked_oldest_first() {
        let mut open = OpenRuns::default();
        open.apply(&started(1), 5_000);
        open.apply(&started(2), 1_000);
        let due = open.to_check(7_000, 2_000);
        assert_eq!(
            due.iter().map(|r| r.started_at_ms).collect::<Vec<_>>(),
            vec![1_000, 5_000]
        );
        assert!(open.to_check(7_000, 6_001).is_empty());
        assert!(orphan_reason(61_000).contains("61 s"));
    }
}
