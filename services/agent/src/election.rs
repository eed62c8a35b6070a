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
//! - Every Lease call is bounded by `renewDeadline` (a call that hangs is a
//!   failed one), and a leader that cannot renew for `renewDeadline` steps
//!   down; a leader that stops cleanly releases the Lease so a standby takes
//!   over at once.
//!
//! What to do with the Lease as read ([`plan`]) and which role follows a
//! round ([`next_role`]) are pure functions of the Lease, the clocks and the
//! outcome; [`Elector`] does the calls.
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

/// The Lease as one round read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// Who holds it (`None`: nobody, or released).
    pub holder: Option<String>,
    /// `leaseTransitions`.
    pub transitions: u64,
    /// `leaseDurationSeconds`, when set.
    pub duration: Option<Duration>,
    /// `metadata.resourceVersion`.
    pub version: Option<String>,
}

/// Another replica's Lease as last seen: its version, and since when it has
/// not changed, on this replica's clock (so clock skew between pods does not
/// matter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The version seen.
    pub version: Option<String>,
    /// When it was first seen.
    pub since: Instant,
}

/// What one round does with the Lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// There is no Lease: create it, holding it (token 0).
    Create,
    /// It is ours: renew it, keeping the token.
    Renew {
        /// The fencing token.
        token: u64,
    },
    /// Another's has gone its duration without a change (or nobody holds
    /// it): take it over with the next token.
    TakeOver {
        /// The fencing token after the takeover.
        token: u64,
    },
    /// Another holds it and it has not expired.
    StandBy,
}

/// Decides a round from the Lease as read (`None`: it does not exist), this
/// replica's identity, what it saw of the Lease before, and the time now;
/// returns the plan and what to remember of the Lease.
pub fn plan(
    lease: Option<&LeaseState>,
    identity: &str,
    seen: Option<Observation>,
    now: Instant,
    default_duration: Duration,
) -> (Plan, Option<Observation>) {
    let Some(lease) = lease else {
        return (Plan::Create, None);
    };
    let holder = lease.holder.as_deref().filter(|h| !h.is_empty());
    if holder == Some(identity) {
        return (
            Plan::Renew {
                token: lease.transitions,
            },
            None,
        );
    }
    let seen = match seen {
        Some(o) if o.version == lease.version => o,
        _ => Observation {
            version: lease.version.clone(),
            since: now,
        },
    };
    let duration = lease.duration.unwrap_or(default_duration);
    let plan = if holder.is_some() && now.saturating_duration_since(seen.since) < duration {
        Plan::StandBy
    } else {
        Plan::TakeOver {
            token: lease.transitions + 1,
        }
    };
    (plan, Some(seen))
}

/// How a round ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This replica holds the Lease, with this token.
    Holds(u64),
    /// Another replica holds it (or won the race to write it).
    Lost,
    /// The Lease API failed or did not answer in time.
    Failed,
}

/// The role after a round: holding the Lease leads, losing it stands by,
/// and a failure keeps a leader leading only until `renew_deadline` has
/// passed since its last successful renewal.
pub fn next_role(
    current: Role,
    outcome: &Outcome,
    last_renewal: Option<Instant>,
    now: Instant,
    renew_deadline: Duration,
) -> Role {
    match outcome {
        Outcome::Holds(fencing_token) => Role::Leader {
            fencing_token: *fencing_token,
        },
        Outcome::Lost => Role::Standby,
        Outcome::Failed => match current {
            Role::Leader { .. }
                if last_renewal
                    .is_some_and(|t| now.saturating_duration_since(t) < renew_deadline) =>
            {
                current
            }
            Role::Leader { .. } => Role::Standby,
            other => other,
        },
    }
}

/// Why a Lease call failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The API answered with an error.
    #[error("{code} {reason}: {message}")]
    Api {
        /// HTTP status.
        code: u16,
        /// Kubernetes reason.
        reason: String,
        /// Its message.
        message: String,
    },
    /// The call failed before an answer (connection, TLS, decoding).
    #[error("{0}")]
    Client(kube::Error),
    /// The call did not finish within `renewDeadline`.
    #[error("the Lease API did not answer within {0:?}")]
    TimedOut(Duration),
}

impl From<kube::Error> for ElectionError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => Self::Api {
                code: s.code,
                reason: s.reason,
                message: s.message,
            },
            other => Self::Client(other),
        }
    }
}

