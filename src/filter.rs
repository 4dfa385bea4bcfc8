//! The per-request flow, top to bottom, against the [`Host`] trait: request headers → facts →
//! rule → trace context → correlation → (breaker, dedup as they land) → forward; response headers → echo;
//! stream end → log line. No proxy-wasm here: `host/` implements [`Host`] with real host calls,
//! the tests below with a fake.

use std::cell::Cell;

use crate::config::{Config, LogLevel, TraceMode, TraceResponse};
use crate::correlation::{self, Outcome};
use crate::headers::HeaderMap;
use crate::ids::Entropy;
use crate::logline::RequestLog;
use crate::metrics;
use crate::rules::{self, Facts};
use crate::trace::{self, Tracestate};

/// A metric id handed out by the host.
pub type MetricId = u32;

/// A host call that did not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub &'static str);

/// Everything the flow needs from the proxy. Values are bytes: header values that are not UTF-8
/// are legal on the wire, and must never take the VM down.
pub trait Host {
    /// Every request header line, in one host call.
    fn request_headers(&mut self) -> HeaderMap;
    /// Sets a request header, replacing every line of it.
    fn set_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// Removes every line of a request header.
    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError>;
    fn set_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// Adds a response header line, keeping the lines already there.
    fn add_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// A property such as `["xds", "route_name"]`; `None` when absent or unreadable.
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>>;
    /// Filter state readable in access logs as `%FILTER_STATE(wasm.meshguard.<key>:PLAIN)%`.
    fn set_filter_state(&mut self, key: &str, value: &[u8]) -> Result<(), HostError>;
    fn increment(&mut self, metric: MetricId, by: i64);
    fn log(&mut self, level: LogLevel, message: &str);
}

/// Metric ids of one configuration, defined once in `on_configure` (proxy-wasm hands out a new id
/// on every definition) and kept for the life of the configuration.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// `meshguard_requests_total{rule}`, by rule index; the default rule last.
    pub requests: Vec<Option<MetricId>>,
    /// `meshguard_correlation_total{outcome}`, in the order of [`Outcome::ALL`].
    pub correlation: [Option<MetricId>; 3],
    /// `meshguard_trace_total{outcome}`, in the order of [`trace::Outcome::ALL`].
    pub trace: [Option<MetricId>; 4],
    pub errors: Option<MetricId>,
}

impl Metrics {
    /// `define_counter` registers one counter by its full stat name and returns its id.
    pub fn define(config: &Config, mut define_counter: impl FnMut(&str) -> Option<MetricId>) -> Metrics {
        let mut counter = |name: &str, tags: &[(&str, &str)]| define_counter(&metrics::name(name, tags));
        Metrics {
            requests: config.all_rules().map(|r| counter(metrics::REQUESTS_TOTAL, &[("rule", &r.name)])).collect(),
            correlation: Outcome::ALL.map(|o| counter(metrics::CORRELATION_TOTAL, &[("outcome", o.as_str())])),
            trace: trace::Outcome::ALL.map(|o| counter(metrics::TRACE_TOTAL, &[("outcome", o.as_str())])),
            errors: counter(metrics::ERRORS_TOTAL, &[]),
        }
    }

    fn requests(&self, config: &Config, rule: Option<usize>) -> Option<MetricId> {
        let index = rule.unwrap_or(config.rules.len());
        self.requests.get(index).copied().flatten()
    }

    fn correlation(&self, outcome: Outcome) -> Option<MetricId> {
        let index = Outcome::ALL.iter().position(|o| *o == outcome)?;
        self.correlation.get(index).copied().flatten()
    }

    fn trace(&self, outcome: trace::Outcome) -> Option<MetricId> {
        let index = trace::Outcome::ALL.iter().position(|o| *o == outcome)?;
        self.trace.get(index).copied().flatten()
    }
}

/// What every stream of one configuration shares: built once per `on_configure`.
#[derive(Debug, Default)]
pub struct Plugin {
    pub config: Config,
    pub metrics: Metrics,
    /// The first traced stream of this worker has checked whether an Envoy tracer rewrote the
    /// trace headers after meshguard (see [`Stream::on_log`]).
    tracer_checked: Cell<bool>,
}

impl Plugin {
    pub fn new(config: Config, metrics: Metrics) -> Plugin {
        Plugin { config, metrics, tracer_checked: Cell::new(false) }
    }
}

