//! Event keys in the body (docs/behaviour.md "Keys in the body"): structured CloudEvents keyed
//! like binary ones, `body_key` pointers, batches, chunkings, and key headers on several lines.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::breaker_plugin;
use crate::filter::{state, Plugin, Stream, Verdict};
use crate::ids::TestEntropy;
use crate::testing::FakeHost;

/// One delivery: `headers`, then the body in `chunks` (none: no body); the service answers
/// `status` unless meshguard did. Returns the verdicts and the stream's host.
fn deliver(
    plugin: &Plugin,
    host: &FakeHost,
    headers: &[(&str, &[u8])],
    chunks: &[&[u8]],
    status: &str,
) -> (Vec<Verdict>, FakeHost) {
    let mut h = host.next_stream();
    let mut all: Vec<(&str, &[u8])> = vec![(":method", b"POST"), (":path", b"/events"), ("x-correlation-id", b"c-1")];
    all.extend_from_slice(headers);
    h.set_request(&all);
    let mut stream = Stream::default();
    let seed = h.clock() | 1;
    let mut verdicts = vec![stream.on_request_headers_eos(plugin, &mut h, &mut TestEntropy(seed), chunks.is_empty())];
    for (i, chunk) in chunks.iter().enumerate() {
        if verdicts.last() == Some(&Verdict::Stop) {
            break;
        }
        h.body = chunk.to_vec();
        let verdict = stream.on_request_body(plugin, &mut h, chunk.len(), i + 1 == chunks.len());
        verdicts.push(verdict);
    }
    h.advance(1);
    if verdicts.last() != Some(&Verdict::Stop) {
        h.respond(&[(":status", status.as_bytes())]);
        stream.on_response_headers(plugin, &mut h, true);
    }
    stream.on_log(plugin, &mut h);
    (verdicts, h)
}

const STRUCTURED: &[u8] = b"application/cloudevents+json; charset=utf-8";

fn cloudevent(source: &str, id: &str) -> Vec<u8> {
    format!(r#"{{"specversion":"1.0","type":"com.example.order.placed","source":"{source}","id":"{id}","datacontenttype":"application/json","data":{{"orderId":7}}}}"#).into_bytes()
}

fn dedup(host: &FakeHost) -> Option<String> {
    host.state_str(state::DEDUP)
}

#[test]
fn a_structured_cloudevent_redelivered_is_a_duplicate() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {}}"#, &mut host);
    let event = cloudevent("/orders", "e-1");
    let (_, first) = deliver(&plugin, &host, &[("content-type", STRUCTURED)], &[&event], "202");
    assert_eq!(dedup(&first).as_deref(), Some("first"));
    assert_eq!(first.state_str(state::EVENT_ID).as_deref(), Some("e-1"));
    let (verdicts, again) = deliver(&plugin, &host, &[("content-type", STRUCTURED)], &[&event], "202");
    assert_eq!(verdicts.last(), Some(&Verdict::Stop));
    let reply = &again.local_replies[0];
    assert_eq!((reply.status, reply.header("x-meshguard-dedup")), (202, Some(&b"duplicate"[..])));
    // Another source with the same id is another event.
    let other = cloudevent("/payments", "e-1");
    let (_, third) = deliver(&plugin, &host, &[("content-type", STRUCTURED)], &[&other], "202");
    assert_eq!(dedup(&third).as_deref(), Some("first"));
}

#[test]
fn binary_then_structured_mode_of_one_event_is_one_event() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {}}"#, &mut host);
    // Binary mode: ce-* headers, percent-encoded as the HTTP binding says.
    let headers: [(&str, &[u8]); 3] = [("ce-id", b"e%20%C3%A9"), ("ce-source", b"/orders"), ("ce-specversion", b"1.0")];
    let (_, binary) = deliver(&plugin, &host, &headers, &[b"{\"orderId\":7}"], "200");
    assert_eq!(dedup(&binary).as_deref(), Some("first"));
    let structured = cloudevent("/orders", "e \u{e9}");
    let (_, again) = deliver(&plugin, &host, &[("content-type", STRUCTURED)], &[&structured], "200");
    assert_eq!(dedup(&again).as_deref(), Some("duplicate"));
}

#[test]
fn a_cloudevents_batch_passes_and_is_counted() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {"on_missing": "reject"}}"#, &mut host);
    let batch = format!("[{}]", String::from_utf8(cloudevent("/o", "e-1")).unwrap());
    let ct: &[u8] = b"application/cloudevents-batch+json";
    for _ in 0..2 {
        let (verdicts, h) = deliver(&plugin, &host, &[("content-type", ct)], &[batch.as_bytes()], "200");
        assert!(verdicts.iter().all(|v| *v == Verdict::Continue));
        assert_eq!(dedup(&h).as_deref(), Some("batch"));
    }
    assert_eq!(host.counter("rule=.=default;.;outcome=.=batch;.;meshguard_dedup_total"), 2);
}

