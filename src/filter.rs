//! The per-request flow, top to bottom, against the [`Host`] trait: request headers → facts →
//! rule → trace context → correlation → circuit breaker (local reply when open) → (dedup as it
//! lands) → forward; response headers → outcome, echo; stream end → outcome of a reset, log line. No proxy-wasm here: `host/` implements [`Host`] with real host calls,
//! the tests below with a fake.

use std::cell::{Cell, RefCell};

mod circuit;
mod dedup;

use crate::breaker::{self, Admission, Cached, Snapshot};
use crate::config::{Config, LogLevel, TraceMode, TraceResponse};
use crate::config::{DuplicateStatus, Fingerprint, OnMissing, Scope};
use crate::correlation::{self, Outcome};
use crate::dedup::store::Check;
use crate::dedup::{self as dd, Layout};
use crate::headers::HeaderMap;
use crate::ids::Entropy;
use crate::logline::RequestLog;
use crate::metrics;
use crate::rules::{self, Facts};
use crate::trace::{self, Tracestate};
pub use circuit::{Admitted, CircuitMetrics};
pub use dedup::{DedupMetrics, Held, StoreMetrics};

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
    /// A counter's or gauge's current value (process-wide: all workers share Envoy's stats).
    fn metric(&mut self, metric: MetricId) -> Option<u64>;
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
    /// The first `max` bytes of the request body chunk being delivered.
    fn request_body(&mut self, max: usize) -> Option<Vec<u8>>;
    /// Empties the request body chunk being delivered (its first `size` bytes, all of it), so
    /// that continuing forwards nothing.
    fn drop_request_body(&mut self, size: usize) -> Result<(), HostError>;
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
    /// `meshguard_dedup_total{rule,outcome}` by rule index; `None` without dedup.
    pub dedup: Vec<Option<DedupMetrics>>,
    pub store: StoreMetrics,
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
        let dedup =
            config.all_rules().map(|r| r.dedup.as_ref().map(|_| DedupMetrics::define(&r.name, &mut define))).collect();
        let store = if config.all_rules().any(|r| r.dedup.is_some()) {
            StoreMetrics::define(&mut define)
        } else {
            StoreMetrics::default()
        };
        Metrics { requests, correlation, trace, errors, circuit, dedup, store }
    }

    fn dedup(&self, config: &Config, rule: Option<usize>, outcome: dd::Outcome) -> Option<MetricId> {
        self.dedup.get(rule.unwrap_or(config.rules.len()))?.as_ref()?.outcome(outcome)
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
    /// This worker's copy of each rule's circuit, when one can answer for it (default rule last).
    circuit_snapshots: Vec<RefCell<Option<Snapshot>>>,
    /// The plugin's name in Envoy, part of every shared-data key.
    pub name: String,
    /// The dedup store's buckets (one store per plugin, sized by the largest `max_entries`).
    pub dedup_layout: Option<Layout>,
    /// Their shared-data keys.
    dedup_keys: Option<dd::store::BucketKeys>,
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
        let circuit_snapshots = config.all_rules().map(|_| RefCell::new(None)).collect();
        let dedup_layout =
            config.all_rules().filter_map(|r| r.dedup.as_ref()).map(|d| d.max_entries).max().map(Layout::new);
        let dedup_keys = dedup_layout.map(|layout| dd::store::BucketKeys::new(&layout, name));
        Plugin {
            config,
            metrics,
            circuit_keys,
            circuit_snapshots,
            name: name.to_string(),
            dedup_layout,
            dedup_keys,
            tracer_checked: Cell::new(false),
        }
    }

    /// Creates every rule's circuit value that does not exist yet (from `on_configure`).
    /// Also sets each rule's `meshguard_circuit_state` to the phase of the circuit this
    /// configuration uses: after a reload that gives a rule a fresh circuit (renamed rule, resized
    /// window) the gauge would otherwise still show the old circuit's last transition.
    ///
    /// Every dedup bucket is created too: Envoy applies a write to a missing key
    /// unconditionally, so two workers creating one bucket on their first requests could both
    /// let the same event through (or lose each other's entry). Created here, before this worker
    /// serves, every request swaps against an existing value.
    pub fn init_shared(&self, host: &mut impl Host) -> Result<(), HostError> {
        for (i, (rule, key)) in self.config.all_rules().zip(&self.circuit_keys).enumerate() {
            if let (Some(cb), Some(key)) = (&rule.circuit_breaker, key) {
                let phase = circuit::init(host, key, cb)?;
                if let Some(m) = self.metrics.circuit.get(i).and_then(Option::as_ref) {
                    if let Some(id) = m.state {
                        host.set_gauge(id, phase as u64);
                    }
                    m.check_epoch(host);
                }
            }
        }
        if let (Some(layout), Some(keys)) = (self.dedup_layout, &self.dedup_keys) {
            let empty = dd::store::Bucket::default().encode();
            for bucket in 0..layout.buckets {
                let key = keys.key(bucket);
                if host.shared_get(&key)?.is_none() {
                    host.shared_set(&key, &empty, 0)?;
                }
            }
        }
        Ok(())
    }

    fn circuit_key(&self, rule: Option<usize>) -> Option<&str> {
        self.circuit_keys.get(rule.unwrap_or(self.config.rules.len()))?.as_deref()
    }

    fn circuit_snapshot(&self, rule: Option<usize>) -> Option<&RefCell<Option<Snapshot>>> {
        self.circuit_snapshots.get(rule.unwrap_or(self.config.rules.len()))
    }
}

