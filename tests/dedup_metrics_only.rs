//! `dedup.mode: "metrics_only"` in a real Envoy: the same traffic as under `enforce` — duplicates,
//! a fingerprint mismatch, missing keys with `on_missing: "reject"`, invalid keys, keys in the
//! body, a batch, a released key, an in-flight race — all reaches the service untouched, no
//! `x-meshguard-dedup` is set, and `meshguard_dedup_total{outcome}` counts exactly what enforce
//! counted while answering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::thread;
use std::time::Duration;

use support::envoy::Envoy;
use support::http::{send, Request};
use support::upstream::Upstream;

const OUTCOMES: [&str; 9] =
    ["first", "duplicate", "in_flight", "released", "missing", "invalid", "mismatch", "generated", "batch"];

fn config(mode: &str) -> String {
    format!(
        r#"{{"dedup": {{"mode": "{mode}", "on_missing": "reject", "fingerprint": "method_path", "body_key": "/eventId"}}}}"#
    )
}

fn keyed(path: &str, key: &str) -> Request {
    Request::post(path).header("x-event-id", key).header("content-length", "0")
}

fn json(path: &str, body: &str) -> Request {
    Request::post(path).header("content-type", "application/json").body(body.as_bytes().to_vec())
}

fn with_type(path: &str, content_type: &str, body: &str) -> Request {
    Request::post(path).header("content-type", content_type).body(body.as_bytes().to_vec())
}

/// One request of the sequence: what enforce answers (status, `x-meshguard-dedup`) and whether
/// the service sees it under enforce.
struct Step {
    name: &'static str,
    request: Request,
    status: u16,
    marker: Option<&'static str>,
    reaches: bool,
}

fn step(name: &'static str, request: Request, status: u16, marker: Option<&'static str>, reaches: bool) -> Step {
    Step { name, request: request.header("x-correlation-id", name), status, marker, reaches }
}

