//! What the stages decided to do to the stream, collected during one callback and applied to the
//! host in one place ([`Effects::apply`]), which also turns host errors into the fail-open path.
//! Shared-data swaps are not effects: they are how a stage decides (compare-and-swap), and happen
//! while it decides.

use super::host::{Host, HostError, MetricId};
use crate::config::LogLevel;
use crate::reply::Reply;

/// A filter-state key, under Envoy's `wasm.` prefix.
pub type StateKey = &'static str;

#[derive(Debug, Default)]
pub struct Effects {
    /// Request header writes, in order: `Some(value)` replaces every line, `None` removes them.
    pub request_headers: Vec<(String, Option<Vec<u8>>)>,
    /// Response header writes: name, value, and whether the line is added beside existing ones.
    pub response_headers: Vec<(String, Vec<u8>, bool)>,
    pub filter_state: Vec<(StateKey, Vec<u8>)>,
    /// Counter increments (and gauge moves).
    pub increments: Vec<(MetricId, i64)>,
    pub gauges: Vec<(MetricId, u64)>,
    pub logs: Vec<(LogLevel, String)>,
    /// A host call made while deciding failed: the request fails open.
    pub error: Option<HostError>,
}

impl Effects {
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

    pub fn set_request_header(&mut self, name: &str, value: &[u8]) {
        self.request_headers.push((name.to_string(), Some(value.to_vec())));
    }

    pub fn remove_request_header(&mut self, name: &str) {
        self.request_headers.push((name.to_string(), None));
    }

    pub fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.response_headers.push((name.to_string(), value.to_vec(), false));
    }

    pub fn add_response_header(&mut self, name: &str, value: &[u8]) {
        self.response_headers.push((name.to_string(), value.to_vec(), true));
    }

    pub fn state(&mut self, key: StateKey, value: &[u8]) {
        self.filter_state.push((key, value.to_vec()));
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
    /// log. Returns the first host error, the deciding one first.
    /// Leaves the lists empty (their capacity kept).
    pub fn apply(&mut self, host: &mut impl Host, reply: Option<&Reply>) -> Result<(), HostError> {
        let mut first = self.error.take().map_or(Ok(()), Err);
        let mut keep = |r: Result<(), HostError>| {
            if first.is_ok() {
                first = r;
            }
        };
        for (id, by) in self.increments.drain(..) {
            host.increment(id, by);
        }
        for (id, value) in self.gauges.drain(..) {
            host.set_gauge(id, value);
        }
        for (level, line) in self.logs.drain(..) {
            host.log(level, &line);
        }
        for (name, value) in self.request_headers.drain(..) {
            keep(match value {
                Some(v) => host.set_request_header(&name, &v),
                None => host.remove_request_header(&name),
            });
        }
        for (key, value) in self.filter_state.drain(..) {
            keep(host.set_filter_state(key, &value));
        }
        for (name, value, add) in self.response_headers.drain(..) {
            keep(if add { host.add_response_header(&name, &value) } else { host.set_response_header(&name, &value) });
        }
        if let Some(reply) = reply {
            keep(host.send_local_reply(reply));
        }
        first
    }
}
