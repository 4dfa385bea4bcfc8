//! The per-request flow, top to bottom, against the [`Host`] trait: request headers → facts →
//! rule → trace context → correlation → circuit breaker (local reply when open) → (dedup as it
//! lands) → forward; response headers → outcome, echo; stream end → outcome of a reset, log line. No proxy-wasm here: `host/` implements [`Host`] with real host calls,
//! the tests below with a fake.

use std::cell::Cell;

mod circuit;

use crate::breaker::{self, Admission};
use crate::config::{Config, LogLevel, TraceMode, TraceResponse};
use crate::correlation::{self, Outcome};
use crate::headers::HeaderMap;
use crate::ids::Entropy;
use crate::logline::RequestLog;
use crate::metrics;
use crate::rules::{self, Facts};
use crate::trace::{self, Tracestate};
pub use circuit::{Admitted, CircuitMetrics};

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
    fn set_gauge(&mut self, metric: MetricId, value: u64);
    fn log(&mut self, level: LogLevel, message: &str);
    /// A response header (first line), e.g. `:status`.
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Nanoseconds since the epoch, from the proxy's clock.
    fn now(&mut self) -> u64;
    /// A shared-data value and its CAS token; `Ok(None)` when the key does not exist.
    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;
    /// Stores `value` if the CAS token is still `cas` (0: unconditionally); `Ok(false)` on a mismatch.
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, HostError>;
    /// Answers the request locally (the upstream is never called).
    fn send_local_reply(&mut self, status: u32, headers: &HeaderMap, body: &[u8]) -> Result<(), HostError>;
}

/// What the shell does with the request after `on_request_headers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// A local reply was sent: stop the filter chain.
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
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
    /// `meshguard_circuit_*{rule}` by rule index (default rule last); `None` without a breaker.
    pub circuit: Vec<Option<CircuitMetrics>>,
}

impl Metrics {
    /// `define` registers one metric by kind and full stat name and returns its id.
    pub fn define(config: &Config, mut define: impl FnMut(MetricKind, &str) -> Option<MetricId>) -> Metrics {
        let mut counter = |name: &str, tags: &[(&str, &str)]| define(MetricKind::Counter, &metrics::name(name, tags));
        let requests = config.all_rules().map(|r| counter(metrics::REQUESTS_TOTAL, &[("rule", &r.name)])).collect();
        let correlation = Outcome::ALL.map(|o| counter(metrics::CORRELATION_TOTAL, &[("outcome", o.as_str())]));
        let trace = trace::Outcome::ALL.map(|o| counter(metrics::TRACE_TOTAL, &[("outcome", o.as_str())]));
        let errors = counter(metrics::ERRORS_TOTAL, &[]);
        let circuit = config
            .all_rules()
            .map(|r| r.circuit_breaker.as_ref().map(|_| CircuitMetrics::define(&r.name, &mut define)))
            .collect();
        Metrics { requests, correlation, trace, errors, circuit }
    }

    fn circuit(&self, config: &Config, rule: Option<usize>) -> Option<&CircuitMetrics> {
        self.circuit.get(rule.unwrap_or(config.rules.len()))?.as_ref()
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
    /// Shared-data key of each rule's circuit (default rule last); `None` without a breaker.
    pub circuit_keys: Vec<Option<String>>,
    /// The first traced stream of this worker has checked whether an Envoy tracer rewrote the
    /// trace headers after meshguard (see [`Stream::on_log`]).
    tracer_checked: Cell<bool>,
}

impl Plugin {
    /// `name` is the plugin's name in Envoy: it separates the shared data of two meshguard
    /// plugins on one proxy.
    pub fn new(config: Config, metrics: Metrics, name: &str) -> Plugin {
        let circuit_keys =
            config.all_rules().map(|r| r.circuit_breaker.as_ref().map(|cb| breaker::key(name, &r.name, cb))).collect();
        Plugin { config, metrics, circuit_keys, tracer_checked: Cell::new(false) }
    }

    /// Creates every rule's circuit value that does not exist yet (from `on_configure`).
    pub fn init_shared(&self, host: &mut impl Host) -> Result<(), HostError> {
        for (rule, key) in self.config.all_rules().zip(&self.circuit_keys) {
            if let (Some(cb), Some(key)) = (&rule.circuit_breaker, key) {
                circuit::init(host, key, cb)?;
            }
        }
        Ok(())
    }

