//! Provider syncs: at start, then every `REFRESH_INTERVAL`, and on demand.
//!
//! A sync of one provider:
//! 1. is claimed on the log: `SyncClaimed` published expecting the
//!    provider's sync subject to end where this replica's fold says, and
//!    only when no unexpired claim holds it; of several replicas one wins,
//!    the others wait for its report;
//! 2. retrieves every policy (every page): any failure (no answer, 401, a
//!    failing page, garbage) ends the sync as failed with the reason, and
//!    nothing is hidden;
//! 3. decides each Product and Plan of the provider (new, updated, hidden,
//!    restored) and stores each change as a compare-and-set on its entity;
//! 4. publishes `SyncFinished` with the report, expecting the claim to be
//!    the subject's last message.

use std::sync::Arc;
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::metrics::{Counter, Family, Labels};
use meridian_kit::time::{now_ms, rfc3339};
use meridian_kit::writer::{Expect, WriteError};
use meridian_schemas::portal::{PortalEntity, PortalEvent};
use uuid::Uuid;

use super::fold::PortalWriter;
use super::providers::Connection;
use super::seal::Sealer;
use crate::domain::model::Provider;
use crate::domain::state::SyncReport;
use crate::domain::sync::{
    Counts, Kind, decide_plan, decide_product, policies_to_visit, retrieved_as,
};

/// Runs syncs; see the module documentation.
#[derive(Clone)]
pub struct Syncer {
    /// Stores the changes.
    pub writer: PortalWriter,
    /// Opens provider secrets.
    pub sealer: Arc<Sealer>,
    /// This replica's name (in claims and reports).
    pub replica: String,
    /// How long a claim holds before another replica may take over.
    pub lease: Duration,
    /// Between scheduled syncs.
    pub refresh: Duration,
    /// `meridian_portal_syncs_total{type,result}`: syncs run by this
    /// replica, by provider type and result (`ok`, `failed`).
    pub runs: Family<Labels, Counter>,
    /// `meridian_portal_recoveries_total{action}` (`sync_takeover`).
    pub recoveries: Family<Labels, Counter>,
}

