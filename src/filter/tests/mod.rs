//! The request flow against a fake host: what the filter asks for and what it sets.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::config::LogLevel;
use crate::ids::TestEntropy;

use crate::testing::FakeHost;

fn plugin(json: &str, host: &mut FakeHost) -> Plugin {
    crate::testing::plugin(json, host, "test")
}

fn run(json: &str, request: &[(&str, &[u8])]) -> (FakeHost, Stream) {
    let mut host = FakeHost::with_request(request);
    let plugin = plugin(json, &mut host);
    let mut stream = Stream::default();
    stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(42));
    stream.on_response_headers(&plugin, &mut host, true);
    stream.on_log(&plugin, &mut host);
    (host, stream)
}

#[test]
fn metrics_are_defined_once_per_rule_and_outcome() {
    let mut host = FakeHost::default();
    plugin(r#"{"routes": [{"name": "payments"}, {"name": "orders"}]}"#, &mut host);
    assert_eq!(
        host.proxy().stats.names,
        vec![
            "rule=.=payments;.;meshguard_requests_total",
            "rule=.=orders;.;meshguard_requests_total",
            "rule=.=default;.;meshguard_requests_total",
            "outcome=.=kept;.;meshguard_correlation_total",
            "outcome=.=generated;.;meshguard_correlation_total",
            "outcome=.=replaced_invalid;.;meshguard_correlation_total",
            "outcome=.=propagated;.;meshguard_trace_total",
            "outcome=.=started;.;meshguard_trace_total",
            "outcome=.=restarted_invalid;.;meshguard_trace_total",
            "outcome=.=from_b3;.;meshguard_trace_total",
            "meshguard_errors_total",
        ]
    );
}

#[test]
fn valid_correlation_id_is_kept_and_echoed() {
    let (host, _) = run("{}", &[("x-correlation-id", b"order-42")]);
    assert_eq!(host.request_header("x-correlation-id").unwrap(), b"order-42");
    assert_eq!(host.response_header_value("x-correlation-id").unwrap(), b"order-42");
    assert_eq!(host.state_str(state::CORRELATION_ID).as_deref(), Some("order-42"));
    assert_eq!(host.counter("outcome=.=kept;.;meshguard_correlation_total"), 1);
    assert_eq!(host.counter("rule=.=default;.;meshguard_requests_total"), 1);
}

#[test]
fn missing_correlation_id_is_generated_upstream_and_downstream() {
    let (host, _) = run("{}", &[]);
    let id = host.request_header("x-correlation-id").unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(host.response_header_value("x-correlation-id").unwrap(), id);
    assert_eq!(host.counter("outcome=.=generated;.;meshguard_correlation_total"), 1);
}

#[test]
fn invalid_correlation_id_is_replaced_and_never_logged() {
    let json = r#"{"log": {"requests": true}}"#;
    let (host, _) = run(json, &[("x-correlation-id", b"evil\xe9\"} injected")]);
    let id = host.request_header("x-correlation-id").unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(host.counter("outcome=.=replaced_invalid;.;meshguard_correlation_total"), 1);
    assert!(host.logs().iter().all(|(_, line)| !line.contains("evil") && !line.contains("injected")));
}

#[test]
fn echo_can_be_turned_off() {
    let (host, _) = run(r#"{"correlation": {"echo_downstream": false}}"#, &[]);
    assert!(host.request_header("x-correlation-id").is_some());
    assert!(host.response_header_value("x-correlation-id").is_none());
}

#[test]
fn custom_header_and_request_id_generator() {
    let json = r#"{"correlation": {"header": "x-trace-ref", "generator": "request_id"}}"#;
    let (host, _) = run(json, &[("x-request-id", b"rid-1")]);
    assert_eq!(host.request_header("x-trace-ref").unwrap(), b"rid-1");
    assert_eq!(host.response_header_value("x-trace-ref").unwrap(), b"rid-1");
    assert!(host.request_header("x-correlation-id").is_none());
}

#[test]
fn rule_is_selected_counted_and_stored() {
    let json = r#"{"routes": [{"name": "health", "match": {"prefix": "/healthz"}}, {"name": "pay", "match": {"route_name": "pay-v1"}}]}"#;
    let (host, _) = run(json, &[(":path", b"/healthz/ready")]);
    assert_eq!(host.state_str(state::RULE).as_deref(), Some("health"));
    let (default, _) = run(json, &[(":path", b"/other")]);
    assert_eq!(default.state_str(state::RULE), None, "the default rule is not written");
    assert_eq!(host.counter("rule=.=health;.;meshguard_requests_total"), 1);
    assert_eq!(host.counter("rule=.=default;.;meshguard_requests_total"), 0);
    assert!(host.property_reads.is_empty(), "route name read although the prefix decided: {:?}", host.property_reads);

    let mut host = FakeHost::with_request(&[(":path", b"/x")]);
    host.properties.push(("xds.route_name".into(), b"pay-v1".to_vec()));
    let plugin = plugin(json, &mut host);
    Stream::default().on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
    assert_eq!(host.state_str(state::RULE).as_deref(), Some("pay"));
}

#[test]
fn no_property_is_read_when_no_rule_needs_one_and_logging_is_off() {
    let (host, _) = run(r#"{"routes": [{"name": "h", "match": {"prefix": "/h"}}]}"#, &[(":path", b"/")]);
    assert!(host.property_reads.is_empty(), "{:?}", host.property_reads);
    assert!(host.logs().is_empty());
}

#[test]
fn request_log_line_has_the_request_and_response_facts() {
    let mut host = FakeHost::with_request(&[
        (":method", b"POST"),
        (":path", b"/charge?card=4111"),
        (":authority", b"payments.prod"),
        ("x-correlation-id", b"c-7"),
    ]);
    host.properties.push(("xds.route_name".into(), b"payments-v1".to_vec()));
    host.properties.push(("xds.cluster_name".into(), b"outbound|8080||payments".to_vec()));
    host.properties.push(("response.code".into(), 201u64.to_le_bytes().to_vec()));
    host.properties.push(("response.flags".into(), 0u64.to_le_bytes().to_vec()));
    host.properties.push(("request.duration".into(), 12_345_678u64.to_le_bytes().to_vec()));
    let plugin = plugin(r#"{"log": {"requests": true, "level": "warn"}}"#, &mut host);
    let mut stream = Stream::default();
    stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
    stream.on_log(&plugin, &mut host);
    assert_eq!(host.logs().len(), 1);
    let (level, line) = &host.logs()[0];
    assert_eq!(*level, LogLevel::Warn);
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["correlation_id"], "c-7");
    assert_eq!(v["rule"], "default");
    assert_eq!(v["route_name"], "payments-v1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/charge");
    assert_eq!(v["authority"], "payments.prod");
    assert_eq!(v["status"], 201);
    assert_eq!(v["duration_ms"], 12.346);
    assert_eq!(v["upstream_cluster"], "outbound|8080||payments");
    assert_eq!(v["response_flags"], "-");
}

#[test]
fn failing_host_write_fails_open_counted_and_logged_once() {
    let mut host = FakeHost::with_request(&[]);
    host.fail_writes = true;
    let plugin = plugin("{}", &mut host);
    let mut stream = Stream::default();
    stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
    assert_eq!(host.counter("meshguard_errors_total"), 1);
    assert_eq!(host.logs().len(), 1);
    assert!(host.logs()[0].1.starts_with("meshguard: internal error: cannot set request header (correlation_id="));
    // The stream goes on: the id still reaches filter state and the response.
    stream.on_response_headers(&plugin, &mut host, true);
    assert!(host.response_header_value("x-correlation-id").is_some());
}

const TP: &[u8] = b"00-12345678901234567890123456789012-1234567890123456-01";

fn all(list: &[(String, Vec<u8>)], name: &str) -> Vec<String> {
    list.iter().filter(|(k, _)| k == name).map(|(_, v)| String::from_utf8(v.clone()).unwrap()).collect()
}

#[test]
fn request_headers_are_read_once_per_request() {
    let mut host = FakeHost::with_request(&[(":path", b"/h")]);
    let json =
        r#"{"trace": {"mode": "propagate"}, "routes": [{"name": "h", "match": {"prefix": "/h", "methods": ["GET"]}}]}"#;
    let plugin = plugin(json, &mut host);
    let mut reads = Vec::new();
    for _ in 0..3 {
        let mut stream = Stream::default();
        stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
        stream.on_response_headers(&plugin, &mut host, true);
        stream.on_log(&plugin, &mut host);
        reads.push(host.header_reads);
    }
    // The first stream of a worker reads them once more, to check for an Envoy tracer.
    assert_eq!(reads, vec![2, 3, 4]);
}

#[test]
fn new_trace_goes_upstream_with_ids_in_filter_state_and_stats() {
    let (host, _) = run("{}", &[]);
    let tp = all(&host.request, "traceparent");
    assert_eq!(tp.len(), 1);
    let trace_id = host.state_str(state::TRACE_ID).unwrap();
    let span_id = host.state_str(state::SPAN_ID).unwrap();
    assert_eq!(tp[0], format!("00-{trace_id}-{span_id}-03"));
    assert_eq!(host.counter("outcome=.=started;.;meshguard_trace_total"), 1);
    assert_eq!(host.counter("outcome=.=propagated;.;meshguard_trace_total"), 0);
}

#[test]
fn propagate_leaves_a_valid_traceparent_alone_and_hop_replaces_the_parent() {
    let (host, _) = run("{}", &[("traceparent", TP)]);
    assert_eq!(all(&host.request, "traceparent"), vec![String::from_utf8(TP.to_vec()).unwrap()]);
    assert_eq!(host.state_str(state::SPAN_ID).as_deref(), Some("1234567890123456"));
    assert_eq!(host.counter("outcome=.=propagated;.;meshguard_trace_total"), 1);

    let (host, _) = run(r#"{"trace": {"mode": "hop"}}"#, &[("traceparent", TP)]);
    let tp = all(&host.request, "traceparent");
    let span_id = host.state_str(state::SPAN_ID).unwrap();
    assert_ne!(span_id, "1234567890123456");
    assert_eq!(tp, vec![format!("00-12345678901234567890123456789012-{span_id}-01")]);
}

#[test]
fn tracestate_lines_are_combined_or_removed_upstream() {
    let (host, _) = run("{}", &[("traceparent", TP), ("tracestate", b"a=1"), ("tracestate", b"b=2")]);
    assert_eq!(all(&host.request, "tracestate"), vec!["a=1,b=2"]);
    let (host, _) = run("{}", &[("traceparent", TP), ("tracestate", b"a=1,a=2")]);
    assert_eq!(all(&host.request, "tracestate"), vec!["a=1"]);
    let (host, _) = run("{}", &[("traceparent", TP), ("tracestate", b"a=1,B=2")]);
    assert!(all(&host.request, "tracestate").is_empty());
    let (host, _) = run("{}", &[("tracestate", b"a=1")]);
    assert!(all(&host.request, "tracestate").is_empty(), "dropped on restart");
}

#[test]
fn duplicated_traceparent_lines_become_one_new_trace() {
    let (host, _) = run("{}", &[("traceparent", TP), ("traceparent", TP)]);
    let tp = all(&host.request, "traceparent");
    assert_eq!(tp.len(), 1);
    assert!(!tp[0].contains("12345678901234567890123456789012"));
    assert_eq!(host.counter("outcome=.=restarted_invalid;.;meshguard_trace_total"), 1);
}

#[test]
fn trace_id_generator_uses_the_trace_id_upstream_received() {
    let (host, _) = run(r#"{"correlation": {"generator": "trace_id"}}"#, &[("traceparent", TP)]);
    assert_eq!(host.request_header("x-correlation-id").unwrap(), b"12345678901234567890123456789012");
    let (host, _) = run(r#"{"correlation": {"generator": "trace_id"}}"#, &[]);
    let trace_id = host.state_str(state::TRACE_ID).unwrap();
    assert_eq!(host.state_str(state::CORRELATION_ID).unwrap(), trace_id);
}

#[test]
fn traceresponse_header_and_server_timing_forms() {
    let (host, _) = run(r#"{"trace": {"traceresponse": true, "mode": "hop"}}"#, &[("traceparent", TP)]);
    let span_id = host.state_str(state::SPAN_ID).unwrap();
    assert_eq!(all(&host.response, "traceresponse"), vec![format!("00-12345678901234567890123456789012-{span_id}-01")]);

    let mut host = FakeHost::with_request(&[("traceparent", TP)]);
    host.response.push(("server-timing".into(), b"db;dur=53".to_vec()));
    let plugin = plugin(r#"{"trace": {"traceresponse": "server-timing"}}"#, &mut host);
    let mut stream = Stream::default();
    stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
    stream.on_response_headers(&plugin, &mut host, true);
    assert_eq!(
        all(&host.response, "server-timing"),
        vec!["db;dur=53".to_string(), format!("trace;desc=\"{}\"", String::from_utf8(TP.to_vec()).unwrap())]
    );
    assert!(all(&host.response, "traceresponse").is_empty());

    let (host, _) = run("{}", &[("traceparent", TP)]);
    assert!(all(&host.response, "traceresponse").is_empty(), "off by default");
}

#[test]
fn disabled_trace_touches_no_trace_header() {
    let (host, _) = run(r#"{"trace": {"enabled": false}}"#, &[("tracestate", b"a=1,a=1")]);
    assert!(all(&host.request, "traceparent").is_empty());
    assert_eq!(all(&host.request, "tracestate"), vec!["a=1,a=1"]);
    assert!(host.state_str(state::TRACE_ID).is_none());
    assert_eq!(host.counter("outcome=.=started;.;meshguard_trace_total"), 0);
}

#[test]
fn defer_leaves_headers_to_envoy_and_logs_what_the_upstream_received() {
    let json = r#"{"trace": {"mode": "defer"}, "log": {"requests": true}}"#;
    let mut host = FakeHost::with_request(&[("tracestate", b"a=1,a=1")]);
    let plugin = plugin(json, &mut host);
    let mut stream = Stream::default();
    stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
    assert!(all(&host.request, "traceparent").is_empty());
    assert_eq!(all(&host.request, "tracestate"), vec!["a=1,a=1"]);
    assert!(host.state_str(state::TRACE_ID).is_none());
    // Envoy's router writes its tracer's context into the upstream request.
    host.request.push(("traceparent".into(), b"00-abcdefabcdefabcdefabcdefabcdefab-0123456789abcdef-01".to_vec()));
    stream.on_log(&plugin, &mut host);
    let v: serde_json::Value = serde_json::from_str(&host.logs()[0].1).unwrap();
    assert_eq!(v["trace_id"], "abcdefabcdefabcdefabcdefabcdefab");
    assert_eq!(v["span_id"], "0123456789abcdef");
}

#[test]
fn log_line_carries_the_trace_ids() {
    let (host, _) = run(r#"{"log": {"requests": true}}"#, &[("traceparent", TP)]);
    let v: serde_json::Value = serde_json::from_str(&host.logs()[0].1).unwrap();
    assert_eq!(v["trace_id"], "12345678901234567890123456789012");
    assert_eq!(v["span_id"], "1234567890123456");
}

#[test]
fn a_tracer_rewriting_trace_headers_is_reported_once_per_worker() {
    let mut host = FakeHost::with_request(&[("traceparent", TP)]);
    let plugin = plugin(r#"{"trace": {"mode": "propagate"}}"#, &mut host);
    for _ in 0..3 {
        let mut stream = Stream::default();
        stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
        // What Envoy's OpenTelemetry tracer does at the router.
        host.rewrite_request_header("traceparent", b"00-12345678901234567890123456789012-aaaaaaaaaaaaaaaa-01");
        stream.on_log(&plugin, &mut host);
    }
    let logs = host.logs();
    let warnings: Vec<_> = logs.iter().filter(|(l, _)| *l == LogLevel::Warn).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].1.contains("defer"));

    // Untouched headers: nothing to say.
    let (host, _) = run(r#"{"trace": {"mode": "propagate"}}"#, &[("traceparent", TP)]);
    assert!(host.logs().is_empty(), "{:?}", host.logs());
}

const ENVOYS: &[u8] = b"00-12345678901234567890123456789012-aaaaaaaaaaaaaaaa-01";

/// `auto` (the default): the first traced response shows Envoy's tracer at work; that request's
/// filter state gets the ids the upstream received, and the worker leaves trace headers to Envoy.
#[test]
fn auto_mode_follows_an_envoy_tracer_from_the_first_response() {
    let mut host = FakeHost::with_request(&[]);
    let plugin = plugin(r#"{"log": {"requests": true}}"#, &mut host);
    let mut stream = Stream::default();
    stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
    assert_ne!(host.request_header("traceparent").as_deref(), Some(ENVOYS), "meshguard wrote its own");
    host.rewrite_request_header("traceparent", ENVOYS);
    stream.on_response_headers(&plugin, &mut host, true);
    // Envoy writes the access log after the filter's log callback, which corrects the ids.
    stream.on_log(&plugin, &mut host);
    assert_eq!(host.state_str(state::TRACE_ID).as_deref(), Some("12345678901234567890123456789012"));
    assert_eq!(host.state_str(state::SPAN_ID).as_deref(), Some("aaaaaaaaaaaaaaaa"));
    let logs = host.logs();
    let line: serde_json::Value = serde_json::from_str(&logs.last().unwrap().1).unwrap();
    assert_eq!(line["trace_id"], "12345678901234567890123456789012", "the log line names the upstream's trace");
    assert!(logs.iter().any(|(l, m)| *l == LogLevel::Info && m.contains("follows it")));
    assert!(logs.iter().all(|(l, _)| *l != LogLevel::Warn), "{logs:?}");

    // The next request: no trace header written, none in the filter state, one header read.
    let mut host = host.next_stream();
    let mut stream = Stream::default();
    stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(2));
    assert_eq!(host.request_header("traceparent"), None);
    assert_eq!(host.state_str(state::TRACE_ID), None);
    host.rewrite_request_header("traceparent", ENVOYS);
    stream.on_response_headers(&plugin, &mut host, true);
    stream.on_log(&plugin, &mut host);
    let line: serde_json::Value = serde_json::from_str(&host.logs().last().unwrap().1).unwrap();
    assert_eq!(line["trace_id"], "12345678901234567890123456789012");
    assert_eq!(host.header_reads, 2, "request headers, and the log line's read: no more checks");
}

/// `auto` without a tracer: meshguard writes the trace headers, checks a few responses, then
/// stops reading the request headers back.
#[test]
fn auto_mode_without_a_tracer_propagates_and_stops_checking() {
    let mut host = FakeHost::with_request(&[("traceparent", TP)]);
    let plugin = plugin("{}", &mut host);
    let mut reads = Vec::new();
    for _ in 0..10 {
        let mut stream = Stream::default();
        stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
        assert_eq!(host.request_header("traceparent").as_deref(), Some(TP));
        stream.on_response_headers(&plugin, &mut host, true);
        stream.on_log(&plugin, &mut host);
        reads.push(host.header_reads);
        host.header_reads = 0;
    }
    assert_eq!(reads, vec![2, 2, 2, 2, 2, 2, 2, 2, 1, 1]);
    assert!(host.logs().is_empty(), "{:?}", host.logs());
}

// ---- circuit breaker ----

const SECOND: u64 = 1_000_000_000;

/// One request through the flow at the host's clock; the upstream answers `status` after
/// `took_ns` unless the circuit answered first. Returns the verdict.
fn call(plugin: &Plugin, host: &mut FakeHost, status: &str, took_ns: u64) -> Verdict {
    host.response.clear();
    host.local_replies.clear();
    let mut stream = Stream::default();
    let verdict = stream.on_request_headers(plugin, host, &mut TestEntropy(host.clock() | 1));
    host.advance(took_ns);
    if verdict == Verdict::Continue {
        host.response.push((":status".into(), status.as_bytes().to_vec()));
    }
    stream.on_response_headers(plugin, host, true);
    stream.on_log(plugin, host);
    verdict
}

fn breaker_plugin(json: &str, host: &mut FakeHost) -> Plugin {
    host.set_clock(1_700_000_000 * SECOND);
    let p = plugin(json, host);
    p.init_shared(host).unwrap();
    p
}

#[test]
fn circuit_opens_rejects_locally_then_probes_and_closes() {
    let json = r#"{"routes": [{"name": "pay", "circuit_breaker": {"consecutive_failures": 2, "open_duration": "10s", "half_open_calls": 2}}]}"#;
    let mut host = FakeHost::with_request(&[("x-correlation-id", b"c-1")]);
    let plugin = breaker_plugin(json, &mut host);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Continue);
    assert_eq!(host.state_str(state::CIRCUIT).as_deref(), Some("closed"));
    assert_eq!(call(&plugin, &mut host, "503", 0), Verdict::Continue);
    assert_eq!(call(&plugin, &mut host, "500", 0), Verdict::Continue);
    assert_eq!(host.counter("rule=.=pay;.;to=.=open;.;meshguard_circuit_transitions_total"), 1);
    assert_eq!(host.counter("rule=.=pay;.;meshguard_circuit_failures_total"), 2);
    assert_eq!(host.counter("rule=.=pay;.;meshguard_circuit_state"), 2);
    let logs = host.logs();
    let opened: Vec<_> = logs.iter().filter(|(_, l)| l.starts_with("meshguard: circuit pay closed -> open")).collect();
    assert_eq!(opened.len(), 1);
    assert_eq!(
        opened[0].1,
        "meshguard: circuit pay closed -> open (2 consecutive failures; open for 10s) (correlation_id=c-1)"
    );

    // Open: a local reply, no upstream.
    host.advance(3 * SECOND);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Stop);
    let crate::testing::LocalReply { status, headers, body, .. } = host.local_replies[0].clone();
    assert_eq!(status, 503);
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| String::from_utf8(v.clone()).unwrap());
    assert_eq!(header("retry-after").as_deref(), Some("7"));
    assert_eq!(header("x-meshguard-circuit").as_deref(), Some("open"));
    assert_eq!(header("x-correlation-id").as_deref(), Some("c-1"));
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (body["error"].as_str(), body["rule"].as_str(), body["retry_after_s"].as_u64()),
        (Some("circuit_open"), Some("pay"), Some(7))
    );
    assert_eq!(body["correlation_id"], "c-1");
    assert_eq!(body["trace_id"].as_str().map(str::len), Some(32));
    assert_eq!(host.state_str(state::CIRCUIT).as_deref(), Some("rejected"));
    assert_eq!(host.counter("rule=.=pay;.;meshguard_circuit_rejected_total"), 1);
    assert_eq!(host.counter("rule=.=pay;.;meshguard_circuit_failures_total"), 2, "a local reply is no outcome");

    // After open_duration: two probes, both succeed, the circuit closes.
    host.advance(7 * SECOND);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Continue);
    assert_eq!(host.state_str(state::CIRCUIT).as_deref(), Some("half_open"));
    assert_eq!(host.counter("rule=.=pay;.;meshguard_circuit_state"), 1);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Continue);
    assert_eq!(host.counter("rule=.=pay;.;to=.=closed;.;meshguard_circuit_transitions_total"), 1);
    assert_eq!(host.counter("rule=.=pay;.;meshguard_circuit_state"), 0);
}

#[test]
fn rules_without_a_breaker_touch_no_shared_data() {
    let json = r#"{"routes": [{"name": "pay", "match": {"prefix": "/pay"}, "circuit_breaker": {}}]}"#;
    let mut host = FakeHost::with_request(&[(":path", b"/other")]);
    let plugin = breaker_plugin(json, &mut host);
    let sets = host.shared_sets();
    call(&plugin, &mut host, "503", 0);
    assert_eq!(host.shared_sets(), sets);
    assert!(host.state_str(state::CIRCUIT).is_none());
}

#[test]
fn closed_success_path_swaps_once_per_response_and_not_when_the_window_is_all_successes() {
    let mut host = FakeHost::with_request(&[]);
    let plugin = breaker_plugin(r#"{"circuit_breaker": {"window": {"type": "count", "size": 5}}}"#, &mut host);
    let sets = host.shared_sets();
    call(&plugin, &mut host, "200", 0);
    assert_eq!(host.shared_sets() - sets, 1, "no write on the request path");
    for _ in 0..4 {
        call(&plugin, &mut host, "200", 0);
    }
    let sets = host.shared_sets();
    call(&plugin, &mut host, "200", 0);
    assert_eq!(host.shared_sets(), sets, "a full window of successes stays as it is");
}

#[test]
fn slow_calls_and_envoy_upstream_failures_are_outcomes() {
    let json = r#"{"circuit_breaker": {"slow_call_duration": "1s", "failure_status": [500]}}"#;
    let mut host = FakeHost::with_request(&[]);
    let plugin = breaker_plugin(json, &mut host);
    call(&plugin, &mut host, "200", 2 * SECOND);
    assert_eq!(host.counter("rule=.=default;.;meshguard_circuit_slow_total"), 1);
    // 503 not in failure_status, but Envoy made it because the upstream refused (UF).
    host.properties.push(("response.flags".into(), (1u64 << 5).to_le_bytes().to_vec()));
    call(&plugin, &mut host, "503", 0);
    assert_eq!(host.counter("rule=.=default;.;meshguard_circuit_failures_total"), 1);
}

#[test]
fn a_reset_before_response_headers_is_a_failure() {
    let mut host = FakeHost::with_request(&[]);
    let plugin = breaker_plugin(r#"{"circuit_breaker": {"consecutive_failures": 1}}"#, &mut host);
    let mut stream = Stream::default();
    stream.on_request_headers(&plugin, &mut host, &mut TestEntropy(1));
    stream.on_log(&plugin, &mut host);
    assert_eq!(host.counter("rule=.=default;.;meshguard_circuit_failures_total"), 1);
    assert_eq!(host.counter("rule=.=default;.;to=.=open;.;meshguard_circuit_transitions_total"), 1);
}

#[test]
fn cas_conflicts_are_retried_and_bounded() {
    let mut host = FakeHost::with_request(&[]);
    let plugin = breaker_plugin(r#"{"circuit_breaker": {"consecutive_failures": 1}}"#, &mut host);
    host.proxy().shared.conflicts = 3;
    call(&plugin, &mut host, "500", 0);
    assert_eq!(
        host.counter("rule=.=default;.;to=.=open;.;meshguard_circuit_transitions_total"),
        1,
        "won on the 4th try"
    );
    assert_eq!(host.counter("meshguard_errors_total"), 0);

    let mut host = FakeHost::with_request(&[]);
    let plugin = breaker_plugin(r#"{"circuit_breaker": {"consecutive_failures": 1}}"#, &mut host);
    host.proxy().shared.conflicts = usize::MAX;
    assert_eq!(call(&plugin, &mut host, "500", 0), Verdict::Continue);
    assert_eq!(host.counter("meshguard_errors_total"), 1, "gave up, failed open, counted");
    assert!(host.logs().iter().any(|(_, l)| l.contains("compare-and-swap attempts exhausted")));
}

#[test]
fn metrics_only_never_rejects_but_counts_what_it_would_have() {
    let mut host = FakeHost::with_request(&[]);
    let plugin =
        breaker_plugin(r#"{"circuit_breaker": {"consecutive_failures": 1, "mode": "metrics_only"}}"#, &mut host);
    call(&plugin, &mut host, "500", 0);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Continue);
    assert!(host.local_replies.is_empty());
    assert_eq!(host.state_str(state::CIRCUIT).as_deref(), Some("open"));
    assert_eq!(host.counter("rule=.=default;.;meshguard_circuit_rejected_total"), 1);
}

#[test]
fn forced_open_rejects_with_the_configured_status() {
    let mut host = FakeHost::with_request(&[]);
    let plugin = breaker_plugin(r#"{"circuit_breaker": {"mode": "forced_open", "open_status": 429}}"#, &mut host);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Stop);
    assert_eq!(host.local_replies[0].status, 429);
}

#[test]
fn a_renamed_rule_or_resized_window_starts_from_a_closed_circuit() {
    let open = r#"{"routes": [{"name": "pay", "circuit_breaker": {"consecutive_failures": 1, "window": {"type": "count", "size": 10}}}]}"#;
    let mut host = FakeHost::with_request(&[]);
    let plugin = breaker_plugin(open, &mut host);
    call(&plugin, &mut host, "500", 0);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Stop, "open");
    // The same configuration again (a reload) keeps the open circuit.
    let again = breaker_plugin(open, &mut host);
    assert_eq!(call(&again, &mut host, "200", 0), Verdict::Stop);
    assert_eq!(host.counter("rule=.=pay;.;meshguard_circuit_state"), 2);
    for changed in [open.replace("\"pay\"", "\"payments\""), open.replace("\"size\": 10", "\"size\": 11")] {
        let plugin = breaker_plugin(&changed, &mut host);
        let rule = if changed.contains("payments") { "payments" } else { "pay" };
        let gauge = format!("rule=.={rule};.;meshguard_circuit_state");
        assert_eq!(host.counter(&gauge), 0, "the gauge shows the fresh circuit: {changed}");
        assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Continue, "{changed}");
    }
}

// ---- the worker's copy of the circuit (breaker::snapshot) ----

#[test]
fn a_quiet_closed_circuit_is_decided_without_shared_data_reads() {
    let mut host = FakeHost::with_request(&[]);
    let plugin = breaker_plugin(r#"{"circuit_breaker": {"window": {"type": "count", "size": 3}}}"#, &mut host);
    for _ in 0..4 {
        call(&plugin, &mut host, "200", 0);
    }
    let (gets, sets) = (host.shared_gets(), host.shared_sets());
    for _ in 0..10 {
        assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Continue);
        assert_eq!(host.state_str(state::CIRCUIT).as_deref(), Some("closed"));
    }
    assert_eq!((host.shared_gets(), host.shared_sets()), (gets, sets), "the copy answered");
}

/// Two workers (two VMs: two plugins) over one shared store and one set of Envoy counters, on a
/// circuit that opens at one failure; `a` has made it quiet (a full window of successes). Returns
/// the plugins and how many shared-data reads one more success of `a` made.
fn two_workers_on_a_quiet_circuit(host: &mut FakeHost) -> (Plugin, Plugin, usize) {
    let json = r#"{"circuit_breaker": {"window": {"type": "count", "size": 4}, "consecutive_failures": 1}}"#;
    let a = breaker_plugin(json, host);
    let b = breaker_plugin(json, host);
    for _ in 0..5 {
        call(&a, host, "200", 0);
    }
    let gets = host.shared_gets();
    call(&a, host, "200", 0);
    (a, b, host.shared_gets() - gets)
}

#[test]
fn a_circuit_opened_by_another_worker_is_seen_through_the_copy() {
    let mut host = FakeHost::with_request(&[]);
    let (a, b, reads) = two_workers_on_a_quiet_circuit(&mut host);
    assert_eq!(reads, 0, "a's copy is quiet");
    call(&b, &mut host, "500", 0);
    assert_eq!(host.counter("rule=.=default;.;to=.=open;.;meshguard_circuit_transitions_total"), 1);
    assert_eq!(call(&a, &mut host, "200", 0), Verdict::Stop, "a's copy is stale: the epoch moved");
}

#[test]
fn a_success_after_another_workers_failure_is_recorded_not_skipped() {
    // Window of 3, opens at 2 failures of 3. The window's ring overwrites its oldest slot, so
    // a's successes decide which slot b's second failure lands in.
    let json = r#"{"circuit_breaker": {"window": {"type": "count", "size": 3}, "minimum_calls": 3, "failure_rate_threshold": 60}}"#;
    let mut host = FakeHost::with_request(&[]);
    let a = breaker_plugin(json, &mut host);
    let b = breaker_plugin(json, &mut host);
    for _ in 0..4 {
        call(&a, &mut host, "200", 0); // a's copy: quiet
    }
    // a's request is admitted from its copy; b's failure lands before a's response.
    let mut pending = Stream::default();
    assert_eq!(pending.on_request_headers(&a, &mut host, &mut TestEntropy(7)), Verdict::Continue);
    call(&b, &mut host, "500", 0); // [f s s]
    host.response = vec![(":status".into(), b"200".to_vec())];
    pending.on_response_headers(&a, &mut host, true); // replaces the oldest success, not skipped
    call(&a, &mut host, "200", 0); // the next write replaces the failure
    call(&b, &mut host, "500", 0); // [f s s]: 1 of 3, still closed
    assert_eq!(host.counter("rule=.=default;.;to=.=open;.;meshguard_circuit_transitions_total"), 0);
    call(&b, &mut host, "500", 0); // 2 of 3
    assert_eq!(host.counter("rule=.=default;.;to=.=open;.;meshguard_circuit_transitions_total"), 1);
}

#[test]
fn an_open_circuit_rejects_from_the_copy_until_its_time_is_up() {
    let json = r#"{"circuit_breaker": {"consecutive_failures": 1, "open_duration": "10s"}}"#;
    let mut host = FakeHost::with_request(&[]);
    let plugin = breaker_plugin(json, &mut host);
    call(&plugin, &mut host, "500", 0);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Stop);
    let gets = host.shared_gets();
    host.advance(5 * SECOND);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Stop);
    let retry = host.local_replies[0].header("retry-after").map(<[u8]>::to_vec);
    assert_eq!(retry.as_deref(), Some(&b"5"[..]));
    assert_eq!(host.shared_gets(), gets, "rejected from the copy");
    host.advance(5 * SECOND);
    assert_eq!(call(&plugin, &mut host, "200", 0), Verdict::Continue, "the first probe");
    assert!(host.shared_gets() > gets);
    assert_eq!(host.counter("rule=.=default;.;to=.=half_open;.;meshguard_circuit_transitions_total"), 1);
}

#[test]
fn probes_in_half_open_always_read_the_shared_value() {
    let json = r#"{"circuit_breaker": {"consecutive_failures": 1, "open_duration": "1s", "half_open_calls": 2}}"#;
    let mut host = FakeHost::with_request(&[]);
    let a = breaker_plugin(json, &mut host);
    let b = breaker_plugin(json, &mut host);
    call(&a, &mut host, "500", 0);
    host.advance(SECOND);
    // Two probes across both workers, then the third request (on either) is rejected.
    let mut stream_a = Stream::default();
    assert_eq!(stream_a.on_request_headers(&a, &mut host, &mut TestEntropy(1)), Verdict::Continue);
    let mut stream_b = Stream::default();
    assert_eq!(stream_b.on_request_headers(&b, &mut host, &mut TestEntropy(2)), Verdict::Continue);
    let mut third = Stream::default();
    assert_eq!(third.on_request_headers(&a, &mut host, &mut TestEntropy(3)), Verdict::Stop);
}

#[test]
fn with_stats_rejected_by_envoy_the_copy_never_answers_a_closed_circuit() {
    // Envoy's stats matcher can reject meshguard's stats (Istio without proxyStatsMatcher):
    // the epoch then reads 0 forever and could not reveal another worker's failures.
    let mut host = FakeHost::with_request(&[]);
    host.proxy().stats.rejected = true;
    let (a, b, reads) = two_workers_on_a_quiet_circuit(&mut host);
    assert!(reads > 0, "a quiet circuit is read from shared data when the epoch is dead");
    call(&b, &mut host, "500", 0);
    assert_eq!(call(&a, &mut host, "200", 0), Verdict::Stop, "a sees the circuit b opened");
}

/// One delivery of a POST with a body fingerprint, the body arriving in `chunks` (each
/// `on_request_body` sees its own chunk, as Envoy streams it); the verdict of every callback.
fn deliver(plugin: &Plugin, host: &mut FakeHost, key: &[u8], chunks: &[&[u8]]) -> (Vec<Verdict>, Stream) {
    host.request = vec![(":method".into(), b"POST".to_vec()), (":path".into(), b"/e".to_vec())];
    host.request.push(("x-event-id".into(), key.to_vec()));
    host.response.clear();
    host.local_replies.clear();
    host.dropped = 0;
    let mut stream = Stream::default();
    let mut verdicts =
        vec![stream.on_request_headers_eos(plugin, host, &mut TestEntropy(host.clock() | 1), chunks.is_empty())];
    for (i, chunk) in chunks.iter().enumerate() {
        host.body = chunk.to_vec();
        let verdict = stream.on_request_body(plugin, host, chunk.len(), i + 1 == chunks.len());
        verdicts.push(verdict);
        if verdict == Verdict::Stop {
            break;
        }
    }
    host.advance(1);
    if verdicts.last() != Some(&Verdict::Stop) {
        host.response.push((":status".into(), b"200".to_vec()));
        stream.on_response_headers(plugin, host, true);
    }
    stream.on_log(plugin, host);
    (verdicts, stream)
}

fn body_plugin(host: &mut FakeHost) -> Plugin {
    host.set_clock(1_700_000_000 * SECOND);
    let p = plugin(r#"{"dedup": {"fingerprint": "body"}}"#, host);
    p.init_shared(host).unwrap();
    p
}

#[test]
fn body_chunks_stream_on_until_the_key_is_decided_and_never_wait_in_envoy() {
    let mut host = FakeHost::default();
    let plugin = body_plugin(&mut host);
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    // 100 kB in 30 kB chunks: the first two go on, the third passes 64 KiB and decides.
    let chunks: Vec<&[u8]> = body.chunks(30_000).collect();
    let (verdicts, _) = deliver(&plugin, &mut host, b"e-1", &chunks);
    assert_eq!(verdicts, vec![Verdict::Continue; 5]);
    assert_eq!(host.state_str(state::DEDUP).as_deref(), Some("first"));
    // The same body cut elsewhere is the same event: a duplicate, decided on the chunk that
    // reaches 64 KiB; that chunk and the rest are dropped, and the answer goes with the end.
    let chunks: Vec<&[u8]> = body.chunks(7_000).collect();
    let (verdicts, _) = deliver(&plugin, &mut host, b"e-1", &chunks);
    assert_eq!(verdicts.len(), 1 + 15);
    assert!(verdicts[..15].iter().all(|v| *v == Verdict::Continue));
    assert_eq!(verdicts.last(), Some(&Verdict::Stop));
    assert_eq!(host.dropped, 5 * 7_000, "chunks 10 to 14 dropped (the 10th passed 64 KiB)");
    assert_eq!((host.local_replies.len(), host.local_replies[0].status), (1, 200));
    // Bytes past 64 KiB do not count; a change before them does.
    let mut other = body.clone();
    other[90_000] ^= 1;
    let (verdicts, _) = deliver(&plugin, &mut host, b"e-1", &[&other]);
    assert_eq!((verdicts[1], host.local_replies[0].status), (Verdict::Stop, 200));
    other[1_000] ^= 1;
    let (verdicts, _) = deliver(&plugin, &mut host, b"e-1", &[&other]);
    assert_eq!((verdicts[1], host.local_replies[0].status), (Verdict::Stop, 422));
}

#[test]
fn a_short_body_in_several_chunks_is_decided_at_its_end() {
    let mut host = FakeHost::default();
    let plugin = body_plugin(&mut host);
    let (verdicts, _) = deliver(&plugin, &mut host, b"e-2", &[b"{\"a\":", b"1", b"}"]);
    assert_eq!(verdicts, vec![Verdict::Continue; 4]);
    let (verdicts, _) = deliver(&plugin, &mut host, b"e-2", &[b"{\"a\":1}"]);
    assert_eq!((verdicts[1], host.local_replies[0].status), (Verdict::Stop, 200));
    let (verdicts, _) = deliver(&plugin, &mut host, b"e-2", &[b"{\"a\":", b"2}"]);
    assert_eq!((verdicts.len(), verdicts[2], host.local_replies[0].status), (3, Verdict::Stop, 422));
}

#[test]
fn an_answer_before_the_body_decides_leaves_the_key_unclaimed() {
    let mut host = FakeHost::default();
    let plugin = body_plugin(&mut host);
    host.request = vec![(":method".into(), b"POST".to_vec()), (":path".into(), b"/e".to_vec())];
    host.request.push(("x-event-id".into(), b"e-3".to_vec()));
    let mut stream = Stream::default();
    stream.on_request_headers_eos(&plugin, &mut host, &mut TestEntropy(3), false);
    host.body = vec![1; 100];
    assert_eq!(stream.on_request_body(&plugin, &mut host, 100, false), Verdict::Continue);
    // The upstream (or Envoy) answers first; the rest of the body only passes.
    host.response.push((":status".into(), b"401".to_vec()));
    stream.on_response_headers(&plugin, &mut host, true);
    host.body = vec![2; 70_000];
    assert_eq!(stream.on_request_body(&plugin, &mut host, 70_000, true), Verdict::Continue);
    stream.on_log(&plugin, &mut host);
    assert!(host.local_replies.is_empty());
    // Nothing was claimed: the next delivery is the first.
    let (verdicts, _) = deliver(&plugin, &mut host, b"e-3", &[&[1; 100]]);
    assert_eq!(verdicts, vec![Verdict::Continue; 2]);
    assert_eq!(host.state_str(state::DEDUP).as_deref(), Some("first"));
}

#[test]
fn a_content_length_body_is_decided_on_the_chunk_that_completes_it() {
    let mut host = FakeHost::default();
    let plugin = body_plugin(&mut host);
    // Envoy's HTTP/1 codec hands over the body, then an empty chunk with the end of stream:
    // forwarding the last byte of a content-length body would complete the request upstream.
    let send = |host: &mut FakeHost, body: &[&[u8]], length: &str| {
        host.request = vec![(":method".into(), b"POST".to_vec()), (":path".into(), b"/e".to_vec())];
        host.request.push(("x-event-id".into(), b"e-4".to_vec()));
        host.request.push(("content-length".into(), length.as_bytes().to_vec()));
        host.local_replies.clear();
        let mut stream = Stream::default();
        let mut verdicts = vec![stream.on_request_headers_eos(&plugin, host, &mut TestEntropy(5), false)];
        for chunk in body.iter().chain([&&b""[..]]) {
            host.body = chunk.to_vec();
            verdicts.push(stream.on_request_body(&plugin, host, chunk.len(), chunk.is_empty()));
            if verdicts.last() == Some(&Verdict::Stop) {
                break;
            }
        }
        host.response = vec![(":status".into(), b"200".to_vec())];
        stream.on_response_headers(&plugin, host, true);
        stream.on_log(&plugin, host);
        verdicts
    };
    use Verdict::{Continue, Stop};
    assert_eq!(send(&mut host, &[b"{\"a\":", b"1}"], "7"), vec![Continue; 4]);
    // The last byte decides; it is dropped, and the answer waits for the end of the stream.
    host.dropped = 0;
    assert_eq!(send(&mut host, &[b"{\"a\":", b"1}"], "7"), vec![Continue, Continue, Continue, Stop]);
    assert_eq!((host.local_replies[0].status, host.dropped), (200, 2));
    assert_eq!(send(&mut host, &[b"{\"a\":1}"], "7"), vec![Continue, Continue, Stop]);
    assert_eq!(send(&mut host, &[b"{\"a\":2}"], "7"), vec![Continue, Continue, Stop]);
    assert_eq!(host.local_replies[0].status, 422);
    // `content-length: 0` is an empty body, decided with the headers.
    let verdicts = send(&mut host, &[], "0");
    assert_eq!((verdicts[0], host.local_replies[0].status), (Verdict::Stop, 422));
}

#[test]
fn a_deferred_dedup_answer_goes_at_once_if_the_body_cannot_be_dropped_and_never_after_an_upstream_answer() {
    let mut host = FakeHost::default();
    let plugin = body_plugin(&mut host);
    let body = vec![5u8; 70_000];
    deliver(&plugin, &mut host, b"e-5", &[&body]);
    let start = |host: &mut FakeHost, stream: &mut Stream| {
        host.request = vec![(":method".into(), b"POST".to_vec()), (":path".into(), b"/e".to_vec())];
        host.request.push(("x-event-id".into(), b"e-5".to_vec()));
        host.local_replies.clear();
        stream.on_request_headers_eos(&plugin, host, &mut TestEntropy(9), false);
        host.body = body.clone();
        stream.on_request_body(&plugin, host, body.len(), false)
    };
    // The chunk that decides cannot be dropped: the duplicate is answered at once, not forwarded.
    host.fail_writes = true;
    let mut stream = Stream::default();
    assert_eq!(start(&mut host, &mut stream), Verdict::Stop);
    assert_eq!(host.local_replies[0].status, 200);
    assert_eq!(host.counter("meshguard_errors_total"), 1);
    host.fail_writes = false;

    // The upstream answers (to a request it never got whole) while the answer waits: its answer
    // goes to the client, and the end of the body sends nothing more.
    let mut stream = Stream::default();
    assert_eq!(start(&mut host, &mut stream), Verdict::Continue);
    host.response = vec![(":status".into(), b"408".to_vec())];
    stream.on_response_headers(&plugin, &mut host, true);
    host.body = vec![5; 10];
    assert_eq!(stream.on_request_body(&plugin, &mut host, 10, true), Verdict::Continue);
    stream.on_log(&plugin, &mut host);
    assert!(host.local_replies.is_empty());
    // The event is still complete in the store.
    let (verdicts, _) = deliver(&plugin, &mut host, b"e-5", &[&body]);
    assert_eq!((verdicts, host.local_replies[0].status), (vec![Verdict::Continue, Verdict::Stop], 200));
}

mod body_keys;
mod etcd;
mod outcomes;
