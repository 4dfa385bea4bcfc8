//! Circuit breaking (docs/behaviour.md) in a real Envoy with two workers: an upstream that fails on demand, one that is down,
//! a slow one, two rules side by side, and parallel clients over both workers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::sync::Arc;
use std::thread;

use support::envoy::{render_bootstrap, Envoy, Options};
use support::http::{send, Conn, Request};
use support::upstream::Upstream;

/// Rule `a` on `/a`, rule `b` on `/b`, each with this breaker section.
fn two_rules(breaker: &str) -> String {
    format!(
        r#"{{"routes": [{{"name": "a", "match": {{"prefix": "/a"}}, "circuit_breaker": {breaker}}},
                       {{"name": "b", "match": {{"prefix": "/b"}}, "circuit_breaker": {breaker}}}]}}"#
    )
}

fn transitions(envoy: &Envoy, rule: &str) -> Vec<String> {
    let prefix = format!("circuit {rule} ");
    envoy
        .meshguard_lines()
        .into_iter()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.to_string()))
        .collect()
}

#[test]
fn failing_upstream_opens_the_circuit_and_open_answers_locally() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        &two_rules(
            r#"{"failure_rate_threshold": 50, "window": {"type": "count", "size": 10}, "minimum_calls": 4, "open_duration": "30s"}"#,
        ),
        upstream.port,
    );
    for i in 0..4 {
        let r = send(envoy.port, &Request::get("/a?status=500")).unwrap();
        assert_eq!(r.status, 500, "call {i} reaches the upstream");
    }
    assert_eq!(upstream.hits(), 4);
    let r = send(envoy.port, &Request::get("/a/orders").header("x-correlation-id", "c-open")).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(upstream.hits(), 4, "an open circuit never touches the upstream");
    assert_eq!(r.header("x-meshguard-circuit").as_deref(), Some("open"));
    assert_eq!(r.header("x-correlation-id").as_deref(), Some("c-open"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
    let body = r.json();
    assert_eq!((body["error"].as_str(), body["rule"].as_str()), (Some("circuit_open"), Some("a")));
    assert_eq!(body["retry_after_s"].as_u64(), Some(retry));
    assert_eq!(body["correlation_id"], "c-open");

    // Rule b is a different circuit.
    assert_eq!(send(envoy.port, &Request::get("/b/ok")).unwrap().status, 200);

    let line = envoy.access_log_for("c-open");
    assert_eq!(
        (line["circuit"].as_str(), line["rule"].as_str(), line["status"].as_u64()),
        (Some("rejected"), Some("a"), Some(503))
    );
    // The local reply carries the request's trace-id, the one in the access log.
    assert_eq!(body["trace_id"].as_str().map(str::len), Some(32));
    assert_eq!(body["trace_id"], line["trace_id"]);
    envoy.wait_metric(r#"meshguard_circuit_state{rule="a"}"#, 2.0);
    envoy.wait_metric(r#"meshguard_circuit_state{rule="b"}"#, 0.0);
    envoy.wait_metric(r#"meshguard_circuit_transitions_total{rule="a",to="open"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_circuit_rejected_total{rule="a"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_circuit_failures_total{rule="a"}"#, 4.0);
    assert_eq!(
        transitions(&envoy, "a"),
        vec![
            "closed -> open (failure rate 100% of 4 calls; open for 30s) (correlation_id=".to_string()
                + &transition_id(&envoy)
        ]
    );
}

/// The correlation id in the one transition line (generated for the call that tripped it).
fn transition_id(envoy: &Envoy) -> String {
    let lines = transitions(envoy, "a");
    lines[0].rsplit_once("correlation_id=").unwrap().1.to_string()
}

#[test]
fn unreachable_upstream_counts_as_failure_by_envoy_flags() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let port = upstream.port;
    drop(upstream); // nothing listens any more: Envoy answers 503 UF itself
                    // 503 is not in failure_status: only the response flags make these failures.
    let envoy = Envoy::start(r#"{"circuit_breaker": {"consecutive_failures": 3, "failure_status": [500]}}"#, port);
    for _ in 0..3 {
        assert_eq!(send(envoy.port, &Request::get("/x")).unwrap().status, 503);
    }
    let r = send(envoy.port, &Request::get("/x")).unwrap();
    assert_eq!(r.header("x-meshguard-circuit").as_deref(), Some("open"));
    envoy.wait_metric(r#"meshguard_circuit_failures_total{rule="default"}"#, 3.0);
    assert!(transitions(&envoy, "default")[0].starts_with("closed -> open (3 consecutive failures"));
}

#[test]
fn slow_upstream_opens_by_slow_call_rate() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        r#"{"circuit_breaker": {"slow_call_duration": "100ms", "slow_call_rate_threshold": 50, "minimum_calls": 2}}"#,
        upstream.port,
    );
    assert_eq!(send(envoy.port, &Request::get("/fast")).unwrap().status, 200);
    assert_eq!(send(envoy.port, &Request::get("/slow?delay_ms=250")).unwrap().status, 200);
    let r = send(envoy.port, &Request::get("/fast")).unwrap();
    assert_eq!(r.status, 503);
    envoy.wait_metric(r#"meshguard_circuit_slow_total{rule="default"}"#, 1.0);
    assert!(transitions(&envoy, "default")[0].starts_with("closed -> open (slow call rate 50% of 2 calls"));
}

#[test]
fn half_open_lets_exactly_the_probes_through_across_workers_then_closes() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let config = r#"{"circuit_breaker": {"consecutive_failures": 1, "open_duration": "1s", "half_open_calls": 3}}"#;
    let envoy = Arc::new(Envoy::start(config, upstream.port));
    assert_eq!(send(envoy.port, &Request::get("/status/500")).unwrap().status, 500);
    let opened_at = std::time::Instant::now();
    assert_eq!(send(envoy.port, &Request::get("/")).unwrap().status, 503);
    let hits_before = upstream.hits();
    // Wait out open_duration (a poll would send requests, which is what is being measured).
    thread::sleep(std::time::Duration::from_millis(1100).saturating_sub(opened_at.elapsed()));

    // 12 clients on separate connections (spread over both workers) at once; probes stay in
    // flight for 400 ms, so every other request meets a half-open circuit with its slots taken.
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let envoy = Arc::clone(&envoy);
            thread::spawn(move || {
                let mut conn = Conn::open(envoy.port).unwrap();
                conn.send(&Request::get("/probe?delay_ms=400")).unwrap().status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 9, "{statuses:?}");
    assert_eq!(upstream.hits() - hits_before, 3, "exactly half_open_calls probes reached the upstream");

    envoy.wait_metric(r#"meshguard_circuit_transitions_total{rule="default",to="closed"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_circuit_state{rule="default"}"#, 0.0);
    let t = transitions(&envoy, "default");
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(t[1].starts_with("open -> half_open (after 1s)"), "{t:?}");
    assert!(t[2].starts_with("half_open -> closed (3 of 3 probes succeeded)"), "{t:?}");
    assert_eq!(send(envoy.port, &Request::get("/")).unwrap().status, 200);
}

#[test]
fn parallel_failures_over_two_workers_open_at_the_same_call_count_and_once() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let config = r#"{"circuit_breaker": {"failure_rate_threshold": 50, "window": {"type": "count", "size": 50}, "minimum_calls": 20, "open_duration": "1m"}}"#;
    let envoy = Arc::new(Envoy::start(config, upstream.port));
    // 8 clients, 10 failing calls each, on their own connections.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let envoy = Arc::clone(&envoy);
            thread::spawn(move || {
                let mut conn = Conn::open(envoy.port).unwrap();
                (0..10).map(|_| conn.send(&Request::get("/status/500")).unwrap().status).collect::<Vec<_>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let reached = statuses.iter().filter(|s| **s == 500).count();
    // Calls in flight when the 20th outcome opened the circuit were admitted while closed.
    assert!((20..=27).contains(&reached), "{reached} calls reached the upstream");
    assert_eq!(statuses.len() - reached, statuses.iter().filter(|s| **s == 503).count());
    envoy.wait_metric(r#"meshguard_circuit_transitions_total{rule="default",to="open"}"#, 1.0);
    let t = transitions(&envoy, "default");
    assert_eq!(t.len(), 1, "logged once across workers: {t:?}");
    assert!(t[0].starts_with("closed -> open (failure rate 100% of 20 calls"), "{t:?}");
    assert!(envoy.crash_lines().is_empty());
}

#[test]
fn metrics_only_watches_without_rejecting() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy =
        Envoy::start(r#"{"circuit_breaker": {"consecutive_failures": 2, "mode": "metrics_only"}}"#, upstream.port);
    for _ in 0..2 {
        send(envoy.port, &Request::get("/status/500")).unwrap();
    }
    let r = send(envoy.port, &Request::get("/").header("x-correlation-id", "c-mo")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(envoy.access_log_for("c-mo")["circuit"], "open");
    envoy.wait_metric(r#"meshguard_circuit_state{rule="default"}"#, 2.0);
    envoy.wait_metric(r#"meshguard_circuit_rejected_total{rule="default"}"#, 1.0);
}

#[test]
fn local_replies_carry_traceresponse_when_asked() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let config = r#"{"circuit_breaker": {"mode": "forced_open"}, "trace": {"traceresponse": true}}"#;
    let envoy = Envoy::start(config, upstream.port);
    let tp = "00-12345678901234567890123456789012-1234567890123456-01";
    let r = send(envoy.port, &Request::get("/").header("traceparent", tp)).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("traceresponse").as_deref(), Some(tp));
    assert_eq!(r.json()["trace_id"], "12345678901234567890123456789012");
    assert_eq!(upstream.hits(), 0);
}

/// One keep-alive connection on each of Envoy's two workers (the per-worker listener counters
/// say which worker took each new connection).
fn one_connection_per_worker(envoy: &Envoy) -> [Conn; 2] {
    let accepted = |worker: usize| {
        // The listener is configured on port 0 (the kernel picks one), hence its stat name.
        let sample = format!(
            r#"envoy_listener_worker_downstream_cx_total{{envoy_worker_id="{worker}",envoy_listener_address="127.0.0.1_0"}}"#
        );
        envoy.metric(&sample).unwrap_or(0.0)
    };
    let mut conns: [Option<Conn>; 2] = [None, None];
    for _ in 0..64 {
        let before = [accepted(0), accepted(1)];
        let mut conn = Conn::open(envoy.port).unwrap();
        // A request makes sure the worker has accepted it before the counters are read.
        assert_eq!(conn.send(&Request::get("/")).unwrap().status, 200);
        let worker = (0..2).find(|w| accepted(*w) > before[*w]).expect("a worker took the connection");
        if conns[worker].is_none() {
            conns[worker] = Some(conn);
        }
        if conns.iter().all(Option::is_some) {
            return conns.map(Option::unwrap);
        }
    }
    panic!("64 connections never reached both workers");
}

/// Count window of 4, opens at 2 failures of 4.
const QUIET_THEN_OPEN: &str = r#"{"circuit_breaker": {"window": {"type": "count", "size": 4}, "minimum_calls": 4,
                                  "failure_rate_threshold": 50, "open_duration": "30s"}}"#;

/// Both workers see a full window of successes (each keeps a quiet copy and stops reading shared
/// data for the closed circuit); then worker 0 records two failures, which open the circuit.
/// Returns worker 1's connection.
fn quiet_on_both_workers_then_open_on_worker_0(envoy: &Envoy) -> Conn {
    let [mut w0, mut w1] = one_connection_per_worker(envoy);
    for _ in 0..6 {
        assert_eq!(w0.send(&Request::get("/")).unwrap().status, 200);
        assert_eq!(w1.send(&Request::get("/")).unwrap().status, 200);
    }
    for _ in 0..2 {
        assert_eq!(w0.send(&Request::get("/?status=500")).unwrap().status, 500);
    }
    w1
}

#[test]
fn a_circuit_opened_on_one_worker_rejects_on_the_other_whose_copy_was_quiet() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(QUIET_THEN_OPEN, upstream.port);
    let mut w1 = quiet_on_both_workers_then_open_on_worker_0(&envoy);
    envoy.wait_metric(r#"meshguard_circuit_transitions_total{rule="default",to="open"}"#, 1.0);
    let hits = upstream.hits();
    // Worker 1's copy is stale: the epoch moved, so it reads the shared value and rejects.
    let r = w1.send(&Request::get("/")).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-meshguard-circuit").as_deref(), Some("open"));
    assert_eq!(upstream.hits(), hits);
}

#[test]
fn with_meshguard_stats_rejected_by_envoy_a_circuit_still_opens_for_every_worker() {
    support::require_envoy!();
    // Istio without `proxyStatsMatcher` for meshguard: Envoy's stats matcher rejects its stats,
    // which then ignore writes and read 0. The breaker must not rely on them.
    let upstream = Upstream::start();
    let bootstrap = render_bootstrap(&Options::new(QUIET_THEN_OPEN, upstream.port), 0, 0).replacen(
        "stats_config:\n",
        "stats_config:\n  stats_matcher:\n    exclusion_list:\n      patterns: [{ safe_regex: { regex: \".*meshguard_.*\" } }]\n",
        1,
    );
    let envoy = Envoy::try_start_bootstrap(&bootstrap, 2, &[]).unwrap();
    assert_eq!(envoy.metric(r#"meshguard_requests_total{rule="default"}"#), None, "stats are rejected");
    let mut w1 = quiet_on_both_workers_then_open_on_worker_0(&envoy);
    let opened = envoy.wait_for("the transition line", 10, |e| {
        e.meshguard_lines().into_iter().find(|l| l.contains("circuit default closed -> open"))
    });
    assert!(opened.contains("failure rate 50% of 4 calls"), "{opened}");
    let hits = upstream.hits();
    let r = w1.send(&Request::get("/")).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(upstream.hits(), hits);
}