const ENVELOPE: &str = r#"{"schemaVersion":"2.1.0","eventId":"evt_789012","eventType":"OrderPlaced","correlationId":"c-9","payload":{"orderId":"o-1","items":[1,2,3]}}"#;

#[test]
fn body_key_takes_the_key_from_a_json_envelope() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {"body_key": "/eventId", "fingerprint": "method_path"}}"#, &mut host);
    let ct: [(&str, &[u8]); 1] = [("content-type", b"application/json")];
    let (_, first) = deliver(&plugin, &host, &ct, &[ENVELOPE.as_bytes()], "201");
    assert_eq!(first.state_str(state::EVENT_ID).as_deref(), Some("evt_789012"));
    // Split anywhere, even inside the key: the same event.
    for size in [1, 7, 23, 40] {
        let chunks: Vec<&[u8]> = ENVELOPE.as_bytes().chunks(size).collect();
        let (verdicts, again) = deliver(&plugin, &host, &ct, &chunks, "201");
        assert_eq!(dedup(&again).as_deref(), Some("duplicate"), "chunks of {size}");
        assert_eq!(verdicts.last(), Some(&Verdict::Stop));
        // The chunk holding the value's closing quote decides; it and every later chunk but the
        // last (whose end of stream sends the reply) are dropped, never forwarded.
        let deciding = (ENVELOPE.find("evt_789012").unwrap() + "evt_789012".len()) / size;
        let expected: usize = chunks[deciding..chunks.len() - 1].iter().map(|c| c.len()).sum();
        assert_eq!(again.dropped, expected, "chunks of {size}: the rest of the body is dropped");
    }
    // A `+json` media type works too, and an integer member is a key.
    let plugin = breaker_plugin(r#"{"dedup": {"body_key": "/payload/seq"}}"#, &mut host);
    let ct: [(&str, &[u8]); 1] = [("content-type", b"application/vnd.orders+json")];
    let (_, h) = deliver(&plugin, &host, &ct, &[br#"{"payload":{"seq":42}}"#], "200");
    assert_eq!(h.state_str(state::EVENT_ID).as_deref(), Some("42"));
}

#[test]
fn a_key_at_the_start_of_a_large_body_is_decided_without_waiting_for_its_end() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {"body_key": "/eventId"}}"#, &mut host);
    let ct: [(&str, &[u8]); 2] = [("content-type", b"application/json"), ("content-length", b"10000000")];
    let head = br#"{"eventId":"big-1","data":""#;
    let filler = vec![b'x'; 32 * 1024];
    let chunks: Vec<&[u8]> = vec![head, &filler, &filler, &filler];
    let (verdicts, first) = deliver(&plugin, &host, &ct, &chunks, "200");
    assert_eq!(dedup(&first).as_deref(), Some("first"), "decided on the first chunk");
    assert!(verdicts.iter().all(|v| *v == Verdict::Continue));
    let (verdicts, again) = deliver(&plugin, &host, &ct, &chunks, "200");
    assert_eq!(dedup(&again).as_deref(), Some("duplicate"));
    // The first chunk went on before the key was complete? No: it completed the key, and was
    // held back with everything after it; the reply waits for the end of the body.
    assert_eq!(
        verdicts,
        vec![Verdict::Continue, Verdict::Continue, Verdict::Continue, Verdict::Continue, Verdict::Stop]
    );
    assert_eq!(again.dropped, head.len() + 3 * filler.len() - filler.len());
}

#[test]
fn a_body_without_a_key_is_missing_and_reject_applies_after_the_body() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {"body_key": "/eventId", "on_missing": "reject"}}"#, &mut host);
    let ct: [(&str, &[u8]); 1] = [("content-type", b"application/json")];
    for body in [&b"not json"[..], b"{\"eventId\":null}", b"{\"eventId\":{\"a\":1}}", b"{\"other\":1}"] {
        let (verdicts, h) = deliver(&plugin, &host, &ct, &[body], "200");
        assert_eq!(verdicts.last(), Some(&Verdict::Stop), "{}", String::from_utf8_lossy(body));
        assert_eq!(h.local_replies[0].status, 400);
        assert_eq!(dedup(&h).as_deref(), Some("missing"));
    }
    // A body key that is not a key: 400 invalid.
    let (_, h) = deliver(&plugin, &host, &ct, &[b"{\"eventId\":\"\"}"], "200");
    assert_eq!((h.local_replies[0].status, dedup(&h).as_deref()), (400, Some("invalid")));
    // Not JSON by its content type: no body is read, and the key is missing at once.
    let (verdicts, h) = deliver(&plugin, &host, &[("content-type", b"text/plain")], &[b"{\"eventId\":\"x\"}"], "200");
    assert_eq!(verdicts, vec![Verdict::Stop]);
    assert_eq!(h.local_replies[0].status, 400);
}

