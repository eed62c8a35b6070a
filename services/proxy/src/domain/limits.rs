//! The decisions of the limit steps, pure (the counters they lease from
//! and the clock are the adapter's, [`crate::adapters::limits`]).
//!
//! Every budget (a key's or an organisation's rate limit or quota) has one
//! shared counter (see [`meridian_keys::limits`]). A replica does not ask
//! it for each request: it leases a block of requests (about
//! [`LEASE_HORIZON`] of its own traffic, never more than half an even
//! share of what is left) and admits from the block, with no I/O, until it
//! runs low; the next block is fetched ahead. So what every replica may
//! admit never adds up to more than the limit, a replica with more traffic
//! simply leases more often, and blocks shrink as a window or period runs
//! out. [`Lease`] is one replica's side of one counter.

use std::time::Duration;

use meridian_keys::limits::Budget;

/// How much of its own traffic a replica leases at once.
pub const LEASE_HORIZON: Duration = Duration::from_millis(50);

/// How long a replica waits before asking a counter that was used up
/// again (another replica may give back what it does not use).
pub const EXHAUSTED_RECHECK: Duration = Duration::from_millis(50);

/// How long a counter is left alone after it could not be reached before
/// it is tried again (meanwhile rate limits count locally).
pub const UNREACHABLE_RETRY: Duration = Duration::from_secs(1);

/// A lease unused this long is given back, so that a replica the load
/// balancer stopped sending a key's traffic to does not sit on it.
pub const IDLE_RETURN: Duration = Duration::from_millis(500);

/// How many requests of a counter a replica leases at once: about
/// [`LEASE_HORIZON`] of its demand (requests a second), or what it will
/// need until its rate window ends (`window_left`) if that is less, at
/// least one, never more than `remaining / (2 × replicas)` (but at least
/// one), never more than `remaining`. So what a replica holds when a window
/// ends unused is little.
pub fn block_size(
    demand_per_s: f64,
    remaining: u64,
    replicas: usize,
    window_left: Option<Duration>,
) -> u64 {
    if remaining == 0 {
        return 0;
    }
    let horizon = window_left.map_or(LEASE_HORIZON, |left| left.min(LEASE_HORIZON));
    let want = (demand_per_s * horizon.as_secs_f64()).ceil();
    let want = if want.is_finite() && want >= 1.0 {
        want.min(u64::MAX as f64) as u64
    } else {
        1
    };
    let replicas = u64::try_from(replicas.max(1)).unwrap_or(u64::MAX);
    let share = (remaining / replicas.saturating_mul(2)).max(1);
    want.min(share).min(remaining)
}

/// The demand estimate after `served` requests in `elapsed`: an average
/// weighted half to the last interval, so it follows a burst within a few
/// leases.
pub fn next_demand(previous: f64, served: u64, elapsed: Duration) -> f64 {
    let rate = served as f64 / elapsed.as_secs_f64().max(0.001);
    if previous <= 0.0 {
        rate
    } else {
        0.5 * previous + 0.5 * rate
    }
}

/// How a rate-limited request is throttled (Tyk's `throttle_interval`
/// and `throttle_retry_limit`): tried again after each pause, up to that
/// many times, before it is refused. `None`: refused at once.
pub fn throttle(budget: &Budget) -> Option<(u32, Duration)> {
    if budget.throttle_retry_limit <= 0
        || !(budget.throttle_interval > 0.0 && budget.throttle_interval.is_finite())
    {
        return None;
    }
    // Bounded so that a typo cannot hold a connection for hours.
    let retries = u32::try_from(budget.throttle_retry_limit.min(1_000)).unwrap_or(1_000);
    let pause = Duration::from_secs_f64(budget.throttle_interval.min(60.0));
    Some((retries, pause))
}

/// Where the `X-RateLimit-*` headers' numbers come from (Tyk's
/// `rate_limit_response_headers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderSource {
    /// The quota (Tyk's default): limit, remaining and renewal time of the
    /// key's quota, on answers the upstream gave.
    #[default]
    Quotas,
    /// The rate limit: limit, remaining and window end, on every answer
    /// that passed the rate-limit step (a 429 included).
    RateLimits,
}

/// The values of `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitHeaders {
    /// The limit.
    pub limit: i64,
    /// What is left (never negative).
    pub remaining: i64,
    /// When it renews (Unix seconds; 0: never or unknown).
    pub reset: i64,
}

