//! Correlation ids (docs/behaviour.md) in a real Envoy: the correlation id reaches the upstream, comes back downstream
//! (local replies included), lands in the access log through filter state, and in meshguard's
//! own JSON line when `log.requests` is on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::envoy::Envoy;
use support::http::{send, Request};
use support::upstream::Upstream;

fn is_uuid4(id: &str) -> bool {
    let b = id.as_bytes();
    id.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && b"89ab".contains(&b[19])
        && id.bytes().all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[test]
fn valid_id_is_kept_end_to_end() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("{}", upstream.port);
    let response = send(envoy.port, &Request::get("/orders/1").header("x-correlation-id", "order-42")).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-correlation-id").as_deref(), Some("order-42"));
    assert_eq!(upstream.last().unwrap().header("x-correlation-id").as_deref(), Some("order-42"));
    let line = envoy.access_log_for("order-42");
    // The default rule is not written to the filter state (one host call less per request):
    // the access log prints null for it.
    assert_eq!(line["rule"], serde_json::Value::Null);
    assert_eq!(line["status"], 200);
    envoy.wait_metric(r#"meshguard_correlation_total{outcome="kept"}"#, 1.0);
}

#[test]
fn missing_id_is_generated_once_for_upstream_downstream_and_access_log() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("{}", upstream.port);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let response = send(envoy.port, &Request::get("/")).unwrap();
        let id = response.header("x-correlation-id").expect("echoed id");
        assert!(is_uuid4(&id), "{id}");
        assert_eq!(upstream.last().unwrap().header("x-correlation-id"), Some(id.clone()));
        envoy.access_log_for(&id);
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "generated ids must differ");
    envoy.wait_metric(r#"meshguard_correlation_total{outcome="generated"}"#, 5.0);
}

#[test]
fn invalid_id_is_replaced_and_never_logged_raw() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"log": {"requests": true}}"#, upstream.port);
    let too_long = "a".repeat(129);
    let hostile: [&[u8]; 4] = [b"has space zq-evil-marker", b"caf\xe9", too_long.as_bytes(), b"tab\tzq-evil-marker"];
    for value in hostile {
        let response = send(envoy.port, &Request::get("/").header("x-correlation-id", value)).unwrap();
        assert_eq!(response.status, 200);
        let id = response.header("x-correlation-id").unwrap();
        assert!(is_uuid4(&id), "{value:?} -> {id}");
        assert_eq!(upstream.last().unwrap().header("x-correlation-id"), Some(id.clone()));
        envoy.access_log_for(&id);
    }
    envoy.wait_metric(r#"meshguard_correlation_total{outcome="replaced_invalid"}"#, 4.0);
    let log = envoy.log();
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains("zq-evil-marker")).collect();
    assert!(leaks.is_empty(), "raw invalid id reached the log: {leaks:?}");
}

#[test]
fn quotes_in_a_valid_id_are_escaped_in_the_log_line() {
    support::require_envoy!();
    // Visible ASCII is a valid id, quotes and braces included: kept, and the line stays JSON.
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"log": {"requests": true}}"#, upstream.port);
    let id = r#"x"}{"injected":1,"\"#;
    let response = send(envoy.port, &Request::get("/").header("x-correlation-id", id)).unwrap();
    assert_eq!(response.header("x-correlation-id").as_deref(), Some(id));
    let line = envoy.wait_for("request line", 10, |e| e.meshguard_lines().into_iter().find(|l| l.contains("injected")));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["correlation_id"], id);
    assert!(v.get("injected").is_none());
}

#[test]
fn envoy_local_replies_carry_the_id() {
    support::require_envoy!();
    // Nothing listens on the upstream port: Envoy answers 503 itself (UF).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let envoy = Envoy::start(r#"{"log": {"requests": true}}"#, port);
    let response = send(envoy.port, &Request::get("/").header("x-correlation-id", "lost-1")).unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.header("x-correlation-id").as_deref(), Some("lost-1"));
    let line = envoy.access_log_for("lost-1");
    assert_eq!(line["response_flags"], "UF");
    let own = envoy
        .wait_for("meshguard log line", 10, |e| e.meshguard_lines().into_iter().find(|l| l.contains("\"lost-1\"")));
    let own: serde_json::Value = serde_json::from_str(&own).unwrap();
    assert_eq!(own["status"], 503);
    assert_eq!(own["response_flags"], "UF");
}