/// Filter-state keys, under Envoy's `wasm.` prefix.
pub mod state {
    pub const CORRELATION_ID: &str = "meshguard.correlation_id";
    pub const RULE: &str = "meshguard.rule";
    pub const TRACE_ID: &str = "meshguard.trace_id";
    pub const SPAN_ID: &str = "meshguard.span_id";
    pub const CIRCUIT: &str = "meshguard.circuit";
    pub const EVENT_ID: &str = "meshguard.event_id";
    pub const DEDUP: &str = "meshguard.dedup";
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
    /// The request's event id (as sent, or generated) and what dedup made of it.
    event_id: Option<String>,
    dedup: Option<dd::Outcome>,
    /// The key this request holds in flight, and its bucket.
    held: Option<(Held, u32)>,
    /// Waiting for the body to fingerprint: the key's id and the method and path.
    pending: Option<Pending>,
    /// A dedup answer decided before the request body ended, sent when it has (the rest of the
    /// body is dropped meanwhile): an answer in the middle of an upload makes Envoy reset the
    /// stream after it, and HTTP/2 clients that see the RST_STREAM first lose the answer.
    deferred: Option<DedupReply>,
    /// An internal error was counted and logged already for this stream.
    failed: bool,
}

/// A request whose dedup check waits for its body.
#[derive(Debug)]
struct Pending {
    id: u128,
    nonce: u32,
    method: Vec<u8>,
    path: Vec<u8>,
    /// The body's first bytes seen so far (at most 64 KiB).
    body: Vec<u8>,
    /// All the body bytes seen so far, and the request's `content-length`, if any: the body is
    /// complete (and the key decided) on the chunk that reaches it, before it is forwarded.
    seen: u64,
    content_length: Option<u64>,
}

/// A dedup local reply: status, `x-meshguard-dedup` value, extra headers, JSON body (none for 204/304).
#[derive(Debug)]
struct DedupReply {
    status: u32,
    marker: &'static str,
    retry_after: bool,
    body: Option<String>,
}

impl Stream {
    /// The request headers of a request without a body (tests, and requests that end here).
    pub fn on_request_headers(&mut self, plugin: &Plugin, host: &mut impl Host, entropy: &mut impl Entropy) -> Verdict {
        self.on_request_headers_eos(plugin, host, entropy, true)
    }

