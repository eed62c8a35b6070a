//! Prometheus metrics through `prometheus-client`, served at `/metrics` in
//! the OpenMetrics text format.
//!
//! One [`Metrics`] per service instance: a standalone service builds its own,
//! and the hub that `meridian up` runs in one process builds one for all its
//! services. Two instances in one process (the tests start many) therefore
//! never share a series, and each runs only its own scrape-time refreshers.
//!
//! Every instance has the series the plumbing counts (events published and
//! consumed per stream, consumer lag, NATS reconnects, REST requests and
//! latencies); a service registers its own families on the same instance.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use futures_util::future::BoxFuture;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;

/// Shards of a [`Spread`] counter.
const SHARDS: usize = 8;

std::thread_local! {
    /// The [`Spread`] shard this thread adds to: threads take them in turn
    /// as they first count.
    static SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS
    };
}

/// A counter's value spread over per-thread shards, each on a cache line
/// of its own: threads that count on every request (the gateway's workers)
/// never write the same line; a scrape adds the shards up. Threads take
/// shards in turn as they first count, so up to eight never meet.
#[derive(Debug, Default)]
pub struct Spread([crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64>; SHARDS]);

impl prometheus_client::metrics::counter::Atomic<u64> for Spread {
    fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: u64) -> u64 {
        SHARD.with(|&shard| self.0[shard].fetch_add(v, std::sync::atomic::Ordering::Relaxed))
    }

    fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|s| s.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

/// A counter added to on every request by many threads (see [`Spread`]).
pub type SpreadCounter = Counter<u64, Spread>;

/// Latency buckets in seconds, 1 ms to 10 s.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label set of a family: `(name, value)` pairs, in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

/// Labels known at compile time (no allocation per lookup, for hot paths).
type StaticLabels = [(&'static str, &'static str); 1];

/// Computes values at scrape time (gauges that are cheaper to read on
/// demand than to keep current).
pub type Refresher = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One service instance's metrics. Cheap to clone: clones share the registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Mutex<Registry>,
    refreshers: Mutex<Vec<Refresher>>,
    published: Family<StaticLabels, Counter>,
    consumed: Family<Labels, Counter>,
    consumer_lag: Family<Labels, Gauge>,
    /// Without labels; its one series appears once the instance connects.
    reconnects: Family<Labels, Counter>,
    http_requests: Family<Labels, Counter>,
    http_duration: Family<Labels, Histogram, fn() -> Histogram>,
    start_catch_up: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// When this instance's NATS connection was lost (Unix ms; 0: it is
    /// connected), and the gauge of seconds since, set at each scrape.
    nats_lost_at_ms: std::sync::atomic::AtomicI64,
    nats_away: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Metrics {
    /// A fresh registry with the plumbing's families.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let published = Family::default();
        registry.register(
            "meridian_events_published",
            "Events published, by stream",
            published.clone(),
        );
        let consumed = Family::default();
        registry.register(
            "meridian_events_consumed",
            "Events consumed and applied, by stream and consumer",
            consumed.clone(),
        );
        let consumer_lag = Family::default();
        registry.register(
            "meridian_consumer_lag",
            "Messages not yet delivered to the consumer (JetStream pending count)",
            consumer_lag.clone(),
        );
        let reconnects = Family::default();
        registry.register(
            "meridian_nats_reconnects",
            "Times the NATS connection was re-established after a loss",
            reconnects.clone(),
        );
        let http_requests = Family::default();
        registry.register(
            "meridian_http_requests",
            "REST requests, by service, method, route and status",
            http_requests.clone(),
        );
        let http_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "meridian_http_request_duration_seconds",
            "REST request latency, by service, method and route",
            http_duration.clone(),
        );
        let start_catch_up = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "meridian_start_catch_up_seconds",
            "Seconds from the start until the folds caught up with the log and traffic was served",
            start_catch_up.clone(),
        );
        let nats_away = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "meridian_nats_disconnected_seconds",
            "Seconds since the NATS connection was lost (0 while connected)",
            nats_away.clone(),
        );
        Self(Arc::new(Inner {
            registry: Mutex::new(registry),
            refreshers: Mutex::default(),
            published,
            consumed,
            consumer_lag,
            reconnects,
            http_requests,
            http_duration,
            start_catch_up,
            nats_lost_at_ms: std::sync::atomic::AtomicI64::new(0),
            nats_away,
        }))
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Registration and encoding cannot leave the registry half-changed.
        self.0
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a family of counters (`name` without `_total`: the format
    /// adds it).
    pub fn counters(&self, name: &str, help: &str) -> Family<Labels, Counter> {
        let family = Family::default();
        self.registry().register(name, help, family.clone());
        family
    }

    /// Registers a family of [`SpreadCounter`]s: for counters every
    /// request of a multi-threaded hot path adds to.
    pub fn spread_counters(&self, name: &str, help: &str) -> Family<Labels, SpreadCounter> {
        let family = Family::default();
        self.registry().register(name, help, family.clone());
        family
    }

    /// Registers a family of gauges.
    pub fn gauges(&self, name: &str, help: &str) -> Family<Labels, Gauge> {
        let family = Family::default();
        self.registry().register(name, help, family.clone());
        family
    }

    /// Registers one gauge without labels.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::default();
        self.registry().register(name, help, gauge.clone());
        gauge
    }

    /// How long the instance took from start to caught up with the log
    /// (see `http::StartGate`).
    pub fn start_catch_up(&self) -> Gauge<f64, std::sync::atomic::AtomicU64> {
        self.0.start_catch_up.clone()
    }

    /// Events published to `stream`.
    pub fn published(&self, stream: &'static str) -> Counter {
        self.0.published.get_or_create_owned(&[("stream", stream)])
    }

    /// Events a consumer applied from `stream`.
    pub fn consumed(&self, stream: &str, consumer: &str) -> Counter {
        self.0.consumed.get_or_create_owned(&vec![
            ("stream", stream.to_owned()),
            ("consumer", consumer.to_owned()),
        ])
    }

    /// Messages of the stream not yet delivered to `consumer`.
    pub fn consumer_lag(&self, consumer: &str) -> Gauge {
        self.0
            .consumer_lag
            .get_or_create_owned(&vec![("consumer", consumer.to_owned())])
    }

    /// NATS reconnections of this instance's connections.
    pub fn nats_reconnects(&self) -> Counter {
        self.0.reconnects.get_or_create_owned(&Vec::new())
    }

    /// The NATS connection was lost (the first loss of an outage counts).
    pub fn nats_lost(&self) {
        let now = crate::time::now_ms().max(1);
        let _ = self.0.nats_lost_at_ms.compare_exchange(
            0,
            now,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
    }

    /// The NATS connection is back.
    pub fn nats_back(&self) {
        self.0
            .nats_lost_at_ms
            .store(0, std::sync::atomic::Ordering::Release);
    }

    /// How long the NATS connection has been away (`None`: connected).
    pub fn nats_away_for(&self) -> Option<std::time::Duration> {
        let lost = self
            .0
            .nats_lost_at_ms
            .load(std::sync::atomic::Ordering::Acquire);
        (lost > 0).then(|| {
            std::time::Duration::from_millis(
                u64::try_from(crate::time::now_ms() - lost).unwrap_or(0),
            )
        })
    }

    /// Runs `refresh` before every scrape of this instance.
    pub fn on_scrape(&self, refresh: Refresher) {
        self.0
            .refreshers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(refresh);
    }

    /// Runs the refreshers, then renders the text format.
    pub async fn scrape(&self) -> String {
        let refreshers: Vec<Refresher> = self
            .0
            .refreshers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for refresh in refreshers {
            refresh().await;
        }
        self.0
            .nats_away
            .set(self.nats_away_for().map_or(0.0, |d| d.as_secs_f64()));
        self.render()
    }

    /// The OpenMetrics text of every series, as it is now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry()).expect("writing into a String cannot fail");
        out
    }

    /// The `/metrics` route.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(|State(metrics): State<Metrics>| async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                        metrics.scrape().await,
                    )
                }),
            )
            .with_state(self.clone())
    }

    fn observe_request(&self, service: &str, method: &str, route: &str, status: u16, took: f64) {
        let labels = vec![
            ("service", service.to_owned()),
            ("method", method.to_owned()),
            ("route", route.to_owned()),
        ];
        self.0.http_duration.get_or_create(&labels).observe(took);
        let mut labels = labels;
        labels.push(("status", status.to_string()));
        self.0.http_requests.get_or_create(&labels).inc();
    }
}