#[test]
fn echo_downstream_false_keeps_the_id_upstream_only() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"correlation": {"echo_downstream": false, "header": "x-trace-ref"}}"#, upstream.port);
    let response = send(envoy.port, &Request::get("/")).unwrap();
    assert_eq!(response.header("x-trace-ref"), None);
    let id = upstream.last().unwrap().header("x-trace-ref").expect("id upstream");
    assert!(is_uuid4(&id));
    assert_eq!(upstream.last().unwrap().header("x-correlation-id"), None);
    envoy.access_log_for(&id);
}

#[test]
fn request_id_generator_uses_envoys_request_id_unchanged() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"correlation": {"generator": "request_id"}}"#, upstream.port);
    // The caller's x-request-id is preserved (preserve_external_request_id) and not rewritten
    // (pack_trace_reason: false), so it becomes the correlation id as sent.
    let rid = "3f0c8f4e-9a63-4b8e-a1c6-2d2b6e1f7a10";
    let response = send(envoy.port, &Request::get("/").header("x-request-id", rid)).unwrap();
    assert_eq!(response.header("x-correlation-id").as_deref(), Some(rid));
    assert_eq!(upstream.last().unwrap().header("x-correlation-id").as_deref(), Some(rid));
    // Without one, Envoy makes a request id and the correlation id is that id.
    let response = send(envoy.port, &Request::get("/")).unwrap();
    let id = response.header("x-correlation-id").unwrap();
    assert_eq!(upstream.last().unwrap().header("x-request-id"), Some(id.clone()));
}

#[test]
fn trace_id_generator_makes_a_trace_id_shaped_id() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"correlation": {"generator": "trace_id"}}"#, upstream.port);
    let response = send(envoy.port, &Request::get("/")).unwrap();
    let id = response.header("x-correlation-id").unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
}

#[test]
fn request_log_line_has_every_field_and_hides_the_query() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let config = r#"{"log": {"requests": true, "level": "warn"},
                     "routes": [{"name": "payments", "match": {"route_name": "payments-v1"}}]}"#;
    let envoy = Envoy::start(config, upstream.port);
    let response = send(
        envoy.port,
        &Request::post("/charge?status=201&card=4111")
            .header("x-correlation-id", "pay-1")
            .header("host", "payments.prod:8080"),
    )
    .unwrap();
    assert_eq!(response.status, 201);
    let line = envoy.wait_for("meshguard request line", 10, |e| {
        e.log().lines().find(|l| l.contains("[warning]") && l.contains("\"pay-1\"")).map(str::to_string)
    });
    let json = line.split_once("meshguard: ").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["correlation_id"], "pay-1");
    assert_eq!(v["rule"], "payments");
    assert_eq!(v["route_name"], "payments-v1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/charge");
    assert_eq!(v["authority"], "payments.prod:8080");
    assert_eq!(v["status"], 201);
    assert_eq!(v["upstream_cluster"], "demo_upstream");
    assert_eq!(v["response_flags"], "-");
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    for key in ["trace_id", "span_id", "event_id", "circuit", "dedup"] {
        assert!(v.get(key).is_some(), "{key} missing in {json}");
    }
    assert!(!json.contains("4111"), "query leaked: {json}");
}

#[test]
fn request_log_can_include_the_query() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"log": {"requests": true, "include_query": true}}"#, upstream.port);
    send(envoy.port, &Request::get("/a?b=c").header("x-correlation-id", "q-1")).unwrap();
    let line = envoy.wait_for("request line", 10, |e| e.meshguard_lines().into_iter().find(|l| l.contains("\"q-1\"")));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["path"], "/a?b=c");
}

#[test]
fn no_request_line_by_default() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("{}", upstream.port);
    send(envoy.port, &Request::get("/").header("x-correlation-id", "quiet-1")).unwrap();
    // The access log line proves the stream completed; meshguard wrote nothing of its own.
    envoy.access_log_for("quiet-1");
    assert!(envoy.meshguard_lines().iter().all(|l| !l.contains("quiet-1")), "{:?}", envoy.meshguard_lines());
}
