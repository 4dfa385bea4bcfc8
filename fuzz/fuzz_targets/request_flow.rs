//! The whole per-request flow (`filter::Stream`) over the project's test double of the host
//! (`meshguard::testing`: one `Proxy` per input, a `FakeHost` per delivery), as Envoy drives it:
//! request headers, body chunks of any size with the end of stream anywhere (or trailers),
//! the response (the upstream's, or meshguard's local reply), the log. The same request is sent
//! up to three times, so later deliveries meet the entries and circuits the earlier ones left.
//!
//! Stores are small (`max_entries` ≤ 64: every bucket is created in `init_shared`, per input).
//!
//! Input: one line of directives, then header lines (`fuzz/src/lib.rs` format), then a line
//! `--` and a binary script read by `Bytes`:
//! * directives: `cfg=<digit>` picks one of the configurations below (all four features; body
//!   fingerprints; `on_missing: generate`; trace `hop` with B3; `defer` with a request-id
//!   generator; keys in JSON bodies with gRPC and neutral outcomes; dedup `metrics_only` with
//!   trace `auto`) — every parser and decision on the path is reached with hostile headers
//!   (seeds carry gRPC, structured CloudEvents and JSON content types);
//! * script: repeats (1-3), then per delivery: a flags byte (bit 0: end of stream with the
//!   headers, bit 1: trailers end the body, bit 2: the upstream answers before the body ends,
//!   bit 3: the stream is reset — no response, bit 4: the body is a JSON event cut into chunks
//!   of 7-byte units instead of filler, bit 5: the response is gRPC-shaped — headers without
//!   the end of stream, then trailers, bit 6: with bit 5, the stream ends without trailers,
//!   bit 7: Envoy's response flags say the caller reset the stream), a chunk count (0-7), each
//!   chunk a length code (× 700 bytes, so 64 KiB is crossed) and a fill byte, then the
//!   upstream's status (u16; its remainder by 17 is the gRPC status).
//!
//! Invariants: nothing panics; at most one local reply per delivery, and none after the
//! upstream answered; after `Verdict::Stop` the filter is not called again with request data
//! (as in Envoy) — a `Stop` comes with a local reply; after `on_log` no dedup entry is in flight
//! (every delivery completed or released the key it held); a body chunk is either forwarded
//! whole or dropped whole; every log line meshguard writes is one JSON object.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use meshguard::dedup::store::{Bucket, Phase};
use meshguard::filter::{Plugin, Stream, Verdict};
use meshguard::ids::TestEntropy;
use meshguard::testing::{self, FakeHost, Proxy, ProxyRef};
use meshguard_fuzz::{directive, lines, Bytes, SECOND};

const CONFIGS: [&str; 7] = [
    r#"{"log": {"requests": true}, "dedup": {"fingerprint": "method_path", "max_entries": 64},
        "routes": [{"name": "r", "match": {"prefix": "/r"}, "circuit_breaker": {"window": {"type": "count", "size": 4},
          "minimum_calls": 2, "failure_rate_threshold": 50, "open_duration": "1s", "half_open_calls": 1}}],
        "circuit_breaker": {"window": {"type": "time", "size": "10s"}, "minimum_calls": 1}}"#,
    r#"{"log": {"requests": true}, "dedup": {"fingerprint": "body", "max_entries": 4, "in_flight_ttl": "5s"}}"#,
    r#"{"dedup": {"on_missing": "generate", "fingerprint": "body", "scope": "caller", "duplicate_status": 409, "max_entries": 64}}"#,
    r#"{"trace": {"mode": "hop", "b3": "accept"}, "correlation": {"generator": "trace_id"}, "log": {"requests": true}}"#,
    r#"{"trace": {"mode": "defer"}, "correlation": {"generator": "request_id", "header": "x-request-id"},
        "dedup": {"on_missing": "reject", "headers": ["idempotency-key", "ce-id"], "max_entries": 64}, "log": {"requests": true}}"#,
    r#"{"dedup": {"body_key": "/eventId", "on_missing": "reject", "max_entries": 64}, "log": {"requests": true},
        "circuit_breaker": {"consecutive_failures": 2, "ignore_status": [429], "failure_grpc_status": [14], "open_duration": "1s"}}"#,
    r#"{"dedup": {"mode": "metrics_only", "fingerprint": "body", "body_key": "/id", "max_entries": 64}, "trace": {"mode": "auto"}}"#,
];

