//! Keys in the body (docs/body-keys.md) in a real Envoy: CloudEvents made by the CloudEvents
//! Python SDK in structured, binary and batch mode, and `body_key` over a JSON envelope — found
//! while the body streams, decided on the chunk that completes the key, whatever the chunking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/streaming.rs"]
mod streaming;
mod support;

use std::time::Duration;

use serde_json::json;
use streaming::{cloudevent, h2_post, nothing, Framing, Upload};
use support::envoy::Envoy;
use support::http::{send, Request, Response};
use support::upstream::Upstream;

fn outcome(name: &str) -> String {
    format!(r#"meshguard_dedup_total{{rule="default",outcome="{name}"}}"#)
}

/// Bytes Envoy wrote to the test upstream so far.
fn upstream_tx(envoy: &Envoy) -> f64 {
    envoy.metric(r#"envoy_cluster_upstream_cx_tx_bytes_total{envoy_cluster_name="demo_upstream"}"#).unwrap_or(0.0)
}

fn marker(r: &Response) -> Option<String> {
    r.header("x-meshguard-dedup")
}

/// `request` with its `content-type` replaced.
fn with_content_type(request: &Request, content_type: &str) -> Request {
    let mut r = request.clone();
    r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
    r.header("content-type", content_type)
}

fn with_correlation(request: &Request, id: &str) -> Request {
    request.clone().header("x-correlation-id", id)
}

// ---- CloudEvents, made by the SDK ------------------------------------------------------------

#[test]
fn a_structured_cloudevent_redelivered_is_refused_with_the_replayed_status() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    let event = json!([{"source": "https://shop.example/orders", "id": "evt-1001",
        "type": "com.example.order.placed", "data": {"orderId": 1001, "amount": "12.50"}}]);
    let request = cloudevent("structured", "/events?status=202", &event);
    assert_eq!(request.headers, vec![("content-type".to_string(), b"application/cloudevents+json".to_vec())]);

    let first = send(envoy.port, &with_correlation(&request, "ce-first")).unwrap();
    assert_eq!((first.status, marker(&first)), (202, None));
    assert_eq!(upstream.hits(), 1);
    assert_eq!(upstream.last().unwrap().body, request.body, "the event reached the service whole");

    let dup = send(envoy.port, &with_correlation(&request, "ce-dup")).unwrap();
    assert_eq!((dup.status, marker(&dup).as_deref()), (202, Some("duplicate")), "{}", dup.text());
    assert_eq!(dup.json()["event_id"], "evt-1001");
    assert_eq!(dup.header("x-correlation-id").as_deref(), Some("ce-dup"));
    assert_eq!(upstream.hits(), 1, "the redelivery never reached the service whole");
    let line = envoy.access_log_for("ce-dup");
    assert_eq!((line["dedup"].as_str(), line["event_id"].as_str()), (Some("duplicate"), Some("evt-1001")));
    let line = envoy.access_log_for("ce-first");
    assert_eq!((line["dedup"].as_str(), line["event_id"].as_str()), (Some("first"), Some("evt-1001")));

    // Media-type parameters and case do not change what the request is.
    for content_type in ["application/cloudevents+json; charset=utf-8", "Application/CloudEvents+JSON"] {
        let r = send(envoy.port, &with_content_type(&request, content_type)).unwrap();
        assert_eq!((r.status, marker(&r).as_deref()), (202, Some("duplicate")), "{content_type}");
    }
    assert_eq!(upstream.hits(), 1);
    envoy.wait_metric(&outcome("first"), 1.0);
    envoy.wait_metric(&outcome("duplicate"), 3.0);
    // An empty id is refused; an event without an id has no key (passed, counted missing).
    let empty = Request::post("/events")
        .header("content-type", "application/cloudevents+json")
        .body(&br#"{"specversion":"1.0","source":"/s","id":"","type":"t"}"#[..]);
    let r = send(envoy.port, &empty).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!({"error": "invalid_event_id", "header": "id", "reason": "empty"}));
    let no_id = Request::post("/events")
        .header("content-type", "application/cloudevents+json")
        .body(&br#"{"specversion":"1.0","source":"/s","type":"t"}"#[..]);
    assert_eq!(marker(&send(envoy.port, &no_id).unwrap()), None);
    assert_eq!(upstream.hits(), 2);
    envoy.wait_metric(&outcome("missing"), 1.0);
}

#[test]
fn one_event_in_binary_then_structured_mode_is_one_event() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    // Characters the SDK percent-encodes in binary-mode headers (space, %, non-ASCII) and escapes
    // in structured-mode JSON (\u03b1): both modes must give the same key.
    let ids = ["evt 1002/α 100%", "evt-1003 ü"];
    let event = |id: &str| {
        json!([{"source": "https://shop.example/orders eu", "id": id, "type": "com.example.order.placed",
            "data": {"orderId": 1002}}])
    };

    // Binary first, then the same event in structured mode.
    let binary = cloudevent("binary", "/events?status=201", &event(ids[0]));
    assert_eq!(binary.headers.iter().find(|(n, _)| n == "ce-id").unwrap().1, b"evt%201002/%CE%B1%20100%25");
    assert_eq!(send(envoy.port, &binary).unwrap().status, 201);
    assert_eq!(upstream.hits(), 1);
    let structured = cloudevent("structured", "/events?status=201", &event(ids[0]));
    assert!(String::from_utf8_lossy(&structured.body).contains(r#""evt 1002/\u03b1 100%""#));
    let r = send(envoy.port, &structured).unwrap();
    assert_eq!((r.status, marker(&r).as_deref()), (201, Some("duplicate")), "{}", r.text());
    assert_eq!(r.json()["event_id"], ids[0]);
    assert_eq!(upstream.hits(), 1);

    // Structured first, then binary.
    let structured = cloudevent("structured", "/events", &event(ids[1]));
    assert_eq!((send(envoy.port, &structured).unwrap().status, upstream.hits()), (200, 2));
    let r = send(envoy.port, &cloudevent("binary", "/events", &event(ids[1]))).unwrap();
    assert_eq!((r.status, marker(&r).as_deref()), (200, Some("duplicate")), "{}", r.text());
    assert_eq!(upstream.hits(), 2);
    envoy.wait_metric(&outcome("duplicate"), 2.0);
}

#[test]
fn the_same_id_from_another_source_is_another_event() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    let event = |source: &str| json!([{"source": source, "id": "42", "type": "com.example.stock.changed"}]);
    for (n, mode) in ["binary", "structured"].into_iter().enumerate() {
        let path = format!("/{mode}");
        let a = cloudevent(mode, &path, &event(&format!("/warehouse/{mode}/a")));
        let b = cloudevent(mode, &path, &event(&format!("/warehouse/{mode}/b")));
        assert_eq!((send(envoy.port, &a).unwrap().status, upstream.hits()), (200, 3 * n + 1), "{mode}");
        let r = send(envoy.port, &b).unwrap();
        assert_eq!((r.status, marker(&r), upstream.hits()), (200, None, 3 * n + 2), "{mode}: another source");
        let r = send(envoy.port, &a).unwrap();
        assert_eq!(marker(&r).as_deref(), Some("duplicate"), "{mode}");
        // The other mode of source b's event is b's duplicate, not a's.
        let other = if mode == "binary" { "structured" } else { "binary" };
        let r = send(envoy.port, &cloudevent(other, &path, &event(&format!("/warehouse/{mode}/b")))).unwrap();
        assert_eq!(marker(&r).as_deref(), Some("duplicate"), "{mode}");
        // A third source, same id: new.
        let c = cloudevent(mode, &path, &event(&format!("/warehouse/{mode}/c")));
        assert_eq!((send(envoy.port, &c).unwrap().status, upstream.hits()), (200, 3 * n + 3), "{mode}");
    }
    envoy.wait_metric(&outcome("first"), 6.0);
}

/// Two different (source, id) pairs must never share a key, whatever characters they hold: the
/// SDK accepts a source with a space (and percent-encodes it in binary mode). The key joins
/// source and id with a space (src/dedup/mod.rs `cloudevent`), so ("/orders a", "b") and
/// ("/orders", "a b") are one key: the second event is refused as the first's duplicate and
/// never reaches the service. Structured and binary mode alike (binary values are decoded first).
#[test]
fn sources_and_ids_that_join_alike_are_different_events() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    let mut wrong = Vec::new();
    for mode in ["structured", "binary"] {
        let a = json!([{"source": format!("/{mode} a"), "id": "b", "type": "t"}]);
        let b = json!([{"source": format!("/{mode}"), "id": "a b", "type": "t"}]);
        let hits = upstream.hits();
        assert_eq!(send(envoy.port, &cloudevent(mode, "/e", &a)).unwrap().status, 200);
        let r = send(envoy.port, &cloudevent(mode, "/e", &b)).unwrap();
        if (marker(&r), upstream.hits()) != (None, hits + 2) {
            wrong.push(format!("{mode}: {} {}", r.status, r.text()));
        }
    }
    assert!(wrong.is_empty(), "another event answered as a duplicate: {wrong:?}");
}

#[test]
fn a_batch_passes_every_time_counted_as_batch() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {}}"#, upstream.port);
    let events = json!([
        {"source": "https://shop.example/orders", "id": "evt-2001", "type": "com.example.order.placed"},
        {"source": "https://shop.example/orders", "id": "evt-2002", "type": "com.example.order.placed",
         "data": {"orderId": 2002}}
    ]);
    let batch = cloudevent("batch", "/events", &events);
    assert_eq!(batch.headers, vec![("content-type".to_string(), b"application/cloudevents-batch+json".to_vec())]);
    for n in 1..=2 {
        let r = send(envoy.port, &with_correlation(&batch, &format!("batch-{n}"))).unwrap();
        assert_eq!((r.status, marker(&r)), (200, None));
        assert_eq!(upstream.hits(), n, "the service sees every delivery of a batch");
        assert_eq!(upstream.last().unwrap().body, batch.body);
        assert_eq!(envoy.access_log_for(&format!("batch-{n}"))["dedup"], "batch");
    }
    // A batch is not matched against its events: one of them sent alone is new, and the batch
    // holding it still passes.
    let single = cloudevent("structured", "/events", &json!([events[0]]));
    assert_eq!(marker(&send(envoy.port, &single).unwrap()), None);
    assert_eq!(marker(&send(envoy.port, &batch).unwrap()), None);
    assert_eq!(upstream.hits(), 4);
    envoy.wait_metric(&outcome("batch"), 3.0);
    envoy.wait_metric(&outcome("first"), 1.0);
}

