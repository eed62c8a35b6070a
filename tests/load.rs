//! Paced traffic against a gateway and its answers counted per rate
//! window: shared by the limit tests and `proxy-bench`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One answer of the gateway.
#[derive(Clone, Debug)]
pub struct Answer {
    /// When the request was sent (ms since the epoch).
    pub sent_ms: i64,
    pub status: u16,
    /// `X-RateLimit-Reset`, when sent.
    pub reset: Option<i64>,
    /// `X-RateLimit-Remaining`, when sent.
    pub remaining: Option<i64>,
    /// `X-RateLimit-Limit`, when sent.
    pub limit: Option<i64>,
    pub body: String,
}

pub async fn call(client: &reqwest::Client, url: &str, key: Option<&str>) -> Answer {
    let mut req = client.get(url);
    if let Some(key) = key {
        req = req.header("authorization", key);
    }
    let sent_ms = meridian_kit::time::now_ms();
    let res = req.send().await.expect("the gateway answers");
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let (reset, remaining, limit) = (
        header("x-ratelimit-reset"),
        header("x-ratelimit-remaining"),
        header("x-ratelimit-limit"),
    );
    Answer {
        sent_ms,
        status: res.status().as_u16(),
        reset,
        remaining,
        limit,
        body: res.text().await.unwrap_or_default(),
    }
}

/// Sends `rate` requests a second to `url` with `key` until `until`,
/// each on a task of its own (a slow answer does not hold the next one
/// back); returns every answer.
pub async fn paced(url: String, key: Option<String>, rate: f64, until: Instant) -> Vec<Answer> {
    let client = reqwest::Client::new();
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = tokio::task::JoinSet::new();
    while Instant::now() < until {
        every.tick().await;
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        sent.spawn(async move { call(&client, &url, key.as_deref()).await });
    }
    sent.join_all().await
}

/// Admitted requests per rate window, by the window's end (the
/// `X-RateLimit-Reset` of `rate_limits` headers), for the windows that lay
/// wholly between `from_ms` and `to_ms`.
pub fn per_window(
    answers: &[Answer],
    window_ms: i64,
    from_ms: i64,
    to_ms: i64,
) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for a in answers.iter().filter(|a| a.status == 200) {
        let end = a.reset.expect("rate_limits headers on an admitted request") * 1000;
        *counts.entry(end).or_insert(0) += 1;
    }
    counts.retain(|end, _| *end - window_ms >= from_ms && *end <= to_ms);
    counts
}

/// Requests sent per rate window, by the window's end, from when each was
/// sent (what a replica was asked, admitted or not).
pub fn sent_per_window(answers: &[Answer], window_ms: i64) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts
            .entry(a.sent_ms - a.sent_ms.rem_euclid(window_ms) + window_ms)
            .or_insert(0) += 1;
    }
    counts
}

/// What a limit of `limit` per window split evenly between the replicas
/// (Tyk's distributed rate limiter: each gateway admits `limit / N`) would
/// have admitted in the window ending `end` of the traffic each replica
/// was sent (`sent[i]`: replica i's requests per window).
pub fn even_split_admitted(sent: &[BTreeMap<i64, usize>], limit: usize, end: i64) -> usize {
    let share = limit / sent.len().max(1);
    sent.iter()
        .map(|r| r.get(&end).copied().unwrap_or(0).min(share))
        .sum()
}
