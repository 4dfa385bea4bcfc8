//! Shared helpers of the integration tests: a raw HTTP client, a test upstream, a real Envoy
//! running meshguard, and real etcd members. Each test binary uses a part of them.
#![allow(dead_code)]

pub mod envoy;
pub mod etcd;
pub mod http;
pub mod upstream;
pub mod xds;

/// The first line of every test that starts a real Envoy: returns from the test (which passes)
/// after one line saying what to run first when meshguard.wasm is not built or `envoy` is not
/// installed; fails instead when `MESHGUARD_REQUIRE_ENVOY=1`. See [`envoy::available`].
#[allow(unused_macros)]
macro_rules! require_envoy {
    () => {
        if !$crate::support::envoy::available() {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_envoy;

/// The first line of every test that starts etcd (after `require_envoy!` when it also starts
/// Envoy): returns from the test (which passes) after one line saying what to install when `etcd`
/// is missing; fails instead when `MESHGUARD_REQUIRE_ENVOY=1`. See [`etcd::available`].
#[allow(unused_macros)]
macro_rules! require_etcd {
    () => {
        if !$crate::support::etcd::available() {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_etcd;
