//! SPEC §1 "gRPC calls", "Neutral calls", "Local replies to gRPC requests" and §2 "gRPC" in a real
//! Envoy between a real gRPC client and server (Python grpcio, tests/support/grpc_peer.py):
//! trailers-only failures, statuses in the trailers, deadlines and cancels, dedup's gRPC replies
//! as the client library decodes them, HTTP callers that time out, and Istio's retry policy in
//! front of an open circuit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/grpc.rs"]
mod grpc_peer;
mod support;

use grpc_peer::{call, run, Call, GrpcServer, OTHER, STREAM, UNARY};
use serde_json::json;
use support::envoy::{render_bootstrap, Envoy, Options};
use support::upstream::Upstream;

/// meshguard in front of a gRPC server (routes `/meshguard.test.`, rule `grpc` below) and the
/// HTTP/1.1 test upstream (everything else).
struct Mesh {
    server: GrpcServer,
    upstream: Upstream,
    envoy: Envoy,
}

fn mesh(plugin_config: &str) -> Mesh {
    let server = GrpcServer::start();
    let upstream = Upstream::start();
    let mut opts = Options::new(plugin_config, upstream.port);
    opts.bootstrap = "tests/data/grpc-envoy.yaml";
    opts.ports = vec![("grpc", server.port)];
    let envoy = Envoy::start_with(opts);
    Mesh { server, upstream, envoy }
}

/// A configuration with the rule `grpc` for the test service, given its circuit and dedup sections.
fn grpc_rule(circuit_breaker: &str, dedup: &str) -> String {
    format!(
        r#"{{"log": {{"requests": true}},
             "routes": [{{"name": "grpc", "match": {{"prefix": "/meshguard.test."}},
                          "circuit_breaker": {circuit_breaker}, "dedup": {dedup}}}]}}"#
    )
}