    fn circuit_key(&self, rule: Option<usize>) -> Option<&str> {
        self.circuit_keys.get(rule.unwrap_or(self.config.rules.len()))?.as_deref()
    }
}

/// Filter-state keys, under Envoy's `wasm.` prefix.
pub mod state {
    pub const CORRELATION_ID: &str = "meshguard.correlation_id";
    pub const RULE: &str = "meshguard.rule";
    pub const TRACE_ID: &str = "meshguard.trace_id";
    pub const SPAN_ID: &str = "meshguard.span_id";
    pub const CIRCUIT: &str = "meshguard.circuit";
}

/// One HTTP stream.
#[derive(Debug, Default)]
pub struct Stream {
    rule: Option<usize>,
    correlation_id: Option<String>,
    /// The trace context the upstream received (`propagate` and `hop` modes).
    trace: Option<trace::Context>,
    /// A call the circuit let through whose outcome is still to be recorded.
    admitted: Option<Admitted>,
    /// `closed`, `half_open`, `open` (passed in `metrics_only`) or `rejected`.
    circuit: Option<&'static str>,
    /// meshguard answered this request itself: its response is no outcome.
    local_reply: bool,
    /// An internal error was counted and logged already for this stream.
    failed: bool,
}

impl Stream {
    pub fn on_request_headers(&mut self, plugin: &Plugin, host: &mut impl Host, entropy: &mut impl Entropy) -> Verdict {
        let config = &plugin.config;
        let headers = host.request_headers();
        self.rule = rules::select(&config.rules, &mut LazyFacts::new(&headers, host));
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
        if let Some(d) = &decision {
            increment(host, plugin.metrics.trace(d.outcome));
        }

        if let Some(retry_after_s) = self.circuit_admit(plugin, host, &id) {
            self.set_states(plugin, host, &id, &decision, trace_id.as_deref());
            self.reject(plugin, host, &id, trace_id.as_deref(), retry_after_s);
            self.correlation_id = Some(id);
            return Verdict::Stop;
        }

        if outcome != Outcome::Kept {
            let r = host.set_request_header(&c.header, id.as_bytes());
            self.check(plugin, host, r, &id);
        }
        if let Some(d) = &decision {
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
        self.set_states(plugin, host, &id, &decision, trace_id.as_deref());
        self.trace = decision.map(|d| d.context);
        self.correlation_id = Some(id);
        Verdict::Continue
    }

    /// Filter state for the access log.
    fn set_states(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        id: &str,
        decision: &Option<trace::Decision>,
        trace_id: Option<&str>,
    ) {
        let rule = plugin.config.rule(self.rule);
        let r = host.set_filter_state(state::CORRELATION_ID, id.as_bytes());
        self.check(plugin, host, r, id);
        let r = host.set_filter_state(state::RULE, rule.name.as_bytes());
        self.check(plugin, host, r, id);
        if let (Some(d), Some(trace_id)) = (decision, trace_id) {
            let r = host.set_filter_state(state::TRACE_ID, trace_id.as_bytes());
            self.check(plugin, host, r, id);
            let r = host.set_filter_state(state::SPAN_ID, d.context.span_id_hex().as_bytes());
            self.check(plugin, host, r, id);
        }
        if let Some(label) = self.circuit {
            let r = host.set_filter_state(state::CIRCUIT, label.as_bytes());
            self.check(plugin, host, r, id);
        }
    }

    /// The rule's circuit decides the request; `Some(retry_after_s)` when it must be rejected.
    /// A failing shared-data call lets the request through (fail open).
    fn circuit_admit(&mut self, plugin: &Plugin, host: &mut impl Host, id: &str) -> Option<u64> {
        let cfg = plugin.config.rule(self.rule).circuit_breaker.as_ref()?;
        let key = plugin.circuit_key(self.rule)?;
        let now = host.now();
        let (admission, transition) = match circuit::admit(host, key, cfg, now) {
            Ok(result) => result,
            Err(e) => {
                self.internal_error(plugin, host, e, Some(id));
                return None;
            }
        };
        let m = plugin.metrics.circuit(&plugin.config, self.rule);
        if let (Some(t), Some(m)) = (&transition, m) {
            circuit::announce(host, m, &plugin.config.rule(self.rule).name, t, id);
        }
        match admission {
            Admission::Pass { generation } => {
                self.circuit = Some("closed");
                self.admitted = Some(Admitted { generation, probe: false, start: now });
                None
            }
            Admission::Probe { generation } => {
                self.circuit = Some("half_open");
                self.admitted = Some(Admitted { generation, probe: true, start: now });
                None
            }
            Admission::WouldReject => {
                self.circuit = Some("open");
                increment(host, m.and_then(|m| m.rejected));
                None
            }
            Admission::Reject { retry_after_s } => {
                self.circuit = Some("rejected");
                increment(host, m.and_then(|m| m.rejected));
                Some(retry_after_s)
            }
        }
    }

    /// The open circuit's local reply: `open_status`, `retry-after`, `x-meshguard-circuit: open`,
    /// the correlation id, and a small JSON body with the rule and the ids.
    fn reject(&mut self, plugin: &Plugin, host: &mut impl Host, id: &str, trace_id: Option<&str>, retry_after_s: u64) {
        let config = &plugin.config;
        let rule = config.rule(self.rule);
        let Some(cb) = &rule.circuit_breaker else {
            return;
        };
        let retry = retry_after_s.to_string();
        let mut body = String::with_capacity(160);
        body.push_str("{\"error\":\"circuit_open\",\"rule\":");
        crate::logline::push_json_string(&mut body, rule.name.as_bytes());
        body.push_str(",\"retry_after_s\":");
        body.push_str(&retry);
        body.push_str(",\"correlation_id\":");
        crate::logline::push_json_string(&mut body, id.as_bytes());
        body.push_str(",\"trace_id\":");
        match trace_id {
            Some(t) => crate::logline::push_json_string(&mut body, t.as_bytes()),
            None => body.push_str("null"),
        }
        body.push('}');
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("content-type", b"application/json"),
            ("retry-after", retry.as_bytes()),
            ("x-meshguard-circuit", b"open"),
        ];
        if config.correlation.echo_downstream {
            headers.push((&config.correlation.header, id.as_bytes()));
        }
        self.local_reply = true;
        let r = host.send_local_reply(cb.open_status, &HeaderMap::from_pairs(&headers), body.as_bytes());
        self.check(plugin, host, r, id);
    }

