//! Rules (docs/behaviour.md) in a real Envoy: each match field reads what Envoy knows at request time
//! (`xds.route_name`, `xds.cluster_name`, `:authority` without port, `:path`, `:method`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::envoy::Envoy;
use support::http::{send, Request};
use support::upstream::Upstream;

const RULES: &str = r#"{"routes": [
    {"name": "by-host", "match": {"host": "Orders.Prod"}},
    {"name": "by-prefix-and-method", "match": {"prefix": "/charge", "methods": ["PUT"]}},
    {"name": "by-route", "match": {"route_name": "payments-v1"}},
    {"name": "by-cluster", "match": {"cluster": "demo_upstream", "prefix": "/c/"}}
]}"#;

fn rule_of(envoy: &Envoy, request: Request) -> String {
    let response = send(envoy.port, &request).unwrap();
    assert_eq!(response.status, 200);
    let id = response.header("x-correlation-id").unwrap();
    // The default rule is not written to the filter state: the access log prints null.
    envoy.access_log_for(&id)["rule"].as_str().unwrap_or("default").to_string()
}

#[test]
fn each_match_field_selects_its_rule() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(RULES, upstream.port);
    let cases = [
        (Request::get("/x").header("host", "orders.prod:8080"), "by-host"),
        (Request::get("/charge").header("host", "ORDERS.PROD"), "by-host"),
        (Request::new("PUT", "/charge/1"), "by-prefix-and-method"),
        // POST /charge: not PUT, but the bootstrap's route `payments-v1` matches /charge.
        (Request::post("/charge"), "by-route"),
        (Request::get("/c/1"), "by-cluster"),
        (Request::get("/d/1"), "default"),
    ];
    for (request, expected) in cases {
        let what = format!("{} {}", request.method, request.path);
        assert_eq!(rule_of(&envoy, request), expected, "{what}");
    }
    envoy.wait_metric(r#"meshguard_requests_total{rule="by-host"}"#, 2.0);
    envoy.wait_metric(r#"meshguard_requests_total{rule="by-cluster"}"#, 1.0);
}
