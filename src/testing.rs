//! The one test double of the proxy, shared by the unit tests, the CAS model (`tests/cas_model.rs`),
//! the fuzz targets and the benches, so that Envoy's semantics are written down once.
//!
//! A [`Proxy`] is what Envoy keeps for the whole process: shared data (with Envoy 1.40's exact
//! compare-and-swap rules), stats, the application log and the clock. A [`FakeHost`] is one
//! worker's view of one stream: its request and response, properties, filter state, body and local
//! replies, over a handle to the proxy. Several hosts over one proxy are several workers; a
//! [`Gate`] makes every shared-data call (and every read of a watched stat) an interleaving point
//! that a scheduler can hold.
//!
//! Not compiled into the filter (wasm32-wasip1).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::LogLevel;
use crate::filter::{Callout, Host, HostError, MetricId};
use crate::headers::HeaderMap;
use crate::reply::Reply;

/// Envoy's shared data (proxy-wasm-cpp-host `SharedData`, checked on Envoy 1.40): a missing key
/// reads as nothing; a write to a missing key, or with cas 0, is unconditional; a stale cas fails;
/// every write takes the next process-wide cas; a key is never removed.
#[derive(Debug, Default)]
pub struct SharedData {
    values: HashMap<String, (Vec<u8>, u32)>,
    last_cas: u32,
    /// Flaky mode: the next this many conditional writes fail as if another worker wrote first.
    pub conflicts: usize,
    /// Every conditional write to an existing key fails.
    pub always_mismatch: bool,
    /// Every successful write, in order, when `record` is on.
    pub commits: Vec<Commit>,
    pub record: bool,
    /// Failed swaps by worker.
    pub mismatches: HashMap<usize, usize>,
    pub gets: usize,
    pub sets: usize,
}

/// A successful shared-data write.
#[derive(Clone, Debug)]
pub struct Commit {
    pub key: String,
    pub worker: usize,
    /// What the writing host was labelled with (see [`FakeHost::label`]).
    pub label: u8,
    pub value: Vec<u8>,
}

impl SharedData {
    pub fn get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.gets += 1;
        self.values.get(key).cloned()
    }

    /// The value without counting a read (for assertions).
    pub fn peek(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key).map(|(v, _)| v.as_slice())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    pub fn set(&mut self, key: &str, value: &[u8], cas: u32, worker: usize, label: u8) -> bool {
        self.sets += 1;
        let next = match self.last_cas.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        match self.values.get_mut(key) {
            Some(entry) => {
                if cas != 0 && (self.always_mismatch || self.conflicts > 0 || cas != entry.1) {
                    self.conflicts = self.conflicts.saturating_sub(1);
                    *self.mismatches.entry(worker).or_default() += 1;
                    return false;
                }
                // An empty value keeps the key and still takes a new cas.
                *entry = (value.to_vec(), next);
            }
            // A missing key is created whatever the cas: the first write cannot be guarded.
            None => {
                self.values.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        self.last_cas = next;
        if self.record {
            self.commits.push(Commit { key: key.to_string(), worker, label, value: value.to_vec() });
        }
        true
    }
}

/// Envoy's stats: process-wide by name, so every VM (worker, reload) that defines a name gets the
/// same stat. The id is the index of the name.
#[derive(Debug, Default)]
pub struct Stats {
    pub names: Vec<String>,
    values: HashMap<MetricId, i64>,
    /// Stats rejected by Envoy's stats matcher: writes are ignored and every value reads 0.
    pub rejected: bool,
    pub reads: usize,
}

impl Stats {
    pub fn define(&mut self, name: &str) -> MetricId {
        match self.names.iter().position(|n| n == name) {
            Some(id) => id as MetricId,
            None => {
                self.names.push(name.to_string());
                (self.names.len() - 1) as MetricId
            }
        }
    }

    /// A stat's value by full name (0 when never written).
    pub fn value(&self, name: &str) -> i64 {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|id| self.values.get(&(id as MetricId)).copied())
            .unwrap_or(0)
    }

    /// Whether a stat of this name was defined.
    pub fn defined(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    fn add(&mut self, id: MetricId, by: i64) {
        if !self.rejected {
            let v = self.values.entry(id).or_default();
            *v = v.wrapping_add(by);
        }
    }

    fn set(&mut self, id: MetricId, value: u64) {
        if !self.rejected {
            self.values.insert(id, value as i64);
        }
    }

    fn read(&mut self, id: MetricId) -> Option<u64> {
        self.reads += 1;
        self.names.get(id as usize)?;
        Some(self.values.get(&id).copied().unwrap_or(0) as u64)
    }
}

/// What Envoy keeps for the whole process.
#[derive(Debug, Default)]
pub struct Proxy {
    pub shared: SharedData,
    pub stats: Stats,
    /// The application log: worker, level, line.
    pub logs: Vec<(usize, LogLevel, String)>,
    /// Nanoseconds since the epoch.
    pub clock: u64,
    /// How far each clock reading moves the clock on (0: a frozen clock the test moves).
    pub clock_step: u64,
}

/// A handle on the process, shared by the hosts of all workers.
pub type ProxyRef = Arc<Mutex<Proxy>>;

/// Status, headers and body of a local reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub grpc_status: Option<u32>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

/// Which host call a [`Gate`] is asked to let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
    /// A read or increment of a watched stat (see [`FakeHost::watch`]).
    Stat,
}

