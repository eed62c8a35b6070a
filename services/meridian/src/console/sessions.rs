//! Signed-out console sessions, shared by every hub replica through the
//! `CONSOLE` stream: signing out appends a revocation (the session's
//! SHA-256, never the cookie), every replica folds the stream into memory,
//! and a revoked cookie is refused everywhere from then on.
//!
//! Why the log and not a short session renewed while in use: a renewed
//! short session still lets a copied cookie in until it lapses, and
//! "signed out" would mean "signed out in this browser". The log makes it
//! mean "this session is over", at the cost of one small message per
//! sign-out (kept for [`CONSOLE_RETENTION`], the longest a session lives).
//!
//! Like every fold, a replica answers no session check until it has caught
//! up with the stream at start (a revoked cookie must not pass on a replica
//! that has just started).
//!
//! [`CONSOLE_RETENTION`]: meridian_schemas::streams::CONSOLE_RETENTION

use std::collections::HashMap;
use std::sync::Arc;

use meridian_kit::writer::Lock;
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::bus::{self, BusError, Publisher};
use meridian_kit::metrics::Metrics;
use meridian_kit::projection::{
    ConsumerKind, Fold, InMemory, Progress, ProjectionSpec, Runner, StoredEvent,
};
use meridian_schemas::console::ConsoleEvent;
use meridian_schemas::{DecodeError, streams};

/// Revoked sessions by hash, each until it would have expired.
#[derive(Debug, Default)]
pub struct Revoked {
    sessions: HashMap<String, i64>,
}

impl Revoked {
    /// Applies one event. Sessions past their expiry at the event's time are
    /// forgotten (their cookies are refused for having expired anyway).
    pub fn apply(&mut self, event: &ConsoleEvent) {
        match event {
            ConsoleEvent::SessionRevoked {
                session_hash,
                expires_ms,
                at_ms,
            } => {
                self.sessions.retain(|_, expires| *expires > *at_ms);
                self.sessions.insert(session_hash.clone(), *expires_ms);
            }
        }
    }

    /// Whether the session with this hash was signed out.
    pub fn contains(&self, session_hash: &str) -> bool {
        self.sessions.contains_key(session_hash)
    }
}

impl Fold for Revoked {
    type Error = DecodeError;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), DecodeError> {
        Revoked::apply(self, &stored.envelope.open()?);
        Ok(())
    }
}

/// SHA-256 (hex) of a session cookie's value: how the log names it.
pub fn session_hash(cookie: &str) -> String {
    meridian_kit::hex::encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cookie.as_bytes()).as_ref(),
    )
}

/// This replica's view of the signed-out sessions, and the way to add one.
#[derive(Clone)]
pub struct Sessions {
    writer: meridian_kit::writer::Writer<Revoked>,
    progress: Progress,
}

impl Sessions {
    /// Connects to NATS at `nats_url`, makes sure `CONSOLE` exists and folds
    /// it until `stop`.
    pub async fn start(
        nats_url: &str,
        metrics: &Metrics,
        stop: CancellationToken,
    ) -> Result<Self, BusError> {
        let client = bus::connect(
            nats_url,
            "meridian-console",
            Duration::from_secs(30),
            metrics,
        )
        .await?;
        let js = async_nats::jetstream::new(client);
        bus::ensure_streams(&js, &[streams::CONSOLE]).await?;
        let state = Arc::new(Lock::new(Revoked::default()));
        let (runner, progress): (Runner<InMemory<Revoked>>, _) = Runner::in_memory(
            js.clone(),
            state.clone(),
            ProjectionSpec {
                id: "console-sessions".into(),
                stream: streams::CONSOLE,
                consumer: ConsumerKind::Ordered,
                batch: 256,
                batch_bytes: usize::MAX,
                filter_subject: None,
            },
            metrics,
        );
        tokio::spawn(async move {
            if let Err(e) = runner.run_until_stopped(stop).await {
                tracing::error!(error = %e, "the console's session fold halted: sessions are refused");
            }
        });
        Ok(Self {
            writer: meridian_kit::writer::Writer::new(
                Publisher::new(js, metrics),
                state,
                progress.clone(),
            ),
            progress,
        })
    }

    /// Waits (at most `patience`) until the fold has caught up with the
    /// stream as it was at start. False if it did not.
    pub async fn ready(&self, patience: Duration) -> bool {
        self.progress.caught_up()
            || tokio::time::timeout(patience, self.progress.reached_start())
                .await
                .is_ok_and(|r| r.is_ok())
    }

    /// Whether the session cookie `value` was signed out.
    pub fn is_revoked(&self, value: &str) -> bool {
        self.writer.read().contains(&session_hash(value))
    }

    /// Signs the session `value` out on every replica; returns once this
    /// replica's view has it.
    pub async fn revoke(&self, value: &str, expires_ms: i64) -> Result<(), BusError> {
        let event = ConsoleEvent::SessionRevoked {
            session_hash: session_hash(value),
            expires_ms,
            at_ms: meridian_kit::time::now_ms(),
        };
        self.writer.append(&event).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoked(hash: &str, expires_ms: i64, at_ms: i64) -> ConsoleEvent {
        ConsoleEvent::SessionRevoked {
            session_hash: hash.into(),
            expires_ms,
            at_ms,
        }
    }

    #[test]
    fn revocations_are_kept_until_their_session_would_have_expired() {
        let mut state = Revoked::default();
        state.apply(&revoked("a", 1_000, 10));
        state.apply(&revoked("b", 5_000, 20));
        assert!(state.contains("a") && state.contains("b"));
        state.apply(&revoked("c", 9_000, 2_000));
        assert!(!state.contains("a"), "a expired at 1,000");
        assert!(state.contains("b") && state.contains("c"));
        assert_ne!(session_hash("x.y.z"), "x.y.z");
        assert_eq!(session_hash("x.y.z").len(), 64);
    }
}