    /// Records the outcome of a call the circuit let through: at the response headers, or at the
    /// end of a stream that never had them (`status` `None`).
    fn circuit_record(&mut self, plugin: &Plugin, host: &mut impl Host, status: Option<u32>) {
        let Some(call) = self.admitted.take() else {
            return;
        };
        let (Some(cfg), Some(key)) =
            (plugin.config.rule(self.rule).circuit_breaker.as_ref(), plugin.circuit_key(self.rule))
        else {
            return;
        };
        let now = host.now();
        let outcome = breaker::classify(
            cfg,
            status,
            || int(host.property(&["response", "flags"])),
            now.saturating_sub(call.start),
        );
        let m = plugin.metrics.circuit(&plugin.config, self.rule);
        if outcome.failure {
            increment(host, m.and_then(|m| m.failures));
        }
        if outcome.slow {
            increment(host, m.and_then(|m| m.slow));
        }
        let id = self.correlation_id.clone().unwrap_or_default();
        match circuit::record(host, key, cfg, call, outcome, now) {
            Ok(Some(t)) => {
                if let Some(m) = m {
                    circuit::announce(host, m, &plugin.config.rule(self.rule).name, &t, &id);
                }
            }
            Ok(None) => {}
            Err(e) => self.internal_error(plugin, host, e, Some(&id)),
        }
    }

    pub fn on_response_headers(&mut self, plugin: &Plugin, host: &mut impl Host) {
        if self.admitted.is_some() && !self.local_reply {
            let status = host.response_header(":status").and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
            // A response without a readable status is Envoy's own doing: count it like a reset.
            self.circuit_record(plugin, host, status);
        }
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
        if self.admitted.is_some() && !self.local_reply {
            // The stream ended without response headers (reset, downstream gone).
            self.circuit_record(plugin, host, None);
        }
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
            circuit: self.circuit,
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

/// A little-endian u64 property value (`response.code`, `response.flags`, `request.duration`).
fn int(bytes: Option<Vec<u8>>) -> Option<u64> {
    Some(u64::from_le_bytes(bytes?.try_into().ok()?))
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