/// An interleaving point: called (without the proxy locked) before each shared-data call.
pub type Gate = Box<dyn FnMut(usize, Op) + Send>;

/// One worker's host for one stream.
#[derive(Default)]
pub struct FakeHost {
    pub proxy: ProxyRef,
    pub worker: usize,
    /// Recorded with every shared-data write this host makes (see [`Commit`]).
    pub label: u8,
    pub request: Vec<(String, Vec<u8>)>,
    pub response: Vec<(String, Vec<u8>)>,
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Properties by dotted path (`xds.route_name`).
    pub properties: Vec<(String, Vec<u8>)>,
    pub state: Vec<(String, Vec<u8>)>,
    /// The request body chunk being delivered.
    pub body: Vec<u8>,
    /// Request body bytes dropped instead of forwarded, and drops of less than the whole chunk.
    pub dropped: usize,
    pub partial_drops: usize,
    pub local_replies: Vec<LocalReply>,
    /// Header and filter-state writes and body drops fail.
    pub fail_writes: bool,
    pub header_reads: usize,
    pub property_reads: Vec<String>,
    pub gate: Option<Gate>,
    /// Stat names (substrings) whose reads and increments are interleaving points.
    pub watch: Option<&'static str>,
    /// HTTP calls sent (the token of call `i` is `i + 1`), and whether sending fails.
    pub calls: Vec<Callout>,
    pub fail_calls: bool,
    /// Paused requests resumed.
    pub resumed: usize,
    /// Histogram values recorded.
    pub recorded: Vec<(MetricId, u64)>,
}

impl FakeHost {
    /// A host on a proxy of its own.
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    /// Worker `worker`'s host on `proxy`.
    pub fn worker(proxy: &ProxyRef, worker: usize) -> FakeHost {
        FakeHost { proxy: proxy.clone(), worker, ..FakeHost::default() }
    }

    pub fn with_request(headers: &[(&str, &[u8])]) -> FakeHost {
        let mut host = FakeHost::new();
        host.set_request(headers);
        host
    }

    /// A new stream on the same worker and proxy.
    pub fn next_stream(&self) -> FakeHost {
        FakeHost { proxy: self.proxy.clone(), worker: self.worker, label: self.label, ..FakeHost::default() }
    }

    pub fn set_request(&mut self, headers: &[(&str, &[u8])]) {
        self.request = headers.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
    }

    pub fn proxy(&self) -> MutexGuard<'_, Proxy> {
        self.proxy.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(list: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
        list.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn replace(list: &mut Vec<(String, Vec<u8>)>, name: &str, value: &[u8]) {
        list.retain(|(k, _)| k != name);
        list.push((name.to_string(), value.to_vec()));
    }

    pub fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        FakeHost::find(&self.request, name)
    }

    pub fn response_header_value(&self, name: &str) -> Option<Vec<u8>> {
        FakeHost::find(&self.response, name)
    }

    /// Replaces a request header as a later filter would (e.g. Envoy's tracer at the router).
    pub fn rewrite_request_header(&mut self, name: &str, value: &[u8]) {
        FakeHost::replace(&mut self.request, name, value);
    }

    /// Sets a response header line as the upstream would (e.g. `:status`).
    pub fn respond(&mut self, headers: &[(&str, &[u8])]) {
        for (k, v) in headers {
            FakeHost::replace(&mut self.response, k, v);
        }
    }

    pub fn set_property(&mut self, path: &str, value: &[u8]) {
        FakeHost::replace(&mut self.properties, path, value);
    }

    pub fn state_str(&self, key: &str) -> Option<String> {
        FakeHost::find(&self.state, key).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// A stat's value by full name.
    pub fn counter(&self, name: &str) -> i64 {
        self.proxy().stats.value(name)
    }

    /// Every application-log line of the process (all workers), in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.proxy().logs.iter().map(|(_, level, line)| (*level, line.clone())).collect()
    }

    pub fn clock(&self) -> u64 {
        self.proxy().clock
    }

    pub fn set_clock(&self, ns: u64) {
        self.proxy().clock = ns;
    }

    pub fn advance(&self, ns: u64) {
        let mut p = self.proxy();
        p.clock = p.clock.saturating_add(ns);
    }

    pub fn shared_gets(&self) -> usize {
        self.proxy().shared.gets
    }

    pub fn shared_sets(&self) -> usize {
        self.proxy().shared.sets
    }