/// The JSON body of bit 4: a structured CloudEvent that also has an `eventId`, `fill` in its ids.
fn json_event(fill: u8) -> Vec<u8> {
    let c = char::from(b'a' + fill % 26);
    format!(r#"{{"specversion":"1.0","id":"e-{c}","source":"/s","eventId":"k-{c}","data":{{"n":[1,2.5,"é"]}}}}"#)
        .into_bytes()
}

/// The peer certificate every connection presents (for `scope: caller`).
const PEER: &[u8] = b"spiffe://cluster.local/ns/a/sa/b";

/// A stream's host on the input's process.
fn host(proxy: &ProxyRef) -> FakeHost {
    let mut host = FakeHost::worker(proxy, 0);
    host.set_property("connection.uri_san_peer_certificate", PEER);
    host
}

/// The response head as Envoy hands it to the filter: the `:status` line, and the
/// `response.code` property Envoy derives from it.
fn respond(host: &mut FakeHost, status: u32) {
    host.response = vec![(":status".to_string(), status.to_string().into_bytes())];
    host.set_property("response.code", &u64::from(status).to_le_bytes());
}

/// Every application-log line written since the last check (`checked` of them were): a request
/// log line is one JSON object; the rest are plain-text transitions, and with a host that never
/// fails there is no internal error.
fn check_logs(host: &FakeHost, checked: &mut usize) {
    let logs = &host.proxy().logs;
    for (_, _, message) in logs.iter().skip(*checked) {
        if message.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(message).expect("a request log line is JSON");
            assert!(v.is_object());
        } else {
            assert!(
                message.starts_with("meshguard: ") && !message.starts_with("meshguard: internal error"),
                "{message}"
            );
        }
    }
    *checked = logs.len();
}

fn plugin(json: &str, proxy: &ProxyRef) -> Plugin {
    let mut host = host(proxy);
    let plugin = testing::plugin(json, &mut host, "fuzz");
    plugin.init_shared(&mut host).expect("init_shared with a working host");
    check_logs(&host, &mut 0);
    plugin
}

