//! Prometheus metrics: counters, gauges and histograms with labels, kept in
//! one registry per process and served as text at `/metrics`.
//!
//! A handle ([`Counter`], [`Gauge`], [`Histogram`]) is looked up once per
//! label set and is then a few atomic operations, so hot paths keep theirs.
//! Values that are cheaper to compute when scraped (agents by status,
//! repository size) register a refresher with [`on_scrape`].
//!
//! Every Meridian metric starts with `meridian_`. The common ones:
//! - `meridian_http_requests_total{service,method,route,status}` and
//!   `meridian_http_request_duration_seconds{service,method,route}`;
//! - `meridian_events_published_total{stream}`,
//!   `meridian_events_consumed_total{stream,consumer}`,
//!   `meridian_consumer_lag{consumer}` (messages not yet delivered);
//! - `meridian_nats_reconnects_total`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use futures_util::future::BoxFuture;

/// Latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<(String, String)>;

/// Series by a hash of their name and labels (a bucket per hash).
type Index = std::collections::HashMap<u64, Vec<(&'static str, Labels, Series)>>;

#[derive(Clone)]
enum Series {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicI64>),
    Histogram(Arc<HistogramCells>),
}

struct Family {
    help: &'static str,
    kind: &'static str,
    series: BTreeMap<Labels, Series>,
}

/// Computes values at scrape time.
pub type Refresher = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The process's metrics.
#[derive(Default)]
pub struct Registry {
    families: RwLock<BTreeMap<&'static str, Family>>,
    /// Series by a hash of name and labels, so a lookup allocates nothing
    /// (hot paths such as publishing count every event).
    index: RwLock<Index>,
    refreshers: Mutex<Vec<(u64, Refresher)>>,
    next_refresher: AtomicU64,
}

/// Keeps a refresher registered; dropping it unregisters it (and drops
/// what it holds, such as a service's storage).
#[must_use = "the refresher is unregistered when this is dropped"]
pub struct ScrapeGuard {
    registry: &'static Registry,
    id: u64,
}

impl Drop for ScrapeGuard {
    fn drop(&mut self) {
        if let Ok(mut list) = self.registry.refreshers.lock() {
            list.retain(|(id, _)| *id != self.id);
        }
    }
}

