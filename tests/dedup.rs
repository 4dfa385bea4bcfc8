//! Event-id dedup (docs/behaviour.md) in a real Envoy with two workers: replay, release on failure, in-flight, the race of
//! one key over both workers, every `on_missing` mode, invalid keys, fingerprints, the bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::thread;

use support::envoy::Envoy;
use support::http::{send, Conn, Request};
use support::upstream::Upstream;

fn post(path: &str, event_id: &str) -> Request {
    Request::post(path).header("x-event-id", event_id).header("content-length", "0")
}

#[test]
fn a_completed_event_is_replayed_locally_with_its_original_status() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    let first = send(envoy.port, &post("/charge?status=201", "e-1").header("x-correlation-id", "c-first")).unwrap();
    assert_eq!(first.status, 201);
    assert_eq!(upstream.hits(), 1);
    let dup = send(envoy.port, &post("/charge?status=201", "e-1").header("x-correlation-id", "c-dup")).unwrap();
    assert_eq!(dup.status, 201, "the original status");
    assert_eq!(upstream.hits(), 1, "the duplicate never reached the service");
    assert_eq!(dup.header("x-meshguard-dedup").as_deref(), Some("duplicate"));
    assert_eq!(dup.header("x-correlation-id").as_deref(), Some("c-dup"));
    assert_eq!(dup.json()["event_id"], "e-1");
    let line = envoy.access_log_for("c-dup");
    assert_eq!((line["dedup"].as_str(), line["event_id"].as_str()), (Some("duplicate"), Some("e-1")));
    assert_eq!(envoy.access_log_for("c-first")["dedup"], "first");
    envoy.wait_metric(r#"meshguard_dedup_total{rule="default",outcome="first"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_dedup_total{rule="default",outcome="duplicate"}"#, 1.0);
    envoy.wait_metric("meshguard_dedup_entries{}", 1.0);
    // Another id, and a method outside `methods`, go through.
    assert_eq!(send(envoy.port, &post("/charge", "e-2")).unwrap().status, 200);
    assert_eq!(send(envoy.port, &Request::get("/charge").header("x-event-id", "e-1")).unwrap().status, 200);
    assert_eq!(upstream.hits(), 3);
}

#[test]
fn a_failed_first_processing_releases_the_key() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    assert_eq!(send(envoy.port, &post("/charge?status=500", "e-9")).unwrap().status, 500);
    let again = send(envoy.port, &post("/charge?status=200", "e-9").header("x-correlation-id", "c-again")).unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(upstream.hits(), 2, "processed again");
    envoy.wait_metric(r#"meshguard_dedup_total{rule="default",outcome="released"}"#, 1.0);
    assert_eq!(envoy.access_log_for("c-again")["dedup"], "first");
    // Now completed: the third copy is a duplicate.
    assert_eq!(
        send(envoy.port, &post("/charge", "e-9")).unwrap().header("x-meshguard-dedup").as_deref(),
        Some("duplicate")
    );
}

