//! Outcomes of real mesh traffic (docs/behaviour.md: "Circuit breaking", *Neutral calls* and *gRPC
//! calls*; "Event-id deduplication", *First delivery*; "gRPC requests"): gRPC statuses in response
//! headers or trailers, streams that end without one, calls the caller abandoned, ignored statuses,
//! and the gRPC shape of every local reply.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::{breaker_plugin, SECOND};
use crate::filter::{state, Plugin, Stream, Verdict};
use crate::ids::TestEntropy;
use crate::testing::FakeHost;

const DC: u64 = 1 << 14;
const DR: u64 = 1 << 28;

/// How the upstream (or the caller) ends a call.
#[derive(Clone, Copy, Debug)]
enum End<'a> {
    /// Response headers with `grpc-status` and the end of stream (trailers-only).
    TrailersOnly(&'a str),
    /// Response headers `200`, then trailers with `grpc-status`.
    Trailers(&'a str),
    /// Response headers `200`, then the stream ends without a status; `flags` as Envoy set them.
    NoStatus(u64),
    /// No response headers; `flags` as Envoy set them.
    Reset(u64),
    /// An HTTP response.
    Http(&'a str),
}

fn grpc_request(host: &mut FakeHost, event_id: Option<&str>) {
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", b"POST"),
        (":path", b"/pkg.Svc/Do"),
        (":authority", b"svc"),
        ("content-type", b"application/grpc"),
        ("x-correlation-id", b"c-1"),
    ];
    if let Some(id) = event_id {
        headers.push(("x-event-id", id.as_bytes()));
    }
    host.set_request(&headers);
}

/// One call of a fresh stream on `host`'s worker, `took_ns` after the request.
fn grpc_call(plugin: &Plugin, host: &mut FakeHost, event_id: Option<&str>, end: End, took_ns: u64) -> FakeHost {
    let mut h = host.next_stream();
    grpc_request(&mut h, event_id);
    let mut stream = Stream::default();
    let seed = h.clock() | 1;
    let verdict = stream.on_request_headers(plugin, &mut h, &mut TestEntropy(seed));
    h.advance(took_ns);
    if verdict == Verdict::Continue {
        match end {
            End::TrailersOnly(code) => {
                h.respond(&[(":status", b"200"), ("grpc-status", code.as_bytes())]);
                stream.on_response_headers(plugin, &mut h, true);
            }
            End::Trailers(code) => {
                h.respond(&[(":status", b"200")]);
                stream.on_response_headers(plugin, &mut h, false);
                h.trailers.push(("grpc-status".into(), code.as_bytes().to_vec()));
                stream.on_response_trailers(plugin, &mut h);
            }
            End::NoStatus(flags) => {
                h.respond(&[(":status", b"200")]);
                stream.on_response_headers(plugin, &mut h, false);
                h.set_property("response.flags", &flags.to_le_bytes());
            }
            End::Reset(flags) => h.set_property("response.flags", &flags.to_le_bytes()),
            End::Http(status) => {
                h.respond(&[(":status", status.as_bytes())]);
                stream.on_response_headers(plugin, &mut h, true);
            }
        }
    }
    stream.on_log(plugin, &mut h);
    h
}

const BREAKER: &str = r#"{"routes": [{"name": "g", "circuit_breaker": {"consecutive_failures": 3, "slow_call_duration": "1s", "ignore_status": [429]}}]}"#;

fn counter(host: &FakeHost, name: &str) -> i64 {
    host.counter(&format!("rule=.=g;.;meshguard_circuit_{name}_total"))
}

#[test]
fn grpc_failures_in_headers_or_trailers_open_the_circuit() {
    for end in [End::TrailersOnly("14"), End::Trailers("14"), End::Trailers("13"), End::NoStatus(0), End::Reset(0)] {
        let mut host = FakeHost::new();
        let plugin = breaker_plugin(BREAKER, &mut host);
        for _ in 0..3 {
            grpc_call(&plugin, &mut host, None, end, 0);
        }
        assert_eq!(counter(&host, "failures"), 3, "{end:?}");
        let rejected = grpc_call(&plugin, &mut host, None, End::TrailersOnly("0"), 0);
        let reply = &rejected.local_replies[0];
        assert_eq!((reply.status, reply.grpc_status), (200, Some(14)), "{end:?}: UNAVAILABLE");
        assert!(reply.header("grpc-retry-pushback-ms").is_some());
        assert_eq!(reply.header("x-meshguard-circuit"), Some(&b"open"[..]));
        assert_eq!(reply.header("x-envoy-ratelimited"), Some(&b"true"[..]));
        assert_eq!(rejected.state_str(state::CIRCUIT).as_deref(), Some("rejected"));
    }
}

#[test]
fn grpc_successes_and_non_failure_codes_keep_the_circuit_closed() {
    for end in [End::TrailersOnly("0"), End::Trailers("0"), End::Trailers("5"), End::TrailersOnly("3")] {
        let mut host = FakeHost::new();
        let plugin = breaker_plugin(BREAKER, &mut host);
        for _ in 0..5 {
            grpc_call(&plugin, &mut host, None, end, 0);
        }
        assert_eq!(counter(&host, "failures"), 0, "{end:?}");
        assert_eq!(grpc_call(&plugin, &mut host, None, end, 0).local_replies.len(), 0);
    }
}

#[test]
fn the_outcome_of_a_grpc_call_waits_for_its_status() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(BREAKER, &mut host);
    let mut h = host.next_stream();
    grpc_request(&mut h, None);
    let mut stream = Stream::default();
    stream.on_request_headers(&plugin, &mut h, &mut TestEntropy(1));
    h.respond(&[(":status", b"200")]);
    stream.on_response_headers(&plugin, &mut h, false);
    let sets = h.shared_sets();
    assert_eq!(counter(&h, "failures"), 0, "nothing recorded at the headers");
    h.trailers.push(("grpc-status".into(), b"14".to_vec()));
    stream.on_response_trailers(&plugin, &mut h);
    assert_eq!(counter(&h, "failures"), 1);
    assert!(h.shared_sets() > sets);
    stream.on_log(&plugin, &mut h);
    assert_eq!(counter(&h, "failures"), 1, "recorded once");
}

