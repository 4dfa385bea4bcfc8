//! What the request flow needs from the proxy. `host/` implements it with proxy-wasm calls (wasm32
//! only); `testing::FakeHost` is the one test double.

use crate::config::LogLevel;
use crate::headers::HeaderMap;
use crate::reply::Reply;

/// A metric id handed out by the host.
pub type MetricId = u32;

/// A host call that did not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

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
    /// A response trailer (first line), e.g. `grpc-status`.
    fn response_trailer(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Nanoseconds since the epoch, from the proxy's clock.
    fn now(&mut self) -> u64;
    /// A shared-data value and its CAS token; `Ok(None)` when the key does not exist.
    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;
    /// Stores `value` if the CAS token is still `cas` (0: unconditionally); `Ok(false)` on a mismatch.
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, HostError>;
    /// Answers the request locally (the upstream is never called).
    fn send_local_reply(&mut self, reply: &Reply) -> Result<(), HostError>;
    /// The first `max` bytes of the request body chunk being delivered.
    fn request_body(&mut self, max: usize) -> Option<Vec<u8>>;
    /// Empties the request body chunk being delivered (its first `size` bytes, all of it), so
    /// that continuing forwards nothing.
    fn drop_request_body(&mut self, size: usize) -> Result<(), HostError>;
    /// Sends an HTTP call to an Envoy cluster; its answer comes to the context that sent it (a
    /// stream's call is cancelled when the stream ends). Returns the call's token.
    fn http_call(&mut self, call: &Callout) -> Result<u32, HostError>;
    /// Lets a request paused while a call was out go on.
    fn resume_request(&mut self) -> Result<(), HostError>;
    /// Records a value in a histogram.
    fn record(&mut self, metric: MetricId, value: u64);
}

/// An HTTP call (a POST with a JSON body) from the filter to an Envoy cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    pub cluster: String,
    pub authority: String,
    pub path: &'static str,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

/// Attempts at a compare-and-swap before the request fails open (a bounded loop, never a spin).
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// Read a shared-data value, change it, compare-and-swap it back; again on a mismatch, at most
/// [`MAX_CAS_ATTEMPTS`] times. A value that does not decode counts as `fresh()`. No write when
/// `change` left the value as it was. Returns `change`'s result and the value as left.
pub fn cas_update<T: Clone + PartialEq, R>(
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
pub fn int(bytes: Option<Vec<u8>>) -> Option<u64> {
    Some(u64::from_le_bytes(bytes?.try_into().ok()?))
}