#[test]
fn one_key_racing_over_two_workers_reaches_the_service_once() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Arc::new(Envoy::start(r#"{"dedup": {}}"#, upstream.port));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let envoy = Arc::clone(&envoy);
            thread::spawn(move || {
                let mut conn = Conn::open(envoy.port).unwrap();
                let r = conn.send(&post("/pay?delay_ms=400", "race-1")).unwrap();
                (r.status, r.header("x-meshguard-dedup"), r.header("retry-after"))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(upstream.hits(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|(s, _, _)| *s == 200).count(), 1, "{results:?}");
    for (status, marker, retry) in results.iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!((*status, marker.as_deref(), retry.as_deref()), (409, Some("in-flight"), Some("1")));
    }
    envoy.wait_metric(r#"meshguard_dedup_total{rule="default",outcome="in_flight"}"#, 7.0);
}

#[test]
fn missing_keys_pass_reject_or_get_stamped() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    assert_eq!(send(envoy.port, &Request::post("/e").header("content-length", "0")).unwrap().status, 200);
    envoy.wait_metric(r#"meshguard_dedup_total{rule="default",outcome="missing"}"#, 1.0);
    drop(envoy);

    let envoy = Envoy::start(r#"{"dedup": {"on_missing": "reject"}}"#, upstream.port);
    let r = send(envoy.port, &Request::post("/e").header("content-length", "0")).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "missing_event_id");
    assert_eq!(r.json()["headers"], serde_json::json!(["x-event-id", "idempotency-key", "ce-id"]));
    drop(envoy);

    let hits = upstream.hits();
    let envoy = Envoy::start(r#"{"dedup": {"on_missing": "generate"}}"#, upstream.port);
    let r = send(envoy.port, &Request::post("/e").header("content-length", "0").header("x-correlation-id", "c-gen"))
        .unwrap();
    assert_eq!(r.status, 200);
    let stamped = upstream.last().unwrap().header("x-event-id").unwrap();
    assert_eq!(stamped.len(), 36, "a UUID: {stamped}");
    assert_eq!(upstream.hits(), hits + 1);
    assert_eq!(envoy.access_log_for("c-gen")["event_id"].as_str(), Some(&*stamped));
    envoy.wait_metric(r#"meshguard_dedup_total{rule="default",outcome="generated"}"#, 1.0);
}

#[test]
fn invalid_keys_get_400_with_a_json_error() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    for value in [&b"has space"[..], &[b'k'; 256], b"caf\xe9"] {
        let r =
            send(envoy.port, &Request::post("/e").header("content-length", "0").header("x-event-id", value)).unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"], "invalid_event_id");
        assert_eq!(r.json()["header"], "x-event-id");
    }
    assert_eq!(upstream.hits(), 0);
    // Idempotency-Key as a structured-field string is the same key as the bare value.
    let sf = Request::post("/e").header("content-length", "0").header("idempotency-key", "\"k-1\"");
    assert_eq!(send(envoy.port, &sf).unwrap().status, 200);
    let bare = Request::post("/e").header("content-length", "0").header("idempotency-key", "k-1");
    assert_eq!(send(envoy.port, &bare).unwrap().header("x-meshguard-dedup").as_deref(), Some("duplicate"));
    envoy.wait_metric(r#"meshguard_dedup_total{rule="default",outcome="invalid"}"#, 3.0);
}

#[test]
fn fingerprints_refuse_a_reused_key_with_another_request() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {"fingerprint": "method_path"}}"#, upstream.port);
    assert_eq!(send(envoy.port, &post("/orders/1", "f-1")).unwrap().status, 200);
    let r = send(envoy.port, &post("/orders/2", "f-1")).unwrap();
    assert_eq!((r.status, r.json()["error"].as_str()), (422, Some("fingerprint_mismatch")));
    assert_eq!(
        send(envoy.port, &post("/orders/1", "f-1")).unwrap().header("x-meshguard-dedup").as_deref(),
        Some("duplicate")
    );
    drop(envoy);

    let envoy = Envoy::start(r#"{"dedup": {"fingerprint": "body"}}"#, upstream.port);
    let with_body = |body: &str| Request::post("/pay").header("x-event-id", "b-1").body(body.as_bytes().to_vec());
    assert_eq!(send(envoy.port, &with_body("{\"amount\":10}")).unwrap().status, 200);
    assert_eq!(upstream.last().unwrap().body, b"{\"amount\":10}", "the body still reaches the service");
    let hits = upstream.hits();
    assert_eq!(send(envoy.port, &with_body("{\"amount\":99}")).unwrap().status, 422);
    assert_eq!(
        send(envoy.port, &with_body("{\"amount\":10}")).unwrap().header("x-meshguard-dedup").as_deref(),
        Some("duplicate")
    );
    // The headers went upstream before the body was read; the body never did, so the service
    // never got a request it could process.
    assert_eq!(upstream.hits(), hits);
    // A body larger than 64 KiB is fingerprinted by its first 64 KiB and still forwarded whole.
    let big = vec![b'x'; 200 * 1024];
    let r = send(envoy.port, &Request::post("/pay").header("x-event-id", "b-2").body(big.clone())).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(upstream.last().unwrap().body.len(), big.len());
    // The same for bodies that arrive in pieces, chunked or with a content-length: the first
    // pieces go on, the piece that completes the body decides, and a duplicate's never does.
    let body = format!("{{\"amount\":10,\"note\":\"{}\"}}", "n".repeat(4000));
    let (first, rest) = body.as_bytes().split_at(3000);
    let whole = Request::post("/pay").header("x-event-id", "b-3").body(body.as_bytes().to_vec());
    assert_eq!(send(envoy.port, &whole).unwrap().status, 200);
    let hits = upstream.hits();
    let sent = |e: &Envoy| e.metric(r#"envoy_cluster_upstream_cx_tx_bytes_total{envoy_cluster_name="demo_upstream"}"#);
    for chunked in [true, false] {
        let (framing, pieces) = if chunked {
            let piece = |p: &[u8], last: &[u8]| [format!("{:x}\r\n", p.len()).as_bytes(), p, b"\r\n", last].concat();
            ("transfer-encoding: chunked".to_string(), [piece(first, b""), piece(rest, b"0\r\n\r\n")])
        } else {
            (format!("content-length: {}", body.len()), [first.to_vec(), rest.to_vec()])
        };
        let before = sent(&envoy).unwrap_or(0.0);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
        let head = format!("POST /pay HTTP/1.1\r\nhost: localhost\r\nx-event-id: b-3\r\n{framing}\r\n\r\n");
        s.write_all(&[head.as_bytes(), &pieces[0]].concat()).unwrap();
        // The first piece went upstream (more bytes than the headers alone) before the rest.
        envoy.wait_for("the first piece upstream", 10, |e| (sent(e)? >= before + 3000.0).then_some(()));
        s.write_all(&pieces[1]).unwrap();
        let mut answer = String::new();
        let mut reader = std::io::BufReader::new(s);
        while reader.read_line(&mut answer).unwrap() > 2 {}
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("x-meshguard-dedup: duplicate"),
            "{framing}: {answer}"
        );
    }
    assert_eq!(upstream.hits(), hits, "a duplicate reached the service whole");
}

/// A flood of unique keys stays inside the store's capacity (`max_entries` and its headroom,
/// 3 × 16 = 48 here); up to `max_entries` live keys nobody is evicted: every redelivery is a
/// duplicate.
#[test]
fn a_flood_of_unique_keys_stays_inside_the_store_and_max_entries_keys_all_stay() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {"max_entries": 16}}"#, upstream.port);
    let mut conn = Conn::open(envoy.port).unwrap();
    for i in 0..16 {
        assert_eq!(conn.send(&post("/e", &format!("kept-{i}"))).unwrap().status, 200);
    }
    for i in 0..16 {
        let r = conn.send(&post("/e", &format!("kept-{i}"))).unwrap();
        assert_eq!(r.header("x-meshguard-dedup").as_deref(), Some("duplicate"), "kept-{i}");
    }
    assert_eq!(upstream.hits(), 16);
    for i in 0..200 {
        assert_eq!(conn.send(&post("/e", &format!("flood-{i}"))).unwrap().status, 200);
    }
    let entries =
        envoy.wait_for("dedup entries stat", 15, |e| e.metric("meshguard_dedup_entries{}").filter(|v| *v > 16.0));
    assert!(entries <= 48.0, "{entries} entries");
    let evictions =
        envoy.wait_for("evictions", 15, |e| e.metric("meshguard_dedup_evictions_total{}").filter(|v| *v >= 168.0));
    assert_eq!(entries + evictions, 216.0);
}

#[test]
fn a_fixed_duplicate_status_replaces_the_original() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {"duplicate_status": 409}}"#, upstream.port);
    assert_eq!(send(envoy.port, &post("/e?status=201", "x-1")).unwrap().status, 201);
    let r = send(envoy.port, &post("/e?status=201", "x-1")).unwrap();
    assert_eq!((r.status, r.json()["status"].as_u64()), (409, Some(201)));
}