fn hash_of(name: &str, labels: &[(&str, &str)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    for (k, v) in labels {
        k.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

fn same(stored: &Labels, labels: &[(&str, &str)]) -> bool {
    stored.len() == labels.len()
        && stored
            .iter()
            .zip(labels)
            .all(|((a, b), (c, d))| a == c && b == d)
}

static GLOBAL: LazyLock<Registry> = LazyLock::new(Registry::default);

/// The process-wide registry.
pub fn global() -> &'static Registry {
    &GLOBAL
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Registry {
    fn series(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Series,
    ) -> Series {
        let hash = hash_of(name, labels);
        let found =
            |index: &std::collections::HashMap<u64, Vec<(&'static str, Labels, Series)>>| {
                index.get(&hash).and_then(|bucket| {
                    bucket
                        .iter()
                        .find(|(n, l, _)| *n == name && same(l, labels))
                        .map(|(_, _, s)| s.clone())
                })
            };
        if let Some(s) = found(&self.index.read().expect("metrics lock")) {
            return s;
        }
        let mut index = self.index.write().expect("metrics lock");
        if let Some(s) = found(&index) {
            return s;
        }
        let mut families = self.families.write().expect("metrics lock");
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        assert_eq!(family.kind, kind, "metric {name} registered as two kinds");
        let key = owned(labels);
        let series = family
            .series
            .entry(key.clone())
            .or_insert_with(make)
            .clone();
        index
            .entry(hash)
            .or_default()
            .push((name, key, series.clone()));
        series
    }

    /// A counter with these labels.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Counter {
        match self.series(name, help, "counter", labels, || {
            Series::Counter(Arc::default())
        }) {
            Series::Counter(c) => Counter(c),
            _ => unreachable!("kind checked"),
        }
    }

    /// A gauge with these labels.
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Gauge {
        match self.series(
            name,
            help,
            "gauge",
            labels,
            || Series::Gauge(Arc::default()),
        ) {
            Series::Gauge(g) => Gauge(g),
            _ => unreachable!("kind checked"),
        }
    }

    /// A latency histogram (seconds) with these labels.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Histogram {
        match self.series(name, help, "histogram", labels, || {
            Series::Histogram(Arc::default())
        }) {
            Series::Histogram(h) => Histogram(h),
            _ => unreachable!("kind checked"),
        }
    }

    /// Registers a function run before every scrape, until the guard drops.
    pub fn on_scrape(&'static self, refresh: Refresher) -> ScrapeGuard {
        let id = self.next_refresher.fetch_add(1, Ordering::Relaxed);
        self.refreshers
            .lock()
            .expect("metrics lock")
            .push((id, refresh));
        ScrapeGuard { registry: self, id }
    }

    /// Runs the refreshers, then renders the Prometheus text format.
    pub async fn scrape(&self) -> String {
        let refreshers: Vec<Refresher> = self
            .refreshers
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(_, r)| r.clone())
            .collect();
        for refresh in refreshers {
            refresh().await;
        }
        self.render()
    }

    /// The Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in self.families.read().expect("metrics lock").iter() {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, series) in &family.series {
                match series {
                    Series::Counter(c) => {
                        let _ = writeln!(
                            out,
                            "{name}{} {}",
                            render_labels(labels, None),
                            c.load(Ordering::Relaxed)
                        );
                    }
                    Series::Gauge(g) => {
                        let _ = writeln!(
                            out,
                            "{name}{} {}",
                            render_labels(labels, None),
                            g.load(Ordering::Relaxed)
                        );
                    }
                    Series::Histogram(h) => h.render(&mut out, name, labels),
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{}\"", escape(v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A monotonically increasing count.
#[derive(Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets it.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct HistogramCells {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_micros: AtomicU64,
}

impl HistogramCells {
    fn render(&self, out: &mut String, name: &str, labels: &Labels) {
        let mut cumulative = 0;
        for (le, cell) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += cell.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                render_labels(labels, Some(("le", &le.to_string())))
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{} {count}",
            render_labels(labels, Some(("le", "+Inf")))
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", render_labels(labels, None));
        let _ = writeln!(out, "{name}_count{} {count}", render_labels(labels, None));
    }
}

/// A latency distribution.
#[derive(Clone)]
pub struct Histogram(Arc<HistogramCells>);

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
            self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// [`Registry::counter`] on the global registry.
pub fn counter(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Counter {
    global().counter(name, help, labels)
}

/// [`Registry::gauge`] on the global registry.
pub fn gauge(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Gauge {
    global().gauge(name, help, labels)
}

/// [`Registry::histogram`] on the global registry.
pub fn histogram(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Histogram {
    global().histogram(name, help, labels)
}

/// [`Registry::on_scrape`] on the global registry.
pub fn on_scrape(refresh: Refresher) -> ScrapeGuard {
    global().on_scrape(refresh)
}

/// Events published to `stream`.
pub fn published(stream: &str) -> Counter {
    counter(
        "meridian_events_published_total",
        "Events published, by stream.",
        &[("stream", stream)],
    )
}

/// Events a consumer applied from `stream`.
pub fn consumed(stream: &str, consumer: &str) -> Counter {
    counter(
        "meridian_events_consumed_total",
        "Events consumed and applied, by stream and consumer.",
        &[("stream", stream), ("consumer", consumer)],
    )
}

/// Messages of the stream not yet delivered to `consumer`.
pub fn consumer_lag(consumer: &str) -> Gauge {
    gauge(
        "meridian_consumer_lag",
        "Messages not yet delivered to the consumer (JetStream pending count).",
        &[("consumer", consumer)],
    )
}

/// NATS reconnections of this process.
pub fn nats_reconnects() -> Counter {
    counter(
        "meridian_nats_reconnects_total",
        "Times the NATS connection was re-established after a loss.",
        &[],
    )
}

/// The `/metrics` route.
pub fn router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                global().scrape().await,
            )
        }),
    )
}

/// Counts and times every request; `route` is the matched path template
/// (bounded cardinality), `unmatched` otherwise.
pub async fn track_requests(
    axum::extract::State(service): axum::extract::State<Arc<str>>,
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
    let service = &*service;
    let labels = [
        ("service", service),
        ("method", method.as_str()),
        ("route", route.as_str()),
    ];
    histogram(
        "meridian_http_request_duration_seconds",
        "REST request latency, by service, method and route.",
        &labels,
    )
    .observe(started.elapsed());
    let status = response.status().as_u16().to_string();
    counter(
        "meridian_http_requests_total",
        "REST requests, by service, method, route and status.",
        &[
            ("service", service),
            ("method", method.as_str()),
            ("route", route.as_str()),
            ("status", status.as_str()),
        ],
    )
    .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let r = Registry::default();
        r.counter("m_total", "Things.", &[("a", "x\"y")]).add(3);
        r.gauge("g", "Level.", &[]).set(-2);
        let h = r.histogram("h_seconds", "Time.", &[("s", "t")]);
        h.observe(std::time::Duration::from_millis(3));
        h.observe(std::time::Duration::from_secs(20));
        let text = r.render();
        assert!(
            text.contains("# TYPE m_total counter\nm_total{a=\"x\\\"y\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("g -2\n"), "{text}");
        assert!(
            text.contains("h_seconds_bucket{s=\"t\",le=\"0.001\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("h_seconds_bucket{s=\"t\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("h_seconds_bucket{s=\"t\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("h_seconds_count{s=\"t\"} 2\n"), "{text}");
        // The same name and labels are the same series.
        r.counter("m_total", "Things.", &[("a", "x\"y")]).inc();
        assert!(r.render().contains("} 4\n"));
    }
}
