//! W3C trace context: the `traceparent` a caller sends (gRPC metadata or HTTP header), the
//! context an execution runs in, and the forms guests receive it in.
//!
//! An execution's context is a child of the caller's `traceparent` (same trace id, a span id of
//! its own), or a new root when the caller sent none or sent one that does not parse. A malformed
//! `traceparent` is never an error: it is treated as absent, as the W3C recommendation says.
//!
//! Guests see the execution's context as `SPEAR_TRACEPARENT` (W3C form) and, for lambda workers,
//! as the `Lambda-Runtime-Trace-Id` header (AWS X-Ray form, [`TraceContext::xray_trace_id`]).
//!
//! When the node exports spans (OTLP, see the binary's `telemetry` module), the execution's
//! `tracing` span is parented on the caller's context through `tracing-opentelemetry`, and the
//! exported span's own ids become the execution's context ([`continue_trace`]), so a guest's spans
//! hang under the node's. Without an exporter the ids are generated here.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
pub use spearlet_runtime::TraceContext;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The record metadata key the caller's (validated) `traceparent` is kept under, so an async
/// execution resumed after a restart continues the same trace.
pub const TRACEPARENT_METADATA_KEY: &str = "traceparent";

/// The OpenTelemetry form of a trace context (remote: it came from the caller).
fn to_span_context(context: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from(context.trace_id),
        SpanId::from(context.span_id),
        TraceFlags::new(context.flags),
        true,
        TraceState::default(),
    )
}

fn from_span_context(span_context: &SpanContext) -> Option<TraceContext> {
    if !span_context.is_valid() {
        return None;
    }
    Some(TraceContext {
        trace_id: u128::from_be_bytes(span_context.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(span_context.span_id().to_bytes()),
        flags: span_context.trace_flags().to_u8(),
    })
}

/// Makes `span` (a new, not yet entered span) the node's part of the trace and returns the
/// context the execution runs in. With an OpenTelemetry layer installed, the span is parented on
/// `incoming` and the context is the exported span's own (its trace id is `incoming`'s, or a new
/// one); without one, it is a child of `incoming` or a new root.
pub fn continue_trace(span: &tracing::Span, incoming: Option<&TraceContext>) -> TraceContext {
    if let Some(parent) = incoming {
        let parent_context =
            opentelemetry::Context::new().with_remote_span_context(to_span_context(parent));
        // Fails only when no OpenTelemetry layer is installed or the span is disabled: then
        // nothing is exported and the ids below are ours.
        let _ = span.set_parent(parent_context);
    }
    let exported = span.context();
    if let Some(context) = from_span_context(exported.span().span_context()) {
        return context;
    }
    match incoming {
        Some(parent) => parent.child(),
        None => TraceContext::new_root(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_an_exporter_the_trace_continues_with_our_ids() {
        let parent = TraceContext::parse(EXAMPLE).unwrap();
        let continued = continue_trace(&tracing::Span::none(), Some(&parent));
        assert_eq!(continued.trace_id, parent.trace_id);
        assert_ne!(continued.span_id, parent.span_id);
        let root = continue_trace(&tracing::Span::none(), None);
        assert_ne!(root.trace_id, parent.trace_id);
    }
}
