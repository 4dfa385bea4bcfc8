//! Shared helpers of the integration tests: a raw HTTP client, a test upstream, and a real Envoy
//! running meshguard. Each test binary uses a part of them.
#![allow(dead_code)]

pub mod envoy;
pub mod http;
pub mod upstream;
pub mod xds;
