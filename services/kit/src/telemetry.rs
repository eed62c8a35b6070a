//! Logging and tracing. `RUST_LOG` (or `MERIDIAN_LOG`) picks the filter,
//! default `info`. Log lines inside a traced operation carry its
//! `trace_id`.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are exported over
//! OTLP/gRPC; the standard `OTEL_*` variables apply (`OTEL_SERVICE_NAME`
//! overrides the service's own name, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, ...). Trace context crosses processes as W3C
//! `traceparent`: in HTTP headers, NATS message headers, the event
//! envelope, gRPC sync requests and the public CloudEvents, so one manual
//! sync is one trace from the REST call to the lifecycle event.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The provider installed at start, flushed by [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported (an OTLP exporter, or a test's, installed):
/// code on a hot path makes spans only then.
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init(service: &str) {
    init_at(service, "info");
}

/// [`init`] with another default level (`debug`, `info`, `warn`, `error`)
/// when neither variable is set.
pub fn init_at(service: &str, level: &str) {
    let provider = otlp_provider(service);
    init_with(service, level, provider);
}

/// Libraries kept at `warn` unless a filter names them: their debug lines
/// are protocol chatter, and NATS's name subjects, which carry key hashes.
const QUIET: &str = "fjall=warn,lsm_tree=warn,async_nats=warn,h2=warn,tower=warn,hyper=warn";

/// The filter: the variable's directives as given, except that a bare level
/// (`debug`) keeps the libraries quiet; `level` when it is unset.
fn filter_directives(variable: Option<&str>, level: &str) -> String {
    match variable {
        Some(v) if v.contains('=') || v.contains(',') => v.to_owned(),
        Some(v) => format!("{v},{QUIET}"),
        None => format!("{level},{QUIET}"),
    }
}

/// Installs the subscriber with `provider` (if any) receiving the spans;
/// tests pass one with an in-memory exporter.
pub fn init_with(service: &str, level: &str, provider: Option<SdkTracerProvider>) {
    let filter = filter_directives(
        std::env::var("MERIDIAN_LOG")
            .ok()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .as_deref(),
        level,
    );
    // Colours only for a terminal: piped into a file or a collector, a log
    // line is plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_target(false)
        .event_format(WithTraceId(
            tracing_subscriber::fmt::format()
                .with_ansi(ansi)
                .with_target(false),
        ));
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("meridian"))
            .with_location(false)
    });
    let result = tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(fmt)
        .with(otel)
        .try_init();
    if result.is_ok() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        if let Some(p) = provider {
            let _ = PROVIDER.set(p);
            tracing::info!(service, "exporting traces over OTLP");
        }
    }
}

/// An OTLP exporter when the standard variables ask for one.
fn otlp_provider(service: &str) -> Option<SdkTracerProvider> {
    let wanted = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    if !wanted || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v == "true") {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {e}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

/// Flushes and stops the exporter (call before the process exits).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.shutdown();
    }
}

/// The current span's context as a W3C `traceparent`, if it is traced.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// `span`'s context as a W3C `traceparent`, if it is traced.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the operation `traceparent` names (no-op for
/// `None` or a malformed value).
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), tp.to_owned());
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Copies the `traceparent` of `span` into NATS headers.
pub fn inject_nats(headers: &mut async_nats::HeaderMap, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        headers.insert("traceparent", tp);
    }
}

/// The `traceparent` of NATS headers.
pub fn extract_nats(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers?.get("traceparent").map(|v| v.as_str().to_owned())
}

/// Reads `traceparent` from HTTP headers.
pub struct HttpHeaders<'a>(pub &'a axum::http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// Makes `span` a child of the `traceparent` in HTTP headers, if any.
pub fn follow_http(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    let cx = TraceContextPropagator::new().extract(&HttpHeaders(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The default line format, with ` trace_id=<id>` when inside a traced span.
struct WithTraceId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let trace_id = ctx.lookup_current().and_then(|span| {
            span.scope().find_map(|s| {
                s.extensions()
                    .get::<tracing_opentelemetry::OtelData>()
                    .and_then(tracing_opentelemetry::OtelData::trace_id)
            })
        });
        if let Some(id) = trace_id {
            write!(writer, "trace_id={id} ")?;
        }
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::filter_directives;

    #[test]
    fn a_bare_level_keeps_the_libraries_quiet() {
        assert!(filter_directives(None, "info").starts_with("info,"));
        let debug = filter_directives(Some("debug"), "info");
        assert!(
            debug.starts_with("debug,") && debug.contains("async_nats=warn"),
            "{debug}"
        );
        assert_eq!(
            filter_directives(Some("debug,async_nats=debug"), "info"),
            "debug,async_nats=debug",
            "directives the user wrote are kept as written"
        );
    }
}
