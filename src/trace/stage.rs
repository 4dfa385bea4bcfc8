//! Trace context's part of one request: decide the upstream's trace headers at the request
//! headers, answer with `traceresponse` / `server-timing` at the response headers, and tell the
//! operator once when an Envoy tracer rewrote the headers after meshguard.

use super::{decide, from_upstream_headers, Context, Tracestate};
use crate::config::{Trace, TraceMode, TraceResponse};
use crate::filter::{state, Effects};
use crate::headers::HeaderMap;
use crate::ids::Entropy;
use crate::metrics::Metrics;

#[derive(Debug, Default)]
pub struct TraceStage {
    /// The trace context the upstream received (`propagate` and `hop` modes).
    context: Option<Context>,
}

impl TraceStage {
    pub fn context(&self) -> Option<Context> {
        self.context
    }

    /// Decides the trace headers; returns the trace-id (hex) when meshguard knows it.
    pub fn on_request_headers(
        &mut self,
        headers: &HeaderMap,
        config: &Trace,
        entropy: &mut impl Entropy,
        metrics: &Metrics,
        fx: &mut Effects,
    ) -> Option<String> {
        let decision = decide(headers, config, entropy)?;
        fx.count(metrics.trace(decision.outcome));
        if let Some(tp) = &decision.traceparent {
            fx.set_request_header("traceparent", tp.as_bytes());
        }
        match &decision.tracestate {
            Tracestate::Keep => {}
            Tracestate::Set(ts) => fx.set_request_header("tracestate", ts.as_bytes()),
            Tracestate::Remove => fx.remove_request_header("tracestate"),
        }
        let trace_id = decision.context.trace_id_hex();
        fx.state(state::TRACE_ID, trace_id.as_bytes());
        fx.state(state::SPAN_ID, decision.context.span_id_hex().as_bytes());
        // Kept before any local reply: its response carries the trace too (traceresponse).
        self.context = Some(decision.context);
        Some(trace_id)
    }

    pub fn on_response_headers(&self, config: &Trace, fx: &mut Effects) {
        let Some(context) = &self.context else {
            return;
        };
        match config.traceresponse {
            TraceResponse::Off => {}
            TraceResponse::Header => fx.set_response_header("traceresponse", context.traceparent().as_bytes()),
            TraceResponse::ServerTiming => {
                let value = format!("trace;desc=\"{}\"", context.traceparent());
                fx.add_response_header("server-timing", value.as_bytes());
            }
        }
    }

    /// The ids for the request's log line: meshguard's, or in `defer` mode the ones Envoy's
    /// tracer wrote into the upstream request (`sent`).
    pub fn logged_context(&self, config: &Trace, sent: &HeaderMap) -> Option<Context> {
        match self.context {
            Some(context) => Some(context),
            None if config.enabled && config.mode == TraceMode::Defer => from_upstream_headers(sent),
            None => None,
        }
    }
}

/// The request headers as the upstream received them (`sent`) no longer carry meshguard's trace:
/// Envoy's tracers write theirs at the router, after meshguard, and then two traces of one request
/// exist (or meshguard logs ids the upstream never saw).
pub fn rewritten_by_tracer(ours: &Context, sent: &HeaderMap) -> bool {
    let Some(theirs) = from_upstream_headers(sent) else {
        return false;
    };
    let b3_differs = sent.get("x-b3-traceid").is_some_and(|b3| !ours.trace_id_hex().as_bytes().ends_with(b3));
    theirs.trace_id != ours.trace_id || theirs.parent_id != ours.parent_id || b3_differs
}