    pub fn metric_reads(&self) -> usize {
        self.proxy().stats.reads
    }

    /// The id of a stat, defining it: what `on_configure` hands [`crate::filter::Metrics::define`].
    pub fn define_metric(&self, name: &str) -> MetricId {
        self.proxy().stats.define(name)
    }

    fn pass(&mut self, op: Op) {
        let worker = self.worker;
        if let Some(gate) = &mut self.gate {
            gate(worker, op);
        }
    }

    fn watched(&self, metric: MetricId) -> bool {
        let Some(pattern) = self.watch else {
            return false;
        };
        self.proxy().stats.names.get(metric as usize).is_some_and(|n| n.contains(pattern))
    }
}

impl Host for FakeHost {
    fn request_headers(&mut self) -> HeaderMap {
        self.header_reads += 1;
        HeaderMap::from_pairs(&self.request)
    }
    fn set_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        if self.fail_writes {
            return Err(HostError("cannot set request header"));
        }
        FakeHost::replace(&mut self.request, name, value);
        Ok(())
    }
    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        if self.fail_writes {
            return Err(HostError("cannot remove request header"));
        }
        self.request.retain(|(k, _)| k != name);
        Ok(())
    }
    fn set_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        FakeHost::replace(&mut self.response, name, value);
        Ok(())
    }
    fn add_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.response.push((name.to_string(), value.to_vec()));
        Ok(())
    }
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        let value = FakeHost::find(&self.properties, &key);
        self.property_reads.push(key);
        value
    }
    fn set_filter_state(&mut self, key: &str, value: &[u8]) -> Result<(), HostError> {
        FakeHost::replace(&mut self.state, key, value);
        Ok(())
    }
    fn increment(&mut self, metric: MetricId, by: i64) {
        if self.watched(metric) {
            self.pass(Op::Stat);
        }
        self.proxy().stats.add(metric, by);
    }
    fn metric(&mut self, metric: MetricId) -> Option<u64> {
        if self.watched(metric) {
            self.pass(Op::Stat);
        }
        self.proxy().stats.read(metric)
    }
    fn set_gauge(&mut self, metric: MetricId, value: u64) {
        self.proxy().stats.set(metric, value);
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        let worker = self.worker;
        self.proxy().logs.push((worker, level, message.to_string()));
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        FakeHost::find(&self.response, name)
    }
    fn response_trailer(&mut self, name: &str) -> Option<Vec<u8>> {
        FakeHost::find(&self.trailers, name)
    }
    fn now(&mut self) -> u64 {
        let mut p = self.proxy();
        p.clock = p.clock.saturating_add(p.clock_step);
        p.clock
    }
    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        self.pass(Op::Get);
        Ok(self.proxy().shared.get(key))
    }
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, HostError> {
        self.pass(Op::Set);
        let (worker, label) = (self.worker, self.label);
        Ok(self.proxy().shared.set(key, value, cas, worker, label))
    }
    fn send_local_reply(&mut self, reply: &Reply) -> Result<(), HostError> {
        let headers =
            reply.headers.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec())).collect();
        self.local_replies.push(LocalReply {
            status: reply.status,
            grpc_status: reply.grpc_status,
            headers,
            body: reply.body.clone(),
        });
        Ok(())
    }
    fn request_body(&mut self, max: usize) -> Option<Vec<u8>> {
        Some(self.body.iter().take(max).copied().collect())
    }
    fn drop_request_body(&mut self, size: usize) -> Result<(), HostError> {
        if self.fail_writes {
            return Err(HostError("cannot drop request body"));
        }
        if size != self.body.len() {
            self.partial_drops += 1;
        }
        self.dropped += size.min(self.body.len());
        self.body.clear();
        Ok(())
    }

    fn http_call(&mut self, call: &Callout) -> Result<u32, HostError> {
        if self.fail_calls {
            return Err(HostError("cannot dispatch HTTP call"));
        }
        self.calls.push(call.clone());
        Ok(self.calls.len() as u32)
    }

    fn resume_request(&mut self) -> Result<(), HostError> {
        self.resumed += 1;
        Ok(())
    }

    fn record(&mut self, metric: MetricId, value: u64) {
        self.recorded.push((metric, value));
    }
}

/// A [`crate::filter::Plugin`] for `json` as a worker of `host`'s proxy configures it, metrics
/// defined by name on the proxy (call `init_shared` to create the shared data as `on_configure`
/// does). Panics on an invalid configuration (tests).
#[allow(clippy::panic)]
pub fn plugin(json: &str, host: &mut FakeHost, name: &str) -> crate::filter::Plugin {
    let config = match crate::config::parse(json.as_bytes()) {
        Ok(config) => config,
        Err(errors) => panic!("invalid test configuration: {errors:?}"),
    };
    let metrics = crate::filter::Metrics::define(&config, |_, stat| Some(host.define_metric(stat)));
    crate::filter::Plugin::new(config, metrics, name)
}