#[test]
fn calls_the_caller_abandoned_are_neutral_unless_already_slow() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(BREAKER, &mut host);
    for end in [End::Reset(DC), End::Reset(DR), End::NoStatus(DR), End::TrailersOnly("1"), End::Http("429")] {
        for _ in 0..3 {
            grpc_call(&plugin, &mut host, None, end, SECOND / 2);
        }
    }
    assert_eq!(counter(&host, "failures"), 0);
    assert_eq!(counter(&host, "neutral"), 15);
    assert_eq!(grpc_call(&plugin, &mut host, None, End::Trailers("0"), 0).local_replies.len(), 0, "still closed");
    // A caller that gave up after slow_call_duration says the call was slow, not failed.
    grpc_call(&plugin, &mut host, None, End::Reset(DR), 2 * SECOND);
    assert_eq!((counter(&host, "slow"), counter(&host, "failures")), (1, 0));
    // Without the downstream flags, a reset is the upstream's failure.
    for _ in 0..3 {
        grpc_call(&plugin, &mut host, None, End::Reset(1 << 4), 0);
    }
    assert_eq!(counter(&host, "failures"), 3);
}

#[test]
fn a_neutral_probe_frees_its_half_open_slot() {
    let json = r#"{"routes": [{"name": "g", "circuit_breaker": {"consecutive_failures": 1, "half_open_calls": 1, "open_duration": "1s"}}]}"#;
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(json, &mut host);
    grpc_call(&plugin, &mut host, None, End::Trailers("14"), 0);
    host.advance(2 * SECOND);
    // The probe is abandoned by its caller: its slot goes to the next request.
    let probe = grpc_call(&plugin, &mut host, None, End::Reset(DR), 0);
    assert_eq!(probe.state_str(state::CIRCUIT).as_deref(), Some("half_open"));
    let next = grpc_call(&plugin, &mut host, None, End::Trailers("0"), 0);
    assert_eq!(next.state_str(state::CIRCUIT).as_deref(), Some("half_open"), "a probe, not rejected");
    assert_eq!(
        grpc_call(&plugin, &mut host, None, End::Trailers("0"), 0).state_str(state::CIRCUIT).as_deref(),
        Some("closed")
    );
}

