//! Writes the hand-made seed corpus to `fuzz/corpus/<target>/` (committed; a few KB in all).
//! Binary seeds are made with meshguard's own encoders, so they stay valid when a format changes:
//! `cd fuzz && cargo run --example make_seeds` after changing a codec, then commit the result.

use std::fs;
use std::path::Path;

use meshguard::breaker::{Outcome, State};
use meshguard::dedup::store::Bucket;
use meshguard::dedup::Layout;
use meshguard_fuzz::{breaker_config, breaker_config_bytes, Bytes, SECOND};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(name), bytes).expect("seed");
}

fn blob(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec = fs::read(root.join("tests/data/spec-example.json")).expect("SPEC example");
    write("config", "spec-example.json", &spec);
    write("config", "empty", b"");
    write("config", "empty-object.json", b"{}");
    write("config", "disabled.json", br#"{"circuit_breaker": "disabled", "dedup": {}}"#);
    write(
        "config",
        "errors.json",
        br#"{"trace": {"sample_ratio": 2}, "circuit_breaker": {"window": {"type": "time", "size": "1.5s"}, "slow_call_duration": "10x"}, "routes": [{"name": "a"}, {"name": "a"}]}"#,
    );
    write("config_structured", "zeros", &[0; 16]);
    write("config_structured", "ones", &[1; 64]);
    write("config_structured", "mixed", &(0u8..=255).collect::<Vec<_>>());

    for (name, text) in [
        ("units", "250ms"),
        ("compound", "1m30s"),
        ("fraction", "1.5s"),
        ("cap", "720h"),
        ("nanos", "7ns"),
        ("class", "5xx"),
        ("range", "500-504"),
        ("code", "503"),
    ] {
        write("duration_status", name, text.as_bytes());
    }

    // W3C test suite shapes: valid, future version with a suffix, upper case, zero ids, OWS.
    for (name, text) in [
        ("valid", TP.to_string()),
        ("ows", format!(" \t{TP}\t")),
        ("future-version", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds".into()),
        ("version-ff", TP.replacen("00", "ff", 1)),
        ("upper", TP.to_uppercase()),
        ("zero-trace", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into()),
        ("random-flag", TP.replace("-01", "-03")),
    ] {
        write("traceparent", name, text.as_bytes());
    }
    write("tracestate", "two-lines", b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\nfoo=1, foo=2");
    write("tracestate", "tenant", b"tenant@vendor=x,a*b/c=1,@bad=2");
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    write("tracestate", "33-members", many.join(",").as_bytes());
    write("tracestate", "empty-members", b" , ,a=1,\n\nb=2 ");

    write(
        "trace_decide",
        "propagate",
        format!("traceparent: {TP}\ntracestate: foo=1,bar=2\ntracestate: foo=3").as_bytes(),
    );
    write("trace_decide", "hop", format!("@hop\ntraceparent: {TP}").as_bytes());
    write("trace_decide", "duplicated", format!("traceparent: {TP}\ntraceparent: {TP}\ntracestate: a=1").as_bytes());
    write("trace_decide", "b3-single", b"b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90");
    write(
        "trace_decide",
        "b3-multi",
        b"@ratio=0\nx-b3-traceid: 463ac35c9f6413ad\nx-b3-spanid: a2fb4a1d1a96d312\nx-b3-flags: 1",
    );
    write("trace_decide", "b3-ignored", b"@b3=ignore ratio=1\nb3: 0\ntracestate: a=1");
    write("trace_decide", "defer", format!("@defer\ntraceparent: {TP}").as_bytes());

    write("correlation", "kept", b"x-correlation-id: order-42");
    write("correlation", "invalid", b"@max=8\nx-correlation-id: has space\nx-correlation-id: caf\xe9");
    write("correlation", "trace-id", b"@gen=trace_id\ntrace-id: 4bf92f3577b34da6a3ce929d0e0e4736");
    write("correlation", "request-id", b"@gen=request_id max=64\nx-request-id: 6b7c2a32-1b1f-4a44-9d1e-0f64e0f6f1a2");

    write("event_key", "event-id", b":method:POST\n:path:/charge\n:authority:payments.prod:8080\nx-event-id: evt-1");
    write("event_key", "sf-string", b"idempotency-key: \"a\\\"b\\\\c\"");
    write("event_key", "sf-bad", b"idempotency-key: \"a\"b\"");
    write("event_key", "cloudevents", b"ce-id: 42\nce-source: /orders/eu");
    write("event_key", "names", b"@ce-id x-event-id\nx-event-id: \nce-id: 7\nce-source: bad source");
    write("event_key", "ipv6", b":authority:[::1]:80\nx-event-id: e");

    let map = meshguard::headers::HeaderMap::from_pairs(&[
        (":method", &b"POST"[..]),
        ("traceparent", TP.as_bytes()),
        ("tracestate", b"a=1"),
        ("x-odd", b"caf\xe9\x00"),
    ]);
    write("header_map", "four-pairs", map.serialized());
    write("header_map", "empty-pair", meshguard::headers::HeaderMap::from_pairs(&[("", "")]).serialized());

    // Breaker: fresh, with outcomes, open, half-open states of both window kinds, then operations.
    for (name, time, size) in [("count5", false, 5u8), ("time3", true, 3)] {
        let cfg_bytes = breaker_config_bytes(time, size);
        let cfg = breaker_config(&mut Bytes(&cfg_bytes));
        let now = 1_700_000_000 * SECOND;
        let mut state = State::new(&cfg);
        let mut states = vec![("fresh", state.clone())];
        state.record(&cfg, 0, false, Outcome { failure: true, slow: false }, now);
        state.record(&cfg, 0, false, Outcome { failure: false, slow: true }, now);
        states.push(("outcomes", state.clone()));
        for _ in 0..3 {
            let g = state.generation;
            state.record(&cfg, g, false, Outcome { failure: true, slow: false }, now);
        }
        states.push(("open", state.clone()));
        state.admit(&cfg, now + 10 * SECOND);
        states.push(("half-open", state.clone()));
        for (phase, s) in states {
            let mut seed = cfg_bytes.to_vec();
            blob(&mut seed, &s.encode());
            seed.extend_from_slice(&[0, 0]); // clock offset
                                             // admit, record a failure, advance 3 s, admit, record a success, swap, admit.
            seed.extend_from_slice(&[0, 1 | 0x20, 0, 3, 44, 1, 0, 1, 0, 4, 0]);
            write("breaker", &format!("{name}-{phase}"), &seed);
        }
        let mut truncated = cfg_bytes.to_vec();
        let full = state.encode();
        blob(&mut truncated, &full[..full.len() - 1]);
        truncated.extend_from_slice(&[0, 0, 0, 1, 0]);
        write("breaker", &format!("{name}-truncated"), &truncated);
    }

    // Regressions: shaped values (0xff, see fuzz_targets/breaker.rs) with counters at their maximum.
    let second = 1_700_000_000u64;
    for (name, phase, ops) in [
        ("regression-max-probe-successes", 1u8, vec![0x83u8, 0, 0, 0, 0, 1, 0]),
        ("regression-max-bucket-calls", 0, vec![0, 1, 0, 0, 1, 0]),
    ] {
        let mut shaped = vec![0xff, phase];
        shaped.extend_from_slice(&0u32.to_le_bytes()); // generation
        shaped.extend_from_slice(&0u64.to_le_bytes()); // open_until
        shaped.extend_from_slice(&(2 * SECOND).to_le_bytes()); // open_duration
        shaped.extend_from_slice(&u32::MAX.to_le_bytes()); // probes_issued
        shaped.extend_from_slice(&u32::MAX.to_le_bytes()); // probes_succeeded
        shaped.extend_from_slice(&u64::MAX.to_le_bytes()); // probe_deadline
        shaped.extend_from_slice(&0u32.to_le_bytes()); // consecutive_failures
        for s in [second, second - 1] {
            shaped.extend_from_slice(&s.to_le_bytes());
            let calls = if phase == 0 { u32::MAX } else { 0 };
            shaped.extend_from_slice(&calls.to_le_bytes());
            shaped.extend_from_slice(&[0; 8]);
        }
        let mut seed = breaker_config_bytes(true, 2).to_vec();
        blob(&mut seed, &shaped);
        seed.extend_from_slice(&[0, 0]);
        seed.extend_from_slice(&ops);
        write("breaker", name, &seed);
    }

    // Dedup: a bucket with an in-flight and a completed entry, a full one, a truncated one.
    let layout = Layout::new(8);
    let mut bucket = Bucket::default();
    let now = 1_700_000_000 * SECOND;
    bucket.check(&layout, 1, 1, 1, now, 60 * SECOND);
    bucket.check(&layout, 2, 1, 2, now, 60 * SECOND);
    bucket.complete(2, 2, 201, now, 600 * SECOND);
    let ops = [0u8, 0, 0, 1, 1, 0, 5, 2, 0, 3, 100, 0, 0, 4];
    for (name, b) in [("two", bucket.clone()), ("empty", Bucket::default())] {
        let mut seed = vec![7, 0];
        blob(&mut seed, &b.encode());
        seed.extend_from_slice(&[0, 0]);
        seed.extend_from_slice(&ops);
        write("dedup_store", name, &seed);
    }
    let mut full = Bucket::default();
    for i in 0..8u32 {
        full.check(&layout, u128::from(i) + 10, 1, i, now + u64::from(i), 60 * SECOND);
    }
    let mut seed = vec![7, 0];
    blob(&mut seed, &full.encode());
    seed.extend_from_slice(&[0, 0, 0, 9, 0, 1, 3, 255, 255, 0, 2]);
    write("dedup_store", "full", &seed);
    let mut seed = vec![7, 0];
    let enc = bucket.encode();
    blob(&mut seed, &enc[..enc.len() - 3]);
    seed.extend_from_slice(&ops);
    write("dedup_store", "truncated", &seed);

    let mut line = vec![1u8];
    for s in ["order-42", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "evt-1", "payments", "closed"] {
        blob(&mut line, s.as_bytes());
    }
    for v in [&b"payments-v1"[..], b"POST", b"/charge?card=1", b"payments.prod", b"outbound|8080||payments"] {
        line.push(1);
        blob(&mut line, v);
    }
    line.extend_from_slice(&[
        1, 0, 0, 0, 0, 201, 0, 0, 0, 1, 0, 0, 0, 0, 0x40, 0x4b, 0x4c, 0, 1, 0, 0, 0, 0, 0x20, 0x80, 0, 0,
    ]);
    write("logline", "request", &line);
    let mut hostile = vec![0u8];
    for _ in 0..6 {
        blob(&mut hostile, b"a\"b\\c\r\nd\te\x00f\x1b\x7f\xe9\xff\"}");
    }
    write("logline", "hostile", &hostile);
    println!("seeds written under {}", Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").display());
}
