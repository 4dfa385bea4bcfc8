//! Configuration (docs/behaviour.md) in a real Envoy: a wrong configuration is refused with every
//! error and its JSON path in one log line; the example of every key (tests/data/spec-example.json)
//! and the demo configuration of envoy/envoy.yaml are accepted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::envoy::{Envoy, Options};
use support::http::{send, Request};
use support::upstream::Upstream;

#[test]
fn invalid_configuration_is_refused_with_all_errors_in_one_line() {
    support::require_envoy!();
    let config = r#"{"trace": {"sample_ratio": 2},
                     "routes": [{"name": "a", "circuit_breaker": {"window": {"size": 0}}}, {"name": "a"}],
                     "dedup": {"ttl": "10x"}}"#;
    let log = match Envoy::try_start(Options::new(config, 1)) {
        Ok(envoy) => panic!("Envoy started with an invalid configuration:\n{}", envoy.log()),
        Err(log) => log,
    };
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("meshguard: invalid configuration:")).collect();
    assert!(!lines.is_empty(), "no configuration error logged:\n{log}");
    let line = lines[0];
    let errors = line.split_once("meshguard: invalid configuration: ").unwrap().1;
    assert_eq!(
        errors,
        "trace.sample_ratio: must be from 0 to 1, got 2; \
         dedup.ttl: invalid duration \"10x\" (expected e.g. \"250ms\", \"30s\", \"10m\", \"1h\"); \
         routes[0].circuit_breaker.window.size: must be > 0; \
         routes[1].name: duplicate rule name \"a\" (also routes[0])"
    );
    // Every VM that saw the configuration said the same thing, each in one line.
    assert!(lines.iter().all(|l| l.ends_with(errors)));
}

#[test]
fn malformed_json_is_refused() {
    support::require_envoy!();
    let log = Envoy::try_start(Options::new(r#"{"log": {"requests": tru"#, 1)).err().expect("refused");
    assert!(log.contains("meshguard: invalid configuration: $: not valid JSON: "), "{log}");
}

#[test]
fn spec_example_configuration_is_accepted() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/spec-example.json")).unwrap();
    let envoy = Envoy::start(&config, upstream.port);
    let response = send(envoy.port, &Request::get("/healthz")).unwrap();
    assert_eq!(response.status, 200);
    let id = response.header("x-correlation-id").unwrap();
    assert_eq!(envoy.access_log_for(&id)["rule"], "health");
}

/// The plugin configuration inside envoy/envoy.yaml, as the run command starts it.
fn demo_config() -> String {
    let bootstrap = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/envoy.yaml")).unwrap();
    let begin = bootstrap.find("# test: config-begin").unwrap();
    let end = bootstrap.find("# test: config-end").unwrap();
    let block = &bootstrap[begin..end];
    block.lines().skip(2).map(str::trim).collect::<Vec<_>>().join("\n")
}

#[test]
fn shipped_demo_configuration_is_accepted() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let json = demo_config();
    assert!(meshguard::config::parse(json.as_bytes()).is_ok(), "demo config invalid: {json}");
    let envoy = Envoy::start(&json, upstream.port);
    let response = send(envoy.port, &Request::post("/charge")).unwrap();
    let id = response.header("x-correlation-id").unwrap();
    assert_eq!(envoy.access_log_for(&id)["rule"], "payments");
}

#[test]
fn the_demo_does_what_scripts_run_sh_says() {
    // The "Try:" lines of scripts/run.sh and the README's quick start.
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(&demo_config(), upstream.port);

    // Dedup on rule "payments": the same x-event-id twice; the second is answered from the store.
    let event = || Request::post("/charge").header("x-event-id", "evt-1");
    let first = send(envoy.port, &event()).unwrap();
    assert_eq!((first.status, first.header("x-meshguard-dedup")), (200, None));
    let again = send(envoy.port, &event()).unwrap();
    assert_eq!((again.status, again.header("x-meshguard-dedup").as_deref()), (200, Some("duplicate")));
    assert_eq!(again.json(), serde_json::json!({"dedup": "duplicate", "event_id": "evt-1", "status": 200}));
    assert_eq!(upstream.requests().iter().filter(|r| r.path == "/charge").count(), 1);

    // The breaker on rule "inventory": three upstream 503s in a row open it for 10 s.
    for _ in 0..3 {
        assert_eq!(send(envoy.port, &Request::get("/inventory?status=503")).unwrap().status, 503);
    }
    let open = send(envoy.port, &Request::get("/inventory")).unwrap();
    assert_eq!(open.status, 503);
    assert_eq!(open.header("x-meshguard-circuit").as_deref(), Some("open"));
    assert_eq!(open.header("retry-after").as_deref(), Some("10"));
    assert_eq!(open.json()["error"], "circuit_open");
    assert_eq!(open.json()["rule"], "inventory");
    assert!(!upstream.requests().iter().any(|r| r.path == "/inventory"), "an open circuit answers locally");

    // The trace is continued: the upstream got the caller's traceparent.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    send(envoy.port, &Request::get("/hello").header("traceparent", tp)).unwrap();
    assert_eq!(upstream.last().unwrap().header("traceparent").as_deref(), Some(tp));

    // And the metrics moved.
    envoy.wait_metric(r#"meshguard_dedup_total{rule="payments",outcome="duplicate"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_circuit_rejected_total{rule="inventory"}"#, 1.0);
}

#[test]
fn no_configuration_means_defaults() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("", upstream.port);
    let response = send(envoy.port, &Request::get("/")).unwrap();
    assert_eq!(response.status, 200);
    assert!(response.header("x-correlation-id").is_some());
}