// ---- body_key over a JSON envelope ------------------------------------------------------------

/// A seed-style event envelope with `eventId` as written (a JSON string literal or a number),
/// `eventId` its second member.
fn envelope(event_id_json: &str) -> String {
    format!(
        r#"{{"schemaVersion":"2.1.0","eventId":{event_id_json},"eventType":"OrderPlaced","correlationId":"c0a8012e-7f3b-4c1d-9e2a-5b6c7d8e9f01","payload":{{"orderId":"ord_4711","customerId":"cus_42","amount":{{"value":"129.90","currency":"EUR"}},"items":[{{"sku":"SKU-1","qty":2}}]}}}}"#
    )
}

fn json_post(path: &str, body: impl Into<Vec<u8>>) -> Request {
    Request::post(path).header("content-type", "application/json").body(body)
}

const BODY_KEY: &str = r#"{"dedup": {"body_key": "/eventId"}}"#;
const BODY_KEY_REJECT: &str = r#"{"dedup": {"body_key": "/eventId", "on_missing": "reject"}}"#;

#[test]
fn body_key_refuses_a_redelivered_envelope_and_passes_another_id() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(BODY_KEY, upstream.port);
    let event = json_post("/orders?status=201", envelope(r#""evt_789012""#));
    let first = send(envoy.port, &with_correlation(&event, "env-first")).unwrap();
    assert_eq!((first.status, marker(&first)), (201, None));
    assert_eq!(upstream.last().unwrap().body, event.body);
    assert_eq!(envoy.access_log_for("env-first")["event_id"], "evt_789012");
    let dup = send(envoy.port, &event).unwrap();
    assert_eq!((dup.status, marker(&dup).as_deref()), (201, Some("duplicate")), "{}", dup.text());
    assert_eq!(dup.json()["event_id"], "evt_789012");
    assert_eq!(upstream.hits(), 1);

    // Another id passes; so does the same envelope where the id is not in the body key.
    let other = send(envoy.port, &json_post("/orders", envelope(r#""evt_789013""#))).unwrap();
    assert_eq!((other.status, marker(&other), upstream.hits()), (200, None, 2));
    // Any `*+json` media type, parameters and case aside, is read; the same bytes under another
    // media type are not JSON to meshguard (no key: passed, counted missing).
    for content_type in ["application/vnd.shop.order+json; charset=utf-8", "APPLICATION/JSON;charset=UTF-8"] {
        let r = send(envoy.port, &with_content_type(&event, content_type)).unwrap();
        assert_eq!(marker(&r).as_deref(), Some("duplicate"), "{content_type}");
    }
    let plain = send(envoy.port, &with_content_type(&event, "text/plain")).unwrap();
    assert_eq!((plain.status, marker(&plain), upstream.hits()), (201, None, 3));
    // A header key wins over the body: the same body with an x-event-id is that key's event.
    let keyed = event.clone().header("x-event-id", "hdr-1");
    assert_eq!(marker(&send(envoy.port, &keyed).unwrap()), None);
    assert_eq!(upstream.hits(), 4);
    // An integer member is the key, as its decimal text.
    assert_eq!(marker(&send(envoy.port, &json_post("/orders", envelope("789012"))).unwrap()), None);
    let again = send(envoy.port, &json_post("/orders", envelope("789012"))).unwrap();
    assert_eq!(marker(&again).as_deref(), Some("duplicate"));
    assert_eq!(upstream.hits(), 5);
    envoy.wait_metric(&outcome("duplicate"), 4.0);
    envoy.wait_metric(&outcome("missing"), 1.0);
    envoy.wait_metric(&outcome("first"), 4.0);
}

#[test]
fn what_is_a_missing_key_and_what_an_invalid_one() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(BODY_KEY_REJECT, upstream.port);
    let missing = [
        r#"{"eventType":"OrderPlaced"}"#.to_string(),
        envelope("null"),
        envelope("true"),
        envelope("1.5"),
        envelope("-0.5e3"),
        envelope(r#"{"id":"evt_1"}"#),
        envelope(r#"["evt_1"]"#),
        r#"{"payload":{"eventId":"evt_nested"}}"#.to_string(),
        r#"[{"eventId":"evt_in_array"}]"#.to_string(),
        "eventId=evt_1".to_string(),
        r#"{"eventId" "evt_1"}"#.to_string(),
        r#"{"eventId":"evt_1"#.to_string(),
        "\"evt_1\"".to_string(),
    ];
    for body in &missing {
        let r = send(envoy.port, &json_post("/e", body.as_bytes())).unwrap();
        assert_eq!((r.status, marker(&r).as_deref()), (400, Some("missing")), "{body}: {}", r.text());
        assert_eq!(r.json()["error"], "missing_event_id", "{body}");
    }
    // No body at all: nothing to read, refused at once.
    let r = send(envoy.port, &Request::post("/e").header("content-type", "application/json")).unwrap();
    assert_eq!(r.status, 400);
    let invalid = [
        (envelope(r#""""#), "empty"),
        (envelope(&format!(r#""{}""#, "k".repeat(256))), "longer than 255 bytes"),
        (envelope(r#""evt\u0007bell""#), "must be UTF-8 text without control characters"),
    ];
    for (body, reason) in &invalid {
        let r = send(envoy.port, &json_post("/e", body.as_bytes())).unwrap();
        assert_eq!((r.status, marker(&r).as_deref()), (400, Some("invalid")), "{reason}: {}", r.text());
        assert_eq!(r.json(), json!({"error": "invalid_event_id", "header": "body", "reason": reason}));
    }
    assert_eq!(upstream.hits(), 0, "no refused request reached the service");
    // At the bounds: 255 bytes, and text that is no header value (spaces, non-ASCII, escapes).
    for id in [format!(r#""{}""#, "k".repeat(255)), r#""evt 7 \u00fc \"q\"""#.to_string()] {
        let r = send(envoy.port, &json_post("/e", envelope(&id))).unwrap();
        assert_eq!((r.status, marker(&r)), (200, None), "{id}");
        let r = send(envoy.port, &json_post("/e", envelope(&id))).unwrap();
        assert_eq!(marker(&r).as_deref(), Some("duplicate"), "{id}");
        assert_eq!(r.json()["event_id"].as_str().map(str::len), Some(if id.len() > 200 { 255 } else { 12 }));
    }
    envoy.wait_metric(&outcome("missing"), missing.len() as f64 + 1.0);
    envoy.wait_metric(&outcome("invalid"), invalid.len() as f64);
}

#[test]
fn the_first_of_duplicate_members_is_the_key() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(BODY_KEY, upstream.port);
    let post = |body: &str| send(envoy.port, &json_post("/e", body.as_bytes())).unwrap();
    assert_eq!(marker(&post(r#"{"eventId":"dm-a","eventType":"x","eventId":"dm-b"}"#)), None);
    assert_eq!(marker(&post(r#"{"eventId":"dm-a"}"#)).as_deref(), Some("duplicate"));
    assert_eq!(marker(&post(r#"{"eventId":"dm-b"}"#)), None, "the second member was not the key");
    assert_eq!(upstream.hits(), 2);
}

#[test]
fn only_the_member_the_pointer_names_is_the_key() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(BODY_KEY, upstream.port);
    let post = |body: &str| send(envoy.port, &json_post("/e", body.as_bytes())).unwrap();
    // The member at the top level, wherever it comes; one inside another object is not it.
    assert_eq!(marker(&post(r#"{"payload":{"eventId":"nested-1"},"eventId":"top-1"}"#)), None);
    assert_eq!(marker(&post(r#"{"eventId":"nested-1"}"#)), None);
    assert_eq!(marker(&post(r#"{"eventId":"top-1"}"#)).as_deref(), Some("duplicate"));
    assert_eq!(upstream.hits(), 2);
}

/// The key must be complete in the body's first 64 KiB: the closing quote of its value at byte
/// 65 536 is in, one byte later it is not (a missing key).
#[test]
fn only_the_first_64_kib_are_read() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(BODY_KEY_REJECT, upstream.port);
    let body = |pad: usize, id: &str| format!(r#"{{"pad":"{}","eventId":"{id}"}}"#, "x".repeat(pad));
    // `{"pad":"` + pad + `","eventId":"` + id + `"` ends at byte 65 536 with this pad.
    let fits = 65_536 - r#"{"pad":"","eventId":"edge-1""#.len();
    let inside = body(fits, "edge-1");
    assert_eq!(inside.find(r#"edge-1""#).unwrap() + 7, 65_536);
    assert_eq!(send(envoy.port, &json_post("/e", inside.clone())).unwrap().status, 200);
    assert_eq!(upstream.last().unwrap().body.len(), inside.len());
    let r = send(envoy.port, &json_post("/e", inside)).unwrap();
    assert_eq!(marker(&r).as_deref(), Some("duplicate"));
    let outside = body(fits + 1, "edge-1");
    for framing in ["length", "chunked"] {
        let mut upload = if framing == "length" {
            Upload::start(envoy.port, "/e", &[("content-type", "application/json")], Framing::Length(outside.len()))
        } else {
            Upload::start(envoy.port, "/e", &[("content-type", "application/json")], Framing::Chunked)
        };
        upload.write_in_pieces(outside.as_bytes(), 10_000);
        let r = upload.finish();
        assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("missing_event_id")), "{framing}");
    }
    assert_eq!(upstream.hits(), 1);
    drop(envoy);
    // Without reject, the body beyond 64 KiB still reaches the service whole.
    let envoy = Envoy::start(BODY_KEY, upstream.port);
    let big = body(300_000, "late-1");
    for _ in 0..2 {
        let r = send(envoy.port, &json_post("/e", big.clone())).unwrap();
        assert_eq!((r.status, marker(&r)), (200, None));
        assert_eq!(upstream.last().unwrap().body, big.as_bytes());
    }
    envoy.wait_metric(&outcome("missing"), 2.0);
}

/// A body that shows early that it has no key is refused on that chunk, but the answer goes out
/// only with the end of the request (an answer mid-upload would be followed by a reset).
#[test]
fn a_body_that_is_not_json_is_refused_after_its_end_with_reject() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(BODY_KEY_REJECT, upstream.port);
    let head = br#"{"eventId" = "evt_1", "#;
    let rest = vec![b'x'; 200_000];
    let mut upload = Upload::start(
        envoy.port,
        "/e",
        &[("content-type", "application/json")],
        Framing::Length(head.len() + rest.len()),
    );
    upload.write(head);
    envoy.wait_metric(&outcome("missing"), 1.0);
    assert!(!upload.answered_within(Duration::from_millis(300)), "answered before the body ended");
    upload.write_in_pieces(&rest, 16 << 10);
    let r = upload.finish();
    assert_eq!((r.status, marker(&r).as_deref()), (400, Some("missing")), "{}", r.text());
    assert_eq!(upstream.hits(), 0);
    drop(envoy);
    // With `pass` it goes through whole, counted missing.
    let envoy = Envoy::start(BODY_KEY, upstream.port);
    let body = [&head[..], &rest].concat();
    let r = send(envoy.port, &json_post("/e", body.clone())).unwrap();
    assert_eq!((r.status, marker(&r)), (200, None));
    assert_eq!(upstream.last().unwrap().body, body);
    envoy.wait_metric(&outcome("missing"), 1.0);
}

/// A key in the first bytes of an 8 MB body, streamed in pieces: the first delivery reaches the
/// service whole; the duplicate is decided on its first piece — before the client has sent the
/// rest — and the service never gets it (nothing past its headers goes upstream).
#[test]
fn a_key_at_the_start_of_a_large_body_is_decided_before_the_rest_arrives() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(BODY_KEY, upstream.port);
    let mut body = br#"{"eventId":"big-1","eventType":"BulkImported","payload":""#.to_vec();
    body.extend((0..8_000_000u32).map(|i| b'a' + (i % 26) as u8));
    body.extend_from_slice(br#""}"#);
    let headers = [("content-type", "application/json")];

    let mut upload = Upload::start(envoy.port, "/import", &headers, Framing::Length(body.len()));
    upload.write_in_pieces(&body, 256 << 10);
    let r = upload.finish();
    assert_eq!((r.status, marker(&r)), (200, None));
    assert_eq!(upstream.hits(), 1);
    assert!(upstream.last().unwrap().body == body, "the first delivery reached the service whole");
    envoy.wait_metric(&outcome("first"), 1.0);

    for framing in [Framing::Length(body.len()), Framing::Chunked] {
        let before = upstream_tx(&envoy);
        let duplicates = envoy.metric(&outcome("duplicate")).unwrap_or(0.0);
        let mut upload = Upload::start(envoy.port, "/import", &headers, framing);
        upload.write(&body[..4096]);
        // Decided on the first piece, while 99.9 % of the body is still with the client.
        envoy.wait_metric(&outcome("duplicate"), duplicates + 1.0);
        assert!(!upload.answered_within(Duration::from_millis(200)), "{framing:?}: answered mid-upload");
        upload.write_in_pieces(&body[4096..], 256 << 10);
        let r = upload.finish();
        assert_eq!((r.status, marker(&r).as_deref()), (200, Some("duplicate")), "{framing:?}");
        let sent = upstream_tx(&envoy) - before;
        assert!(sent < 4096.0, "{framing:?}: {sent} bytes went upstream (the headers alone expected)");
    }
    // HTTP/2, the body in 1 MB writes.
    let pieces: Vec<&[u8]> = body.chunks(1 << 20).collect();
    let before = upstream_tx(&envoy);
    let r = h2_post(envoy.port, "/import", &headers, &pieces, &nothing);
    assert_eq!((r.status, marker(&r).as_deref()), (200, Some("duplicate")), "HTTP/2");
    assert!(upstream_tx(&envoy) - before < 4096.0, "HTTP/2: body bytes went upstream");
    assert_eq!(upstream.hits(), 1, "a duplicate reached the service");
}

/// The key's bytes split over two body chunks at every position — member name, colon, value,
/// inside an escape, the closing quote — over HTTP/1.1 with a content-length and chunked, and
/// over HTTP/2: the same key every time. The first piece is seen going upstream before the second
/// is written, so the two were separate body callbacks.
#[test]
fn a_key_split_across_body_chunks_is_the_same_key() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(BODY_KEY, upstream.port);
    let pad = "p".repeat(3000);
    let body = |id: &str| format!(r#"{{"pad":"{pad}","eventId":"{id}","eventType":"OrderPlaced"}}"#);
    let headers = [("content-type", "application/json")];
    assert_eq!(marker(&send(envoy.port, &json_post("/e", body("evt_789012"))).unwrap()), None);
    // The same id with an escape in it (\u0038 is "8").
    let split = body(r#"evt_7\u00389012"#);
    let start = split.find(r#""eventId""#).unwrap();
    // The value's closing quote: a first piece that ends before it leaves the key open.
    let quote = split.find(r#"","eventType""#).unwrap();
    let forwarded = |before: f64| {
        let e = &envoy;
        let ok = streaming::eventually(10, || upstream_tx(e) >= before + 3000.0);
        assert!(ok, "the first piece never went upstream: {before} -> {}", upstream_tx(e));
    };
    let mut checked = 0;
    for at in start..=quote {
        for framing in [Framing::Length(split.len()), Framing::Chunked] {
            let before = upstream_tx(&envoy);
            let mut upload = Upload::start(envoy.port, "/e", &headers, framing);
            upload.write(&split.as_bytes()[..at]);
            forwarded(before);
            upload.write(&split.as_bytes()[at..]);
            let r = upload.finish();
            assert_eq!(marker(&r).as_deref(), Some("duplicate"), "split at {at} ({framing:?}): {}", r.text());
            checked += 1;
        }
    }
    // A first piece that completes the key decides: it is not forwarded, and the duplicate is
    // counted before the second piece is written.
    for framing in [Framing::Length(split.len()), Framing::Chunked] {
        let before = upstream_tx(&envoy);
        let mut upload = Upload::start(envoy.port, "/e", &headers, framing);
        upload.write(&split.as_bytes()[..=quote]);
        checked += 1;
        envoy.wait_metric(&outcome("duplicate"), checked as f64);
        upload.write(&split.as_bytes()[quote + 1..]);
        let r = upload.finish();
        assert_eq!(marker(&r).as_deref(), Some("duplicate"), "{framing:?}: {}", r.text());
        assert!(upstream_tx(&envoy) - before < 3000.0, "{framing:?}: the deciding piece went upstream");
    }
    // HTTP/2: a few positions (each a curl run).
    for at in [start + 4, start + 9, start + 11, start + 19, quote] {
        let before = upstream_tx(&envoy);
        let (a, b) = split.as_bytes().split_at(at);
        let r = h2_post(envoy.port, "/e", &headers, &[a, b], &|| forwarded(before));
        assert_eq!(marker(&r).as_deref(), Some("duplicate"), "HTTP/2 split at {at}: {}", r.text());
    }
    assert_eq!(upstream.hits(), 1);
    // A longer id whose first chunk ends where the known id would: not the known id.
    let longer = body("evt_7890123");
    let at = longer.find("3\"").unwrap();
    let before = upstream_tx(&envoy);
    let mut upload = Upload::start(envoy.port, "/e", &headers, Framing::Length(longer.len()));
    upload.write(&longer.as_bytes()[..at]);
    forwarded(before);
    upload.write(&longer.as_bytes()[at..]);
    let r = upload.finish();
    assert_eq!((r.status, marker(&r)), (200, None), "{}", r.text());
    assert_eq!(upstream.hits(), 2);
    envoy.wait_metric(&outcome("duplicate"), checked as f64 + 5.0);
}

/// `body_key` with `fingerprint: "body"`: the key alone no longer decides; the chunk that
/// completes the body or its first 64 KiB does (the earlier ones, the key's included, go on), and
/// the same key with another body is a mismatch.
#[test]
fn with_a_body_fingerprint_the_body_decides_not_the_key() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {"body_key": "/eventId", "fingerprint": "body"}}"#, upstream.port);
    let post = |body: &str| send(envoy.port, &json_post("/pay", body.as_bytes())).unwrap();
    assert_eq!(marker(&post(r#"{"eventId":"fp-1","amount":10}"#)), None);
    let r = post(r#"{"eventId":"fp-1","amount":99}"#);
    assert_eq!((r.status, marker(&r).as_deref()), (422, Some("mismatch")));
    assert_eq!(marker(&post(r#"{"eventId":"fp-1","amount":10}"#)).as_deref(), Some("duplicate"));
    assert_eq!(upstream.hits(), 1);

    let mut body = br#"{"eventId":"fp-big","payload":""#.to_vec();
    body.extend(std::iter::repeat_n(b'q', 300_000));
    body.extend_from_slice(br#""}"#);
    assert_eq!(marker(&send(envoy.port, &json_post("/pay", body.clone())).unwrap()), None);
    assert_eq!(upstream.hits(), 2);
    let headers = [("content-type", "application/json")];
    let before = upstream_tx(&envoy);
    let mut upload = Upload::start(envoy.port, "/pay", &headers, Framing::Length(body.len()));
    upload.write(&body[..8192]);
    // The key is complete in this piece, yet it goes upstream: the fingerprint needs more.
    let forwarded = streaming::eventually(10, || upstream_tx(&envoy) >= before + 8192.0);
    assert!(forwarded, "the first piece was held: {before} -> {}", upstream_tx(&envoy));
    upload.write_in_pieces(&body[8192..], 16 << 10);
    let r = upload.finish();
    assert_eq!((r.status, marker(&r).as_deref()), (200, Some("duplicate")), "{}", r.text());
    let sent = upstream_tx(&envoy) - before;
    assert!(sent < 100_000.0, "{sent} bytes went upstream: at most the first 64 KiB expected");
    assert_eq!(upstream.hits(), 2);
}

/// A structured CloudEvent is keyed by `source` + `id` while `ce-id` is among `headers`, whatever
/// `body_key` says; without `ce-id` there, `body_key` reads the envelope like any `*+json` body
/// (e.g. a field of the event's data, as Dapr's envelopes carry it under `data`).
#[test]
fn body_key_reads_a_cloudevent_only_when_ce_id_is_not_a_key_header() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let event = |id: &str| json!([{"source": "/checkout", "id": id, "type": "com.example.order.placed", "data": {"orderId": "ord-7"}}]);
    let a = cloudevent("structured", "/events", &event("uuid-1"));
    let b = cloudevent("structured", "/events", &event("uuid-2"));
    // Default headers (ce-id among them): source + id; body_key is not used for it.
    let envoy = Envoy::start(r#"{"dedup": {"body_key": "/data/orderId"}}"#, upstream.port);
    assert_eq!(marker(&send(envoy.port, &a).unwrap()), None);
    assert_eq!(marker(&send(envoy.port, &b).unwrap()), None, "another id is another event");
    assert_eq!(marker(&send(envoy.port, &a).unwrap()).as_deref(), Some("duplicate"));
    assert_eq!(upstream.hits(), 2);
    drop(envoy);
    // Without ce-id: the data's orderId is the key, so both envelopes are one event.
    let envoy = Envoy::start(r#"{"dedup": {"headers": ["x-event-id"], "body_key": "/data/orderId"}}"#, upstream.port);
    assert_eq!(marker(&send(envoy.port, &a).unwrap()), None);
    let r = send(envoy.port, &b).unwrap();
    assert_eq!((marker(&r).as_deref(), r.json()["event_id"].as_str()), (Some("duplicate"), Some("ord-7")));
    assert_eq!(upstream.hits(), 3);
}