/// Filter-state keys, under Envoy's `wasm.` prefix.
pub mod state {
    pub const CORRELATION_ID: &str = "meshguard.correlation_id";
    pub const RULE: &str = "meshguard.rule";
    pub const TRACE_ID: &str = "meshguard.trace_id";
    pub const SPAN_ID: &str = "meshguard.span_id";
}

/// One HTTP stream.
#[derive(Debug, Default)]
pub struct Stream {
    rule: Option<usize>,
    correlation_id: Option<String>,
    /// The trace context the upstream received (`propagate` and `hop` modes).
    trace: Option<trace::Context>,
    /// An internal error was counted and logged already for this stream.
    failed: bool,
}

impl Stream {
    pub fn on_request_headers(&mut self, plugin: &Plugin, host: &mut impl Host, entropy: &mut impl Entropy) {
        let config = &plugin.config;
        let headers = host.request_headers();
        self.rule = rules::select(&config.rules, &mut LazyFacts::new(&headers, host));
        let rule = config.rule(self.rule);
        increment(host, plugin.metrics.requests(config, self.rule));

        let decision = trace::decide(&headers, &config.trace, entropy);
        let trace_id = decision.as_ref().map(|d| d.context.trace_id_hex());

        let c = &config.correlation;
        let (id, outcome) = match correlation::check(headers.get(&c.header), c) {
            Ok(id) => (id, Outcome::Kept),
            Err(outcome) => {
                let request_id = || headers.get("x-request-id").map(<[u8]>::to_vec);
                (correlation::generate(c, trace_id.as_deref(), request_id, entropy), outcome)
            }
        };
        increment(host, plugin.metrics.correlation(outcome));

        if outcome != Outcome::Kept {
            let r = host.set_request_header(&c.header, id.as_bytes());
            self.check(plugin, host, r, &id);
        }
        if let Some(d) = &decision {
            increment(host, plugin.metrics.trace(d.outcome));
            if let Some(tp) = &d.traceparent {
                let r = host.set_request_header("traceparent", tp.as_bytes());
                self.check(plugin, host, r, &id);
            }
            let r = match &d.tracestate {
                Tracestate::Keep => Ok(()),
                Tracestate::Set(ts) => host.set_request_header("tracestate", ts.as_bytes()),
                Tracestate::Remove => host.remove_request_header("tracestate"),
            };
            self.check(plugin, host, r, &id);
        }
        let r = host.set_filter_state(state::CORRELATION_ID, id.as_bytes());
        self.check(plugin, host, r, &id);
        let r = host.set_filter_state(state::RULE, rule.name.as_bytes());
        self.check(plugin, host, r, &id);
        if let (Some(d), Some(trace_id)) = (&decision, &trace_id) {
            let r = host.set_filter_state(state::TRACE_ID, trace_id.as_bytes());
            self.check(plugin, host, r, &id);
            let r = host.set_filter_state(state::SPAN_ID, d.context.span_id_hex().as_bytes());
            self.check(plugin, host, r, &id);
        }
        self.trace = decision.map(|d| d.context);
        self.correlation_id = Some(id);
    }

    pub fn on_response_headers(&mut self, plugin: &Plugin, host: &mut impl Host) {
        // No id: the request never reached this filter (e.g. Envoy rejected it first).
        let Some(id) = self.correlation_id.take() else {
            return;
        };
        let config = &plugin.config;
        if config.correlation.echo_downstream {
            let r = host.set_response_header(&config.correlation.header, id.as_bytes());
            self.check(plugin, host, r, &id);
        }
        if let Some(context) = &self.trace {
            let r = match config.trace.traceresponse {
                TraceResponse::Off => Ok(()),
                TraceResponse::Header => host.set_response_header("traceresponse", context.traceparent().as_bytes()),
                TraceResponse::ServerTiming => {
                    let value = format!("trace;desc=\"{}\"", context.traceparent());
                    host.add_response_header("server-timing", value.as_bytes())
                }
            };
            self.check(plugin, host, r, &id);
        }
        self.correlation_id = Some(id);
    }

