//! meshguard's own JSON log line (`log.requests`, SPEC §4) from hostile request values: any
//! bytes in the path, method, authority, route name and cluster, any ids, statuses and flags.
//!
//! Invariants: the line is always one line of valid JSON (checked with serde_json) with exactly
//! the 15 documented keys; every string reads back as the value given (bytes that are not UTF-8
//! as U+FFFD); the query string is cut unless `include_query`; numbers read back as given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::logline::{push_json_string, response_flags, RequestLog};
use meshguard_fuzz::Bytes;
use serde_json::Value;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn some(s: &str, bit: bool) -> Option<&str> {
    bit.then_some(s)
}

fn opt<'a>(b: &mut Bytes<'a>) -> Option<&'a [u8]> {
    if b.u8() & 1 == 0 {
        None
    } else {
        Some(b.blob())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let include_query = b.u8() & 1 != 0;
    let strs: Vec<String> = (0..6).map(|_| lossy(b.blob())).collect();
    let (route_name, method, path, authority, cluster) =
        (opt(&mut b), opt(&mut b), opt(&mut b), opt(&mut b), opt(&mut b));
    let status = (b.u8() & 1 != 0).then(|| u64::from(b.u32()) << 32 | u64::from(b.u32()));
    let duration_ns = (b.u8() & 1 != 0).then(|| u64::from(b.u32()) << 32 | u64::from(b.u32()));
    let flags = (b.u8() & 1 != 0).then(|| u64::from(b.u32()) << 32 | u64::from(b.u32()));
    let log = RequestLog {
        correlation_id: &strs[0],
        trace_id: some(&strs[1], data.len().is_multiple_of(2)),
        span_id: some(&strs[2], data.len().is_multiple_of(3)),
        event_id: some(&strs[3], !data.len().is_multiple_of(5)),
        rule: &strs[4],
        route_name,
        method,
        path,
        authority,
        status,
        // As the filter computes it from `request.duration`.
        duration_ms: duration_ns.map(|ns| ns as f64 / 1e6),
        upstream_cluster: cluster,
        response_flags: flags,
        circuit: some(&strs[5], !data.len().is_multiple_of(7)),
        dedup: "none",
    };
    let line = log.to_json(include_query);
    assert!(!line.contains('\n') && !line.contains('\r'), "one line");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 15);
    let s = |key: &str, expected: Option<String>| {
        let got = &obj[key];
        match expected {
            Some(text) => assert_eq!(got.as_str(), Some(text.as_str()), "{key}"),
            None => assert!(got.is_null(), "{key}"),
        }
    };
    s("correlation_id", Some(strs[0].clone()));
    s("trace_id", log.trace_id.map(str::to_string));
    s("span_id", log.span_id.map(str::to_string));
    s("event_id", log.event_id.map(str::to_string));
    s("rule", Some(strs[4].clone()));
    s("route_name", route_name.map(lossy));
    s("method", method.map(lossy));
    s("authority", authority.map(lossy));
    s("upstream_cluster", cluster.map(lossy));
    s("circuit", log.circuit.map(str::to_string));
    s("dedup", Some("none".to_string()));
    let expected_path = path.map(|p| match p.iter().position(|&c| c == b'?') {
        Some(q) if !include_query => lossy(&p[..q]),
        _ => lossy(p),
    });
    s("path", expected_path);
    s("response_flags", flags.map(response_flags));
    assert_eq!(obj["status"].as_u64(), status);
    match duration_ns {
        Some(ns) => {
            let ms = obj["duration_ms"].as_f64().expect("a number");
            assert!((ms - ns as f64 / 1e6).abs() <= 0.0005 + ms * 1e-12, "{ms} vs {ns}ns");
        }
        None => assert!(obj["duration_ms"].is_null()),
    }
    let mut out = String::new();
    push_json_string(&mut out, data);
    assert_eq!(serde_json::from_str::<String>(&out).ok(), Some(lossy(data)));
});