/// Why a claim was not taken.
enum NotClaimed {
    /// Another run holds it.
    Busy(Uuid, String),
    /// The provider is gone.
    Gone,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Syncer {
    /// Syncs every provider in turn (by name); one report each.
    pub async fn sync_all(&self) -> Vec<SyncReport> {
        self.writer.catch_up().await;
        let mut providers: Vec<(String, String)> = self
            .writer
            .read()
            .providers()
            .map(|p| (p.name.clone(), p.id.clone()))
            .collect();
        providers.sort();
        let mut reports = Vec::with_capacity(providers.len());
        for (_, id) in providers {
            if let Some(report) = self.sync_one(&id).await {
                reports.push(report);
            }
        }
        reports
    }

    /// Syncs one provider, or waits for the run another replica holds and
    /// returns its report. `None`: no such provider.
    #[tracing::instrument(name = "portal.sync", skip(self), fields(replica = %self.replica))]
    pub async fn sync_one(&self, provider_id: &str) -> Option<SyncReport> {
        let run_id = Uuid::new_v4();
        let claimed = self
            .writer
            .write(|state| {
                let Some(provider) = state.provider(provider_id) else {
                    return Err(NotClaimed::Gone);
                };
                let slot = state.sync(provider_id);
                let now = now_ms();
                if let Some((run, replica, _)) = slot.running(now) {
                    return Err(NotClaimed::Busy(*run, replica.clone()));
                }
                Ok((
                    PortalEvent::SyncClaimed {
                        provider_id: provider_id.to_owned(),
                        run_id,
                        replica: self.replica.clone(),
                        lease_until_ms: now + ms(self.lease),
                        at_ms: now,
                    },
                    provider.clone(),
                    Expect::Subject(slot.seq),
                ))
            })
            .await;
        let (provider, claim_seq) = match claimed {
            Ok(claimed) => claimed,
            Err(WriteError::Refused(NotClaimed::Gone)) => return None,
            Err(WriteError::Refused(NotClaimed::Busy(run, replica))) => {
                return Some(self.wait_for(provider_id, run, &replica).await);
            }
            Err(e @ (WriteError::Conflict | WriteError::Bus(_))) => {
                let name = self
                    .writer
                    .read()
                    .provider(provider_id)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                return Some(self.report(
                    provider_id,
                    &name,
                    run_id,
                    Err(format!("the sync could not be claimed: {e}")),
                ));
            }
        };
        tracing::info!(provider = %provider.name, %run_id, "provider sync started");
        if provider.insecure_skip_verify {
            tracing::warn!(provider = %provider.name, url = %provider.url,
                "insecure_skip_verify is on: the provider's TLS certificate is not checked");
        }
        let outcome = self.run(&provider).await;
        let report = self.report(provider_id, &provider.name, run_id, outcome);
        self.runs
            .get_or_create(&vec![
                ("type", provider.kind.as_str().to_owned()),
                ("result", report.status.clone()),
            ])
            .inc();
        match &report.status[..] {
            "ok" => {
                tracing::info!(provider = %provider.name, new = report.new, updated = report.updated,
                hidden = report.hidden, restored = report.restored, "provider sync finished")
            }
            _ => {
                tracing::warn!(provider = %provider.name, reason = %report.reason, "provider sync failed")
            }
        }
        let body = serde_json::to_string(&report).expect("reports serialize");
        let finished = self
            .writer
            .write(|_| {
                Ok::<_, ()>((
                    PortalEvent::SyncFinished {
                        provider_id: provider_id.to_owned(),
                        run_id,
                        report: body.clone(),
                        at_ms: now_ms(),
                    },
                    (),
                    Expect::Subject(claim_seq),
                ))
            })
            .await;
        if let Err(e) = finished {
            tracing::warn!(provider = %provider.name, %run_id, error = %e,
                "the sync's report was not stored (its claim lapsed and another replica took over?)");
        }
        Some(report)
    }

    fn report(
        &self,
        provider_id: &str,
        name: &str,
        run_id: Uuid,
        outcome: Result<(Counts, u32), String>,
    ) -> SyncReport {
        let mut report = SyncReport {
            provider_id: provider_id.to_owned(),
            name: name.to_owned(),
            replica: self.replica.clone(),
            run_id: run_id.to_string(),
            finished_at: rfc3339(now_ms()),
            ..SyncReport::default()
        };
        match outcome {
            Ok((counts, policies)) => {
                report.status = "ok".into();
                report.new = counts.new;
                report.updated = counts.updated;
                report.hidden = counts.hidden;
                report.restored = counts.restored;
                report.policies = policies;
            }
            Err(reason) => {
                report.status = "failed".into();
                report.reason = reason;
            }
        }
        report
    }

    /// Retrieves and applies; the counts and the number of tagged policies.
    async fn run(&self, provider: &Provider) -> Result<(Counts, u32), String> {
        let secret = self
            .sealer
            .open(&provider.id, &provider.sealed_secret)
            .map_err(|e| e.to_string())?;
        let connection = Connection::new(provider, secret).map_err(|e| e.to_string())?;
        let retrieved = connection.policies().await.map_err(|e| e.to_string())?;
        let tagged = retrieved.iter().filter(|p| p.tagged_for(provider)).count();
        let (products, plans) = policies_to_visit(&self.writer.read(), provider, &retrieved);
        let mut counts = Counts::default();
        let visits = products
            .iter()
            .map(|id| (Kind::Product, id))
            .chain(plans.iter().map(|id| (Kind::Plan, id)));
        for (kind, policy_id) in visits {
            let policy = retrieved_as(provider, &retrieved, policy_id, kind);
            let stored = self
                .writer
                .write(|state| {
                    let now = now_ms();
                    let (entity, id, body, change) = match kind {
                        Kind::Product => {
                            let (p, change) =
                                decide_product(state, provider, policy_id, policy, now).ok_or(())?;
                            (
                                PortalEntity::Product,
                                p.id.clone(),
                                serde_json::to_string(&p),
                                change,
                            )
                        }
                        Kind::Plan => {
                            let (p, change) =
                                decide_plan(state, provider, policy_id, policy, now).ok_or(())?;
                            (
                                PortalEntity::Plan,
                                p.id.clone(),
                                serde_json::to_string(&p),
                                change,
                            )
                        }
                    };
                    let expect = Expect::Subject(state.last_seq(entity, &id));
                    Ok((
                        PortalEvent::Saved {
                            entity,
                            id,
                            body: body.expect("entities serialize"),
                            change: change.as_str().to_owned(),
                            change_id: Uuid::new_v4(),
                            at_ms: now,
                        },
                        change,
                        expect,
                    ))
                })
                .await;
            match stored {
                Ok((change, _)) => counts.add(change),
                Err(WriteError::Refused(())) => {}
                Err(e) => return Err(format!("storing a change failed: {e}")),
            }
        }
        Ok((counts, u32::try_from(tagged).unwrap_or(u32::MAX)))
    }

    /// Waits for the run `run` on `replica` to report, and answers only a
    /// report of that run or of one claimed after it (so never one that
    /// finished before the call). When its claim is replaced (its replica
    /// died and another took over), waits for the new run; when the claim's
    /// lease passes with no report, takes the sync over itself.
    async fn wait_for(&self, provider_id: &str, run: Uuid, replica: &str) -> SyncReport {
        let (mut run, mut replica) = (run, replica.to_owned());
        let mut deadline = tokio::time::Instant::now() + self.lease;
        loop {
            self.writer.catch_up().await;
            let slot = self.writer.read().sync(provider_id);
            if let Some(report) = slot.last.as_ref().filter(|r| r.run_id == run.to_string()) {
                return report.clone();
            }
            match &slot.claim {
                Some((newer, by, _)) if *newer != run => {
                    tracing::info!(provider = %provider_id, awaited = %run, replaced_by = %newer, replica = %by,
                        "the awaited sync's claim was replaced; waiting for the new run");
                    (run, replica) = (*newer, by.clone());
                    deadline = tokio::time::Instant::now() + self.lease;
                    continue;
                }
                _ => {}
            }
            if slot.running(now_ms()).is_none() {
                // The awaited run's lease passed and it never reported.
                self.recoveries
                    .get_or_create(&vec![("action", "sync_takeover".to_owned())])
                    .inc();
                tracing::warn!(provider = %provider_id, awaited = %run, %replica,
                    "the awaited sync's lease passed with no report; taking the sync over");
                if let Some(report) = Box::pin(self.sync_one(provider_id)).await {
                    return report;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let name = self
                    .writer
                    .read()
                    .provider(provider_id)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                return self.report(
                    provider_id,
                    &name,
                    run,
                    Err(format!(
                        "replica {replica} holds this provider's sync and has not reported"
                    )),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Syncs every provider at start and then every `refresh`, skipping a
    /// provider another replica synced within the last half interval.
    pub async fn run_until_stopped(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.writer.catch_up().await;
            let now = now_ms();
            let recent = now - ms(self.refresh) / 2;
            let mut due: Vec<(String, String)> = {
                let state = self.writer.read();
                state
                    .providers()
                    .filter(|p| {
                        let slot = state.sync(&p.id);
                        slot.running(now).is_none() && slot.finished_at_ms < recent
                    })
                    .map(|p| (p.name.clone(), p.id.clone()))
                    .collect()
            };
            due.sort();
            for (_, id) in due {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = self.sync_one(&id) => {}
                }
            }
        }
    }
}
