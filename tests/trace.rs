//! Trace context (docs/behaviour.md) in a real Envoy without a tracer: what the upstream receives, what the client gets
//! back, what the access log and the stats say.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::envoy::Envoy;
use support::http::{send, Request};
use support::upstream::Upstream;

const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";

/// (trace-id, parent-id, flags) of a valid version-00 traceparent.
fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!((p[0], p[1].len(), p[2].len(), p[3].len()), ("00", 32, 16, 2), "{tp}");
    assert!(tp.bytes().all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{tp}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

#[test]
fn new_trace_reaches_upstream_access_log_and_stats() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("{}", upstream.port);
    let response = send(envoy.port, &Request::get("/orders").header("tracestate", "orphan=1")).unwrap();
    assert_eq!(response.status, 200);
    let got = upstream.last().unwrap();
    let tps = got.header_all("traceparent");
    assert_eq!(tps.len(), 1, "{tps:?}");
    let (trace_id, span_id, flags) = parts(&tps[0]);
    assert_eq!(flags, "03", "sampled, random");
    assert!(got.header("tracestate").is_none(), "tracestate without traceparent is dropped");
    let id = response.header("x-correlation-id").unwrap();
    let line = envoy.access_log_for(&id);
    assert_eq!((line["trace_id"].as_str(), line["span_id"].as_str()), (Some(&*trace_id), Some(&*span_id)));
    envoy.wait_metric(r#"meshguard_trace_total{outcome="started"}"#, 1.0);
    assert!(!envoy.meshguard_lines().iter().any(|l| l.contains("Envoy tracer")), "no tracer, no warning");
}

#[test]
fn valid_traceparent_is_propagated_unchanged_with_combined_tracestate() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("{}", upstream.port);
    let request =
        Request::get("/").header("traceparent", TP).header("tracestate", "a=1,b=2").header("tracestate", "c=3");
    send(envoy.port, &request).unwrap();
    let got = upstream.last().unwrap();
    assert_eq!(got.header_all("traceparent"), vec![TP]);
    assert_eq!(got.header_all("tracestate"), vec!["a=1,b=2,c=3"]);
    envoy.wait_metric(r#"meshguard_trace_total{outcome="propagated"}"#, 1.0);
}

#[test]
fn hop_mode_gives_each_call_its_own_parent_id() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"trace": {"mode": "hop"}}"#, upstream.port);
    let mut parents = std::collections::HashSet::new();
    for _ in 0..3 {
        send(envoy.port, &Request::get("/").header("traceparent", TP)).unwrap();
        let (trace_id, span_id, flags) = parts(&upstream.last().unwrap().header("traceparent").unwrap());
        assert_eq!((trace_id.as_str(), flags.as_str()), ("12345678901234567890123456789012", "01"));
        assert_ne!(span_id, "1234567890123456");
        parents.insert(span_id);
    }
    assert_eq!(parents.len(), 3);
}

#[test]
fn invalid_and_duplicated_traceparents_restart_the_trace() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("{}", upstream.port);
    let bad = "00-12345678901234567890123456789012-1234567890123456-01.";
    let mut not_utf8 = TP.as_bytes().to_vec();
    not_utf8[5] = 0xe9;
    let requests = [
        Request::get("/").header("traceparent", bad).header("tracestate", "a=1"),
        Request::get("/").header("traceparent", TP).header("traceparent", TP),
        Request::get("/").header("traceparent", not_utf8),
    ];
    for request in &requests {
        assert_eq!(send(envoy.port, request).unwrap().status, 200);
        let got = upstream.last().unwrap();
        let tps = got.header_all("traceparent");
        assert_eq!(tps.len(), 1, "{tps:?}");
        assert!(!tps[0].contains("12345678901234567890123456789012"), "{tps:?}");
        assert!(got.header("tracestate").is_none());
    }
    envoy.wait_metric(r#"meshguard_trace_total{outcome="restarted_invalid"}"#, 3.0);
    assert!(envoy.crash_lines().is_empty(), "{:?}", envoy.crash_lines());
}

#[test]
fn b3_callers_are_joined_to_the_same_trace() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("{}", upstream.port);
    let single = Request::get("/").header("b3", "48485a3953bb6124-a2fb4a1d1a96d312-1");
    send(envoy.port, &single).unwrap();
    assert_eq!(
        upstream.last().unwrap().header("traceparent").as_deref(),
        Some("00-000000000000000048485a3953bb6124-a2fb4a1d1a96d312-01")
    );
    let multi = Request::get("/")
        .header("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")
        .header("x-b3-spanid", "a2fb4a1d1a96d312")
        .header("x-b3-sampled", "0");
    send(envoy.port, &multi).unwrap();
    let got = upstream.last().unwrap();
    assert_eq!(got.header("traceparent").as_deref(), Some("00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-00"));
    assert_eq!(got.header("x-b3-traceid").as_deref(), Some("463ac35c9f6413ad48485a3953bb6124"), "B3 left in place");
    envoy.wait_metric(r#"meshguard_trace_total{outcome="from_b3"}"#, 2.0);
}

#[test]
fn traceresponse_and_server_timing_reach_the_client() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"trace": {"traceresponse": true}}"#, upstream.port);
    let response = send(envoy.port, &Request::get("/").header("traceparent", TP)).unwrap();
    assert_eq!(response.header("traceresponse").as_deref(), Some(TP));
    drop(envoy);

    let envoy = Envoy::start(r#"{"trace": {"traceresponse": "server-timing"}}"#, upstream.port);
    let response = send(envoy.port, &Request::get("/?server_timing=db;dur=5")).unwrap();
    let tp = upstream.last().unwrap().header("traceparent").unwrap();
    let timings = response.header_all("server-timing");
    assert!(timings.contains(&format!("trace;desc=\"{tp}\"")), "{timings:?}");
    assert!(response.header("traceresponse").is_none());
}

#[test]
fn correlation_id_can_be_the_trace_id() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"correlation": {"generator": "trace_id"}}"#, upstream.port);
    let response = send(envoy.port, &Request::get("/")).unwrap();
    let got = upstream.last().unwrap();
    let (trace_id, _, _) = parts(&got.header("traceparent").unwrap());
    assert_eq!(got.header("x-correlation-id").as_deref(), Some(&*trace_id));
    assert_eq!(response.header("x-correlation-id").as_deref(), Some(&*trace_id));
}

#[test]
fn ce_traceparent_is_never_touched() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"trace": {"mode": "hop"}}"#, upstream.port);
    let ce = "00-abcdefabcdefabcdefabcdefabcdefab-abcdefabcdefabcd-01";
    send(envoy.port, &Request::post("/events").header("ce-traceparent", ce).header("traceparent", TP)).unwrap();
    let got = upstream.last().unwrap();
    assert_eq!(got.header_all("ce-traceparent"), vec![ce]);
    assert_ne!(got.header("traceparent").as_deref(), Some(TP));
}