/// One HTTP/2 (h2c, prior knowledge) POST through curl, the body from stdin so that, without
/// `content-length`, it is streamed in DATA frames and ends with END_STREAM: (status, the
/// `x-meshguard-dedup` header). curl's `-v` trace (stderr) is shown when no answer came.
fn h2_post(port: u16, event_id: &str, body: &[u8], content_length: bool) -> (u16, Option<String>) {
    use std::process::{Command, Stdio};
    let mut args = vec!["-sS", "-v", "-i", "--http2-prior-knowledge", "-X", "POST", "-T", "-"];
    let id = format!("x-event-id: {event_id}");
    let length = format!("content-length: {}", body.len());
    args.extend(["-H", &id, "-H", if content_length { &length } else { "content-length:" }]);
    let url = format!("http://127.0.0.1:{port}/h2");
    args.push(&url);
    let mut curl = Command::new("curl")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl (scripts/setup.sh installs it)");
    let mut stdin = curl.stdin.take().unwrap();
    let body = body.to_vec();
    let writer = thread::spawn(move || {
        for piece in body.chunks(16 << 10) {
            if stdin.write_all(piece).is_err() {
                break; // answered before the end: the rest is not wanted
            }
        }
    });
    let out = curl.wait_with_output().unwrap();
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("curl {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let marker = text.lines().find_map(|l| l.strip_prefix("x-meshguard-dedup: ")).map(|v| v.trim().to_string());
    (status, marker)
}

#[test]
fn http2_callers_get_the_same_answers_with_body_fingerprints() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {"fingerprint": "body"}}"#, upstream.port);
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (key, content_length) in [("h2-length", true), ("h2-streamed", false)] {
        assert_eq!(h2_post(envoy.port, key, &body, content_length), (200, None), "{key}");
        let got = upstream.last().unwrap();
        assert_eq!((got.path.as_str(), got.body.len()), ("/h2", body.len()), "{key}: forwarded whole");
        let hits = upstream.hits();
        // Refused while the body is still arriving: the answer must reach the client every time
        // (an answer mid-upload followed by Envoy's RST_STREAM was lost about half the time).
        let mut other = body.clone();
        other[10] = b'!';
        for _ in 0..5 {
            assert_eq!(h2_post(envoy.port, key, &body, content_length), (200, Some("duplicate".into())), "{key}");
            assert_eq!(h2_post(envoy.port, key, &other, content_length).0, 422, "{key}");
        }
        assert_eq!(upstream.hits(), hits, "{key}: a refused request reached the service whole");
    }
    // A small body in one DATA frame with END_STREAM.
    assert_eq!(h2_post(envoy.port, "h2-small", b"{}", false), (200, None));
    assert_eq!(h2_post(envoy.port, "h2-small", b"{}", false), (200, Some("duplicate".into())));
    assert_eq!(
        envoy.metric("envoy_http_downstream_cx_http2_total{envoy_http_conn_manager_prefix=\"ingress\"}"),
        Some(24.0)
    );
}