    /// The stream is complete (also after resets and local replies).
    pub fn on_log(&mut self, plugin: &Plugin, host: &mut impl Host) {
        let config = &plugin.config;
        if let Some(context) = self.trace.filter(|_| !plugin.tracer_checked.replace(true)) {
            check_envoy_tracer(host, &context);
        }
        if !config.log.requests {
            return;
        }
        let Some(correlation_id) = self.correlation_id.as_deref() else {
            return;
        };
        let headers = host.request_headers();
        // In `defer` mode the ids are the ones Envoy's tracer wrote into the upstream request.
        let context = match self.trace {
            Some(context) => Some(context),
            None if config.trace.enabled && config.trace.mode == TraceMode::Defer => {
                trace::from_upstream_headers(&headers)
            }
            None => None,
        };
        let trace_id = context.map(|c| c.trace_id_hex());
        let span_id = context.map(|c| c.span_id_hex());
        let route_name = host.property(&["xds", "route_name"]);
        let cluster = host.property(&["xds", "cluster_name"]);
        let int = |bytes: Option<Vec<u8>>| -> Option<u64> { Some(u64::from_le_bytes(bytes?.try_into().ok()?)) };
        let status = int(host.property(&["response", "code"])).filter(|s| *s > 0);
        let flags = int(host.property(&["response", "flags"]));
        let duration_ms = int(host.property(&["request", "duration"])).map(|ns| ns as f64 / 1e6);
        let line = RequestLog {
            correlation_id,
            trace_id: trace_id.as_deref(),
            span_id: span_id.as_deref(),
            rule: &config.rule(self.rule).name,
            route_name: route_name.as_deref(),
            method: headers.get(":method"),
            path: headers.get(":path"),
            authority: headers.get(":authority"),
            status,
            duration_ms,
            upstream_cluster: cluster.as_deref(),
            response_flags: flags,
            dedup: "none",
            ..RequestLog::default()
        }
        .to_json(config.log.include_query);
        host.log(config.log.level, &line);
    }

    fn check(&mut self, plugin: &Plugin, host: &mut impl Host, result: Result<(), HostError>, id: &str) {
        if let Err(e) = result {
            self.internal_error(plugin, host, e, Some(id));
        }
    }

    /// Fail open: the request goes on untouched; the error is counted and logged once per request.
    fn internal_error(&mut self, plugin: &Plugin, host: &mut impl Host, error: HostError, id: Option<&str>) {
        if self.failed {
            return;
        }
        self.failed = true;
        increment(host, plugin.metrics.errors);
        let id = id.unwrap_or("-");
        host.log(LogLevel::Error, &format!("meshguard: internal error: {} (correlation_id={id})", error.0));
    }
}

/// Once per worker: the request headers as the upstream received them still carry meshguard's
/// trace? Envoy's tracers write theirs at the router, after meshguard; then two traces of one
/// request exist (or meshguard logs ids the upstream never saw), and `trace.mode: "defer"` is the
/// fix. Checking every request would cost a header read each; one is enough to tell the operator.
fn check_envoy_tracer(host: &mut impl Host, ours: &trace::Context) {
    let sent = host.request_headers();
    let Some(theirs) = trace::from_upstream_headers(&sent) else {
        return;
    };
    let b3_differs = sent.get("x-b3-traceid").is_some_and(|b3| !ours.trace_id_hex().as_bytes().ends_with(b3));
    if theirs.trace_id != ours.trace_id || theirs.parent_id != ours.parent_id || b3_differs {
        host.log(
            LogLevel::Warn,
            "meshguard: an Envoy tracer rewrote the trace headers after meshguard (two traces per request); \
             set trace.mode to \"defer\" when Envoy tracing is on",
        );
    }
}

fn increment(host: &mut impl Host, metric: Option<MetricId>) {
    if let Some(id) = metric {
        host.increment(id, 1);
    }
}

/// Request facts for rule matching: headers from the map read once, properties from the host on
/// first use (each is a host call), then cached for the rest of matching.
struct LazyFacts<'a, H: Host> {
    headers: &'a HeaderMap,
    host: &'a mut H,
    route_name: Option<Option<Vec<u8>>>,
    cluster: Option<Option<Vec<u8>>>,
}

impl<'a, H: Host> LazyFacts<'a, H> {
    fn new(headers: &'a HeaderMap, host: &'a mut H) -> Self {
        LazyFacts { headers, host, route_name: None, cluster: None }
    }
}

impl<H: Host> Facts for LazyFacts<'_, H> {
    fn method(&mut self) -> Option<&[u8]> {
        self.headers.get(":method")
    }
    fn path(&mut self) -> Option<&[u8]> {
        self.headers.get(":path")
    }
    fn authority(&mut self) -> Option<&[u8]> {
        self.headers.get(":authority")
    }
    fn route_name(&mut self) -> Option<&[u8]> {
        self.route_name.get_or_insert_with(|| self.host.property(&["xds", "route_name"])).as_deref()
    }
    fn cluster(&mut self) -> Option<&[u8]> {
        self.cluster.get_or_insert_with(|| self.host.property(&["xds", "cluster_name"])).as_deref()
    }
}

#[cfg(test)]
mod tests;
