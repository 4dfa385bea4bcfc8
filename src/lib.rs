//! meshguard: a proxy-wasm HTTP filter for Envoy and Istio sidecars.
//!
//! Every decision lives in a pure module (no proxy-wasm, unit-tested on the host and in wasm);
//! `host/` is the thin shell that translates host calls, and exists only in the wasm32-wasip1
//! build.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod breaker;
pub mod config;
pub mod correlation;
pub mod dedup;
pub mod filter;
pub mod headers;
pub mod ids;
pub mod logline;
pub mod metrics;
pub mod reply;
pub mod rules;
pub mod trace;

#[cfg(not(all(target_arch = "wasm32", target_os = "wasi")))]
pub mod testing;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod host;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
proxy_wasm::main! {{
    host::start();
}}
