//! The per-request flow, top to bottom, against the [`Host`] trait: request headers → facts →
//! rule → correlation → (trace, breaker, dedup as they land) → forward; response headers → echo;
//! stream end → log line. No proxy-wasm here: `host/` implements [`Host`] with real host calls,
//! the tests below with a fake.

use crate::config::{Config, Generator, LogLevel};
use crate::correlation::{self, Outcome};
use crate::ids::Entropy;
use crate::logline::RequestLog;
use crate::metrics;
use crate::rules::{self, Facts};

/// A metric id handed out by the host.
pub type MetricId = u32;

/// A host call that did not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub &'static str);

/// Everything the flow needs from the proxy. Values are bytes: header values that are not UTF-8
/// are legal on the wire, and must never take the VM down.
pub trait Host {
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>>;
    fn set_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError>;
    fn set_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError>;
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
    pub errors: Option<MetricId>,
}

impl Metrics {
    /// `define_counter` registers one counter by its full stat name and returns its id.
    pub fn define(config: &Config, mut define_counter: impl FnMut(&str) -> Option<MetricId>) -> Metrics {
        let mut counter = |name: &str, tags: &[(&str, &str)]| define_counter(&metrics::name(name, tags));
        Metrics {
            requests: config.all_rules().map(|r| counter(metrics::REQUESTS_TOTAL, &[("rule", &r.name)])).collect(),
            correlation: Outcome::ALL.map(|o| counter(metrics::CORRELATION_TOTAL, &[("outcome", o.as_str())])),
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
}

/// What every stream of one configuration shares: built once per `on_configure`.
#[derive(Debug, Default)]
pub struct Plugin {
    pub config: Config,
    pub metrics: Metrics,
}

/// Filter-state keys, under Envoy's `wasm.` prefix.
pub mod state {
    pub const CORRELATION_ID: &str = "meshguard.correlation_id";
    pub const RULE: &str = "meshguard.rule";
}

/// One HTTP stream.
#[derive(Debug, Default)]
pub struct Stream {
    rule: Option<usize>,
    correlation_id: Option<String>,
    /// An internal error was counted and logged already for this stream.
    failed: bool,
}

impl Stream {
    pub fn on_request_headers(&mut self, plugin: &Plugin, host: &mut impl Host, entropy: &mut impl Entropy) {
        let config = &plugin.config;
        self.rule = rules::select(&config.rules, &mut LazyFacts::new(host));
        let rule = config.rule(self.rule);
        increment(host, plugin.metrics.requests(config, self.rule));

        let c = &config.correlation;
        let incoming = host.request_header(&c.header);
        let (id, outcome) = match correlation::check(incoming.as_deref(), c) {
            Ok(id) => (id, Outcome::Kept),
            Err(outcome) => {
                // Until trace context lands, `trace_id` generation gets a fresh trace-id-shaped id.
                let trace_id = (c.generator == Generator::TraceId).then(|| crate::ids::trace_id(entropy));
                let id = correlation::generate(c, trace_id.as_deref(), || host.request_header("x-request-id"), entropy);
                (id, outcome)
            }
        };
        increment(host, plugin.metrics.correlation(outcome));
        if outcome != Outcome::Kept {
            if let Err(e) = host.set_request_header(&c.header, id.as_bytes()) {
                self.internal_error(plugin, host, e, Some(&id));
            }
        }
        for (key, value) in [(state::CORRELATION_ID, id.as_bytes()), (state::RULE, rule.name.as_bytes())] {
            if let Err(e) = host.set_filter_state(key, value) {
                self.internal_error(plugin, host, e, Some(&id));
            }
        }
        self.correlation_id = Some(id);
    }

    pub fn on_response_headers(&mut self, plugin: &Plugin, host: &mut impl Host) {
        let c = &plugin.config.correlation;
        if !c.echo_downstream {
            return;
        }
        // No id: the request never reached this filter (e.g. Envoy rejected it first).
        let Some(id) = self.correlation_id.take() else {
            return;
        };
        if let Err(e) = host.set_response_header(&c.header, id.as_bytes()) {
            self.internal_error(plugin, host, e, Some(&id));
        }
        self.correlation_id = Some(id);
    }

    /// The stream is complete (also after resets and local replies).
    pub fn on_log(&mut self, plugin: &Plugin, host: &mut impl Host) {
        let config = &plugin.config;
        if !config.log.requests {
            return;
        }
        let Some(correlation_id) = self.correlation_id.as_deref() else {
            return;
        };
        let method = host.request_header(":method");
        let path = host.request_header(":path");
        let authority = host.request_header(":authority");
        let route_name = host.property(&["xds", "route_name"]);
        let cluster = host.property(&["xds", "cluster_name"]);
        let int = |bytes: Option<Vec<u8>>| -> Option<u64> { Some(u64::from_le_bytes(bytes?.try_into().ok()?)) };
        let status = int(host.property(&["response", "code"])).filter(|s| *s > 0);
        let flags = int(host.property(&["response", "flags"]));
        let duration_ms = int(host.property(&["request", "duration"])).map(|ns| ns as f64 / 1e6);
        let line = RequestLog {
            correlation_id,
            rule: &config.rule(self.rule).name,
            route_name: route_name.as_deref(),
            method: method.as_deref(),
            path: path.as_deref(),
            authority: authority.as_deref(),
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

    /// Fail open: the request goes on untouched; the error is counted and logged once.
    fn internal_error(&mut self, plugin: &Plugin, host: &mut impl Host, error: HostError, id: Option<&str>) {
        increment(host, plugin.metrics.errors);
        if !self.failed {
            self.failed = true;
            let id = id.unwrap_or("-");
            host.log(LogLevel::Error, &format!("meshguard: internal error: {} (correlation_id={id})", error.0));
        }
    }
}

fn increment(host: &mut impl Host, metric: Option<MetricId>) {
    if let Some(id) = metric {
        host.increment(id, 1);
    }
}

/// Request facts read from the host on first use, then cached for the rest of matching.
struct LazyFacts<'h, H: Host> {
    host: &'h mut H,
    method: Option<Option<Vec<u8>>>,
    path: Option<Option<Vec<u8>>>,
    authority: Option<Option<Vec<u8>>>,
    route_name: Option<Option<Vec<u8>>>,
    cluster: Option<Option<Vec<u8>>>,
}

impl<'h, H: Host> LazyFacts<'h, H> {
    fn new(host: &'h mut H) -> Self {
        LazyFacts { host, method: None, path: None, authority: None, route_name: None, cluster: None }
    }
}

impl<H: Host> Facts for LazyFacts<'_, H> {
    fn method(&mut self) -> Option<&[u8]> {
        self.method.get_or_insert_with(|| self.host.request_header(":method")).as_deref()
    }
    fn path(&mut self) -> Option<&[u8]> {
        self.path.get_or_insert_with(|| self.host.request_header(":path")).as_deref()
    }
    fn authority(&mut self) -> Option<&[u8]> {
        self.authority.get_or_insert_with(|| self.host.request_header(":authority")).as_deref()
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
