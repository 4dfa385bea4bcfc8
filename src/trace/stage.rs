//! Trace context's part of one request: decide the upstream's trace headers at the request
//! headers, answer with `traceresponse` / `server-timing` at the response headers, and tell the
//! operator once when an Envoy tracer rewrote the headers after meshguard.

use super::{decide, from_upstream_headers, Context, Tracestate};
use crate::config::{Trace, TraceMode, TraceResponse};
use crate::filter::{state, Effects};
use crate::headers::HeaderMap;
use crate::ids::Entropy;
use crate::metrics::Metrics;

/// What a worker knows about Envoy's own tracer, for `trace.mode: "auto"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvoyTracer {
    /// Not known yet: this many more traced responses are checked.
    Unknown(u8),
    /// The checked responses showed none: meshguard writes the trace headers.
    Absent,
    /// Envoy's tracer rewrote the trace headers after meshguard: meshguard follows it (`defer`).
    Present,
}

impl Default for EnvoyTracer {
    /// A tracer injects its headers into every request it traces, so a few responses tell; the
    /// check costs one header-map read each, and none once the worker knows.
    fn default() -> Self {
        EnvoyTracer::Unknown(8)
    }
}

#[derive(Debug, Default)]
pub struct TraceStage {
    /// The trace context the upstream received (`propagate` and `hop` modes, `auto` without an
    /// Envoy tracer).
    context: Option<Context>,
    /// Trace headers are Envoy's tracer's (`defer`, or `auto` with a tracer).
    deferred: bool,
    /// The request came with B3 headers (noted while `auto` learns: B3 then says nothing about
    /// Envoy's tracer).
    incoming_b3: bool,
}

impl TraceStage {
    pub fn context(&self) -> Option<Context> {
        self.context
    }

    /// Decides the trace headers; returns the trace-id (hex) when meshguard knows it. `tracer`
    /// is what this worker knows of Envoy's tracer (`auto` mode).
    pub fn on_request_headers(
        &mut self,
        headers: &HeaderMap,
        config: &Trace,
        tracer: EnvoyTracer,
        entropy: &mut impl Entropy,
        metrics: &Metrics,
        fx: &mut Effects,
    ) -> Option<String> {
        self.deferred = config.enabled
            && (config.mode == TraceMode::Defer || config.mode == TraceMode::Auto && tracer == EnvoyTracer::Present);
        if self.deferred {
            return None;
        }
        if config.mode == TraceMode::Auto && matches!(tracer, EnvoyTracer::Unknown(_)) {
            self.incoming_b3 = super::b3::present(headers);
        }
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

    /// `auto` mode, while the worker does not know yet whether Envoy traces: the request
    /// headers as the upstream received them (`sent`) tell. With a tracer, the filter state is
    /// corrected to the ids the upstream received (the access log is written after the response
    /// headers), and the worker follows Envoy's tracer from then on. Returns what the worker
    /// knows now.
    pub fn learn_tracer(&self, tracer: EnvoyTracer, sent: &HeaderMap, fx: &mut Effects) -> EnvoyTracer {
        let (EnvoyTracer::Unknown(left), Some(ours)) = (tracer, &self.context) else {
            return tracer;
        };
        let seen = tracer_context(ours, sent).filter(|theirs| !self.incoming_b3 || !same_as_b3(theirs, sent));
        let Some(theirs) = seen else {
            return if left <= 1 { EnvoyTracer::Absent } else { EnvoyTracer::Unknown(left - 1) };
        };
        fx.state(state::TRACE_ID, theirs.trace_id_hex().as_bytes());
        fx.state(state::SPAN_ID, theirs.span_id_hex().as_bytes());
        EnvoyTracer::Present
    }

    /// The ids for the request's log line: meshguard's, or when Envoy's tracer owns the trace
    /// headers the ones it wrote into the upstream request (`sent`).
    pub fn logged_context(&self, sent: &HeaderMap) -> Option<Context> {
        match self.context {
            Some(ours) => Some(tracer_context(&ours, sent).unwrap_or(ours)),
            None if self.deferred => from_upstream_headers(sent),
            None => None,
        }
    }
}

/// The trace an Envoy tracer gave the upstream beside or instead of meshguard's (`ours`): a
/// `traceparent` other than ours (OpenTelemetry overwrites it), or B3 ids of another trace
/// (Zipkin adds them). `None` when the upstream received meshguard's trace alone.
pub fn tracer_context(ours: &Context, sent: &HeaderMap) -> Option<Context> {
    let mut lines = sent.all("traceparent");
    if let (Some(line), None) = (lines.next(), lines.next()) {
        if let Some(parsed) = super::traceparent::parse(line) {
            let theirs = parsed.context;
            if theirs.trace_id != ours.trace_id || theirs.parent_id != ours.parent_id {
                return Some(theirs);
            }
        }
    }
    let b3 = super::b3::B3::read(sent);
    let (trace_id, parent_id) = b3.ids?;
    let sampled = if b3.sampled == Some(true) { super::SAMPLED } else { 0 };
    (trace_id != ours.trace_id).then_some(Context { trace_id, parent_id, flags: sampled })
}

/// `theirs` came from B3 headers (which the request may have carried in already).
fn same_as_b3(theirs: &Context, sent: &HeaderMap) -> bool {
    super::b3::B3::read(sent).ids.is_some_and(|(trace_id, _)| trace_id == theirs.trace_id)
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