/// One delivery of the request; returns whether meshguard answered it.
fn deliver(plugin: &Plugin, proxy: &ProxyRef, headers: &[(String, Vec<u8>)], b: &mut Bytes, n: u64) -> bool {
    let flags = b.u8();
    let chunks = b.u8() % 8;
    let mut host = host(proxy);
    host.request = headers.to_vec();
    let mut logged = host.proxy().logs.len();
    let mut stream = Stream::default();
    let eos_with_headers = flags & 1 != 0 || chunks == 0 && flags & 2 == 0;
    let mut entropy = TestEntropy(n * 7919 + 1);
    let mut verdict = stream.on_request_headers_eos(plugin, &mut host, &mut entropy, eos_with_headers);
    check_logs(&host, &mut logged);
    let mut upstream_answered = false;
    if verdict != Verdict::Stop && !eos_with_headers {
        let mut json = Vec::new();
        for i in 0..chunks {
            let code = usize::from(b.u8());
            let fill = b.u8();
            if flags & 16 != 0 {
                if json.is_empty() {
                    json = json_event(fill);
                }
                let len = (code * 7).min(json.len());
                host.body = json.drain(..len).collect();
            } else {
                host.body = vec![fill; code * 700];
            }
            let len = host.body.len();
            let last = i + 1 == chunks && flags & 2 == 0;
            if i == 1 && flags & 4 != 0 && !upstream_answered {
                // The upstream answers while the body is still arriving.
                respond(&mut host, 408);
                stream.on_response_headers(plugin, &mut host, true);
                check_logs(&host, &mut logged);
                upstream_answered = true;
            }
            verdict = stream.on_request_body(plugin, &mut host, len, last);
            assert_eq!(host.partial_drops, 0, "a chunk is dropped whole");
            check_logs(&host, &mut logged);
            if verdict == Verdict::Stop {
                break;
            }
        }
        if verdict != Verdict::Stop && flags & 2 != 0 {
            host.body.clear();
            verdict = stream.on_request_body(plugin, &mut host, 0, true);
            assert_eq!(host.partial_drops, 0, "a chunk is dropped whole");
            check_logs(&host, &mut logged);
        }
    }
    host.advance(u64::from(b.u8()) * SECOND / 10);
    let local_replies: Vec<u32> = host.local_replies.iter().map(|r| r.status).collect();
    assert!(local_replies.len() <= 1, "one answer per request: {local_replies:?}");
    assert_eq!(verdict == Verdict::Stop, !local_replies.is_empty(), "Stop comes with a local reply");
    assert!(!(upstream_answered && !local_replies.is_empty()), "no local reply after the upstream's answer");
    let status = u32::from(b.u16() % 600);
    if let Some(&local) = local_replies.first() {
        // The local reply passes through the encoder filters, meshguard's included.
        respond(&mut host, local);
        stream.on_response_headers(plugin, &mut host, true);
    } else if flags & 8 == 0 && !upstream_answered {
        respond(&mut host, status);
        if flags & 32 != 0 {
            // A gRPC-shaped response: the status in the trailers, or none.
            stream.on_response_headers(plugin, &mut host, false);
            if flags & 64 == 0 {
                host.trailers = vec![("grpc-status".to_string(), (status % 17).to_string().into_bytes())];
                stream.on_response_trailers(plugin, &mut host);
            }
        } else {
            stream.on_response_headers(plugin, &mut host, true);
        }
    }
    if flags & 128 != 0 {
        // DR: the caller reset the stream.
        host.set_property("response.flags", &(1u64 << 28).to_le_bytes());
    }
    check_logs(&host, &mut logged);
    stream.on_log(plugin, &mut host);
    check_logs(&host, &mut logged);
    !local_replies.is_empty()
}

fuzz_target!(|data: &[u8]| {
    let (text, script) = match data.windows(4).position(|w| w == b"\n--\n") {
        Some(p) => (&data[..p], &data[p + 4..]),
        None => (data, &[][..]),
    };
    let parsed = lines(text);
    let cfg = directive(parsed.directives, "cfg").and_then(|d| d.first()).map_or(0, |d| usize::from(d % 7));
    let headers: Vec<(String, Vec<u8>)> = parsed
        .headers
        .iter()
        .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?.to_ascii_lowercase(), v.to_vec())))
        .collect();
    // Every clock reading moves the clock on by 1 ns.
    let proxy = Arc::new(Mutex::new(Proxy { clock: 1_700_000_000 * SECOND, clock_step: 1, ..Proxy::default() }));
    let plugin = plugin(CONFIGS[cfg], &proxy);
    let mut b = Bytes(script);
    let repeats = b.u8() % 3 + 1;
    for n in 0..repeats {
        deliver(&plugin, &proxy, &headers, &mut b, u64::from(n));
        // Every delivery settled the key it held: nothing is left in flight.
        if let Some(layout) = plugin.dedup_layout() {
            let p = proxy.lock().unwrap_or_else(|e| e.into_inner());
            for key in p.shared.keys().filter(|k| k.contains("/dedup/")) {
                let value = p.shared.peek(key).unwrap_or_default();
                let bucket = Bucket::decode(value, &layout).expect("meshguard writes buckets that decode");
                assert!(bucket.entries.iter().all(|e| e.phase != Phase::InFlight), "an entry left in flight");
            }
        }
    }
});
