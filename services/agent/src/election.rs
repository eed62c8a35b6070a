//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go
//! does it, with every write a `resourceVersion`-checked replace so two
//! replicas can never both win.
//!
//! - No Lease yet: create it holding it (`leaseTransitions` 0).
//! - Held by us: renew (`renewTime` = now).
//! - Held by another: it counts as expired once the Lease has not changed
//!   for its `leaseDurationSeconds` as seen on *our* clock (so clock skew
//!   between pods does not matter); then take it over, adding one to
//!   `leaseTransitions`.
//! - A conflict (409) means someone else wrote first: stand by.
//! - A leader that cannot renew for `renewDeadline` steps down; a leader that
//!   stops cleanly releases the Lease so a standby takes over at once.
//!
//! The Lease's `leaseTransitions` after our acquisition is the fencing token
//! every sync message carries: agent-gateway refuses messages with a token
//! older than one it has seen, so a deposed leader cannot finish a run.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What this replica is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leader election is off: the replica syncs without a fencing token.
    NotElecting,
    /// Another replica leads (or none does yet).
    Standby,
    /// This replica leads; its sync messages carry the token.
    Leader {
        /// The Lease's transition count when this replica acquired it.
        fencing_token: u64,
    },
}

impl Role {
    /// As the probe reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotElecting => "not electing",
            Self::Standby => "standby",
            Self::Leader { .. } => "leader",
        }
    }

    /// Whether this replica may sync, and with which token.
    pub fn sync_token(self) -> Option<Option<u64>> {
        match self {
            Self::NotElecting => Some(None),
            Self::Standby => None,
            Self::Leader { fencing_token } => Some(Some(fencing_token)),
        }
    }
}

/// Timings, as `leaderElection.*` configures them.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

/// One replica's elector.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
}

/// The Lease as last seen while another replica held it.
struct Observed {
    resource_version: Option<String>,
    since: Instant,
}

impl Elector {
    /// An elector for the Lease `namespace/name`, as `identity` (the pod name).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timings,
        }
    }

    /// Elects until `stop`, publishing the role; releases the Lease on a
    /// clean stop if it leads.
    pub async fn run(self, role: watch::Sender<Role>, stop: CancellationToken) {
        role.send_replace(Role::Standby);
        let mut observed: Option<Observed> = None;
        let mut last_renewal: Option<Instant> = None;
        let mut last_error: Option<String> = None;
        loop {
            let attempt = tokio::select! {
                () = stop.cancelled() => break,
                r = self.try_acquire_or_renew(&mut observed) => r,
            };
            let leading = matches!(*role.borrow(), Role::Leader { .. });
            match attempt {
                Ok(Some(fencing_token)) => {
                    last_renewal = Some(Instant::now());
                    last_error = None;
                    if role.borrow().sync_token() != Some(Some(fencing_token)) {
                        tracing::info!(lease = %self.name, identity = %self.identity, fencing_token, "became leader");
                        role.send_replace(Role::Leader { fencing_token });
                    }
                }
                Ok(None) => {
                    last_error = None;
                    if leading {
                        tracing::warn!(lease = %self.name, "another replica holds the lease now; standing by");
                        role.send_replace(Role::Standby);
                    }
                }
                Err(e) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(lease = %self.name, error = %e, "lease API call failed");
                        last_error = Some(e);
                    }
                    let deadline_passed =
                        last_renewal.is_none_or(|t| t.elapsed() >= self.timings.renew_deadline);
                    if leading && deadline_passed {
                        tracing::warn!(lease = %self.name, deadline = ?self.timings.renew_deadline, "could not renew the lease in time; standing by");
                        role.send_replace(Role::Standby);
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.timings.retry_period) => {}
            }
        }
        if matches!(*role.borrow(), Role::Leader { .. }) {
            role.send_replace(Role::Standby);
            match self.release().await {
                Ok(()) => tracing::info!(lease = %self.name, "released the lease"),
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "could not release the lease; it expires on its own")
                }
            }
        }
    }

    /// One round: `Some(token)` when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<Observed>,
    ) -> Result<Option<u64>, String> {
        let now = MicroTime(Timestamp::now());
        let Some(lease) = self.api.get_opt(&self.name).await.map_err(describe)? else {
            let fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec_held(now.clone(), now, 0)),
            };
            return match self.api.create(&PostParams::default(), &fresh).await {
                Ok(_) => Ok(Some(0)),
                Err(e) if is_conflict(&e) => Ok(None),
                Err(e) => Err(describe(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let transitions = u64::try_from(spec.lease_transitions.unwrap_or(0)).unwrap_or(0);
        let (acquired, token) = if holder == Some(self.identity.as_str()) {
            (
                spec.acquire_time.clone().unwrap_or(now.clone()),
                transitions,
            )
        } else {
            let version = lease.metadata.resource_version.clone();
            if observed
                .as_ref()
                .is_none_or(|o| o.resource_version != version)
            {
                *observed = Some(Observed {
                    resource_version: version,
                    since: Instant::now(),
                });
            }
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.timings.lease_duration, Duration::from_secs);
            let unchanged_for = observed
                .as_ref()
                .map_or(Duration::ZERO, |o| o.since.elapsed());
            if holder.is_some() && unchanged_for < duration {
                return Ok(None);
            }
            (now.clone(), transitions + 1)
        };
        let mut update = lease;
        update.spec = Some(self.spec_held(acquired, now, token));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &update)
            .await
        {
            Ok(_) => Ok(Some(token)),
            Err(e) if is_conflict(&e) => Ok(None),
            Err(e) => Err(describe(e)),
        }
    }

    fn spec_held(&self, acquired: MicroTime, renewed: MicroTime, transitions: u64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(i32::try_from(transitions).unwrap_or(i32::MAX)),
            ..Default::default()
        }
    }

    /// Gives the Lease up (empty holder, one-second duration) if still ours.
    async fn release(&self) -> Result<(), String> {
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(describe)? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(describe)
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn describe(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}