/// What one replica holds of one counter, and what it knows of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lease {
    /// The window (rate: its start, ms) or period (quota: its end, Unix
    /// seconds, 0 for never) the tokens are for.
    pub period: i64,
    /// The quota reset marker the period started under.
    pub reset: String,
    /// Requests this replica may still admit in `period`.
    pub tokens: u64,
    /// What the counter had left after this replica's last lease
    /// (others' leases count as spent).
    pub shared_remaining: u64,
    /// The size of the last block leased.
    pub last_block: u64,
    /// Requests admitted since the last lease.
    pub served: u64,
    /// Demand estimate, requests a second.
    pub demand: f64,
    /// The counter is used up for `period`: ask again from this instant
    /// (ms on the adapter's clock).
    pub exhausted_until: Option<i64>,
    /// The counter could not be reached: until this instant (ms) rate
    /// limits count here only.
    pub unreachable_until: Option<i64>,
    /// Requests admitted while the counter could not be reached, in
    /// `local_period`, not yet added to it.
    pub local_used: u64,
    /// The window `local_used` counts in.
    pub local_period: i64,
}

/// What a request gets from a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Admitted; fetch the next block ahead when `prefetch`.
    Granted {
        /// The lease is running low.
        prefetch: bool,
    },
    /// The counter is used up for this window or period.
    Exhausted,
    /// Nothing held for this period: lease a block first.
    Fetch,
}

impl Lease {
    /// Takes one request's token for `period` (with quota reset marker
    /// `reset`) at `now_ms` (the adapter's clock).
    pub fn take(&mut self, period: i64, reset: &str, now_ms: i64) -> Take {
        if self.period != period || self.reset != reset {
            // A new window or period (or a reset): what was held is void.
            self.period = period;
            reset.clone_into(&mut self.reset);
            self.tokens = 0;
            self.exhausted_until = None;
            self.shared_remaining = 0;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            self.served += 1;
            let prefetch = self.tokens <= self.last_block / 2;
            return Take::Granted { prefetch };
        }
        match self.exhausted_until {
            Some(until) if now_ms < until => Take::Exhausted,
            _ => Take::Fetch,
        }
    }

    /// A block of `block` for `period` was leased; the counter has
    /// `remaining` left after it.
    pub fn leased(&mut self, period: i64, reset: &str, block: u64, remaining: u64) {
        if self.period != period || self.reset != reset {
            self.period = period;
            reset.clone_into(&mut self.reset);
            self.tokens = 0;
        }
        self.tokens += block;
        self.last_block = block;
        self.shared_remaining = remaining;
        self.exhausted_until = None;
        self.unreachable_until = None;
    }

    /// The counter has nothing left for `period`; ask again at `until_ms`.
    /// What this replica still holds for that period it still admits (a
    /// fetch ahead finds the counter used up while the lease has some).
    pub fn used_up(&mut self, period: i64, reset: &str, until_ms: i64) {
        if self.period != period || self.reset != reset {
            self.period = period;
            reset.clone_into(&mut self.reset);
            self.tokens = 0;
        }
        self.shared_remaining = 0;
        self.exhausted_until = Some(until_ms);
    }

    /// Counting locally (the counter cannot be reached): admits while this
    /// replica's admissions in window `period` stay under `local_limit`.
    pub fn take_locally(&mut self, period: i64, local_limit: u64) -> bool {
        if self.local_period != period {
            self.local_period = period;
            self.local_used = 0;
        }
        if self.local_used < local_limit {
            self.local_used += 1;
            true
        } else {
            false
        }
    }

    /// Requests admitted locally in window `period` that the counter does
    /// not know of yet (0 once that window is over).
    pub fn unreported(&self, period: i64) -> u64 {
        if self.local_period == period {
            self.local_used
        } else {
            0
        }
    }

    /// What this replica reckons is left of the budget: the counter's
    /// remainder at the last lease plus what it holds.
    pub fn remaining(&self) -> u64 {
        self.shared_remaining.saturating_add(self.tokens)
    }
}