/// One replica's elector.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
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
        let mut seen: Option<Observation> = None;
        let mut last_renewal: Option<Instant> = None;
        let mut last_error: Option<String> = None;
        let deadline = self.timings.renew_deadline;
        loop {
            let attempt = tokio::select! {
                () = stop.cancelled() => break,
                r = tokio::time::timeout(deadline, self.try_acquire_or_renew(&mut seen)) => {
                    r.unwrap_or(Err(ElectionError::TimedOut(deadline)))
                }
            };
            let outcome = match attempt {
                Ok(Some(token)) => {
                    last_renewal = Some(Instant::now());
                    last_error = None;
                    Outcome::Holds(token)
                }
                Ok(None) => {
                    last_error = None;
                    Outcome::Lost
                }
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(lease = %self.name, error = %text, "lease API call failed");
                        last_error = Some(text);
                    }
                    Outcome::Failed
                }
            };
            let current = *role.borrow();
            let next = next_role(current, &outcome, last_renewal, Instant::now(), deadline);
            if next != current {
                match (next, outcome) {
                    (Role::Leader { fencing_token }, _) => {
                        tracing::info!(lease = %self.name, identity = %self.identity, fencing_token, "became leader")
                    }
                    (_, Outcome::Failed) => {
                        tracing::warn!(lease = %self.name, ?deadline, "could not renew the lease in time; standing by")
                    }
                    _ => {
                        tracing::warn!(lease = %self.name, "another replica holds the lease now; standing by")
                    }
                }
                role.send_replace(next);
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.timings.retry_period) => {}
            }
        }
        if matches!(*role.borrow(), Role::Leader { .. }) {
            role.send_replace(Role::Standby);
            let released = tokio::time::timeout(deadline, self.release())
                .await
                .unwrap_or(Err(ElectionError::TimedOut(deadline)));
            match released {
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
        seen: &mut Option<Observation>,
    ) -> Result<Option<u64>, ElectionError> {
        let now = MicroTime(Timestamp::now());
        let lease = self.api.get_opt(&self.name).await?;
        let state = lease.as_ref().map(|l| {
            let spec = l.spec.clone().unwrap_or_default();
            LeaseState {
                holder: spec.holder_identity,
                transitions: u64::try_from(spec.lease_transitions.unwrap_or(0)).unwrap_or(0),
                duration: spec
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map(Duration::from_secs),
                version: l.metadata.resource_version.clone(),
            }
        });
        let (decided, remembered) = plan(
            state.as_ref(),
            &self.identity,
            seen.take(),
            Instant::now(),
            self.timings.lease_duration,
        );
        *seen = remembered;
        let (lease, acquired, token) = match (decided, lease) {
            (Plan::StandBy, _) => return Ok(None),
            (Plan::Create, _) => {
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
                    Err(e) => Err(e.into()),
                };
            }
            (Plan::Renew { token }, Some(lease)) => {
                let acquired = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.acquire_time.clone())
                    .unwrap_or(now.clone());
                (lease, acquired, token)
            }
            (Plan::TakeOver { token }, Some(lease)) => (lease, now.clone(), token),
            (Plan::Renew { .. } | Plan::TakeOver { .. }, None) => {
                unreachable!("a plan to write an existing Lease comes from one that was read")
            }
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
            Err(e) => Err(e.into()),
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
    async fn release(&self) -> Result<(), ElectionError> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
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
            .await?;
        Ok(())
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn held_by(holder: &str, version: &str, transitions: u64) -> LeaseState {
        LeaseState {
            holder: Some(holder.into()),
            transitions,
            duration: Some(DURATION),
            version: Some(version.into()),
        }
    }

    #[test]
    fn no_lease_is_created_and_our_own_is_renewed_with_its_token() {
        let now = Instant::now();
        assert_eq!(plan(None, "me", None, now, DURATION), (Plan::Create, None));
        let ours = held_by("me", "7", 3);
        assert_eq!(
            plan(Some(&ours), "me", None, now, DURATION).0,
            Plan::Renew { token: 3 }
        );
    }

    #[test]
    fn anothers_lease_is_taken_only_after_its_duration_unchanged_on_our_clock() {
        let t0 = Instant::now();
        let theirs = held_by("other", "7", 3);
        let (first, seen) = plan(Some(&theirs), "me", None, t0, DURATION);
        assert_eq!(first, Plan::StandBy);
        let seen = seen.unwrap();
        assert_eq!(seen.since, t0);
        let later = t0 + DURATION - Duration::from_millis(1);
        let (p, seen) = plan(Some(&theirs), "me", Some(seen), later, DURATION);
        assert_eq!(p, Plan::StandBy, "not yet");
        let (p, _) = plan(Some(&theirs), "me", seen.clone(), t0 + DURATION, DURATION);
        assert_eq!(p, Plan::TakeOver { token: 4 });
        // A renewal (new version) restarts the wait.
        let renewed = held_by("other", "8", 3);
        let (p, seen) = plan(Some(&renewed), "me", seen, t0 + DURATION, DURATION);
        assert_eq!(p, Plan::StandBy);
        assert_eq!(seen.unwrap().since, t0 + DURATION);
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_its_own_duration_wins() {
        let now = Instant::now();
        let released = LeaseState {
            holder: None,
            ..held_by("", "9", 5)
        };
        assert_eq!(
            plan(Some(&released), "me", None, now, DURATION).0,
            Plan::TakeOver { token: 6 }
        );
        let short = LeaseState {
            duration: Some(Duration::from_secs(1)),
            ..held_by("other", "9", 5)
        };
        let (_, seen) = plan(Some(&short), "me", None, now, DURATION);
        let (p, _) = plan(
            Some(&short),
            "me",
            seen,
            now + Duration::from_secs(1),
            DURATION,
        );
        assert_eq!(p, Plan::TakeOver { token: 6 });
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_at_the_renew_deadline() {
        let t0 = Instant::now();
        let deadline = Duration::from_secs(10);
        let leader = Role::Leader { fencing_token: 2 };
        let role = |outcome, now| next_role(leader, &outcome, Some(t0), now, deadline);
        assert_eq!(role(Outcome::Failed, t0 + Duration::from_secs(9)), leader);
        assert_eq!(role(Outcome::Failed, t0 + deadline), Role::Standby);
        assert_eq!(role(Outcome::Lost, t0), Role::Standby);
        assert_eq!(
            role(Outcome::Holds(3), t0),
            Role::Leader { fencing_token: 3 }
        );
        // A standby that fails stays standby; one that wins leads.
        let standby = |outcome| next_role(Role::Standby, &outcome, None, t0, deadline);
        assert_eq!(standby(Outcome::Failed), Role::Standby);
        assert_eq!(
            standby(Outcome::Holds(0)),
            Role::Leader { fencing_token: 0 }
        );
        // A leader that never renewed (it just won) and fails steps down.
        assert_eq!(
            next_role(leader, &Outcome::Failed, None, t0, deadline),
            Role::Standby
        );
    }
}
