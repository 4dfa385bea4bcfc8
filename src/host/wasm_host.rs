//! [`Host`] on real proxy-wasm host calls.

use proxy_wasm::types::{LogLevel as WasmLevel, MapType};

use std::time::Duration;

use super::abi;
use crate::config::LogLevel;
use crate::filter::{Callout, Host, HostError, MetricId};
use crate::headers::HeaderMap;
use crate::reply::Reply;

/// Host calls for the current stream (proxy-wasm sets the effective context before each callback).
pub struct WasmHost;

impl Host for WasmHost {
    fn request_headers(&mut self) -> HeaderMap {
        HeaderMap::from_serialized(abi::header_map(MapType::HttpRequestHeaders).unwrap_or_default())
    }

    fn set_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        abi::set_header(MapType::HttpRequestHeaders, name, Some(value))
            .map_err(|_| HostError("cannot set request header"))
    }

    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        abi::set_header(MapType::HttpRequestHeaders, name, None).map_err(|_| HostError("cannot remove request header"))
    }

    fn add_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        abi::add_header(MapType::HttpResponseHeaders, name, value).map_err(|_| HostError("cannot add response header"))
    }

    fn set_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        abi::set_header(MapType::HttpResponseHeaders, name, Some(value))
            .map_err(|_| HostError("cannot set response header"))
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        abi::property(path)
    }

    fn set_filter_state(&mut self, key: &str, value: &[u8]) -> Result<(), HostError> {
        abi::set_property(key, value).map_err(|_| HostError("cannot set filter state"))
    }

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        abi::header_value(MapType::HttpResponseHeaders, name)
    }

    fn response_trailer(&mut self, name: &str) -> Option<Vec<u8>> {
        abi::header_value(MapType::HttpResponseTrailers, name)
    }

    fn now(&mut self) -> u64 {
        abi::now_ns()
    }

    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        abi::get_shared_data(key).map_err(|_| HostError("cannot read shared data"))
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, HostError> {
        abi::set_shared_data(key, value, cas).map_err(|_| HostError("cannot write shared data"))
    }

    fn send_local_reply(&mut self, reply: &Reply) -> Result<(), HostError> {
        // A gRPC status makes Envoy answer a gRPC request with a trailers-only gRPC response.
        let grpc_status = reply.grpc_status.and_then(|s| i32::try_from(s).ok()).unwrap_or(-1);
        abi::send_local_response(
            reply.status,
            "meshguard_local_reply",
            reply.headers.serialized(),
            &reply.body,
            grpc_status,
        )
        .map_err(|_| HostError("cannot send local reply"))
    }

    fn request_body(&mut self, max: usize) -> Option<Vec<u8>> {
        abi::request_body(max)
    }

    fn drop_request_body(&mut self, size: usize) -> Result<(), HostError> {
        // Replaces bytes [0, size) of the chunk with nothing; `size` is the chunk's length, as
        // Envoy drains exactly that many.
        abi::set_request_body(0, size, &[]).map_err(|_| HostError("cannot drop request body"))
    }

    fn http_call(&mut self, call: &Callout) -> Result<u32, HostError> {
        let headers = vec![
            (":method", "POST"),
            (":path", call.path),
            (":authority", call.authority.as_str()),
            ("content-type", "application/json"),
        ];
        let timeout = Duration::from_millis(u64::from(call.timeout_ms));
        // The SDK's HTTP dispatch returns BadArgument (unknown cluster, bad headers) and
        // InternalFailure as errors: the only statuses Envoy's httpCall answers besides Ok. (Its
        // gRPC dispatch panics on one Envoy can return; it is not used.) It registers the token
        // under the callback's context, to which the answer comes.
        proxy_wasm::hostcalls::dispatch_http_call(&call.cluster, headers, Some(&call.body), vec![], timeout)
            .map_err(|_| HostError("cannot send the call to the dedup store (unknown cluster?)"))
    }

    fn resume_request(&mut self) -> Result<(), HostError> {
        abi::continue_request().map_err(|_| HostError("cannot resume the request"))
    }

    fn record(&mut self, metric: MetricId, value: u64) {
        abi::record_metric(metric, value);
    }

    fn set_gauge(&mut self, metric: MetricId, value: u64) {
        abi::record_metric(metric, value);
    }

    fn increment(&mut self, metric: MetricId, by: i64) {
        abi::increment_metric(metric, by);
    }

    fn metric(&mut self, metric: MetricId) -> Option<u64> {
        abi::metric(metric)
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        abi::log(wasm_level(level), message);
    }
}

pub fn wasm_level(level: LogLevel) -> WasmLevel {
    match level {
        LogLevel::Trace => WasmLevel::Trace,
        LogLevel::Debug => WasmLevel::Debug,
        LogLevel::Info => WasmLevel::Info,
        LogLevel::Warn => WasmLevel::Warn,
        LogLevel::Error => WasmLevel::Error,
        LogLevel::Critical => WasmLevel::Critical,
    }
}
