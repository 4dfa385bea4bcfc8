//! The per-request flow as a pipeline of four stages — trace, correlation, circuit, dedup — over
//! the [`Host`] trait. Each stage owns its per-stream state, decides with the pure core and says
//! what to do as [`Effects`]; this file matches the rule, runs the stages in order, applies their
//! effects in one place and sends the one local reply a stage may choose. It holds no feature's
//! policy. No proxy-wasm here: `host/` implements [`Host`] with real host calls.
//!
//! ```text
//! request headers   rule → trace → correlation → circuit → dedup → forward, or local reply
//! request body      dedup (a body fingerprint), or the drain of a reply waiting for the body's end
//! response headers  circuit outcome, dedup settle, correlation echo, trace response
//! log               outcomes of streams without a response, tracer check, the request line
//! ```
//!
//! The trace stage runs before correlation: the `trace_id` generator borrows the trace-id.

use std::cell::{Cell, RefCell};

mod effects;
mod host;

pub use crate::metrics::Metrics;
pub use effects::Effects;
pub use host::{cas_update, int, Callout, Host, HostError, MetricId, MetricKind, MAX_CAS_ATTEMPTS};

use crate::breaker::stage::{CircuitRule, CircuitStage};
use crate::breaker::Ending;
use crate::breaker::{self, Snapshot};
use crate::config::Config;
use crate::config::Store;
use crate::config::TraceMode;
use crate::correlation::stage::CorrelationStage;
use crate::dedup::remote::EtcdStore;
use crate::dedup::stage::{DedupRule, DedupStage};
use crate::dedup::store::{Bucket, BucketKeys};
use crate::dedup::{DedupOutcome, Layout};
use crate::headers::HeaderMap;
use crate::ids::Entropy;
use crate::logline::RequestLog;
use crate::reply::{self, Addressee, Refusal, Reply};
use crate::rules::{self, Facts};
use crate::trace::stage::{rewritten_by_tracer, EnvoyTracer, TraceStage};

/// What the shell does with the request after a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Paused until a call to the dedup store is answered ([`Stream::on_call_answer`]).
    Wait,
    /// A local reply was sent: stop the filter chain.
    Stop,
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

/// What every stream of one configuration shares: built once per `on_configure`. Rules are
/// indexed in configuration order with the default rule last.
#[derive(Debug, Default)]
pub struct Plugin {
    pub config: Config,
    pub metrics: Metrics,
    /// The plugin's name in Envoy, part of every shared-data key.
    pub name: String,
    /// Shared-data key of each rule's circuit; `None` without a breaker.
    circuit_keys: Vec<Option<String>>,
    /// This worker's copy of each rule's circuit, when one can answer for it.
    circuit_copies: Vec<RefCell<Option<Snapshot>>>,
    /// The dedup store's buckets (one store per plugin, sized by the largest `max_entries`) and
    /// their shared-data keys.
    dedup_store: Option<(Layout, BucketKeys)>,
    /// The etcd stores rules name (one per cluster, authority and prefix), and each rule's.
    etcd_stores: Vec<EtcdStore>,
    rule_etcd: Vec<Option<usize>>,
    /// The first traced stream of this worker has checked whether an Envoy tracer rewrote the
    /// trace headers after meshguard (see [`Stream::on_log`]).
    tracer_checked: Cell<bool>,
    /// What this worker learned of Envoy's tracer (`trace.mode: "auto"`).
    tracer: Cell<EnvoyTracer>,
    /// The effects of one callback, kept empty between callbacks so that their lists need not
    /// be allocated again on every request (one VM per worker: no two callbacks at once).
    scratch: RefCell<Effects>,
}

impl Plugin {
    /// `name` is the plugin's name in Envoy: it separates the shared data of two meshguard
    /// plugins on one proxy.
    pub fn new(config: Config, metrics: Metrics, name: &str) -> Plugin {
        Plugin::for_workload(config, metrics, name, "")
    }

