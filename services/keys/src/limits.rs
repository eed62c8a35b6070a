//! Rate limits and quotas as numbers: which limits a request to an API is
//! held to (Tyk's rules), the fixed windows and quota periods they count
//! in, and the counter every gateway replica shares for each of them in
//! the `GATEWAY_LIMITS` key-value bucket
//! ([`meridian_schemas::streams::LIMITS_BUCKET`]). The proxy counts against
//! them; key-issuer reads them to show a key's `quota_remaining`. Pure: no
//! I/O, time comes in.
//!
//! A counter is one JSON record per budget (a key's rate or quota on one
//! allowance scope, an organisation's rate or quota). Replicas take blocks
//! of it (lease `n` requests: `used += n`) with a revision-checked update,
//! so the sum of what every replica may admit never passes the limit.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::Session;

/// The limits of one budget, as numbers (Tyk's `APILimit`, without what
/// the gateway does not count).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budget {
    /// Requests per `per` seconds (0 or less: no rate limit).
    pub rate: f64,
    /// The rate window, in seconds.
    pub per: f64,
    /// Requests per quota period (0 or less: no quota; -1 is unlimited).
    pub quota_max: i64,
    /// Length of a quota period, in seconds (0 or less: never renews).
    pub quota_renewal_rate: i64,
    /// Seconds between retries of a rate-limited request.
    pub throttle_interval: f64,
    /// Retries of a rate-limited request before it is refused (0 or less:
    /// refused at once).
    pub throttle_retry_limit: i64,
}

impl Budget {
    fn of_session(s: &Session) -> Self {
        Self {
            rate: s.rate,
            per: s.per,
            quota_max: s.quota_max,
            quota_renewal_rate: s.quota_renewal_rate,
            throttle_interval: s.throttle_interval,
            throttle_retry_limit: s.throttle_retry_limit,
        }
    }

    /// The rate window, when a rate limit is set.
    pub fn window(&self) -> Option<RateWindow> {
        RateWindow::of(self.rate, self.per)
    }

    /// The quota, when one is set.
    pub fn quota(&self) -> Option<Quota> {
        Quota::of(self.quota_max, self.quota_renewal_rate)
    }
}

/// The budget a key's request to `api_id` counts against, and its
/// allowance scope (Tyk's `GetAccessDefinitionByAPIIDOrSession`): the
/// API's own limit when the key's access right to it has one (a per-API or
/// partitioned policy set it), else the session's, in the shared scope `""`.
pub fn key_budget<'a>(session: &'a Session, api_id: &str) -> (Budget, &'a str) {
    if let Some(right) = session.access_rights.get(api_id)
        && !right.limit.is_empty()
    {
        let l = &right.limit;
        let budget = Budget {
            rate: l.rate,
            per: l.per,
            quota_max: l.quota_max,
            quota_renewal_rate: l.quota_renewal_rate,
            throttle_interval: l.throttle_interval,
            throttle_retry_limit: l.throttle_retry_limit,
        };
        return (budget, right.allowance_scope.as_str());
    }
    (Budget::of_session(session), "")
}

/// The quota as the session stores it for `api_id` (Tyk's
/// `GetQuotaLimitByAPIID`): `(quota_max, quota_remaining, quota_renews)`
/// of the API's own limit when it has one, else the session's.
pub fn stored_quota(session: &Session, api_id: &str) -> (i64, i64, i64) {
    match session.access_rights.get(api_id) {
        Some(right) if !right.limit.is_empty() => {
            let l = &right.limit;
            (l.quota_max, l.quota_remaining, l.quota_renews)
        }
        _ => (
            session.quota_max,
            session.quota_remaining,
            session.quota_renews,
        ),
    }
}

/// An organisation session's budget (over every key of its APIs).
pub fn org_budget(org: &Session) -> Budget {
    Budget::of_session(org)
}

/// A rate limit as fixed windows aligned to the epoch: `limit` requests in
/// each window of `window_ms`. `rate` per `per` seconds becomes
/// `max(1, floor(rate))` requests per `per × limit / rate` seconds, so a
/// fractional rate (1.5 a second) keeps its average (1 every 667 ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateWindow {
    /// Requests per window.
    pub limit: u64,
    /// Window length, in milliseconds (at least 1).
    pub window_ms: i64,
}

impl RateWindow {
    /// The window of `rate` per `per` seconds; `None` when either is not
    /// positive (no rate limit, as Tyk).
    pub fn of(rate: f64, per: f64) -> Option<Self> {
        if !(rate > 0.0 && per > 0.0 && rate.is_finite() && per.is_finite()) {
            return None;
        }
        let limit = rate.floor().max(1.0);
        let window_ms = (per * 1000.0 * limit / rate).round().max(1.0);
        Some(Self {
            limit: limit as u64,
            window_ms: window_ms as i64,
        })
    }

