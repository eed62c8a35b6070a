//! Retrying an operation: exponential delays with jitter (from `backon`,
//! whose jitter draws from a seeded PRNG, so a fleet does not retry in
//! step), cut short by a stop signal, and a log line for each failure and
//! when it gives up. Every retry loop of Meridian goes through here.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// How long to wait between attempts, and when to give up.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first delay (before jitter, which adds up to as much again).
    pub min: Duration,
    /// The longest delay before jitter.
    pub max: Duration,
    /// Give up once the delays so far and the next would exceed this
    /// (`None`: never).
    pub total: Option<Duration>,
}

impl Backoff {
    /// Retries until stopped, from `min` doubling up to `max`.
    pub const fn forever(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            total: None,
        }
    }

    /// Retries for about `total`, from `min` doubling up to `max`.
    pub const fn within(total: Duration, min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            total: Some(total),
        }
    }

    /// The delays, jittered; the iterator ends when it is time to give up.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .without_max_times()
            .with_total_delay(self.total)
            .build()
    }
}

/// Why [`retry`] returned without a result.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The stop signal came first.
    #[error("stopped before it succeeded")]
    Stopped,
    /// Every attempt failed; the last error.
    #[error(transparent)]
    GaveUp(E),
}

/// Runs `attempt` until it succeeds, waiting the delays of `backoff` between
/// failures (each logged with `what`), until it is time to give up (logged
/// as an error) or `stop` is cancelled (an attempt in flight is dropped).
///
/// For work that runs until it fails (a relay, a watcher), an attempt that
/// lasted longer than the longest delay was healthy: the next failure waits
/// the shortest delay again.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    backoff: Backoff,
    stop: &CancellationToken,
    mut attempt: F,
) -> Result<T, RetryError<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = backoff.delays();
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            () = stop.cancelled() => return Err(RetryError::Stopped),
            outcome = attempt() => outcome,
        };
        let error = match outcome {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if started.elapsed() > backoff.max {
            delays = backoff.delays();
        }
        let Some(delay) = delays.next() else {
            tracing::error!(error = %error, "{what} failed; giving up");
            return Err(RetryError::GaveUp(error));
        };
        tracing::warn!(error = %error, retry_in = ?delay, "{what} failed; retrying");
        tokio::select! {
            () = stop.cancelled() => return Err(RetryError::Stopped),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_grow_with_jitter_up_to_the_maximum_and_end_at_the_total() {
        let backoff = Backoff::forever(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = backoff.delays().take(8).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(100 * (1 << i)).min(Duration::from_secs(1));
            assert!(
                *d >= base && *d <= base * 2,
                "delay {i}: {d:?} for {base:?}"
            );
        }
        let two: Vec<Vec<Duration>> = (0..2).map(|_| backoff.delays().take(8).collect()).collect();
        assert_ne!(two[0], two[1], "jitter differs between runs");
        let bounded = Backoff::within(
            Duration::from_secs(3),
            Duration::from_millis(100),
            Duration::from_secs(1),
        );
        let total: Duration = bounded.delays().sum();
        assert!(total <= Duration::from_secs(3), "{total:?}");
        assert!(bounded.delays().count() < 20);
    }

    #[tokio::test(start_paused = true)]
    async fn it_retries_until_success_gives_up_at_the_total_and_stops_when_told() {
        let stop = CancellationToken::new();
        let tries = AtomicU32::new(0);
        let fast = Backoff::within(
            Duration::from_secs(60),
            Duration::from_millis(10),
            Duration::from_millis(100),
        );
        let third_time_lucky = retry("test", fast, &stop, || async {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            if n < 2 { Err("not yet") } else { Ok(n) }
        })
        .await;
        assert_eq!(third_time_lucky.unwrap(), 2);

        let short = Backoff::within(
            Duration::from_millis(50),
            Duration::from_millis(10),
            Duration::from_millis(10),
        );
        let never = retry("test", short, &stop, || async { Err::<(), _>("down") }).await;
        assert!(matches!(never, Err(RetryError::GaveUp("down"))));

        let forever = Backoff::forever(Duration::from_millis(10), Duration::from_millis(10));
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stopper.cancel();
        });
        let stopped = retry("test", forever, &stop, || async { Err::<(), _>("down") }).await;
        assert!(matches!(stopped, Err(RetryError::Stopped)));
    }
}
