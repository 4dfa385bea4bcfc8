//! W3C Trace Context in the sidecar (docs/behaviour.md, "Trace context"): one decision per request
//! from the request's headers, with no host calls. The shell applies the decision (header writes,
//! stats, filter state); the trace-id and span-id then follow the request into logs and local
//! replies.
//!
//! * A valid `traceparent` is continued: forwarded unchanged (`propagate`) or with a fresh
//!   parent-id for this hop (`hop`), its `tracestate` validated and combined.
//! * Otherwise, with `b3: "accept"`, valid B3 headers are continued as W3C.
//! * Otherwise a new trace starts: random trace-id (random flag set) and parent-id, sampled with
//!   probability `sample_ratio`; any `tracestate` is dropped.
//!
//! In `defer` mode Envoy's tracer owns the trace headers and nothing here runs at request time;
//! see [`from_upstream_headers`] for how the ids are read back for the log line.

pub mod b3;
pub mod stage;
pub mod traceparent;
pub mod tracestate;

#[cfg(test)]
mod tests;

use crate::config::{Trace, TraceMode, B3 as B3Setting};
use crate::headers::HeaderMap;
use crate::ids::Entropy;
use b3::B3;
use tracestate::State;

/// Trace-flags bit: the caller may have recorded the trace.
pub const SAMPLED: u8 = 0x01;
/// Trace-flags bit (Level 2): the right-most 7 bytes of the trace-id are random.
pub const RANDOM: u8 = 0x02;

/// A trace context as it goes upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl Context {
    pub fn traceparent(&self) -> String {
        traceparent::format(self)
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.parent_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    crate::ids::push_hex(&mut out, bytes);
    out
}

/// `meshguard_trace_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceOutcome {
    /// A valid `traceparent` was continued.
    Propagated,
    /// No `traceparent` (and no usable B3): a new trace.
    Started,
    /// An invalid `traceparent` (or two of them): a new trace.
    RestartedInvalid,
    /// No valid `traceparent`, B3 headers continued.
    FromB3,
}

impl TraceOutcome {
    pub const ALL: [TraceOutcome; 4] =
        [TraceOutcome::Propagated, TraceOutcome::Started, TraceOutcome::RestartedInvalid, TraceOutcome::FromB3];

    pub fn as_str(self) -> &'static str {
        match self {
            TraceOutcome::Propagated => "propagated",
            TraceOutcome::Started => "started",
            TraceOutcome::RestartedInvalid => "restarted_invalid",
            TraceOutcome::FromB3 => "from_b3",
        }
    }
}

/// What to do with a request's trace headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The context the upstream receives.
    pub context: Context,
    pub outcome: TraceOutcome,
    /// `Some(value)`: set `traceparent` (replacing every incoming line); `None`: leave it.
    pub traceparent: Option<String>,
    pub tracestate: Tracestate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracestate {
    /// Leave the header as it is (absent, or one valid line).
    Keep,
    /// Replace every line with this one.
    Set(String),
    /// Remove every line.
    Remove,
}

/// The decision for one request in `propagate` or `hop` mode; `None` in `defer` mode or when
/// trace context is off.
pub fn decide(headers: &HeaderMap, config: &Trace, entropy: &mut impl Entropy) -> Option<Decision> {
    if !config.enabled || config.mode == TraceMode::Defer {
        return None;
    }
    let hop = config.mode == TraceMode::Hop;
    let mut lines = headers.all("traceparent");
    let incoming = match (lines.next(), lines.next()) {
        (None, _) => Incoming::Missing,
        (Some(line), None) => traceparent::parse(line).map_or(Incoming::Invalid, Incoming::Valid),
        // Two lines cannot be told apart: the context is invalid (W3C test_traceparent_duplicated).
        (Some(_), Some(_)) => Incoming::Invalid,
    };
    let has_tracestate = headers.get("tracestate").is_some();
    let dropped_state = if has_tracestate { Tracestate::Remove } else { Tracestate::Keep };

    if let Incoming::Valid(parsed) = incoming {
        let mut context = parsed.context;
        let rewrite = if hop {
            context.parent_id = span_id(entropy);
            context.flags &= SAMPLED | RANDOM;
            true
        } else {
            !parsed.canonical
        };
        let tracestate = match tracestate::combine(headers.all("tracestate")) {
            State::Absent | State::Line(_) => Tracestate::Keep,
            State::Discard => Tracestate::Remove,
            State::Combined(value) => Tracestate::Set(value),
        };
        let traceparent = rewrite.then(|| context.traceparent());
        return Some(Decision { context, outcome: TraceOutcome::Propagated, traceparent, tracestate });
    }

    let b3 = if config.b3 == B3Setting::Accept { B3::read(headers) } else { B3::default() };
    if let Some((trace_id, b3_span)) = b3.ids {
        let sampled = b3.sampled.unwrap_or_else(|| sample(config.sample_ratio, entropy));
        let parent_id = if hop { span_id(entropy) } else { b3_span };
        // The random flag is not set: B3 ids carry no such promise.
        let context = Context { trace_id, parent_id, flags: if sampled { SAMPLED } else { 0 } };
        return Some(Decision {
            context,
            outcome: TraceOutcome::FromB3,
            traceparent: Some(context.traceparent()),
            tracestate: dropped_state,
        });
    }

    let sampled = b3.sampled.unwrap_or_else(|| sample(config.sample_ratio, entropy));
    let context = Context { trace_id: trace_id(entropy), parent_id: span_id(entropy), flags: RANDOM | sampled as u8 };
    let outcome =
        if matches!(incoming, Incoming::Missing) { TraceOutcome::Started } else { TraceOutcome::RestartedInvalid };
    Some(Decision { context, outcome, traceparent: Some(context.traceparent()), tracestate: dropped_state })
}

enum Incoming {
    Missing,
    Invalid,
    Valid(traceparent::Parsed),
}

/// The ids an upstream received, read back from the request headers after Envoy's router wrote
/// them (`defer` mode): Envoy's OpenTelemetry tracer writes `traceparent`, its Zipkin tracer the
/// `x-b3-*` headers. `None` when neither is there.
pub fn from_upstream_headers(headers: &HeaderMap) -> Option<Context> {
    let mut lines = headers.all("traceparent");
    if let (Some(line), None) = (lines.next(), lines.next()) {
        if let Some(parsed) = traceparent::parse(line) {
            return Some(parsed.context);
        }
    }
    let b3 = B3::read(headers);
    let (trace_id, parent_id) = b3.ids?;
    Some(Context { trace_id, parent_id, flags: if b3.sampled == Some(true) { SAMPLED } else { 0 } })
}

/// 16 random bytes, never all zero.
fn trace_id(entropy: &mut impl Entropy) -> [u8; 16] {
    let mut id = [0u8; 16];
    crate::ids::fill_nonzero(entropy, &mut id);
    id
}

/// 8 random bytes, never all zero.
fn span_id(entropy: &mut impl Entropy) -> [u8; 8] {
    let mut id = [0u8; 8];
    crate::ids::fill_nonzero(entropy, &mut id);
    id
}

/// True with probability `ratio`; 1.0 always, 0.0 never, without drawing randomness for either.
fn sample(ratio: f64, entropy: &mut impl Entropy) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut b = [0u8; 4];
    entropy.fill(&mut b);
    f64::from(u32::from_le_bytes(b)) < ratio * 4_294_967_296.0
}
