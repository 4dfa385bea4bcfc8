//! A key header sent on more than one line (docs/behaviour.md, "The key") in a real Envoy, over
//! HTTP/1.1 and HTTP/2: refused with 400 before the service sees it, and the genuine single value
//! afterwards is a first delivery, not a duplicate of something that was never processed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/streaming.rs"]
mod streaming;
mod support;

use streaming::{h2_post, nothing};
use support::envoy::Envoy;
use support::http::{send, Request, Response};
use support::upstream::Upstream;

fn outcome(name: &str) -> String {
    format!(r#"meshguard_dedup_total{{rule="default",outcome="{name}"}}"#)
}

/// Each key header, the lines a request sends for it, and the header the refusal names.
/// `ce-source` counts only with a `ce-id`.
fn cases(tag: &str) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let v = |case: &str, s: &str| format!("{tag}-{case}-{s}");
    vec![
        ("x-event-id", vec![("x-event-id", v("x", "a")), ("x-event-id", v("x", "b"))]),
        (
            "idempotency-key",
            vec![("idempotency-key", v("i", "a")), ("idempotency-key", format!("\"{}\"", v("i", "b")))],
        ),
        ("ce-id", vec![("ce-source", "/s".into()), ("ce-id", v("c", "a")), ("ce-id", v("c", "b"))]),
        ("ce-source", vec![("ce-id", v("s", "a")), ("ce-source", "/s".into()), ("ce-source", "/t".into())]),
        // The same value twice is still two lines.
        ("x-event-id", vec![("x-event-id", v("x", "a")), ("x-event-id", v("x", "a"))]),
    ]
}

/// The genuine request: the first line of each header alone.
fn genuine(lines: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for (name, value) in lines {
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name, value.clone()));
        }
    }
    out
}

fn check_refusal(r: &Response, header: &str, how: &str) {
    assert_eq!(r.status, 400, "{how} {header}: {}", r.text());
    assert_eq!(r.header("x-meshguard-dedup").as_deref(), Some("invalid"), "{how} {header}");
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "invalid_event_id", "header": header, "reason": "sent on more than one line"}),
        "{how}"
    );
}

#[test]
fn a_key_header_on_two_lines_is_refused_over_http1_and_the_genuine_key_is_new() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    let cases = cases("h1");
    for (header, lines) in &cases {
        let mut request = Request::post("/e").header("content-length", "0");
        for (name, value) in lines {
            request = request.header(name, value);
        }
        let hits = upstream.hits();
        check_refusal(&send(envoy.port, &request).unwrap(), header, "HTTP/1.1");
        assert_eq!(upstream.hits(), hits, "{header}: the service saw a refused request");
    }
    assert_eq!(upstream.hits(), 0);
    // Each first line alone: processed, not a duplicate (the last case repeats the first's key).
    for (n, (header, lines)) in cases.iter().enumerate().take(4) {
        let mut request = Request::post("/e").header("content-length", "0");
        for (name, value) in genuine(lines) {
            request = request.header(name, value);
        }
        let r = send(envoy.port, &request).unwrap();
        assert_eq!((r.status, r.header("x-meshguard-dedup")), (200, None), "{header}: {}", r.text());
        assert_eq!(upstream.hits(), n + 1, "{header}");
        let received = upstream.last().unwrap();
        for (name, value) in genuine(lines) {
            assert_eq!(received.header_all(name), vec![value], "{header}: reached the service as sent");
        }
    }
    envoy.wait_metric(&outcome("invalid"), cases.len() as f64);
    envoy.wait_metric(&outcome("first"), 4.0);
    envoy.wait_metric(&outcome("duplicate"), 0.0);
}

#[test]
fn a_key_header_on_two_lines_is_refused_over_http2_and_the_genuine_key_is_new() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    let cases = cases("h2");
    for (header, lines) in &cases {
        let lines: Vec<(&str, &str)> = lines.iter().map(|(n, v)| (*n, v.as_str())).collect();
        check_refusal(&h2_post(envoy.port, "/e", &lines, &[], &nothing), header, "HTTP/2");
    }
    assert_eq!(upstream.hits(), 0, "the service saw a refused request");
    for (n, (header, lines)) in cases.iter().enumerate().take(4) {
        let single = genuine(lines);
        let single: Vec<(&str, &str)> = single.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = h2_post(envoy.port, "/e", &single, &[], &nothing);
        assert_eq!((r.status, r.header("x-meshguard-dedup")), (200, None), "{header}: {}", r.text());
        assert_eq!(upstream.hits(), n + 1, "{header}");
        // And its redelivery is the duplicate.
        let r = h2_post(envoy.port, "/e", &single, &[], &nothing);
        assert_eq!(r.header("x-meshguard-dedup").as_deref(), Some("duplicate"), "{header}");
    }
    envoy.wait_metric(&outcome("invalid"), cases.len() as f64);
    envoy.wait_metric(&outcome("first"), 4.0);
    envoy.wait_metric(&outcome("duplicate"), 4.0);
}

/// A refusal decided at the request headers (here: a key on two lines, and a duplicate of a
/// completed header key) while an HTTP/2 request's body is still streaming must reach the client,
/// as the refusals decided on a body chunk do (those wait for the end of the request for exactly
/// this reason, see src/filter.rs `waiting_reply`). Observed on Envoy 1.40 with curl 7.88.1 (the
/// client of these tests): the reply is sent at once, mid-upload; Envoy sends HEADERS, DATA with
/// END_STREAM, then RST_STREAM(NO_ERROR) — which RFC 9113 §8.1 allows and clients "MUST NOT"
/// discard a response for — and curl reports "Empty reply from server" (52) or "Stream error in
/// the HTTP/2 framing layer" (92): 20 of 20 replies lost. With the body sent along with the headers
/// (`--data-binary`, a content-length) every reply arrives. Clients are at fault by the RFC, but
/// curl, hyper and .NET have all shipped this bug, which is why the body path waits.
#[test]
#[ignore = "BUG: a refusal decided at the headers of an HTTP/2 request whose body is still streaming goes out mid-upload and is followed by RST_STREAM; curl 7.88 loses it (empty reply / stream error), unlike refusals decided on the body, which wait for its end"]
fn a_refusal_at_the_headers_reaches_an_http2_client_that_is_still_uploading() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(50));
    let body: [&[u8]; 2] = [b"{", b"}"];
    let first = h2_post(envoy.port, "/e", &[("x-event-id", "up-1")], &body, &pause);
    assert_eq!((first.status, upstream.hits()), (200, 1));
    let mut lost = Vec::new();
    for attempt in 0..10 {
        let two = [("x-event-id", "up-2"), ("x-event-id", "up-3")];
        for (what, headers, status) in [("two lines", &two[..], 400), ("duplicate", &[("x-event-id", "up-1")][..], 200)]
        {
            match std::panic::catch_unwind(|| h2_post(envoy.port, "/e", headers, &body, &pause)) {
                Ok(r) if r.status == status && r.header("x-meshguard-dedup").is_some() => {}
                Ok(r) => lost.push(format!("{attempt} {what}: {} {}", r.status, r.text())),
                Err(_) => lost.push(format!("{attempt} {what}: no response")),
            }
        }
    }
    assert_eq!(upstream.hits(), 1);
    assert!(lost.is_empty(), "{} of 20 replies lost: {lost:?}", lost.len());
}