    pub fn on_request_headers_eos(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        entropy: &mut impl Entropy,
        end_of_stream: bool,
    ) -> Verdict {
        let config = &plugin.config;
        let headers = host.request_headers();
        self.rule = rules::select(&config.rules, &mut LazyFacts::new(&headers, host));
        increment(host, plugin.metrics.requests(config, self.rule));

        let decision = trace::decide(&headers, &config.trace, entropy);
        let trace_id = decision.as_ref().map(|d| d.context.trace_id_hex());
        // Kept before any local reply: its response carries the trace too (traceresponse).
        self.trace = decision.as_ref().map(|d| d.context);

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
        if let Some(reply) = self.dedup_request(plugin, host, &headers, &id, entropy, end_of_stream) {
            self.set_states(plugin, host, &id, &decision, trace_id.as_deref());
            self.dedup_reply(plugin, host, &id, reply);
            self.correlation_id = Some(id);
            return Verdict::Stop;
        }
        if let (Some(generated), Some(cfg)) = (&self.event_id, &plugin.config.rule(self.rule).dedup) {
            if self.dedup == Some(dd::Outcome::Generated) {
                if let Some(header) = cfg.headers.first() {
                    let r = host.set_request_header(header, generated.as_bytes());
                    self.check(plugin, host, r, &id);
                }
            }
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
        self.correlation_id = Some(id);
        // With a pending body fingerprint the headers go on (proxy-wasm cannot hold them and still
        // see the body); `on_request_body` decides the key.
        Verdict::Continue
    }

    /// A chunk of the request body, while the dedup check waits for it. `size` is the chunk (the
    /// body is streamed, not buffered by Envoy): its bytes are copied until the body is complete
    /// (end of stream, or `content-length` bytes) or 64 KiB of it are seen, then the key is
    /// decided. Each chunk before that goes on upstream: holding them (`Pause`, Envoy's
    /// StopIterationAndBuffer) gets a request refused with 413 whenever a burst of body pushes
    /// Envoy's buffer past its limit (1 MiB by default, 32 KiB on edge proxies), and proxy-wasm's
    /// SDK has no watermark variant. The request headers have gone upstream already too; for a
    /// refused request the chunk that decided and the rest are dropped (`drain_request_body`),
    /// and the local reply resets the upstream request, so the service never gets it complete.
    pub fn on_request_body(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        size: usize,
        end_of_stream: bool,
    ) -> Verdict {
        if self.deferred.is_some() {
            return self.drain_request_body(plugin, host, size, end_of_stream);
        }
        let Some(mut pending) = self.pending.take() else {
            return Verdict::Continue;
        };
        let wanted = size.min(dd::MAX_BODY_FINGERPRINT - pending.body.len());
        if wanted > 0 {
            if let Some(chunk) = host.request_body(wanted) {
                pending.body.extend(chunk.into_iter().take(wanted));
            }
        }
        pending.seen = pending.seen.saturating_add(size as u64);
        // Forwarding the chunk that completes a content-length body would hand the upstream a
        // complete request: the key is decided on it. Otherwise the request is complete for the
        // upstream only with the end of stream, which is never forwarded before the decision.
        let complete = end_of_stream || pending.content_length.is_some_and(|length| pending.seen >= length);
        if !complete && pending.body.len() < dd::MAX_BODY_FINGERPRINT {
            self.pending = Some(pending);
            return Verdict::Continue;
        }
        let fingerprint = dd::fingerprint(&pending.method, &pending.path, Some(&pending.body));
        let id = self.correlation_id.clone().unwrap_or_default();
        match self.dedup_check(plugin, host, pending.id, pending.nonce, fingerprint, &id) {
            Some(reply) => {
                let r = host.set_filter_state(state::DEDUP, self.dedup.map_or("none", dd::Outcome::as_str).as_bytes());
                self.check(plugin, host, r, &id);
                self.deferred = Some(reply);
                self.drain_request_body(plugin, host, size, end_of_stream)
            }
            None => {
                // The request-headers pass wrote filter state before the key was decided: the
                // outcome ("first") reaches the access log only from here.
                if let Some(outcome) = self.dedup {
                    let r = host.set_filter_state(state::DEDUP, outcome.as_str().as_bytes());
                    self.check(plugin, host, r, &id);
                }
                Verdict::Continue
            }
        }
    }

    /// The request body after a dedup answer was decided: each chunk is dropped (nothing more
    /// reaches the upstream, and Envoy buffers nothing), and the answer goes out with the end of
    /// the request, so the exchange completes without a reset. If a chunk cannot be dropped, the
    /// answer goes out at once instead.
    fn drain_request_body(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        size: usize,
        end_of_stream: bool,
    ) -> Verdict {
        let dropped = if end_of_stream { Ok(()) } else { host.drop_request_body(size) };
        if !end_of_stream && dropped.is_ok() {
            return Verdict::Continue;
        }
        // The end of the request, or a chunk that could not be dropped: answer now.
        let id = self.correlation_id.clone().unwrap_or_default();
        self.check(plugin, host, dropped, &id);
        if let Some(reply) = self.deferred.take() {
            self.dedup_reply(plugin, host, &id, reply);
        }
        Verdict::Stop
    }

    /// Finds the request's event key and checks it (unless the body must be read first). `Some`
    /// when meshguard answers the request itself.
    fn dedup_request(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        headers: &HeaderMap,
        id: &str,
        entropy: &mut impl Entropy,
        end_of_stream: bool,
    ) -> Option<DedupReply> {
        let rule = plugin.config.rule(self.rule);
        let cfg = rule.dedup.as_ref()?;
        let method = headers.get(":method").unwrap_or_default();
        if !cfg.methods.iter().any(|m| m.as_bytes() == method) {
            return None;
        }
        let (key, event_id) = match dd::event_key(headers, &cfg.headers) {
            dd::Key::Valid { key, event_id } => (key, event_id),
            dd::Key::Missing => {
                return match cfg.on_missing {
                    OnMissing::Pass => {
                        self.dedup_outcome(plugin, host, dd::Outcome::Missing);
                        None
                    }
                    OnMissing::Reject => {
                        self.dedup_outcome(plugin, host, dd::Outcome::Missing);
                        let mut body = String::from("{\"error\":\"missing_event_id\",\"headers\":[");
                        for (i, h) in cfg.headers.iter().enumerate() {
                            if i > 0 {
                                body.push(',');
                            }
                            crate::logline::push_json_string(&mut body, h.as_bytes());
                        }
                        body.push_str("]}");
                        Some(DedupReply { status: 400, marker: "missing", retry_after: false, body: Some(body) })
                    }
                    OnMissing::Generate => {
                        self.event_id = Some(crate::ids::uuid4(entropy));
                        self.dedup_outcome(plugin, host, dd::Outcome::Generated);
                        None
                    }
                };
            }
            dd::Key::Invalid { header, reason } => {
                self.dedup_outcome(plugin, host, dd::Outcome::Invalid);
                let mut body = String::from("{\"error\":\"invalid_event_id\",\"header\":");
                crate::logline::push_json_string(&mut body, header.as_bytes());
                body.push_str(",\"reason\":");
                crate::logline::push_json_string(&mut body, reason.as_bytes());
                body.push('}');
                return Some(DedupReply { status: 400, marker: "invalid", retry_after: false, body: Some(body) });
            }
        };
        self.event_id = Some(event_id);
        let caller = match cfg.scope {
            Scope::Rule => None,
            // The mTLS peer's identity (a SPIFFE id in Istio); without mTLS, empty.
            Scope::Caller => Some(host.property(&["connection", "uri_san_peer_certificate"]).unwrap_or_default()),
        };
        let key_id = dd::key_id(&rule.name, caller.as_deref(), &key);
        // Which request owns the entry while it is in flight: random, so that no other request
        // can complete or release it; never 0.
        let mut bytes = [0u8; 4];
        entropy.fill(&mut bytes);
        let nonce = u32::from_le_bytes(bytes) | 1;
        let path = headers.get(":path").unwrap_or_default();
        let fingerprint = match cfg.fingerprint {
            Fingerprint::None => 0,
            Fingerprint::MethodPath => dd::fingerprint(method, path, None),
            Fingerprint::Body => {
                let content_length =
                    headers.get("content-length").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                if end_of_stream || content_length == Some(0) {
                    dd::fingerprint(method, path, Some(&[]))
                } else {
                    let (method, path) = (method.to_vec(), path.to_vec());
                    let body = Vec::new();
                    self.pending = Some(Pending { id: key_id, nonce, method, path, body, seen: 0, content_length });
                    return None;
                }
            }
        };
        self.dedup_check(plugin, host, key_id, nonce, fingerprint, id)
    }

    /// Looks the key up in the store (recording it in flight when new).
    fn dedup_check(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        key_id: u128,
        nonce: u32,
        fingerprint: u64,
        id: &str,
    ) -> Option<DedupReply> {
        let cfg = plugin.config.rule(self.rule).dedup.as_ref()?;
        let layout = plugin.dedup_layout?;
        let bucket = layout.bucket_of(key_id);
        let key = plugin.dedup_keys.as_ref()?.key(bucket);
        let now = host.now();
        let (check, fx) = match dedup::check(host, &layout, &key, key_id, fingerprint, nonce, now, cfg.in_flight_ttl) {
            Ok(r) => r,
            Err(e) => {
                self.internal_error(plugin, host, e, Some(id));
                return None;
            }
        };
        plugin.metrics.store.apply(host, fx);
        let event_id = self.event_id.clone().unwrap_or_default();
        let body = |error: &str| {
            let mut b = format!("{{\"error\":\"{error}\",\"event_id\":");
            crate::logline::push_json_string(&mut b, event_id.as_bytes());
            b.push('}');
            b
        };
        match check {
            Check::First => {
                self.held = Some((Held { id: key_id, nonce }, bucket));
                self.dedup_outcome(plugin, host, dd::Outcome::First);
                None
            }
            Check::Duplicate { status: original } => {
                self.dedup_outcome(plugin, host, dd::Outcome::Duplicate);
                let status = match cfg.duplicate_status {
                    DuplicateStatus::Replay => u32::from(original),
                    DuplicateStatus::Fixed(s) => s,
                };
                let body = (!matches!(status, 204 | 304)).then(|| {
                    let mut b = String::from("{\"dedup\":\"duplicate\",\"event_id\":");
                    crate::logline::push_json_string(&mut b, event_id.as_bytes());
                    b.push_str(&format!(",\"status\":{original}}}"));
                    b
                });
                Some(DedupReply { status, marker: "duplicate", retry_after: false, body })
            }
            Check::InFlight => {
                self.dedup_outcome(plugin, host, dd::Outcome::InFlight);
                Some(DedupReply { status: 409, marker: "in-flight", retry_after: true, body: Some(body("in_flight")) })
            }
            Check::Mismatch => {
                self.dedup_outcome(plugin, host, dd::Outcome::Mismatch);
                Some(DedupReply {
                    status: 422,
                    marker: "mismatch",
                    retry_after: false,
                    body: Some(body("fingerprint_mismatch")),
                })
            }
        }
    }

    fn dedup_outcome(&mut self, plugin: &Plugin, host: &mut impl Host, outcome: dd::Outcome) {
        self.dedup = Some(outcome);
        increment(host, plugin.metrics.dedup(&plugin.config, self.rule, outcome));
    }

    fn dedup_reply(&mut self, plugin: &Plugin, host: &mut impl Host, id: &str, reply: DedupReply) {
        let config = &plugin.config;
        let mut headers: Vec<(&str, &[u8])> = vec![("x-meshguard-dedup", reply.marker.as_bytes())];
        if reply.body.is_some() {
            headers.push(("content-type", b"application/json"));
        }
        if reply.retry_after {
            headers.push(("retry-after", b"1"));
        }
        if config.correlation.echo_downstream {
            headers.push((&config.correlation.header, id.as_bytes()));
        }
        self.local_reply = true;
        let body = reply.body.unwrap_or_default();
        let r = host.send_local_reply(reply.status, &HeaderMap::from_pairs(&headers), body.as_bytes());
        self.check(plugin, host, r, id);
    }

    /// The response (or its absence) settles the key this request holds: completed on a
    /// `success_status`, released otherwise.
    fn dedup_settle(&mut self, plugin: &Plugin, host: &mut impl Host, status: Option<u32>) {
        let Some((held, bucket)) = self.held.take() else {
            return;
        };
        let (Some(cfg), Some(layout), Some(keys)) =
            (plugin.config.rule(self.rule).dedup.as_ref(), plugin.dedup_layout, &plugin.dedup_keys)
        else {
            return;
        };
        let key = keys.key(bucket);
        let id = self.correlation_id.clone().unwrap_or_default();
        let now = host.now();
        let result = match status {
            Some(s) if cfg.success_status.contains(s) => {
                dedup::complete(host, &layout, &key, held, s as u16, now, cfg.ttl).map(|_| ())
            }
            _ => dedup::release(host, &layout, &key, held).map(|fx| {
                plugin.metrics.store.apply(host, fx);
                self.dedup_outcome(plugin, host, dd::Outcome::Released);
                let r = host.set_filter_state(state::DEDUP, b"released");
                self.check(plugin, host, r, &id);
            }),
        };
        if let Err(e) = result {
            self.internal_error(plugin, host, e, Some(&id));
        }
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
        if let Some(event_id) = &self.event_id {
            let r = host.set_filter_state(state::EVENT_ID, event_id.as_bytes());
            self.check(plugin, host, r, id);
        }
        if let Some(outcome) = self.dedup {
            let r = host.set_filter_state(state::DEDUP, outcome.as_str().as_bytes());
            self.check(plugin, host, r, id);
        }
    }

    /// The rule's circuit decides the request; `Some(retry_after_s)` when it must be rejected.
    /// A failing shared-data call lets the request through (fail open).
    fn circuit_admit(&mut self, plugin: &Plugin, host: &mut impl Host, id: &str) -> Option<u64> {
        let cfg = plugin.config.rule(self.rule).circuit_breaker.as_ref()?;
        let key = plugin.circuit_key(self.rule)?;
        let snapshot = plugin.circuit_snapshot(self.rule)?;
        let m = plugin.metrics.circuit(&plugin.config, self.rule);
        let now = host.now();
        let cached = breaker::admit_cached(snapshot.borrow().as_ref(), cfg, now);
        let (admission, transition) = match cached {
            Cached::Exact(admission) => (admission, None),
            cached => {
                // Read before the shared value (if it comes to that), as the copy's rule requires.
                let epoch = m.and_then(|m| m.epoch(host));
                match cached {
                    Cached::IfEpoch(seen, admission) if epoch == Some(seen) => (admission, None),
                    _ => self.circuit_admit_shared(plugin, host, key, cfg, now, epoch, id)?,
                }
            }
        };
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

    /// The admission from the shared value (read after `epoch`); the worker's copy is renewed.
    /// `None`: the shared data failed, the request goes on (fail open).
    #[allow(clippy::too_many_arguments)]
    fn circuit_admit_shared(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        key: &str,
        cfg: &crate::config::Breaker,
        now: u64,
        epoch: Option<u64>,
        id: &str,
    ) -> Option<(Admission, Option<breaker::Transition>)> {
        match circuit::admit(host, key, cfg, now, epoch) {
            Ok(updated) => {
                if let Some(snapshot) = plugin.circuit_snapshot(self.rule) {
                    *snapshot.borrow_mut() = updated.copy;
                }
                Some((updated.decision, updated.transition))
            }
            Err(e) => {
                self.internal_error(plugin, host, e, Some(id));
                None
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
        let Some(snapshot) = plugin.circuit_snapshot(self.rule) else {
            return;
        };
        let noop = snapshot.borrow().as_ref().and_then(|s| s.noop_record(call.generation, outcome));
        let epoch = m.and_then(|m| m.epoch(host));
        if noop.is_some() && noop == epoch {
            // A success into a quiet circuit nobody changed since this worker's copy: nothing to do.
            return;
        }
        let id = self.correlation_id.clone().unwrap_or_default();
        let result = circuit::record(host, key, cfg, call, outcome, now, epoch);
        if outcome.failure {
            increment(host, m.and_then(|m| m.failures));
        }
        if outcome.slow {
            increment(host, m.and_then(|m| m.slow));
        }
        if outcome.failure || outcome.slow {
            // After the swap: other workers compare their copies with the epoch
            // (`breaker::snapshot`).
            if let Some(m) = m {
                m.bump_epoch(host);
            }
        }
        match result {
            Ok(updated) => {
                *snapshot.borrow_mut() = updated.copy;
                if let (Some(t), Some(m)) = (updated.transition, m) {
                    circuit::announce(host, m, &plugin.config.rule(self.rule).name, &t, &id);
                }
            }
            Err(e) => {
                *snapshot.borrow_mut() = None;
                self.internal_error(plugin, host, e, Some(&id));
            }
        }
    }

    pub fn on_response_headers(&mut self, plugin: &Plugin, host: &mut impl Host) {
        // The upstream answered before the body decided the key (or Envoy did, e.g. a timeout):
        // the request was never checked, and no reply of ours can follow this one. Likewise an
        // answer waiting for the end of the body: the upstream's answer to a request it never got
        // whole (or Envoy's) goes to the client instead.
        self.pending = None;
        self.deferred = None;
        if (self.admitted.is_some() || self.held.is_some()) && !self.local_reply {
            let status = host.response_header(":status").and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
            // A response without a readable status is Envoy's own doing: count it like a reset.
            self.circuit_record(plugin, host, status);
            self.dedup_settle(plugin, host, status);
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
        if self.held.is_some() && !self.local_reply {
            self.dedup_settle(plugin, host, None);
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
            event_id: self.event_id.as_deref(),
            dedup: self.dedup.map_or("none", dd::Outcome::as_str),
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

/// Attempts at a compare-and-swap before the request fails open (SPEC "Failure and bad input").
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// Read a shared-data value, change it, compare-and-swap it back; again on a mismatch, at most
/// [`MAX_CAS_ATTEMPTS`] times. A value that does not decode counts as `fresh()`. No write when
/// `change` left the value as it was. Returns `change`'s result and the value as left.
fn cas_update<T: Clone + PartialEq, R>(
    host: &mut impl Host,
    key: &str,
    decode: impl Fn(&[u8]) -> Option<T>,
    fresh: impl Fn() -> T,
    encode: impl Fn(&T) -> Vec<u8>,
    mut change: impl FnMut(&mut T) -> R,
) -> Result<(R, T), HostError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = host.shared_get(key)?.unwrap_or_default();
        let before = decode(&bytes);
        let mut value = before.clone().unwrap_or_else(&fresh);
        let result = change(&mut value);
        if before.as_ref() == Some(&value) || host.shared_set(key, &encode(&value), cas)? {
            return Ok((result, value));
        }
    }
    Err(HostError("shared data contended: compare-and-swap attempts exhausted"))
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