fn sample(name: &str, rule: &str) -> String {
    format!(r#"{name}{{rule="{rule}"}}"#)
}

/// A counter that was never incremented has no sample: 0.
fn counter(envoy: &Envoy, name: &str, rule: &str) -> f64 {
    envoy.metric(&sample(name, rule)).unwrap_or(0.0)
}

// ------------------------------------------------------------------------------------ case 1

#[test]
fn trailers_only_unavailable_opens_the_circuit_and_the_client_decodes_unavailable_with_pushback() {
    support::require_envoy!();
    let m = mesh(&grpc_rule(r#"{"consecutive_failures": 3, "open_duration": "30s"}"#, r#""disabled""#));
    // Every call ends in a trailers-only response: the server sets a status before any message.
    let ending = |tag: &str, code: &str| {
        Call::new(UNARY, json!({"tag": tag, "code": code, "details": "backend down"})).metadata("x-correlation-id", tag)
    };
    // Two failures; NOT_FOUND (a success: it ends the run of failures); two failures; CANCELLED
    // from the server (neutral: the run goes on); the third failure in a row opens the circuit.
    let calls = [
        ("f1", "UNAVAILABLE"),
        ("f2", "UNAVAILABLE"),
        ("not-found", "NOT_FOUND"),
        ("f3", "UNAVAILABLE"),
        ("f4", "UNAVAILABLE"),
        ("cancelled", "CANCELLED"),
        ("f5", "UNAVAILABLE"),
    ];
    let mut list: Vec<Call> = calls.iter().map(|(tag, code)| ending(tag, code)).collect();
    list.push(Call::new(UNARY, json!({"tag": "after"})).metadata("x-correlation-id", "c-open"));
    let results = run(m.envoy.port, &list);
    for ((tag, code), r) in calls.iter().zip(&results) {
        assert_eq!(r.code, *code, "{tag}: {r:?}");
        // grpc-status in the one HEADERS frame, judged by meshguard at the response headers.
        let line = m.envoy.access_log_for(tag);
        assert_eq!(
            (line["grpc_status_header"].as_str(), line["grpc_status_trailer"].as_str()),
            (Some(r.code_value.to_string().as_str()), None)
        );
        assert_eq!(line["circuit"], "closed");
    }
    assert_eq!(m.server.hits(), 7, "the last call never reached the server");
    assert_eq!(results[0].details, "backend down");

    let open = &results[7];
    assert_eq!((open.code.as_str(), open.code_value), ("UNAVAILABLE", 14), "{open:?}");
    let pushback: u64 = open.md("grpc-retry-pushback-ms").expect("grpc-retry-pushback-ms").parse().unwrap();
    assert!((29_000..=30_000).contains(&pushback), "{pushback}");
    assert_eq!(open.md("x-meshguard-circuit").as_deref(), Some("open"), "{open:?}");
    assert_eq!(open.md("x-envoy-ratelimited").as_deref(), Some("true"), "{open:?}");
    assert_eq!(open.md("x-correlation-id").as_deref(), Some("c-open"), "{open:?}");
    let message: serde_json::Value = serde_json::from_str(&open.details).expect("grpc-message is the JSON text");
    assert_eq!((message["error"].as_str(), message["rule"].as_str()), (Some("circuit_open"), Some("grpc")));
    let line = m.envoy.access_log_for("c-open");
    assert_eq!((line["circuit"].as_str(), line["status"].as_u64()), (Some("rejected"), Some(200)));
    assert_eq!(line["grpc_status_header"], "14");

    m.envoy.wait_metric(&sample("meshguard_circuit_failures_total", "grpc"), 5.0);
    m.envoy.wait_metric(&sample("meshguard_circuit_neutral_total", "grpc"), 1.0);
    m.envoy.wait_metric(&sample("meshguard_circuit_rejected_total", "grpc"), 1.0);
    m.envoy.wait_metric(&sample("meshguard_circuit_state", "grpc"), 2.0);
    let opened: Vec<String> = m
        .envoy
        .meshguard_lines()
        .into_iter()
        .filter_map(|l| l.split_once("circuit grpc ").map(|(_, rest)| rest.to_string()))
        .collect();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(opened[0].starts_with("closed -> open (3 consecutive failures"), "{opened:?}");
    assert!(opened[0].ends_with("(correlation_id=f5)"), "{opened:?}");
    assert!(m.envoy.crash_lines().is_empty());
}

#[test]
fn a_grpc_caller_gets_unavailable_whatever_http_status_the_open_circuit_has() {
    support::require_envoy!();
    // Envoy would translate an HTTP 500 local reply to a gRPC caller into UNKNOWN (2): meshguard
    // sends the gRPC status itself. HTTP callers get the configured status.
    let m = mesh(r#"{"circuit_breaker": {"mode": "forced_open", "open_status": 500, "open_duration": "7s"}}"#);
    let r = call(m.envoy.port, Call::new(UNARY, json!({"tag": "forced"})));
    assert_eq!((r.code.as_str(), r.code_value), ("UNAVAILABLE", 14), "{r:?}");
    assert_eq!(r.md("grpc-retry-pushback-ms").as_deref(), Some("7000"), "{r:?}");
    assert_eq!(r.md("x-meshguard-circuit").as_deref(), Some("open"), "{r:?}");
    let http = support::http::send(m.envoy.port, &support::http::Request::get("/x")).unwrap();
    assert_eq!((http.status, http.header("retry-after").as_deref()), (500, Some("7")));
    assert_eq!(m.server.hits() + m.upstream.hits(), 0);
}

// ------------------------------------------------------------------------------------ case 2

#[test]
fn server_streaming_is_judged_by_the_status_in_the_trailers() {
    support::require_envoy!();
    let m = mesh(&grpc_rule(r#"{"consecutive_failures": 3, "open_duration": "30s"}"#, r#""disabled""#));
    let streamed = |tag: &str, code: &str| {
        Call::new(STREAM, json!({"tag": tag, "messages": 3, "code": code, "details": "broke"}))
            .metadata("x-correlation-id", tag)
    };
    // Two failures, a success (resets the run of failures), two failures: still closed.
    let results = run(
        m.envoy.port,
        &[
            streamed("s-f1", "INTERNAL"),
            streamed("s-f2", "INTERNAL"),
            streamed("s-ok", "OK"),
            streamed("s-f3", "INTERNAL"),
            streamed("s-f4", "INTERNAL"),
        ],
    );
    for (r, code) in results.iter().zip(["INTERNAL", "INTERNAL", "OK", "INTERNAL", "INTERNAL"]) {
        assert_eq!(r.code, code, "{r:?}");
        assert_eq!(r.messages.len(), 3, "every message reached the client before the status: {r:?}");
    }
    // The status came in the trailers, after HTTP 200 headers and the messages.
    for (tag, status) in [("s-f1", "13"), ("s-ok", "0")] {
        let line = m.envoy.access_log_for(tag);
        assert_eq!((line["grpc_status_header"].as_str(), line["grpc_status_trailer"].as_str()), (None, Some(status)));
        assert_eq!(line["status"].as_u64(), Some(200));
    }
    m.envoy.wait_metric(&sample("meshguard_circuit_failures_total", "grpc"), 4.0);
    m.envoy.wait_metric(&sample("meshguard_circuit_state", "grpc"), 0.0);
    assert_eq!(counter(&m.envoy, "meshguard_circuit_neutral_total", "grpc"), 0.0);
    assert_eq!(m.server.hits(), 5);

    // A third failure in a row opens it.
    let results = run(m.envoy.port, &[streamed("s-f5", "INTERNAL"), streamed("s-after", "OK")]);
    assert_eq!(results[0].code, "INTERNAL");
    assert_eq!(results[1].code, "UNAVAILABLE", "{:?}", results[1]);
    assert_eq!(results[1].md("x-meshguard-circuit").as_deref(), Some("open"));
    assert!(results[1].messages.is_empty());
    assert_eq!(m.server.hits(), 6);
    m.envoy.wait_metric(&sample("meshguard_circuit_failures_total", "grpc"), 5.0);
    m.envoy.wait_metric(&sample("meshguard_circuit_state", "grpc"), 2.0);
}

// ------------------------------------------------------------------------------------ case 3

/// The test service without the client's `grpc-timeout` (see tests/data/grpc-envoy.yaml): the
/// server never learns the deadline, so a call past it ends only by the client's reset.
const NO_DEADLINE_UNARY: &str = "/meshguard.test.NoDeadline/Unary";
const NO_DEADLINE_STREAM: &str = "/meshguard.test.NoDeadline/Stream";

/// Every unary call of `tags` was abandoned by its caller, as Envoy saw it (no response headers,
/// the downstream reset the stream), and the server saw it go away.
fn assert_abandoned(m: &Mesh, tags: &[&str]) {
    for tag in tags {
        let line = m.envoy.access_log_for(tag);
        assert_eq!((line["status"].as_u64(), line["response_flags"].as_str()), (Some(0), Some("DR")), "{line}");
        assert_eq!((line["grpc_status_header"].as_str(), line["grpc_status_trailer"].as_str()), (None, None));
        assert_eq!(m.server.wait_end(tag, 10)["active"], false, "{tag}: the server's call was cancelled");
    }
}

#[test]
fn client_deadlines_and_cancels_are_neutral_and_never_open_the_circuit() {
    support::require_envoy!();
    let m = mesh(&grpc_rule(
        r#"{"consecutive_failures": 3, "minimum_calls": 2, "failure_rate_threshold": 50, "slow_call_duration": "500ms"}"#,
        r#""disabled""#,
    ));
    // A healthy method that would answer OK after 1.5 s; every client gives up after 200 ms.
    let tags: Vec<String> = (0..8).map(|i| format!("deadline-{i}")).collect();
    let calls: Vec<Call> = tags
        .iter()
        .map(|tag| {
            Call::new(NO_DEADLINE_UNARY, json!({"tag": tag, "sleep_ms": 1500}))
                .timeout(0.2)
                .metadata("x-correlation-id", tag)
        })
        .collect();
    for r in run(m.envoy.port, &calls) {
        assert_eq!(r.code, "DEADLINE_EXCEEDED", "{r:?}");
    }
    assert_abandoned(&m, &tags.iter().map(String::as_str).collect::<Vec<_>>());
    m.envoy.wait_metric(&sample("meshguard_circuit_neutral_total", "grpc"), 8.0);

    // A streaming call the client cancels after two messages (HTTP 200 and messages came, the
    // status never will), and a unary call it cancels while the server works.
    let results = run(
        m.envoy.port,
        &[
            Call::new(NO_DEADLINE_STREAM, json!({"tag": "cancel-stream", "messages": 20, "gap_ms": 100}))
                .cancel_after_messages(2)
                .metadata("x-correlation-id", "cancel-stream"),
            Call::new(NO_DEADLINE_UNARY, json!({"tag": "cancel-unary", "sleep_ms": 1500}))
                .cancel_after_ms(150)
                .metadata("x-correlation-id", "cancel-unary"),
        ],
    );
    assert_eq!((results[0].code.as_str(), results[0].messages.len()), ("CANCELLED", 2), "{:?}", results[0]);
    assert_eq!(results[1].code, "CANCELLED", "{:?}", results[1]);
    let line = m.envoy.access_log_for("cancel-stream");
    assert_eq!((line["status"].as_u64(), line["response_flags"].as_str()), (Some(200), Some("DR")), "{line}");
    assert_eq!(m.server.wait_end("cancel-stream", 10)["active"], false);
    assert_abandoned(&m, &["cancel-unary"]);
    m.envoy.wait_metric(&sample("meshguard_circuit_neutral_total", "grpc"), 10.0);

    // A deadline longer than slow_call_duration: the caller's timeout says the call was slow.
    let slow = call(
        m.envoy.port,
        Call::new(NO_DEADLINE_UNARY, json!({"tag": "slow", "sleep_ms": 1500}))
            .timeout(0.8)
            .metadata("x-correlation-id", "slow"),
    );
    assert_eq!(slow.code, "DEADLINE_EXCEEDED");
    assert_abandoned(&m, &["slow"]);
    m.envoy.wait_metric(&sample("meshguard_circuit_slow_total", "grpc"), 1.0);
    // A stream is measured to its response headers. Headers that came after slow_call_duration,
    // then a cancel: slow. Headers at once and a cancel 600 ms later (a long-lived stream the
    // client ends): neutral, not slow.
    let streams = run(
        m.envoy.port,
        &[
            Call::new(
                NO_DEADLINE_STREAM,
                json!({"tag": "late-headers", "sleep_ms": 700, "messages": 20, "gap_ms": 100}),
            )
            .cancel_after_messages(1)
            .metadata("x-correlation-id", "late-headers"),
            Call::new(NO_DEADLINE_STREAM, json!({"tag": "long-stream", "messages": 20, "gap_ms": 300}))
                .cancel_after_messages(3)
                .metadata("x-correlation-id", "long-stream"),
        ],
    );
    for r in &streams {
        assert_eq!(r.code, "CANCELLED", "{r:?}");
        assert!(r.elapsed_ms > 550.0, "{r:?}");
    }
    for tag in ["late-headers", "long-stream"] {
        let line = m.envoy.access_log_for(tag);
        assert_eq!((line["status"].as_u64(), line["response_flags"].as_str()), (Some(200), Some("DR")), "{line}");
    }
    m.envoy.wait_metric(&sample("meshguard_circuit_slow_total", "grpc"), 2.0);
    m.envoy.wait_metric(&sample("meshguard_circuit_neutral_total", "grpc"), 11.0);

    assert_eq!(counter(&m.envoy, "meshguard_circuit_failures_total", "grpc"), 0.0);
    assert_eq!(m.envoy.metric(&sample("meshguard_circuit_state", "grpc")), Some(0.0));
    let after = call(m.envoy.port, Call::new(UNARY, json!({"tag": "after"})));
    assert_eq!(after.code, "OK", "{after:?}");
    assert_eq!(m.server.calls_tagged("after"), 1, "the circuit is closed");
}

/// The same deadlines with the client's `grpc-timeout` reaching the server, as it does in a mesh:
/// the gRPC server enforces the deadline too, and answers DEADLINE_EXCEEDED (4, a default
/// `failure_grpc_status`) in a trailers-only response at the moment the client resets the
/// stream. Whichever reaches Envoy first, the call is the caller's abandoned one: a reset (DR) is
/// neutral, and so is a DEADLINE_EXCEEDED that comes once the request's `grpc-timeout` has run
/// out. (Before meshguard read `grpc-timeout`, 2 of 3 such calls in one run, 0 to 6 of 40 in
/// others, counted as failures.)
#[test]
fn deadlines_the_server_also_enforces_are_neutral() {
    support::require_envoy!();
    let m = mesh(&grpc_rule(r#"{"minimum_calls": 1000, "slow_call_duration": "2s"}"#, r#""disabled""#));
    let tags: Vec<String> = (0..40).map(|i| format!("deadline-{i}")).collect();
    let calls: Vec<Call> = tags
        .iter()
        .map(|tag| {
            Call::new(UNARY, json!({"tag": tag, "sleep_ms": 1500})).timeout(0.2).metadata("x-correlation-id", tag)
        })
        .collect();
    for r in run(m.envoy.port, &calls) {
        assert_eq!(r.code, "DEADLINE_EXCEEDED", "{r:?}");
    }
    let by_server: Vec<serde_json::Value> =
        tags.iter().map(|tag| m.envoy.access_log_for(tag)).filter(|line| line["grpc_status_header"] == "4").collect();
    m.envoy.wait_for("every outcome", 15, |e| {
        let n = counter(e, "meshguard_circuit_neutral_total", "grpc")
            + counter(e, "meshguard_circuit_failures_total", "grpc");
        (n == 40.0).then_some(())
    });
    assert_eq!(
        counter(&m.envoy, "meshguard_circuit_failures_total", "grpc"),
        0.0,
        "{} of 40 calls the client abandoned at its deadline were judged by the server's DEADLINE_EXCEEDED, e.g. {:?}",
        by_server.len(),
        by_server.first()
    );
}

// ------------------------------------------------------------------------------------ case 4

fn delivery(method: &str, tag: &str, event_id: &str, request: serde_json::Value) -> Call {
    let mut request = request;
    request["tag"] = json!(tag);
    Call::new(method, request).metadata("x-event-id", event_id).metadata("x-correlation-id", tag)
}

#[test]
fn dedup_settles_a_grpc_key_by_grpc_status_and_refuses_with_grpc_codes() {
    support::require_envoy!();
    let m = mesh(&grpc_rule(r#""disabled""#, "{}"));
    // A failed call (HTTP 200, grpc-status 14) releases its key: the redelivery is processed.
    let results = run(
        m.envoy.port,
        &[
            delivery(UNARY, "e1-fail", "e-1", json!({"code": "UNAVAILABLE", "details": "try later"})),
            delivery(UNARY, "e1-retry", "e-1", json!({})),
            delivery(UNARY, "e1-dup", "e-1", json!({})),
        ],
    );
    assert_eq!(results[0].code, "UNAVAILABLE");
    assert_eq!(results[1].code, "OK", "{:?}", results[1]);
    assert_eq!((m.server.calls_tagged("e1-fail"), m.server.calls_tagged("e1-retry")), (1, 1));
    assert_eq!(m.server.calls()[0]["metadata"]["x-event-id"], "e-1", "the key reaches the server");
    // The OK call completed it: the next delivery is answered by meshguard.
    let dup = &results[2];
    assert_eq!((dup.code.as_str(), dup.code_value), ("ALREADY_EXISTS", 6), "{dup:?}");
    assert_eq!(dup.md("x-meshguard-dedup").as_deref(), Some("duplicate"));
    assert_eq!(dup.md("x-correlation-id").as_deref(), Some("e1-dup"));
    let body: serde_json::Value = serde_json::from_str(&dup.details).unwrap();
    assert_eq!((body["dedup"].as_str(), body["event_id"].as_str()), (Some("duplicate"), Some("e-1")));
    assert_eq!(m.server.calls_tagged("e1-dup"), 0, "the duplicate never reached the server");
    assert_eq!(m.envoy.access_log_for("e1-fail")["dedup"], "released");
    assert_eq!(m.envoy.access_log_for("e1-retry")["dedup"], "first");
    assert_eq!(m.envoy.access_log_for("e1-dup")["dedup"], "duplicate");
    m.envoy.wait_metric(r#"meshguard_dedup_total{rule="grpc",outcome="released"}"#, 1.0);
    m.envoy.wait_metric(r#"meshguard_dedup_total{rule="grpc",outcome="duplicate"}"#, 1.0);

    // A status in the trailers, after messages, settles it the same way: released on INTERNAL,
    // completed on OK.
    let results = run(
        m.envoy.port,
        &[
            delivery(STREAM, "e2-fail", "e-2", json!({"messages": 2, "code": "INTERNAL"})),
            delivery(STREAM, "e2-retry", "e-2", json!({"messages": 2})),
            delivery(STREAM, "e2-dup", "e-2", json!({"messages": 2})),
        ],
    );
    let codes: Vec<&str> = results.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["INTERNAL", "OK", "ALREADY_EXISTS"], "{results:?}");
    assert_eq!((m.server.calls_tagged("e2-retry"), m.server.calls_tagged("e2-dup")), (1, 0));

    // Two deliveries at once, the first still being processed (1 s): ABORTED for the other.
    // Which one is first is up to the channel; the second starts 300 ms after the first.
    let results = grpc_peer::run_parallel(
        m.envoy.port,
        &[
            delivery(UNARY, "e3-a", "e-3", json!({"sleep_ms": 1000})),
            delivery(UNARY, "e3-b", "e-3", json!({"sleep_ms": 1000})).start_ms(300),
        ],
    );
    let mut codes: Vec<&str> = results.iter().map(|r| r.code.as_str()).collect();
    codes.sort_unstable();
    assert_eq!(codes, ["ABORTED", "OK"], "{results:?}");
    let refused = results.iter().find(|r| r.code == "ABORTED").unwrap();
    assert_eq!(refused.code_value, 10);
    assert_eq!(refused.md("x-meshguard-dedup").as_deref(), Some("in-flight"), "{refused:?}");
    assert_eq!(m.server.calls_tagged("e3-a") + m.server.calls_tagged("e3-b"), 1);
    m.envoy.wait_metric(r#"meshguard_dedup_total{rule="grpc",outcome="in_flight"}"#, 1.0);
}

#[test]
fn dedup_refuses_a_reused_or_invalid_grpc_key_with_grpc_codes() {
    support::require_envoy!();
    let m = mesh(&grpc_rule(r#""disabled""#, r#"{"fingerprint": "method_path"}"#));
    let long_id = "k".repeat(256);
    let results = run(
        m.envoy.port,
        &[
            delivery(UNARY, "f-first", "f-1", json!({})),
            // The same event id for another method of the service.
            delivery(OTHER, "f-other", "f-1", json!({})),
            delivery(UNARY, "f-long", &long_id, json!({})),
        ],
    );
    assert_eq!(results[0].code, "OK");
    let other = &results[1];
    assert_eq!((other.code.as_str(), other.code_value), ("FAILED_PRECONDITION", 9), "{other:?}");
    assert_eq!(other.md("x-meshguard-dedup").as_deref(), Some("mismatch"));
    assert!(other.details.contains("fingerprint_mismatch"), "{other:?}");
    let long = &results[2];
    assert_eq!((long.code.as_str(), long.code_value), ("INVALID_ARGUMENT", 3), "{long:?}");
    assert_eq!(long.md("x-meshguard-dedup").as_deref(), Some("invalid"));
    let body: serde_json::Value = serde_json::from_str(&long.details).unwrap();
    assert_eq!((body["error"].as_str(), body["header"].as_str()), (Some("invalid_event_id"), Some("x-event-id")));
    assert_eq!(m.server.hits(), 1, "only the first call reached the server");
    m.envoy.wait_metric(r#"meshguard_dedup_total{rule="grpc",outcome="mismatch"}"#, 1.0);
    m.envoy.wait_metric(r#"meshguard_dedup_total{rule="grpc",outcome="invalid"}"#, 1.0);
}

// ------------------------------------------------------------------------------------ case 5

/// One GET through curl that gives up after 300 ms (`-m`), over HTTP/1.1 or HTTP/2 (h2c, prior
/// knowledge); curl's exit code (28: timed out).
fn curl_giving_up(port: u16, path: &str, http2: bool, correlation_id: &str) -> i32 {
    let protocol = if http2 { "--http2-prior-knowledge" } else { "--http1.1" };
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-m", "0.3", protocol, "-H"])
        .arg(format!("x-correlation-id: {correlation_id}"))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl (scripts/setup.sh installs it)");
    out.status.code().unwrap_or(-1)
}

#[test]
fn http_callers_timing_out_on_a_slow_healthy_route_never_open_the_circuit() {
    support::require_envoy!();
    let m = mesh(
        r#"{"circuit_breaker": {"consecutive_failures": 3, "minimum_calls": 2, "failure_rate_threshold": 50,
                                "slow_call_duration": "2s"}}"#,
    );
    let mut tags = Vec::new();
    for i in 0..6 {
        for http2 in [false, true] {
            let tag = format!("giving-up-{i}-{}", if http2 { "h2" } else { "h1" });
            assert_eq!(curl_giving_up(m.envoy.port, "/slow?delay_ms=1500", http2, &tag), 28, "{tag}: curl timed out");
            tags.push(tag);
        }
    }
    for tag in &tags {
        let line = m.envoy.access_log_for(tag);
        // curl gives up by closing the connection, over HTTP/2 too (DC, "downstream_remote_
        // disconnect"); a reset stream on a living connection (DR) is what the gRPC cases show.
        assert_eq!(line["response_flags"], "DC", "{line}");
        assert_eq!((line["status"].as_u64(), line["circuit"].as_str()), (Some(0), Some("closed")), "{line}");
    }
    assert!(m.upstream.wait_for_hits(12, std::time::Duration::from_secs(10)), "every call reached the upstream");
    m.envoy.wait_metric(&sample("meshguard_circuit_neutral_total", "default"), 12.0);
    assert_eq!(counter(&m.envoy, "meshguard_circuit_failures_total", "default"), 0.0);
    assert_eq!(counter(&m.envoy, "meshguard_circuit_slow_total", "default"), 0.0);
    assert_eq!(m.envoy.metric(&sample("meshguard_circuit_state", "default")), Some(0.0));
    let r = support::http::send(m.envoy.port, &support::http::Request::get("/after")).unwrap();
    assert_eq!(r.status, 200, "the circuit is closed: {}", r.text());
    assert!(r.header("x-meshguard-circuit").is_none());
}

// ------------------------------------------------------------------------------------ case 6

/// Istio's default retry policy of outbound routes up to 1.23 (and later with
/// `EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY=false`): istio/istio
/// pilot/pkg/networking/core/route/retry/retry.go, `DefaultPolicy`, with 503 among the
/// retriable status codes.
const ISTIO_1_23_RETRIES: &str = r#"{ retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                   num_retries: 2, retriable_status_codes: [503], host_selection_retry_max_attempts: 5,
                   retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts,
                     typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }] }"#;

/// The same policy since Istio 1.24: no retriable status codes (HTTP 503 is not retried), gRPC
/// UNAVAILABLE still is.
const ISTIO_RETRIES: &str = r#"{ retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                   num_retries: 2, host_selection_retry_max_attempts: 5,
                   retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts,
                     typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }] }"#;

/// A plain Envoy (no meshguard): listener `ingress` with these routes (YAML list items at the
/// routes' indentation) and clusters `name -> port`, each speaking the caller's protocol
/// (HTTP/1.1 or HTTP/2) upstream, as Istio's sidecars do for a port of unknown protocol.
fn plain_envoy(routes: &str, clusters: &[(&str, u16)]) -> Envoy {
    let mut yaml = String::from(
        r#"admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
static_resources:
  listeners:
    - name: ingress
      address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: hop
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
"#,
    );
    yaml.push_str(routes);
    yaml.push_str(
        r#"
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
"#,
    );
    for (name, port) in clusters {
        yaml.push_str(&format!(
            r#"    - name: {name}
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          use_downstream_protocol_config: {{ http_protocol_options: {{}}, http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: {name}
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}]
"#
        ));
    }
    Envoy::try_start_bootstrap(&yaml, 1, &[]).unwrap_or_else(|log| panic!("plain Envoy did not start:\n{log}\n{yaml}"))
}

#[test]
fn one_call_through_a_retrying_caller_sidecar_meets_an_open_circuit_once() {
    support::require_envoy!();
    // The consumer's sidecar: meshguard with the circuit forced open, for gRPC and HTTP alike.
    let consumer = mesh(
        r#"{"circuit_breaker": {"mode": "forced_open", "open_duration": "20s"},
            "routes": [{"name": "grpc", "match": {"prefix": "/meshguard.test."}}]}"#,
    );
    // For comparison: a hop that removes `x-envoy-ratelimited` from the consumer's answers, and
    // changes nothing else.
    let stripper = plain_envoy(
        r#"                        - match: { prefix: "/" }
                          route: { cluster: consumer, timeout: 10s }
                          response_headers_to_remove: ["x-envoy-ratelimited"]"#,
        &[("consumer", consumer.envoy.port)],
    );
    // The caller's sidecar, with Istio's retry policy; `x-route` picks the comparison paths.
    let caller = plain_envoy(
        &format!(
            r#"                        - match: {{ prefix: "/", headers: [{{ name: x-route, string_match: {{ exact: strip }} }}] }}
                          route: {{ cluster: stripper, timeout: 10s, retry_policy: {ISTIO_1_23_RETRIES} }}
                        - match: {{ prefix: "/", headers: [{{ name: x-route, string_match: {{ exact: strip-istio-1.24 }} }}] }}
                          route: {{ cluster: stripper, timeout: 10s, retry_policy: {ISTIO_RETRIES} }}
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: consumer, timeout: 10s, retry_policy: {ISTIO_1_23_RETRIES} }}"#
        ),
        &[("consumer", consumer.envoy.port), ("stripper", stripper.port)],
    );
    let seen = |rule: &str| counter(&consumer.envoy, "meshguard_requests_total", rule);
    let rejected = |rule: &str| counter(&consumer.envoy, "meshguard_circuit_rejected_total", rule);
    // Each call's attempts are over when the caller answers; the consumer's stats then settle on
    // exactly `expected` more requests, all rejected.
    let expect_attempts = |rule: &str, before: f64, expected: f64| {
        consumer.envoy.wait_metric(&sample("meshguard_requests_total", rule), before + expected);
        consumer.envoy.wait_metric(&sample("meshguard_circuit_rejected_total", rule), before + expected);
    };
    let http_call = |route: Option<&str>| {
        let mut request = support::http::Request::get("/orders");
        if let Some(route) = route {
            request = request.header("x-route", route);
        }
        support::http::send(caller.port, &request).unwrap()
    };
    let grpc_call = |route: Option<&str>| {
        let mut c = Call::new(UNARY, json!({"tag": "through-caller"}));
        if let Some(route) = route {
            c = c.metadata("x-route", route);
        }
        call(caller.port, c)
    };

    // HTTP/1.1: one rejection per call, no retry.
    for _ in 0..2 {
        let before = seen("default");
        let r = http_call(None);
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("x-meshguard-circuit").as_deref(), Some("open"));
        assert_eq!(r.header("x-envoy-ratelimited").as_deref(), Some("true"));
        expect_attempts("default", before, 1.0);
    }
    // gRPC: UNAVAILABLE with pushback, one rejection per call, no retry.
    for _ in 0..2 {
        let before = seen("grpc");
        let r = grpc_call(None);
        assert_eq!((r.code.as_str(), r.md("x-meshguard-circuit").as_deref()), ("UNAVAILABLE", Some("open")), "{r:?}");
        let pushback: u64 = r.md("grpc-retry-pushback-ms").expect("pushback").parse().unwrap();
        assert!((19_000..=20_000).contains(&pushback), "{pushback}");
        expect_attempts("grpc", before, 1.0);
    }
    assert_eq!(caller.metric(r#"envoy_cluster_upstream_rq_retry{envoy_cluster_name="consumer"}"#), Some(0.0));
    assert_eq!(consumer.server.hits(), 0);
    assert_eq!(consumer.upstream.hits(), 0);

    // The same answers without `x-envoy-ratelimited`: the caller retries each twice.
    let before = seen("default");
    let r = http_call(Some("strip"));
    assert_eq!((r.status, r.header("x-envoy-ratelimited")), (503, None));
    expect_attempts("default", before, 3.0);
    let before = seen("grpc");
    assert_eq!(grpc_call(Some("strip")).code, "UNAVAILABLE");
    expect_attempts("grpc", before, 3.0);
    caller.wait_metric(r#"envoy_cluster_upstream_rq_retry{envoy_cluster_name="stripper"}"#, 4.0);
    // Istio 1.24's default no longer retries an HTTP 503, but still retries gRPC UNAVAILABLE.
    let before = seen("default");
    assert_eq!(http_call(Some("strip-istio-1.24")).status, 503);
    expect_attempts("default", before, 1.0);
    let before = seen("grpc");
    assert_eq!(grpc_call(Some("strip-istio-1.24")).code, "UNAVAILABLE");
    expect_attempts("grpc", before, 3.0);
    assert_eq!((rejected("default"), rejected("grpc")), (seen("default"), seen("grpc")));
    assert_eq!(consumer.server.hits() + consumer.upstream.hits(), 0);
}

#[test]
fn a_caller_side_meshguard_sees_one_call_and_the_outcome_after_envoys_retries() {
    support::require_envoy!();
    // meshguard in the caller's sidecar, whose router retries as Istio's default policy does;
    // the server fails the first attempts of a call with UNAVAILABLE.
    let server = GrpcServer::start();
    let upstream = Upstream::start();
    let config = r#"{"dedup": {"on_missing": "generate"},
                     "routes": [{"name": "grpc", "match": {"prefix": "/meshguard.test."},
                                 "circuit_breaker": {"consecutive_failures": 1, "open_duration": "30s"}}]}"#;
    let mut opts = Options::new(config, upstream.port);
    opts.bootstrap = "tests/data/grpc-envoy.yaml";
    opts.ports = vec![("grpc", server.port)];
    let route = "match: { prefix: \"/meshguard.test.\" }\n                          route: { cluster: grpc_upstream, timeout: 10s }";
    let rendered = render_bootstrap(&opts, 0, 0);
    assert!(rendered.contains(route), "the grpc route of tests/data/grpc-envoy.yaml");
    let retrying =
        rendered.replacen(route, &format!("{}, retry_policy: {ISTIO_RETRIES} }}", route.trim_end_matches(" }")), 1);
    let caller = Envoy::try_start_bootstrap(&retrying, 2, &[]).unwrap_or_else(|log| panic!("{log}"));

    // Two failed attempts, then OK: meshguard saw one call, and a success.
    let r = call(
        caller.port,
        Call::new(UNARY, json!({"tag": "recovering", "code": "UNAVAILABLE", "fail_times": 2}))
            .metadata("x-correlation-id", "c-recovering"),
    );
    assert_eq!(r.code, "OK", "{r:?}");
    assert_eq!(server.calls_tagged("recovering"), 3, "two retries");
    caller.wait_metric(r#"envoy_cluster_upstream_rq_retry{envoy_cluster_name="grpc_upstream"}"#, 2.0);
    caller.wait_metric(&sample("meshguard_requests_total", "grpc"), 1.0);
    assert_eq!(
        counter(&caller, "meshguard_circuit_failures_total", "grpc"),
        0.0,
        "consecutive_failures: 1 never saw a failure"
    );
    assert_eq!(caller.metric(&sample("meshguard_circuit_state", "grpc")), Some(0.0));
    // The id meshguard stamped before the router went out with every attempt.
    let ids: Vec<String> = server
        .calls()
        .iter()
        .filter(|c| c["tag"] == "recovering")
        .map(|c| c["metadata"]["x-event-id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids[0].len(), 36, "{ids:?}");
    assert!(ids.iter().all(|id| *id == ids[0]), "one event id for all attempts: {ids:?}");
    assert_eq!(caller.access_log_for("c-recovering")["event_id"].as_str(), Some(&*ids[0]));

    // Every attempt fails: one call, one failure, and the circuit opens.
    let r = call(caller.port, Call::new(UNARY, json!({"tag": "down", "code": "UNAVAILABLE"})));
    assert_eq!(r.code, "UNAVAILABLE", "{r:?}");
    assert_eq!(server.calls_tagged("down"), 3);
    caller.wait_metric(&sample("meshguard_requests_total", "grpc"), 2.0);
    caller.wait_metric(&sample("meshguard_circuit_failures_total", "grpc"), 1.0);
    caller.wait_metric(&sample("meshguard_circuit_state", "grpc"), 2.0);
    let r = call(caller.port, Call::new(UNARY, json!({"tag": "after"})));
    assert_eq!((r.code.as_str(), r.md("x-meshguard-circuit").as_deref()), ("UNAVAILABLE", Some("open")));
    assert_eq!(server.calls_tagged("after"), 0, "rejected before the router: not retried either");
}