    /// `workload` names the service in the etcd store's keys (replicas of one workload share
    /// them; see `dedup::etcd::base`).
    pub fn for_workload(config: Config, metrics: Metrics, name: &str, workload: &str) -> Plugin {
        let mut etcd_stores: Vec<EtcdStore> = Vec::new();
        let mut rule_etcd = Vec::new();
        for rule in config.all_rules() {
            let Some((dedup, Store::Etcd(etcd))) = rule.dedup.as_ref().map(|d| (d, &d.store)) else {
                rule_etcd.push(None);
                continue;
            };
            let index = match etcd_stores.iter().position(|s| s.serves(etcd)) {
                Some(i) => i,
                None => {
                    let i = etcd_stores.len();
                    etcd_stores.push(EtcdStore::new(etcd.clone(), workload, name, i, metrics.remote));
                    i
                }
            };
            if let Some(store) = etcd_stores.get_mut(index) {
                store.needs(dedup.in_flight_ttl);
                store.needs(dedup.ttl);
            }
            rule_etcd.push(Some(index));
        }
        let circuit_keys =
            config.all_rules().map(|r| r.circuit_breaker.as_ref().map(|cb| breaker::key(name, &r.name, cb))).collect();
        let circuit_copies = config.all_rules().map(|_| RefCell::new(None)).collect();
        let dedup_store = config
            .all_rules()
            .filter_map(|r| r.dedup.as_ref())
            .map(|d| d.max_entries)
            .max()
            .map(Layout::new)
            .map(|layout| (layout, BucketKeys::new(&layout, name)));
        Plugin {
            config,
            metrics,
            name: name.to_string(),
            circuit_keys,
            circuit_copies,
            dedup_store,
            etcd_stores,
            rule_etcd,
            tracer_checked: Cell::new(false),
            tracer: Cell::new(EnvoyTracer::default()),
            scratch: RefCell::new(Effects::default()),
        }
    }

    /// Creates every rule's circuit value and every dedup bucket that does not exist yet (from
    /// `on_configure`): Envoy applies a write to a missing key unconditionally, so two workers
    /// creating one key on their first requests could both let the same event through (or lose
    /// each other's entry). Created here, before this worker serves, every request swaps against
    /// an existing value.
    ///
    /// Also sets each rule's `meshguard_circuit_state` to the phase of the circuit this
    /// configuration uses: after a reload that gives a rule a fresh circuit (renamed rule, resized
    /// window) the gauge would otherwise still show the old circuit's last transition.
    pub fn init_shared(&self, host: &mut impl Host) -> Result<(), HostError> {
        for index in 0..self.circuit_keys.len() {
            if let Some(rule) = self.circuit(index) {
                let phase = breaker::shared::init(host, rule.key, rule.config)?;
                if let Some(m) = rule.metrics {
                    if let Some(id) = m.state {
                        host.set_gauge(id, phase as u64);
                    }
                    m.check_epoch(host);
                }
            }
        }
        if let Some((layout, keys)) = &self.dedup_store {
            let empty = Bucket::default().encode();
            for bucket in 0..layout.buckets {
                let key = keys.key(bucket);
                if host.shared_get(&key)?.is_none() {
                    host.shared_set(&key, &empty, 0)?;
                }
            }
        }
        Ok(())
    }

    /// An empty [`Effects`] for one callback (given back by `Stream::apply`).
    fn effects(&self) -> Effects {
        self.scratch.take()
    }

    /// The dedup store's layout, when a rule deduplicates.
    pub fn dedup_layout(&self) -> Option<Layout> {
        self.dedup_store.as_ref().map(|(layout, _)| *layout)
    }

    /// Rule `rule` (the default rule at `config.rules.len()`), by index: no walk over the rules.
    fn rule(&self, rule: usize) -> &crate::config::Rule {
        self.config.rule(Some(rule))
    }

    fn rule_name(&self, rule: usize) -> &str {
        &self.rule(rule).name
    }

    /// Rule `rule`'s circuit, when it has a breaker.
    fn circuit(&self, rule: usize) -> Option<CircuitRule<'_>> {
        let config = self.rule(rule).circuit_breaker.as_ref()?;
        Some(CircuitRule {
            name: self.rule_name(rule),
            config,
            key: self.circuit_keys.get(rule)?.as_deref()?,
            copy: self.circuit_copies.get(rule)?,
            metrics: self.metrics.circuit(rule),
        })
    }

    /// Rule `rule`'s dedup, when it has one.
    fn dedup(&self, rule: usize) -> Option<DedupRule<'_>> {
        let config = self.rule(rule).dedup.as_ref()?;
        let (layout, keys) = self.dedup_store.as_ref()?;
        Some(DedupRule {
            name: self.rule_name(rule),
            config,
            layout: *layout,
            keys,
            metrics: self.metrics.dedup(rule),
            store: &self.metrics.store,
            etcd: self.rule_etcd.get(rule).copied().flatten().and_then(|i| self.etcd_stores.get(i)),
        })
    }

    /// The etcd stores of this configuration.
    pub fn etcd_stores(&self) -> &[EtcdStore] {
        &self.etcd_stores
    }

    /// The root's tick: each etcd store grants its leases ahead and sends its due releases.
    pub fn on_tick(&self, host: &mut impl Host) {
        for store in &self.etcd_stores {
            store.tick(host);
        }
    }

    /// The answer to a call the root sent (a lease grant, a release); false when no store sent it.
    pub fn on_root_answer(&self, host: &mut impl Host, token: u32, status: Option<u32>, body: &[u8]) -> bool {
        self.etcd_stores.iter().any(|s| s.on_answer(host, token, status, body))
    }
}

