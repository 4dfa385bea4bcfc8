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
/// completed header key) while an HTTP/2 request's body is still streaming: meshguard answers at
/// once (Envoy does not hand a filter the body of a request whose headers it holds, so the reply
/// cannot wait for the end of the upload as refusals decided on a body chunk do); Envoy sends the
/// complete reply, then RST_STREAM(NO_ERROR), which RFC 9113 §8.1 allows and after which a client
/// "MUST NOT discard" the response. nghttp2's client keeps it, every time; curl 7.88.1 reports
/// "Stream error in the HTTP/2 framing layer" (92) instead — a client bug (docs/body-keys.md).
#[test]
fn a_refusal_at_the_headers_reaches_an_http2_client_that_is_still_uploading() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(50));
    let body: [&[u8]; 2] = [b"{", b"}"];
    let first = h2_post(envoy.port, "/e", &[("x-event-id", "up-1")], &body, &pause);
    assert_eq!((first.status, upstream.hits()), (200, 1));
    // 2 MB: the upload is still going when the reply comes.
    let file = std::env::temp_dir().join(format!("meshguard-upload-{}", std::process::id()));
    std::fs::write(&file, vec![b' '; 2 << 20]).unwrap();
    let mut lost = Vec::new();
    for attempt in 0..10 {
        for (what, headers, status) in [
            ("two lines", &["x-event-id: up-2", "x-event-id: up-3"][..], "400"),
            ("duplicate", &["x-event-id: up-1"][..], "200"),
        ] {
            let mut cmd = std::process::Command::new("nghttp");
            cmd.args(["-n", "-v", "-d"]).arg(&file).args(["-H", ":method: POST"]);
            for h in headers {
                cmd.args(["-H", h]);
            }
            let out =
                cmd.arg(format!("http://127.0.0.1:{}/e", envoy.port)).output().expect("nghttp (scripts/setup.sh)");
            let text = String::from_utf8_lossy(&out.stdout);
            let got_status = text.contains(&format!(":status: {status}"));
            let got_marker = text.contains("x-meshguard-dedup: ");
            if !(got_status && got_marker) {
                lost.push(format!("{attempt} {what}: {}", text.lines().filter(|l| l.contains("recv")).count()));
            }
        }
    }
    let _ = std::fs::remove_file(&file);
    assert_eq!(upstream.hits(), 1, "no refused request reached the service");
    assert!(lost.is_empty(), "{} of 20 replies lost: {lost:?}", lost.len());
}