    /// The start (ms since the epoch) of the window `now_ms` falls in.
    pub fn start_ms(&self, now_ms: i64) -> i64 {
        now_ms - now_ms.rem_euclid(self.window_ms)
    }

    /// When the window `now_ms` falls in ends (ms since the epoch).
    pub fn end_ms(&self, now_ms: i64) -> i64 {
        self.start_ms(now_ms) + self.window_ms
    }
}

/// A quota: `max` requests a period of `renewal_s` seconds (never renews
/// when 0 or less). A period starts with the first request after the last
/// one ended, or after a reset, as Tyk's does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Requests per period.
    pub max: u64,
    /// Period length, in seconds.
    pub renewal_s: i64,
}

impl Quota {
    /// The quota of `quota_max` per `renewal` seconds; `None` when
    /// `quota_max` is 0 (none) or -1 (unlimited).
    pub fn of(quota_max: i64, renewal: i64) -> Option<Self> {
        (quota_max > 0).then_some(Self {
            max: quota_max as u64,
            renewal_s: renewal,
        })
    }
}

/// One shared counter: how much of a window's or period's budget the
/// replicas have taken between them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Rate: the window's start (ms since the epoch). Quota: when the
    /// period ends (Unix seconds; 0: never).
    pub period: i64,
    /// Quota: the key's (or organisation's) `last_updated` when the period
    /// started. A write that resets the quota changes it (one with
    /// `suppress_reset=1` keeps it), which starts a new period.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reset: String,
    /// Requests taken: admitted, or leased to a replica to admit.
    pub used: u64,
    /// The lease that wrote this revision (replica and number): a replica
    /// whose update timed out reads the counter back to learn whether its
    /// lease was taken.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
}

impl Counter {
    /// The counter for the window `now_ms` falls in: `stored` if it is
    /// that window's, or a later one (a replica whose clock runs ahead
    /// moved it on: a counter never goes back), else a fresh one.
    pub fn rate_window(stored: Option<Self>, window: RateWindow, now_ms: i64) -> Self {
        let start = window.start_ms(now_ms);
        match stored {
            Some(c) if c.period >= start => c,
            _ => Self {
                period: start,
                ..Self::default()
            },
        }
    }

    /// Whether `self` is the quota period current at `now_s` for a key
    /// last reset at `reset`.
    pub fn is_current_period(&self, quota: Quota, reset: &str, now_s: i64) -> bool {
        self.reset == reset
            && if quota.renewal_s > 0 {
                self.period > 0 && now_s < self.period
            } else {
                self.period == 0
            }
    }

    /// The quota counter current at `now_s`: `stored` if its period is
    /// still running and no reset came since, else a new period starting
    /// now.
    pub fn quota_period(stored: Option<Self>, quota: Quota, reset: &str, now_s: i64) -> Self {
        match stored {
            Some(c) if c.is_current_period(quota, reset, now_s) => c,
            _ => Self {
                period: if quota.renewal_s > 0 {
                    now_s.saturating_add(quota.renewal_s)
                } else {
                    0
                },
                reset: reset.to_owned(),
                ..Self::default()
            },
        }
    }

    /// What is left of `limit`.
    pub fn remaining(&self, limit: u64) -> u64 {
        limit.saturating_sub(self.used)
    }
}

/// The budgets a counter can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A key's rate limit (per allowance scope).
    KeyRate,
    /// A key's quota (per allowance scope).
    KeyQuota,
    /// An organisation's rate limit.
    OrgRate,
    /// An organisation's quota.
    OrgQuota,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Self::KeyRate => "key-rate",
            Self::KeyQuota => "key-quota",
            Self::OrgRate => "org-rate",
            Self::OrgQuota => "org-quota",
        }
    }
}

/// The counter's name in the bucket: its kind, then the SHA-256 of whose
/// it is (a key's hash or an organisation id) and its allowance scope, so
/// any id makes a valid key and none is readable from the bucket.
pub fn counter_key(kind: Kind, id: &str, scope: &str) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update([0]);
    h.update(scope.as_bytes());
    format!(
        "{}.{}",
        kind.prefix(),
        meridian_kit::hex::encode(&h.finalize())
    )
}