/// One HTTP stream.
#[derive(Debug, Default)]
pub struct Stream {
    /// The matched rule's index (the default rule is `config.rules.len()`).
    rule: usize,
    trace: TraceStage,
    correlation: CorrelationStage,
    circuit: CircuitStage,
    dedup: DedupStage,
    /// A gRPC request: replies and outcomes take the gRPC shape.
    grpc: bool,
    /// The gRPC caller's deadline (`grpc-timeout`, ns).
    deadline: Option<u64>,
    /// The response's status and when its headers came, while the outcome waits for a gRPC
    /// status (trailers, or the end of the stream).
    response: Option<(Option<u32>, u64)>,
    /// meshguard answered this request itself: its response is no outcome.
    replied: bool,
    /// A reply decided before the request body ended, sent when it has (the rest of the body is
    /// dropped meanwhile): a reply in the middle of an upload makes Envoy reset the stream after
    /// it, and HTTP/2 clients that see the RST_STREAM first lose the reply.
    waiting_reply: Option<Reply>,
    /// An internal error was counted and logged already for this stream.
    failed: bool,
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
        self.rule = rules::select(&config.rules, &mut LazyFacts::new(&headers, host)).unwrap_or(config.rules.len());
        self.grpc = reply::is_grpc(headers.get("content-type"));
        if self.grpc {
            self.deadline = headers.get("grpc-timeout").and_then(breaker::grpc_timeout);
        }
        let mut fx = plugin.effects();
        fx.count(plugin.metrics.requests(self.rule));
        if self.rule != config.rules.len() {
            // Filter state costs a host call per key: the default rule goes unsaid.
            fx.state(state::RULE, plugin.rule_name(self.rule).as_bytes());
        }

