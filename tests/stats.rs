//! Stats (docs/behaviour.md) in a real Envoy: meshguard's counters in /stats/prometheus with the rule (and
//! outcome) as Prometheus labels, through the tag extraction of the shipped bootstrap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::envoy::Envoy;
use support::http::{send, Request};
use support::upstream::Upstream;

const RULES: &str = r#"{"routes": [
    {"name": "payments", "match": {"route_name": "payments-v1", "methods": ["POST"]}},
    {"name": "health", "match": {"prefix": "/healthz"}}
]}"#;

#[test]
fn requests_are_counted_per_rule_with_a_rule_label() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(RULES, upstream.port);
    for _ in 0..3 {
        assert_eq!(send(envoy.port, &Request::post("/charge")).unwrap().status, 200);
    }
    for _ in 0..2 {
        send(envoy.port, &Request::get("/healthz")).unwrap();
    }
    // GET /charge: route payments-v1 but not POST, so the default rule.
    send(envoy.port, &Request::get("/charge")).unwrap();
    envoy.wait_metric(r#"meshguard_requests_total{rule="payments"}"#, 3.0);
    envoy.wait_metric(r#"meshguard_requests_total{rule="health"}"#, 2.0);
    envoy.wait_metric(r#"meshguard_requests_total{rule="default"}"#, 1.0);
    let prom = envoy.prometheus();
    assert!(prom.contains("# TYPE meshguard_requests_total counter"), "{prom}");
    assert!(!prom.contains("rule=.="), "tag left in a stat name:\n{prom}");
}

#[test]
fn correlation_outcomes_and_errors_are_exported() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("{}", upstream.port);
    send(envoy.port, &Request::get("/").header("x-correlation-id", "ok-1")).unwrap();
    send(envoy.port, &Request::get("/")).unwrap();
    send(envoy.port, &Request::get("/").header("x-correlation-id", "not ok")).unwrap();
    envoy.wait_metric(r#"meshguard_correlation_total{outcome="kept"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_correlation_total{outcome="generated"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_correlation_total{outcome="replaced_invalid"}"#, 1.0);
    // Defined at configuration time, so it is there (at zero) before anything goes wrong.
    assert_eq!(envoy.metric("meshguard_errors_total{}"), Some(0.0), "{}", envoy.prometheus());
}

#[test]
fn counts_are_exact_across_two_workers() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(RULES, upstream.port);
    let port = envoy.port;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                (0..25).filter(|_| send(port, &Request::get("/healthz")).unwrap().status == 200).count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 100);
    envoy.wait_metric(r#"meshguard_requests_total{rule="health"}"#, 100.0);
}