/// A key's quota as Tyk's `GET /tyk/keys/{key}` shows it: `(remaining,
/// renews)` from the shared counter when it holds the current period,
/// `None` when no request has counted since the key was (re)set.
pub fn shown_quota(
    counter: Option<&Counter>,
    quota: Quota,
    reset: &str,
    now_s: i64,
) -> Option<(i64, i64)> {
    let c = counter.filter(|c| c.is_current_period(quota, reset, now_s))?;
    let remaining = i64::try_from(c.remaining(quota.max)).unwrap_or(i64::MAX);
    Some((remaining, c.period))
}

/// The allowance scopes of `session` that have a quota of their own
/// (`""` for the session's), each once: the counters a key's `GET` reads.
pub fn quota_scopes(session: &Session) -> Vec<String> {
    let mut scopes = Vec::new();
    if Quota::of(session.quota_max, session.quota_renewal_rate).is_some() {
        scopes.push(String::new());
    }
    for right in session.access_rights.values() {
        let l = &right.limit;
        if !l.is_empty()
            && Quota::of(l.quota_max, l.quota_renewal_rate).is_some()
            && !scopes.contains(&right.allowance_scope)
        {
            scopes.push(right.allowance_scope.clone());
        }
    }
    scopes
}

/// Shows in `session` what its quota counters (by allowance scope, see
/// [`quota_scopes`]) say is left and when it renews, where they hold the
/// current period for the reset marker `reset` (the key's own
/// `last_updated`). A quota no request has counted against since then has
/// all of it left (Tyk's answer when it has no counter) and keeps its
/// stored renewal time.
pub fn show_quotas(
    session: &mut Session,
    reset: &str,
    counters: &std::collections::HashMap<String, Counter>,
    now_s: i64,
) {
    let show =
        |max: i64, rate: i64, counter: Option<&Counter>, remaining: &mut i64, renews: &mut i64| {
            let Some(q) = Quota::of(max, rate) else {
                return;
            };
            match shown_quota(counter, q, reset, now_s) {
                Some((left, at)) => (*remaining, *renews) = (left, at),
                None => *remaining = max,
            }
        };
    show(
        session.quota_max,
        session.quota_renewal_rate,
        counters.get(""),
        &mut session.quota_remaining,
        &mut session.quota_renews,
    );
    for right in session.access_rights.values_mut() {
        let l = &mut right.limit;
        if !l.is_empty() {
            show(
                l.quota_max,
                l.quota_renewal_rate,
                counters.get(&right.allowance_scope),
                &mut l.quota_remaining,
                &mut l.quota_renews,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn session(v: serde_json::Value) -> Session {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn windows_keep_the_average_of_fractional_rates() {
        let cases = [
            // rate, per → limit, window
            ((100.0, 10.0), Some((100, 10_000))),
            ((1.5, 1.0), Some((1, 667))),
            ((0.5, 1.0), Some((1, 2_000))),
            ((1000.0, 0.001), Some((1000, 1))),
            ((0.0, 10.0), None),
            ((-1.0, 10.0), None),
            ((10.0, 0.0), None),
            ((f64::NAN, 1.0), None),
        ];
        for ((rate, per), want) in cases {
            let got = RateWindow::of(rate, per).map(|w| (w.limit, w.window_ms));
            assert_eq!(got, want, "rate {rate} per {per}");
        }
        let w = RateWindow::of(100.0, 2.0).unwrap();
        assert_eq!(w.start_ms(10_999), 10_000);
        assert_eq!(w.start_ms(12_000), 12_000);
        assert_eq!(w.end_ms(10_000), 12_000);
    }

    #[test]
    fn a_rate_window_counter_starts_over_in_the_next_window() {
        let w = RateWindow::of(10.0, 1.0).unwrap();
        let c = Counter::rate_window(None, w, 5_500);
        assert_eq!((c.period, c.used), (5_000, 0));
        let used = Counter { used: 7, ..c };
        assert_eq!(Counter::rate_window(Some(used.clone()), w, 5_999).used, 7);
        assert_eq!(
            Counter::rate_window(Some(used.clone()), w, 4_990).period,
            5_000,
            "a clock behind does not move the counter back"
        );
        let next = Counter::rate_window(Some(used), w, 6_000);
        assert_eq!((next.period, next.used), (6_000, 0));
    }

    #[test]
    fn quota_periods_run_out_renew_and_reset() {
        let q = Quota::of(100, 60).unwrap();
        let first = Counter::quota_period(None, q, "1000", 1_000);
        assert_eq!(
            (first.period, first.used, first.reset.as_str()),
            (1_060, 0, "1000")
        );
        let used = Counter { used: 40, ..first };
        // Within the period: kept.
        assert_eq!(
            Counter::quota_period(Some(used.clone()), q, "1000", 1_059).used,
            40
        );
        assert_eq!(
            shown_quota(Some(&used), q, "1000", 1_059),
            Some((60, 1_060))
        );
        // Ended: a new period from the first request after.
        let renewed = Counter::quota_period(Some(used.clone()), q, "1000", 2_000);
        assert_eq!((renewed.period, renewed.used), (2_060, 0));
        assert_eq!(shown_quota(Some(&used), q, "1000", 2_000), None);
        // Reset by a write (last_updated changed): a new period at once.
        let reset = Counter::quota_period(Some(used.clone()), q, "1030", 1_030);
        assert_eq!(
            (reset.period, reset.used, reset.reset.as_str()),
            (1_090, 0, "1030")
        );
        // Never renews.
        let forever = Quota::of(5, 0).unwrap();
        let c = Counter::quota_period(None, forever, "1", 1_000);
        assert_eq!(c.period, 0);
        let c = Counter { used: 5, ..c };
        assert_eq!(
            Counter::quota_period(Some(c.clone()), forever, "1", 9_999_999).used,
            5
        );
        assert_eq!(c.remaining(5), 0);
        // -1 and 0 are no quota.
        assert_eq!(Quota::of(-1, 60), None);
        assert_eq!(Quota::of(0, 60), None);
    }

    #[test]
    fn a_key_counts_against_its_apis_limit_when_it_has_one() {
        let s = session(json!({
            "rate": 10, "per": 1, "quota_max": 100, "quota_renewal_rate": 60,
            "throttle_interval": 0.5, "throttle_retry_limit": 2,
            "access_rights": {
                "a": {"api_id": "a", "limit": {"rate": 3, "per": 2, "quota_max": 7}, "allowance_scope": "a"},
                "b": {"api_id": "b"}
            }
        }));
        let (a, scope) = key_budget(&s, "a");
        assert_eq!(scope, "a");
        assert_eq!(
            (a.rate, a.per, a.quota_max, a.throttle_retry_limit),
            (3.0, 2.0, 7, 0)
        );
        let (b, scope) = key_budget(&s, "b");
        assert_eq!(scope, "");
        assert_eq!(
            (b.rate, b.quota_max, b.throttle_retry_limit),
            (10.0, 100, 2)
        );
        assert_eq!(b.window(), RateWindow::of(10.0, 1.0));
        assert_eq!(
            b.quota(),
            Some(Quota {
                max: 100,
                renewal_s: 60
            })
        );
    }

    #[test]
    fn a_keys_get_shows_its_counters_where_they_hold_the_current_period() {
        let mut s = session(json!({
            "quota_max": 100, "quota_renewal_rate": 60, "quota_remaining": 100, "quota_renews": 1_060,
            "access_rights": {
                "a": {"api_id": "a", "allowance_scope": "a",
                      "limit": {"rate": 1, "per": 1, "quota_max": 10, "quota_renewal_rate": 60}},
                "b": {"api_id": "b"}
            }
        }));
        assert_eq!(quota_scopes(&s), vec!["".to_owned(), "a".to_owned()]);
        let counters = std::collections::HashMap::from([
            (
                "".to_owned(),
                Counter {
                    period: 1_070,
                    reset: "1000".into(),
                    used: 30,
                    by: String::new(),
                },
            ),
            (
                "a".to_owned(),
                Counter {
                    period: 1_070,
                    reset: "999".into(),
                    used: 3,
                    by: String::new(),
                },
            ),
        ]);
        show_quotas(&mut s, "1000", &counters, 1_050);
        assert_eq!((s.quota_remaining, s.quota_renews), (70, 1_070));
        let a = &s.access_rights["a"].limit;
        assert_eq!(
            (a.quota_remaining, a.quota_renews),
            (10, 0),
            "a counter from before a reset is not shown: all of the quota is left"
        );
        assert_eq!(stored_quota(&s, "a"), (10, 10, 0));
        assert_eq!(stored_quota(&s, "b"), (100, 70, 1_070));
    }

    #[test]
    fn counter_keys_are_valid_bucket_keys_whatever_the_ids() {
        let k = counter_key(Kind::OrgQuota, "org with spaces.and*wildcards>", "");
        assert!(k.starts_with("org-quota."));
        assert!(k[10..].bytes().all(|b| b.is_ascii_hexdigit()) && k.len() == 10 + 64);
        assert_ne!(
            counter_key(Kind::KeyRate, "k", "a"),
            counter_key(Kind::KeyRate, "k", "b")
        );
        assert_ne!(
            counter_key(Kind::KeyRate, "k", ""),
            counter_key(Kind::KeyQuota, "k", "")
        );
    }
}
