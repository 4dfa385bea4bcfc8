//! What the stages decided to do to the stream, collected during one callback and applied to the
//! host in one place ([`Effects::apply`]), which also turns host errors into the fail-open path.
//! Shared-data swaps are not effects: they are how a stage decides (compare-and-swap), and happen
//! while it decides.

use super::host::{Host, HostError, MetricId};
use crate::config::LogLevel;
use crate::reply::Reply;

/// A filter-state key, under Envoy's `wasm.` prefix.
pub type StateKey = &'static str;

/// A range of [`Effects`]' byte arena.
type Span = std::ops::Range<usize>;

/// The effects of one callback. Header names and values and filter-state values are copied into
/// one byte arena: the lists and the arena are kept between callbacks (see
/// `filter::Plugin::effects`), so a request allocates nothing here once a worker is warm — a
/// `Vec` per header value cost measurable CPU on every request.
#[derive(Debug, Default)]
pub struct Effects {
    bytes: Vec<u8>,
    /// Request header writes, in order: name, and `Some(value)` replacing every line or `None`
    /// removing them.
    request_headers: Vec<(Span, Option<Span>)>,
    /// Response header writes: name, value, and whether the line is added beside existing ones.
    response_headers: Vec<(Span, Span, bool)>,
    filter_state: Vec<(StateKey, Span)>,
    /// Counter increments (and gauge moves).
    increments: Vec<(MetricId, i64)>,
    gauges: Vec<(MetricId, u64)>,
    /// Histogram values.
    records: Vec<(MetricId, u64)>,
    logs: Vec<(LogLevel, String)>,
    /// A host call made while deciding failed: the request fails open.
    error: Option<HostError>,
}

impl Effects {
    fn keep(&mut self, bytes: &[u8]) -> Span {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    fn text(&self, span: &Span) -> &str {
        self.bytes.get(span.clone()).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }

    fn slice(&self, span: &Span) -> &[u8] {
        self.bytes.get(span.clone()).unwrap_or_default()
    }

    pub fn count(&mut self, metric: Option<MetricId>) {
        self.add(metric, 1);
    }

    pub fn add(&mut self, metric: Option<MetricId>, by: i64) {
        if let (Some(id), true) = (metric, by != 0) {
            self.increments.push((id, by));
        }
    }

    pub fn gauge(&mut self, metric: Option<MetricId>, value: u64) {
        if let Some(id) = metric {
            self.gauges.push((id, value));
        }
    }

    pub fn record(&mut self, metric: Option<MetricId>, value: u64) {
        if let Some(id) = metric {
            self.records.push((id, value));
        }
    }

    pub fn set_request_header(&mut self, name: &str, value: &[u8]) {
        let (name, value) = (self.keep(name.as_bytes()), self.keep(value));
        self.request_headers.push((name, Some(value)));
    }

    pub fn remove_request_header(&mut self, name: &str) {
        let name = self.keep(name.as_bytes());
        self.request_headers.push((name, None));
    }

    /// The request is answered locally: its header writes would only make Envoy match it again.
    pub fn drop_request_headers(&mut self) {
        self.request_headers.clear();
    }

    pub fn set_response_header(&mut self, name: &str, value: &[u8]) {
        let (name, value) = (self.keep(name.as_bytes()), self.keep(value));
        self.response_headers.push((name, value, false));
    }

    pub fn add_response_header(&mut self, name: &str, value: &[u8]) {
        let (name, value) = (self.keep(name.as_bytes()), self.keep(value));
        self.response_headers.push((name, value, true));
    }

    pub fn state(&mut self, key: StateKey, value: &[u8]) {
        let value = self.keep(value);
        self.filter_state.push((key, value));
    }

    pub fn log(&mut self, level: LogLevel, line: String) {
        self.logs.push((level, line));
    }

    /// Keeps the first error: one is enough to fail the request open.
    pub fn fail(&mut self, error: HostError) {
        self.error.get_or_insert(error);
    }

    /// Performs every effect, the local reply (if any) last, so that the filter state and the
    /// counters are in place when Envoy runs the reply through the response path and the access
    /// log. Returns the first host error, the deciding one first. Leaves everything empty (the
    /// capacity kept).
    pub fn apply(&mut self, host: &mut impl Host, reply: Option<&Reply>) -> Result<(), HostError> {
        let mut first = self.error.take().map_or(Ok(()), Err);
        let mut keep = |r: Result<(), HostError>| {
            if first.is_ok() {
                first = r;
            }
        };
        for &(id, by) in &self.increments {
            host.increment(id, by);
        }
        for &(id, value) in &self.gauges {
            host.set_gauge(id, value);
        }
        for &(id, value) in &self.records {
            host.record(id, value);
        }
        for (level, line) in &self.logs {
            host.log(*level, line);
        }
        for (name, value) in &self.request_headers {
            keep(match value {
                Some(v) => host.set_request_header(self.text(name), self.slice(v)),
                None => host.remove_request_header(self.text(name)),
            });
        }
        for (key, value) in &self.filter_state {
            keep(host.set_filter_state(key, self.slice(value)));
        }
        for (name, value, add) in &self.response_headers {
            let (name, value) = (self.text(name), self.slice(value));
            keep(if *add { host.add_response_header(name, value) } else { host.set_response_header(name, value) });
        }
        if let Some(reply) = reply {
            keep(host.send_local_reply(reply));
        }
        self.bytes.clear();
        self.request_headers.clear();
        self.response_headers.clear();
        self.filter_state.clear();
        self.increments.clear();
        self.gauges.clear();
        self.records.clear();
        self.logs.clear();
        first
    }
}