fn steps() -> Vec<Step> {
    let event = r#"{"specversion":"1.0","source":"/orders","id":"ce-1","type":"t"}"#;
    let batch = format!("[{event}]");
    vec![
        step("hdr-first", keyed("/a", "m-1"), 200, None, true),
        step("hdr-duplicate", keyed("/a", "m-1"), 200, Some("duplicate"), false),
        step("hdr-mismatch", keyed("/b", "m-1"), 422, Some("mismatch"), false),
        step("no-key", Request::post("/a").header("content-length", "0"), 400, Some("missing"), false),
        step("bad-key", keyed("/a", "has space"), 400, Some("invalid"), false),
        step("two-lines", keyed("/a", "l-1").header("x-event-id", "l-2"), 400, Some("invalid"), false),
        step("body-first", json("/a", r#"{"eventId":"b-1","n":1}"#), 200, None, true),
        step("body-duplicate", json("/a", r#"{"eventId":"b-1","n":1}"#), 200, Some("duplicate"), false),
        step("body-no-key", json("/a", r#"{"n":1}"#), 400, Some("missing"), false),
        step("body-not-json", json("/a", "eventId=b-2"), 400, Some("missing"), false),
        step("body-empty-key", json("/a", r#"{"eventId":""}"#), 400, Some("invalid"), false),
        step("ce-first", with_type("/a", "application/cloudevents+json", event), 200, None, true),
        step("ce-duplicate", with_type("/a", "application/cloudevents+json", event), 200, Some("duplicate"), false),
        step("batch", with_type("/a", "application/cloudevents-batch+json", &batch), 200, None, true),
        step("failed", keyed("/a?status=500", "r-1"), 500, None, true),
        step("retried", keyed("/a", "r-1"), 200, None, true),
    ]
}

/// Counts of the sequence: first 5 (m-1, b-1, ce-1, r-1 twice) + the in-flight race's first.
const EXPECTED: [(&str, f64); 9] = [
    ("first", 6.0),
    ("duplicate", 3.0),
    ("in_flight", 1.0),
    ("released", 1.0),
    ("missing", 3.0),
    ("invalid", 3.0),
    ("mismatch", 1.0),
    ("generated", 0.0),
    ("batch", 1.0),
];

/// Runs the sequence and then one in-flight race (a slow first delivery of f-1 and a copy while
/// it is in flight); returns the counters once they have settled.
fn run(mode: &str) -> Vec<(&'static str, f64)> {
    let enforce = mode == "enforce";
    let upstream = Upstream::start();
    let envoy = Envoy::start(&config(mode), upstream.port);
    let mut expected_hits = 0;
    for s in steps() {
        let r = send(envoy.port, &s.request).unwrap();
        let marker = r.header("x-meshguard-dedup");
        if enforce {
            assert_eq!((r.status, marker.as_deref()), (s.status, s.marker), "{mode} {}: {}", s.name, r.text());
        } else {
            let service_status = if s.name == "failed" { 500 } else { 200 };
            assert_eq!((r.status, marker), (service_status, None), "{mode} {}: {}", s.name, r.text());
            assert_eq!(r.json()["body_len"], s.request.body.len(), "{mode} {}: the service's own answer", s.name);
        }
        if !enforce || s.reaches {
            expected_hits += 1;
            assert_eq!(upstream.last().unwrap().body, s.request.body, "{mode} {}: reached the service whole", s.name);
        }
        assert_eq!(upstream.hits(), expected_hits, "{mode} {}", s.name);
        // The access log says what happened (or, in metrics_only, would have).
        let line = envoy.access_log_for(s.name);
        let would = s.marker.map_or_else(
            || match s.name {
                "batch" => "batch",
                "failed" => "released",
                _ => "first",
            },
            |m| if m == "in-flight" { "in_flight" } else { m },
        );
        assert_eq!(line["dedup"], would, "{mode} {}", s.name);
    }
    let race = thread::scope(|scope| {
        let slow = scope.spawn(|| send(envoy.port, &keyed("/a?delay_ms=2000", "f-1")).unwrap());
        assert!(upstream.wait_for_hits(expected_hits + 1, Duration::from_secs(10)), "{mode}: slow delivery");
        let copy = send(envoy.port, &keyed("/a?delay_ms=2000", "f-1")).unwrap();
        (slow.join().unwrap(), copy)
    });
    let (slow, copy) = race;
    assert_eq!((slow.status, slow.header("x-meshguard-dedup")), (200, None), "{mode}");
    if enforce {
        assert_eq!((copy.status, copy.header("x-meshguard-dedup").as_deref()), (409, Some("in-flight")));
        assert_eq!(upstream.hits(), expected_hits + 1);
    } else {
        assert_eq!((copy.status, copy.header("x-meshguard-dedup")), (200, None), "{mode}: in flight");
        assert_eq!(upstream.hits(), expected_hits + 2);
    }
    for (name, value) in EXPECTED {
        envoy.wait_metric(&format!(r#"meshguard_dedup_total{{rule="default",outcome="{name}"}}"#), value);
    }
    OUTCOMES
        .iter()
        .map(|name| {
            (*name, envoy.metric(&format!(r#"meshguard_dedup_total{{rule="default",outcome="{name}"}}"#)).unwrap())
        })
        .collect()
}

#[test]
fn metrics_only_lets_everything_through_and_counts_what_enforce_would_have_done() {
    support::require_envoy!();
    let enforced = run("enforce");
    let observed = run("metrics_only");
    assert_eq!(observed, enforced);
}

/// A metrics_only duplicate whose key is decided on a body chunk keeps streaming to the service
/// (nothing is dropped), even a large one.
#[test]
fn metrics_only_forwards_a_large_body_keyed_duplicate_whole() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(&config("metrics_only"), upstream.port);
    let body = format!(r#"{{"eventId":"big-1","payload":"{}"}}"#, "z".repeat(2_000_000));
    for n in 1..=2 {
        let r = send(envoy.port, &json("/a", &body)).unwrap();
        assert_eq!((r.status, r.header("x-meshguard-dedup")), (200, None));
        assert_eq!(upstream.hits(), n);
        assert_eq!(upstream.last().unwrap().body, body.as_bytes());
    }
    envoy.wait_metric(r#"meshguard_dedup_total{rule="default",outcome="duplicate"}"#, 1.0);
}
