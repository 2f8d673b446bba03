//! Traces of deliveries (OpenTelemetry). One trace per delivery: `ingest`
//! (the webhook request) → `enqueue` (into Redis) → one `dispatch` span per
//! attempt to each agent, retries and replays included. The trace context
//! crosses the queue inside the delivery (its W3C `traceparent`, a field of
//! the stream entry), and each call to an agent carries the attempt's
//! `traceparent` header (W3C Trace Context, which is also how the CloudEvents
//! distributed-tracing extension travels in HTTP's binary mode). Every log
//! line written inside these spans carries the trace id (`span.trace_id`).
//!
//! Spans go out over OTLP/HTTP when an endpoint is configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, the standard variable); without one, ids
//! are still made, so logs and agents can be correlated all the same.

use opentelemetry::{
    global,
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the spans that make up a delivery's trace (the only ones exported).
pub const TARGET: &str = "hookwarden::delivery";

/// What is needed to flush spans at exit.
pub struct Tracing(SdkTracerProvider);

impl Tracing {
    /// A tracer provider for `service`, exporting to `endpoint` (the OTLP/HTTP
    /// base URL, e.g. `http://collector:4318`) when there is one.
    pub fn new(service: &'static str, endpoint: Option<&str>) -> Result<Self, String> {
        let mut builder = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name(service).build());
        if let Some(endpoint) = endpoint {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()
                .map_err(|e| format!("the OTLP exporter for {endpoint}: {e}"))?;
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();
        global::set_tracer_provider(provider.clone());
        Ok(Self(provider))
    }

    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.0.tracer("hookwarden")
    }

    /// Sends what is still buffered.
    pub fn shutdown(&self) {
        let _ = self.0.force_flush();
    }
}

/// The W3C `traceparent` of `span`, to carry across the queue or to an agent.
pub fn traceparent(span: &Span) -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span `traceparent` names (when it is one),
/// and records its trace id on it for the log lines written inside it.
pub fn continue_from(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent {
        let carrier = std::collections::HashMap::from([("traceparent".to_owned(), parent.to_owned())]);
        let context = TraceContextPropagator::new().extract(&carrier);
        if context.span().span_context().is_valid() {
            let _ = span.set_parent(context);
        }
    }
    record_trace_id(span);
}

/// Records `span`'s trace id in its `trace_id` field.
pub fn record_trace_id(span: &Span) {
    let id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(id));
}