/// The service answers before meshguard has seen enough of the body to decide the key (it refuses
/// the request after its head): the client gets the service's answer, and since the event was
/// never checked nothing is claimed — its redelivery is processed, not held as in flight.
#[test]
fn an_upstream_answer_before_the_body_decides_leaves_the_event_unclaimed() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {"fingerprint": "body"}}"#, upstream.port);
    let total = 200 << 10;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    let head = format!(
        "POST /e?early=1&status=503 HTTP/1.1\r\nhost: localhost\r\nx-event-id: early-1\r\ncontent-length: {total}\r\n\r\n"
    );
    // 20 KiB of 200: short of the 64 KiB that decide the key.
    s.write_all(&[head.as_bytes(), &vec![b'a'; 20 << 10]].concat()).unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut answer = String::new();
    while reader.read_line(&mut answer).unwrap() > 2 {}
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(!answer.contains("x-meshguard-dedup"), "{answer}");

    let redelivery = Request::post("/e").header("x-event-id", "early-1").body(vec![b'a'; total]);
    let r = send(envoy.port, &redelivery).unwrap();
    assert_eq!((r.status, r.header("x-meshguard-dedup")), (200, None));
    assert_eq!(upstream.last().unwrap().body.len(), total);
    envoy.wait_metric(r#"meshguard_dedup_total{rule="default",outcome="first"}"#, 1.0);
    let again = send(envoy.port, &redelivery).unwrap();
    assert_eq!(again.header("x-meshguard-dedup").as_deref(), Some("duplicate"));
}

/// docs/behaviour.md "Memory is bounded": `max_entries` unique keys inside one `ttl` all stay
/// (at most 0.1 % may be evicted): redelivering every one of 1 000 events at `max_entries: 1000`
/// is answered as a duplicate, over both workers. (With the old buckets of 8 entries, 148 were
/// evicted and 595 redeliveries processed again.)
#[test]
fn max_entries_unique_events_are_all_remembered() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {"max_entries": 1000}}"#, upstream.port);
    let mut conn = Conn::open(envoy.port).unwrap();
    for i in 0..1000 {
        assert_eq!(conn.send(&post("/e", &format!("order-{i}"))).unwrap().status, 200);
    }
    assert_eq!(upstream.hits(), 1000);
    let mut processed_again = 0;
    for i in 0..1000 {
        let r = send(envoy.port, &post("/e", &format!("order-{i}"))).unwrap();
        if r.header("x-meshguard-dedup").as_deref() != Some("duplicate") {
            processed_again += 1;
        }
    }
    assert!(processed_again <= 1, "{processed_again} of 1000 redeliveries processed again");
    assert!(envoy.metric("meshguard_dedup_evictions_total{}").unwrap_or(0.0) <= 1.0);
}