/// Counts and times every request; `route` is the matched path template
/// (bounded cardinality), `unmatched` otherwise.
pub async fn track_requests(
    State((service, metrics)): State<(Arc<str>, Metrics)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    // One span per request, continuing the caller's trace (`traceparent`).
    let span = tracing::info_span!(
        "http.request",
        service = %service,
        http.method = %method,
        http.route = %route,
    );
    crate::telemetry::follow_http(&span, request.headers());
    let response = next.run(request).instrument(span).await;
    metrics.observe_request(
        &service,
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_counter_adds_up_what_every_thread_counted() {
        let m = Metrics::new();
        let family = m.spread_counters("spread", "Counted by many threads");
        let counter = family.get_or_create(&vec![("api", "a".to_owned())]).clone();
        // More threads than shards: some share one, and nothing is lost.
        let threads: Vec<_> = (0..SHARDS + 3)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.inc();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.get(), 1000 * (SHARDS as u64 + 3));
        assert!(
            m.render().contains(&format!(
                "spread_total{{api=\"a\"}} {}",
                1000 * (SHARDS + 3)
            )),
            "{}",
            m.render()
        );
    }

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::new();
        m.counters("m", "Things")
            .get_or_create(&vec![("a", "x\"y".to_owned())])
            .inc_by(3);
        m.gauge("g", "Level").set(-2);
        m.observe_request("s", "GET", "/t", 200, 0.003);
        m.observe_request("s", "GET", "/t", 200, 20.0);
        let text = m.render();
        assert!(
            text.contains("# TYPE m counter\nm_total{a=\"x\\\"y\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("g -2\n"), "{text}");
        let series = "service=\"s\",method=\"GET\",route=\"/t\"";
        for (le, n) in [("0.001", 0), ("0.005", 1), ("+Inf", 2)] {
            let line = format!(
                "meridian_http_request_duration_seconds_bucket{{le=\"{le}\",{series}}} {n}\n"
            );
            assert!(text.contains(&line), "{line} missing from {text}");
        }
        assert!(
            text.contains(&format!(
                "meridian_http_requests_total{{{series},status=\"200\"}} 2\n"
            )),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn two_instances_share_no_series() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.published("SYNC").inc();
        a.published("SYNC").inc();
        assert_eq!(a.published("SYNC").get(), 2, "one series per stream");
        assert_eq!(b.published("SYNC").get(), 0);
        assert!(
            b.render()
                .contains("meridian_events_published_total{stream=\"SYNC\"} 0")
        );
    }

    #[tokio::test]
    async fn refreshers_run_for_their_own_instance_only() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let gauge = a.gauge("level", "A level");
        let set = gauge.clone();
        a.on_scrape(Arc::new(move || {
            set.set(7);
            Box::pin(async {})
        }));
        b.scrape().await;
        assert_eq!(gauge.get(), 0, "b's scrape ran a's refresher");
        assert!(a.scrape().await.contains("level 7\n"));
    }
}