const DEDUP: &str = r#"{"dedup": {"methods": ["POST"]}}"#;

#[test]
fn a_failed_grpc_call_releases_its_key_and_only_ok_completes_it() {
    for end in [End::TrailersOnly("14"), End::Trailers("14"), End::Trailers("2"), End::NoStatus(0), End::Reset(DR)] {
        let mut host = FakeHost::new();
        let plugin = breaker_plugin(DEDUP, &mut host);
        let failed = grpc_call(&plugin, &mut host, Some("e-1"), end, 0);
        assert_eq!(failed.state_str(state::DEDUP).as_deref(), Some("released"), "{end:?}");
        // The redelivery is processed again, and completes.
        let again = grpc_call(&plugin, &mut host, Some("e-1"), End::Trailers("0"), 0);
        assert_eq!(again.state_str(state::DEDUP).as_deref(), Some("first"), "{end:?}");
        assert!(again.local_replies.is_empty());
        // Now it is a duplicate, answered as a gRPC status.
        let dup = grpc_call(&plugin, &mut host, Some("e-1"), End::Trailers("0"), 0);
        let reply = &dup.local_replies[0];
        assert_eq!((reply.status, reply.grpc_status), (200, Some(6)), "ALREADY_EXISTS");
        assert_eq!(reply.header("x-meshguard-dedup"), Some(&b"duplicate"[..]));
        assert_eq!(reply.header("x-correlation-id"), Some(&b"c-1"[..]));
    }
}

#[test]
fn grpc_dedup_refusals_are_grpc_statuses() {
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(r#"{"dedup": {"on_missing": "reject", "fingerprint": "method_path"}}"#, &mut host);
    let missing = grpc_call(&plugin, &mut host, None, End::Trailers("0"), 0);
    assert_eq!(missing.local_replies[0].grpc_status, Some(3), "INVALID_ARGUMENT");
    let invalid = grpc_call(&plugin, &mut host, Some(""), End::Trailers("0"), 0);
    assert_eq!(invalid.local_replies[0].grpc_status, Some(3));
    // In flight: a first delivery that has not ended yet.
    let mut h = host.next_stream();
    grpc_request(&mut h, Some("e-2"));
    let mut first = Stream::default();
    first.on_request_headers(&plugin, &mut h, &mut TestEntropy(7));
    let in_flight = grpc_call(&plugin, &mut host, Some("e-2"), End::Trailers("0"), 0);
    assert_eq!(in_flight.local_replies[0].grpc_status, Some(10), "ABORTED");
    // The same key on another path: a fingerprint mismatch.
    let mut other = host.next_stream();
    grpc_request(&mut other, Some("e-2"));
    other.rewrite_request_header(":path", b"/pkg.Svc/Other");
    Stream::default().on_request_headers(&plugin, &mut other, &mut TestEntropy(9));
    assert_eq!(other.local_replies[0].grpc_status, Some(9), "FAILED_PRECONDITION");
}

#[test]
fn http_callers_timing_out_on_a_healthy_route_never_open_its_circuit() {
    let json = r#"{"routes": [{"name": "g", "circuit_breaker": {"consecutive_failures": 3, "minimum_calls": 3, "slow_call_duration": "5s"}}]}"#;
    let mut host = FakeHost::new();
    let plugin = breaker_plugin(json, &mut host);
    for flags in [DC, DR, DC, DR, DC] {
        let mut h = host.next_stream();
        h.set_request(&[(":method", b"GET"), (":path", b"/slow")]);
        let mut stream = Stream::default();
        stream.on_request_headers(&plugin, &mut h, &mut TestEntropy(3));
        h.advance(SECOND / 2);
        h.set_property("response.flags", &flags.to_le_bytes());
        stream.on_log(&plugin, &mut h);
    }
    assert_eq!(counter(&host, "failures"), 0);
    assert_eq!(counter(&host, "neutral"), 5);
}