#[test]
fn generate_stamps_only_requests_that_cannot_carry_a_body_key() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {"on_missing": "generate", "body_key": "/eventId"}}"#, &mut host);
    let (_, plain) = deliver(&plugin, &host, &[("content-type", b"text/plain")], &[b"hi"], "200");
    assert_eq!(dedup(&plain).as_deref(), Some("generated"));
    assert!(plain.request_header("x-event-id").is_some());
    let (_, json) = deliver(&plugin, &host, &[("content-type", b"application/json")], &[b"{}"], "200");
    assert_eq!(dedup(&json).as_deref(), Some("missing"));
    assert_eq!(json.request_header("x-event-id"), None, "the headers were on their way already");
}

#[test]
fn a_key_header_on_several_lines_is_refused() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {}}"#, &mut host);
    for (name, a, b) in [("x-event-id", "h1-A", "h1-B"), ("idempotency-key", "\"a\"", "\"b\""), ("ce-id", "1", "2")] {
        let (verdicts, h) = deliver(&plugin, &host, &[(name, a.as_bytes()), (name, b.as_bytes())], &[], "200");
        assert_eq!(verdicts, vec![Verdict::Stop], "{name}");
        assert_eq!(h.local_replies[0].status, 400);
        let body: serde_json::Value = serde_json::from_slice(&h.local_replies[0].body).unwrap();
        assert_eq!(body["reason"], "sent on more than one line");
    }
    let two_sources: [(&str, &[u8]); 3] = [("ce-id", b"1"), ("ce-source", b"/a"), ("ce-source", b"/b")];
    let (_, h) = deliver(&plugin, &host, &two_sources, &[], "200");
    assert_eq!(h.local_replies[0].status, 400);
    // The genuine single-line event is still processed.
    let (_, h) = deliver(&plugin, &host, &[("x-event-id", b"h1-A")], &[], "200");
    assert_eq!(dedup(&h).as_deref(), Some("first"));
}

#[test]
fn a_body_key_with_a_body_fingerprint_waits_for_the_whole_body() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {"body_key": "/eventId", "fingerprint": "body"}}"#, &mut host);
    let ct: [(&str, &[u8]); 1] = [("content-type", b"application/json")];
    let (_, _) = deliver(&plugin, &host, &ct, &[br#"{"eventId":"f-1","#, br#""amount":5}"#], "200");
    let (_, same) = deliver(&plugin, &host, &ct, &[br#"{"eventId":"f-1","amount":5}"#], "200");
    assert_eq!(dedup(&same).as_deref(), Some("duplicate"));
    let (_, changed) = deliver(&plugin, &host, &ct, &[br#"{"eventId":"f-1","#, br#""amount":6}"#], "200");
    assert_eq!(dedup(&changed).as_deref(), Some("mismatch"));
    assert_eq!(changed.local_replies[0].status, 422);
}

/// `metrics_only`: every outcome is counted as when enforcing, but every request reaches the
/// service and none carries `x-meshguard-dedup`.
#[test]
fn metrics_only_counts_what_enforce_would_have_answered_and_answers_nothing() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(
        r#"{"dedup": {"mode": "metrics_only", "on_missing": "reject", "fingerprint": "method_path"}}"#,
        &mut host,
    );
    let id: [(&str, &[u8]); 1] = [("x-event-id", b"m-1")];
    let (_, first) = deliver(&plugin, &host, &id, &[], "200");
    assert_eq!(dedup(&first).as_deref(), Some("first"));
    let (verdicts, dup) = deliver(&plugin, &host, &id, &[], "200");
    assert_eq!((verdicts, dup.local_replies.len()), (vec![Verdict::Continue], 0));
    assert_eq!(dedup(&dup).as_deref(), Some("duplicate"));
    let (_, missing) = deliver(&plugin, &host, &[], &[], "200");
    assert_eq!((missing.local_replies.len(), dedup(&missing).as_deref()), (0, Some("missing")));
    let (_, invalid) = deliver(&plugin, &host, &[("x-event-id", b"")], &[], "200");
    assert_eq!((invalid.local_replies.len(), dedup(&invalid).as_deref()), (0, Some("invalid")));
    for outcome in ["first", "duplicate", "missing", "invalid"] {
        let name = format!("rule=.=default;.;outcome=.={outcome};.;meshguard_dedup_total");
        assert_eq!(host.counter(&name), 1, "{outcome}");
    }
    // The duplicate went to the service: the key is not held by it, and stays completed.
    let (_, again) = deliver(&plugin, &host, &id, &[], "200");
    assert_eq!(dedup(&again).as_deref(), Some("duplicate"));
}