/// Each replica's share of a rate limit while the counter cannot be
/// reached: an even split over the replicas last seen live (Tyk's DRL
/// rule), so the sum stays within the limit.
pub fn local_limit(limit: u64, replicas: usize) -> u64 {
    let replicas = u64::try_from(replicas.max(1)).unwrap_or(u64::MAX);
    limit.div_ceil(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_demand_and_shrink_as_the_budget_runs_out() {
        // demand/s, remaining, replicas, ms left in the window → block
        let cases = [
            (20_000.0, 1_000_000, 2, None, 1_000),   // 50 ms of 20k/s
            (20_000.0, 1_000_000, 2, Some(10), 200), // only 10 ms of the window left
            (20_000.0, 1_000_000, 2, Some(0), 1),
            (20_000.0, 1_000, 2, None, 250), // half an even share of 1,000
            (10.0, 1_000, 3, None, 1),       // a quiet replica leases one at a time
            (0.0, 100, 1, None, 1),          // no estimate yet: one
            (5_000.0, 7, 3, None, 1),        // near the end: one at a time
            (5_000.0, 1, 3, None, 1),
            (5_000.0, 0, 3, None, 0),
            (f64::INFINITY, 100, 1, None, 1),
        ];
        for (demand, remaining, replicas, left, want) in cases {
            let left = left.map(Duration::from_millis);
            assert_eq!(
                block_size(demand, remaining, replicas, left),
                want,
                "demand {demand}, remaining {remaining}, replicas {replicas}"
            );
        }
    }

    #[test]
    fn demand_follows_traffic() {
        let d = next_demand(0.0, 100, Duration::from_millis(10));
        assert!((d - 10_000.0).abs() < 1.0);
        let d = next_demand(d, 0, Duration::from_secs(1));
        assert!((d - 5_000.0).abs() < 1.0);
    }

    #[test]
    fn throttling_needs_both_an_interval_and_retries() {
        let b = |interval: f64, retries: i64| Budget {
            throttle_interval: interval,
            throttle_retry_limit: retries,
            ..Budget::default()
        };
        assert_eq!(throttle(&b(0.5, 3)), Some((3, Duration::from_millis(500))));
        assert_eq!(throttle(&b(0.0, 3)), None);
        assert_eq!(throttle(&b(-1.0, 3)), None);
        assert_eq!(throttle(&b(0.5, 0)), None);
        assert_eq!(throttle(&b(0.5, -1)), None);
        assert_eq!(
            throttle(&b(1e9, 1e9 as i64)),
            Some((1_000, Duration::from_secs(60)))
        );
    }

    #[test]
    fn a_lease_admits_what_it_holds_for_its_period_only() {
        let mut l = Lease::default();
        // Nothing held: fetch.
        assert_eq!(l.take(1_000, "", 0), Take::Fetch);
        l.leased(1_000, "", 4, 96);
        assert_eq!(l.remaining(), 100);
        assert_eq!(l.take(1_000, "", 0), Take::Granted { prefetch: false });
        assert_eq!(l.take(1_000, "", 0), Take::Granted { prefetch: true });
        assert_eq!(l.take(1_000, "", 0), Take::Granted { prefetch: true });
        assert_eq!(l.take(1_000, "", 0), Take::Granted { prefetch: true });
        assert_eq!(l.served, 4);
        assert_eq!(l.take(1_000, "", 0), Take::Fetch);
        // Used up: what is held is still admitted, then refused without
        // asking until the re-check time.
        l.leased(1_000, "", 1, 0);
        l.used_up(1_000, "", 50);
        assert_eq!(l.take(1_000, "", 0), Take::Granted { prefetch: true });
        assert_eq!(l.take(1_000, "", 49), Take::Exhausted);
        assert_eq!(l.take(1_000, "", 50), Take::Fetch);
        // The next window: what was held or refused is void.
        l.leased(1_000, "", 3, 0);
        assert_eq!(l.take(2_000, "", 0), Take::Fetch);
        l.used_up(2_000, "", 99);
        assert_eq!(l.take(3_000, "", 0), Take::Fetch);
        // A quota reset (a new marker) voids the period's tokens too.
        l.leased(9, "t1", 5, 0);
        assert_eq!(l.take(9, "t2", 0), Take::Fetch);
    }

    #[test]
    fn counting_locally_keeps_to_an_even_share_per_window() {
        assert_eq!(local_limit(100, 3), 34);
        assert_eq!(local_limit(100, 0), 100);
        let mut l = Lease::default();
        let admitted = (0..50).filter(|_| l.take_locally(7, 34)).count();
        assert_eq!(admitted, 34);
        assert_eq!(l.unreported(7), 34);
        assert_eq!(l.unreported(8), 0);
        assert!(l.take_locally(8, 34), "a new window starts over");
        assert_eq!(l.unreported(8), 1);
    }
}