        let tracer = plugin.tracer.get();
        let trace_id =
            self.trace.on_request_headers(&headers, &config.trace, tracer, entropy, &plugin.metrics, &mut fx);
        let id = self.correlation.on_request_headers(
            &headers,
            &config.correlation,
            trace_id.as_deref(),
            entropy,
            &plugin.metrics,
            &mut fx,
        );
        let mut refusal = match plugin.circuit(self.rule) {
            Some(rule) => self.circuit.on_request_headers(&rule, host, id, &mut fx),
            None => None,
        };
        let mut waits = false;
        if refusal.is_none() {
            if let Some(rule) = plugin.dedup(self.rule) {
                refusal = self.dedup.on_request_headers(&rule, &headers, host, entropy, end_of_stream, &mut fx);
                if refusal.is_none() {
                    (waits, refusal) = self.send_claim(&rule, host, &mut fx);
                }
            }
        }
        let reply = refusal.map(|r| {
            // The request goes nowhere: writing its headers would only make Envoy match it again.
            fx.drop_request_headers();
            self.reply(plugin, &r, trace_id.as_deref())
        });
        // A reply decided here goes at once, body or not: Envoy does not hand a filter the body
        // of a request whose headers it holds (proxy-wasm turns a pause at the headers into
        // StopAllIterationAndWatermark), so the reply cannot wait for the end of an upload the
        // way a reply decided on a body chunk does. An HTTP/2 upload in progress is then reset
        // after the complete reply (RST_STREAM NO_ERROR), which clients must not take for an
        // error (RFC 9113 §8.1); curl 7.88 does (docs/body-keys.md).
        self.apply(plugin, host, fx, reply.as_ref());
        if reply.is_some() {
            Verdict::Stop
        } else if waits {
            Verdict::Wait
        } else {
            Verdict::Continue
        }
    }

    /// Sends the dedup stage's claim, if it has one: `(true, None)` while the request waits for
    /// the answer; a refusal when it could not be sent and `on_error` refuses.
    fn send_claim(&mut self, rule: &DedupRule, host: &mut impl Host, fx: &mut Effects) -> (bool, Option<Refusal>) {
        let Some(call) = self.dedup.call() else {
            return (false, None);
        };
        match host.http_call(call) {
            Ok(token) => {
                self.dedup.sent(token);
                (true, None)
            }
            Err(e) => (false, self.dedup.on_unsent(rule, host, e, fx)),
        }
    }

    /// The answer to this stream's claim: the request goes on, or meshguard answers it.
    pub fn on_call_answer(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        token: u32,
        status: Option<u32>,
        body: &[u8],
    ) {
        let Some(rule) = plugin.dedup(self.rule).filter(|_| self.dedup.is_claim(token)) else {
            return;
        };
        let mut fx = plugin.effects();
        let mut refusal = self.dedup.on_claim_answer(&rule, host, status, body, &mut fx);
        if refusal.is_none() && self.dedup.claiming() {
            // The claim goes once more (a fast failure): the request keeps waiting.
            let waits;
            (waits, refusal) = self.send_claim(&rule, host, &mut fx);
            if waits {
                self.apply(plugin, host, fx, None);
                return;
            }
        }
        let reply = refusal.map(|r| {
            let trace_id = self.trace.context().map(|c| c.trace_id_hex());
            self.reply(plugin, &r, trace_id.as_deref())
        });
        self.apply(plugin, host, fx, reply.as_ref());
        if reply.is_none() {
            if let Err(e) = host.resume_request() {
                self.fail(plugin, host, e);
            }
        }
    }

    /// A chunk of the request body: read by the dedup stage while its check waits for the body;
    /// dropped after a reply was decided, which goes out with the body's end.
    pub fn on_request_body(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        size: usize,
        end_of_stream: bool,
    ) -> Verdict {
        if self.dedup.claiming() {
            // Envoy buffers the body while the claim is out.
            return Verdict::Wait;
        }
        if self.waiting_reply.is_none() {
            let Some(rule) = plugin.dedup(self.rule).filter(|_| self.dedup.awaits_body()) else {
                return Verdict::Continue;
            };
            let mut fx = plugin.effects();
            let mut refusal = self.dedup.on_request_body(&rule, host, size, end_of_stream, &mut fx);
            let mut waits = false;
            if refusal.is_none() {
                (waits, refusal) = self.send_claim(&rule, host, &mut fx);
            }
            self.apply(plugin, host, fx, None);
            if waits {
                return Verdict::Wait;
            }
            let Some(refusal) = refusal else {
                return Verdict::Continue;
            };
            let trace_id = self.trace.context().map(|c| c.trace_id_hex());
            self.waiting_reply = Some(self.reply(plugin, &refusal, trace_id.as_deref()));
        }
        // Each chunk is dropped (nothing more reaches the upstream, and Envoy buffers nothing);
        // the reply goes out with the end of the request, so the exchange completes without a
        // reset. If a chunk cannot be dropped, the reply goes out at once instead.
        if !end_of_stream {
            match host.drop_request_body(size) {
                Ok(()) => return Verdict::Continue,
                Err(e) => self.fail(plugin, host, e),
            }
        }
        if let Some(reply) = self.waiting_reply.take() {
            self.apply(plugin, host, plugin.effects(), Some(&reply));
        }
        Verdict::Stop
    }

    /// The response headers: the outcome of the call when they tell it (an HTTP status; a gRPC
    /// trailers-only response), the correlation echo and the trace response.
    pub fn on_response_headers(&mut self, plugin: &Plugin, host: &mut impl Host, end_of_stream: bool) {
        // An answer before the body decided the key (the upstream's, or Envoy's, e.g. a timeout):
        // the request was never checked, and no reply of ours can follow this one. Likewise a
        // reply waiting for the end of the body: the answer to a request the upstream never got
        // whole goes to the client instead.
        self.dedup.on_early_answer();
        self.waiting_reply = None;
        let mut fx = plugin.effects();
        if self.awaits_outcome() {
            // A response without a readable status is Envoy's own doing: counted like a reset.
            let status = host.response_header(":status").and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
            let grpc_ok = self.grpc && status == Some(200);
            let grpc_status = if grpc_ok { grpc_status(host.response_header("grpc-status")) } else { None };
            if grpc_ok && grpc_status.is_none() && !end_of_stream {
                // The status comes in the trailers (or the stream ends without one).
                self.response = Some((status, host.now()));
            } else {
                let end = self.ending(status, grpc_status);
                self.outcome(plugin, host, &end, None, &mut fx);
            }
        }
        // No id: the request never reached this filter (e.g. Envoy rejected it first).
        if self.correlation.id().is_some() {
            self.correlation.on_response_headers(&plugin.config.correlation, &mut fx);
            self.trace.on_response_headers(&plugin.config.trace, &mut fx);
        }
        self.apply(plugin, host, fx, None);
    }

    /// The response trailers: a gRPC call's status.
    pub fn on_response_trailers(&mut self, plugin: &Plugin, host: &mut impl Host) {
        let Some((status, at)) = self.response.take().filter(|_| self.awaits_outcome()) else {
            return;
        };
        let end = self.ending(status, grpc_status(host.response_trailer("grpc-status")));
        let mut fx = plugin.effects();
        self.outcome(plugin, host, &end, Some(at), &mut fx);
        self.apply(plugin, host, fx, None);
    }

    /// The stream is complete (also after resets and local replies).
    pub fn on_log(&mut self, plugin: &Plugin, host: &mut impl Host) {
        let config = &plugin.config;
        let mut fx = plugin.effects();
        if self.awaits_outcome() {
            // The stream ended without response headers (reset, caller gone), or a gRPC call
            // without a status.
            let (status, at) = self.response.take().map_or((None, None), |(s, at)| (s, Some(at)));
            let end = self.ending(status, None);
            self.outcome(plugin, host, &end, at, &mut fx);
        }
        if !self.replied && config.trace.mode == TraceMode::Auto {
            if let tracer @ EnvoyTracer::Unknown(_) = plugin.tracer.get() {
                let learned = self.trace.learn_tracer(tracer, &host.request_headers(), &mut fx);
                if learned == EnvoyTracer::Present {
                    fx.log(
                        crate::config::LogLevel::Info,
                        "meshguard: Envoy's tracer writes the trace headers; trace.mode \"auto\" follows it"
                            .to_string(),
                    );
                }
                plugin.tracer.set(learned);
            }
        }
        if let Some(ours) = self.trace.context().filter(|_| !plugin.tracer_checked.replace(true)) {
            // Once per worker: checking every request would cost a header read each; one is
            // enough to tell the operator.
            if config.trace.mode != TraceMode::Auto && rewritten_by_tracer(&ours, &host.request_headers()) {
                fx.log(
                    crate::config::LogLevel::Warn,
                    "meshguard: an Envoy tracer rewrote the trace headers after meshguard (two traces per \
                     request); set trace.mode to \"auto\" or \"defer\" when Envoy tracing is on"
                        .to_string(),
                );
            }
        }
        if let (true, Some(correlation_id)) = (config.log.requests, self.correlation.id()) {
            let line = self.request_line(plugin, host, correlation_id);
            fx.log(config.log.level, line);
        }
        self.apply(plugin, host, fx, None);
    }

    fn ending(&self, status: Option<u32>, grpc_status: Option<u32>) -> Ending {
        Ending { status, grpc: self.grpc, grpc_status, deadline: self.deadline }
    }

    /// A call went upstream and its outcome is still to be taken.
    fn awaits_outcome(&self) -> bool {
        !self.replied && (self.circuit.awaits_outcome() || self.dedup.holds_key())
    }

    /// The outcome of a call that went upstream, once known: the circuit records it, dedup
    /// settles the key. `responded_at`: when the response headers came, if the outcome waited.
    fn outcome(
        &mut self,
        plugin: &Plugin,
        host: &mut impl Host,
        end: &Ending,
        responded_at: Option<u64>,
        fx: &mut Effects,
    ) {
        let id = self.correlation.id().unwrap_or_default();
        if let Some(rule) = plugin.circuit(self.rule) {
            self.circuit.on_outcome(&rule, host, end, responded_at, id, fx);
        }
        if let Some(rule) = plugin.dedup(self.rule) {
            self.dedup.on_outcome(&rule, host, end, fx);
        }
    }

    /// meshguard's own JSON line for the request (`log.requests`).
    fn request_line(&self, plugin: &Plugin, host: &mut impl Host, correlation_id: &str) -> String {
        let config = &plugin.config;
        let headers = host.request_headers();
        let context = self.trace.logged_context(&headers);
        let trace_id = context.map(|c| c.trace_id_hex());
        let span_id = context.map(|c| c.span_id_hex());
        let route_name = host.property(&["xds", "route_name"]);
        let cluster = host.property(&["xds", "cluster_name"]);
        let status = int(host.property(&["response", "code"])).filter(|s| *s > 0);
        let flags = int(host.property(&["response", "flags"]));
        let duration_ms = int(host.property(&["request", "duration"])).map(|ns| ns as f64 / 1e6);
        RequestLog {
            correlation_id,
            trace_id: trace_id.as_deref(),
            span_id: span_id.as_deref(),
            rule: plugin.rule_name(self.rule),
            route_name: route_name.as_deref(),
            method: headers.get(":method"),
            path: headers.get(":path"),
            authority: headers.get(":authority"),
            status,
            duration_ms,
            upstream_cluster: cluster.as_deref(),
            response_flags: flags,
            circuit: self.circuit.label(),
            event_id: self.dedup.event_id(),
            dedup: self.dedup.outcome().map_or("none", DedupOutcome::as_str),
        }
        .to_json(config.log.include_query)
    }

    /// The local reply for a refusal, with the ids the pipeline holds.
    fn reply(&mut self, plugin: &Plugin, refusal: &Refusal, trace_id: Option<&str>) -> Reply {
        let config = &plugin.config;
        self.replied = true;
        let to = Addressee {
            grpc: self.grpc,
            rule: plugin.rule_name(self.rule),
            correlation_id: self.correlation.id().unwrap_or_default(),
            echo: config.correlation.echo_downstream.then_some(config.correlation.header.as_str()),
            trace_id,
        };
        let open_status = plugin.circuit(self.rule).map_or(503, |c| c.config.open_status);
        refusal.reply(&to, open_status)
    }

    /// The one place effects reach the host; a host error fails the request open.
    fn apply(&mut self, plugin: &Plugin, host: &mut impl Host, mut fx: Effects, reply: Option<&Reply>) {
        let result = fx.apply(host, reply);
        // Emptied, with its capacity: the next callback of this worker fills it again.
        plugin.scratch.replace(fx);
        if let Err(e) = result {
            self.fail(plugin, host, e);
        }
    }

    /// Fail open: the request goes on untouched; the error is counted and logged once per request.
    fn fail(&mut self, plugin: &Plugin, host: &mut impl Host, error: HostError) {
        if self.failed {
            return;
        }
        self.failed = true;
        if let Some(id) = plugin.metrics.errors {
            host.increment(id, 1);
        }
        let id = self.correlation.id().unwrap_or("-");
        host.log(
            crate::config::LogLevel::Error,
            &format!("meshguard: internal error: {} (correlation_id={id})", error.0),
        );
    }
}

/// A `grpc-status` value; one that is present but not a number is UNKNOWN (2), as gRPC clients
/// read it.
fn grpc_status(value: Option<Vec<u8>>) -> Option<u32> {
    let value = value?;
    Some(std::str::from_utf8(&value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(2))
}

/// Request facts for rule matching: headers looked up in the map read once (each at most once,
/// however many rules ask: 256 rules on a path prefix must not scan the map 256 times),
/// properties from the host on first use (each is a host call), then cached.
struct LazyFacts<'a, H: Host> {
    headers: &'a HeaderMap,
    host: &'a mut H,
    method: Option<Option<&'a [u8]>>,
    path: Option<Option<&'a [u8]>>,
    authority: Option<Option<&'a [u8]>>,
    route_name: Option<Option<Vec<u8>>>,
    cluster: Option<Option<Vec<u8>>>,
}

impl<'a, H: Host> LazyFacts<'a, H> {
    fn new(headers: &'a HeaderMap, host: &'a mut H) -> Self {
        LazyFacts { headers, host, method: None, path: None, authority: None, route_name: None, cluster: None }
    }
}

impl<H: Host> Facts for LazyFacts<'_, H> {
    fn method(&mut self) -> Option<&[u8]> {
        let headers = self.headers;
        *self.method.get_or_insert_with(|| headers.get(":method"))
    }
    fn path(&mut self) -> Option<&[u8]> {
        let headers = self.headers;
        *self.path.get_or_insert_with(|| headers.get(":path"))
    }
    fn authority(&mut self) -> Option<&[u8]> {
        let headers = self.headers;
        *self.authority.get_or_insert_with(|| headers.get(":authority"))
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
