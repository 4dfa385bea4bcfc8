//! The W3C trace-context test suite's cases (github.com/w3c/trace-context, `test/test.py`, the
//! 41-test version with `TraceContext2Test`, at `STRICT_LEVEL=2` and `SPEC_LEVEL=2`), in the mesh's shape of `envoy/w3c-mesh.yaml`:
//!
//!   harness ──▶ inbound meshguard (hop) ──▶ uninstrumented service ──▶ outbound meshguard (hop) ──▶ harness
//!
//! The service copies the trace headers it received onto its callbacks (tests/support/upstream.rs,
//! `relay_to`). Each case sends the suite's headers and asserts what the suite asserts on the
//! callback the harness receives. Case names are the suite's test names. To run the suite itself
//! against the same setup: `scripts/w3c-suite.sh PATH/TO/trace-context/test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::envoy::{Envoy, Options};
use support::http::{send, Request};
use support::upstream::Upstream;

const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";
const TP00: &str = "00-12345678901234567890123456789012-1234567890123456-00";
const TRACE: &str = "12345678901234567890123456789012";

struct Mesh {
    harness: Upstream,
    _service: Upstream,
    envoy: Envoy,
    next: AtomicUsize,
}

/// What the harness got on one callback.
#[derive(Debug)]
struct Got {
    trace_id: String,
    parent_id: String,
    flags: u8,
    tracestate: Vec<(String, String)>,
}

impl Got {
    fn state(&self, key: &str) -> Option<&str> {
        self.tracestate.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Mesh {
    fn start() -> Mesh {
        let harness = Upstream::start();
        let service = Upstream::start();
        let mut opts = Options::new(r#"{"trace": {"mode": "hop"}}"#, service.port);
        opts.bootstrap = "envoy/w3c-mesh.yaml";
        opts.ports = vec![("harness", harness.port), ("outbound", 0)];
        let envoy = Envoy::start_with(opts);
        let outbound = envoy.listener("outbound").expect("outbound listener");
        service.relay_to(outbound);
        Mesh { harness, _service: service, envoy, next: AtomicUsize::new(0) }
    }

    /// The harness asks the service (through its inbound sidecar) to call back `count` times and
    /// returns what each callback carried, as the suite's `make_request` does.
    fn request(&self, name: &str, headers: &[(&str, &str)], count: usize) -> Vec<Got> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("/callback/{id}/");
        let calls: Vec<_> = (0..count)
            .map(|i| serde_json::json!({"url": format!("http://127.0.0.1:{}{prefix}{i}", self.harness.port), "arguments": []}))
            .collect();
        let mut request = Request::post("/test").header("content-type", "application/json");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = send(self.envoy.port, &request.body(serde_json::Value::Array(calls).to_string())).unwrap();
        assert_eq!(response.status, 200, "{name}");
        (0..count)
            .map(|i| {
                let path = format!("{prefix}{i}");
                let got = self.harness.requests().into_iter().find(|r| r.path == path);
                let got =
                    got.unwrap_or_else(|| panic!("{name}: the service made no callback {path}\n{}", self.envoy.log()));
                let tps: Vec<(String, String)> = got
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect();
                assert_eq!(tps.len(), 1, "{name}: expect one traceparent header, got {tps:?}");
                let tp = &tps[0].1;
                let parts: Vec<&str> = tp.split('-').collect();
                let hex = |s: &str, n: usize| {
                    s.len() == n && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
                };
                assert!(
                    parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2),
                    "{name}: malformed traceparent {tp}"
                );
                let mut tracestate = Vec::new();
                for line in got.header_all("tracestate") {
                    for member in line.split(',').map(|m| m.trim_matches([' ', '\t'])).filter(|m| !m.is_empty()) {
                        let (k, v) = member.split_once('=').unwrap_or_else(|| panic!("{name}: bad member {member:?}"));
                        tracestate.push((k.to_string(), v.to_string()));
                    }
                }
                let flags = u8::from_str_radix(parts[3], 16).unwrap();
                Got { trace_id: parts[1].to_string(), parent_id: parts[2].to_string(), flags, tracestate }
            })
            .collect()
    }

    fn one(&self, name: &str, headers: &[(&str, &str)]) -> Got {
        self.request(name, headers, 1).pop().unwrap()
    }

    /// Cases whose only assertion is "a new trace-id, not the one sent".
    fn restarts(&self, name: &str, values: &[&str]) {
        for value in values {
            let got = self.one(name, &[("traceparent", value)]);
            assert_ne!(got.trace_id, TRACE, "{name}: {value}");
            assert!(!value.contains(&got.trace_id), "{name}: {value}");
        }
    }

    fn keeps(&self, name: &str, headers: &[(&str, &str)]) -> Got {
        let got = self.one(name, headers);
        assert_eq!(got.trace_id, TRACE, "{name}: {headers:?}");
        got
    }
}

#[test]
fn w3c_trace_context_suite_strict_level_2_in_the_mesh_shape() {
    support::require_envoy!();
    let m = Mesh::start();

    // ---- TraceContextTest: traceparent ----
    m.one("test_both_traceparent_and_tracestate_missing", &[]);

    let got = m.keeps("test_traceparent_included_tracestate_missing", &[("traceparent", TP)]);
    assert_ne!(got.parent_id, "1234567890123456");

    let got = m.one(
        "test_traceparent_duplicated",
        &[
            ("traceparent", "00-12345678901234567890123456789011-1234567890123456-01"),
            ("traceparent", "00-12345678901234567890123456789012-1234567890123456-01"),
        ],
    );
    assert_ne!(got.trace_id, "12345678901234567890123456789011");
    assert_ne!(got.trace_id, TRACE);

    for name in ["trace-parent", "trace.parent"] {
        let got = m.one("test_traceparent_header_name", &[(name, TP)]);
        assert_ne!(got.trace_id, TRACE);
    }
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        m.keeps("test_traceparent_header_name_valid_casing", &[(name, TP)]);
    }
    m.restarts(
        "test_traceparent_version_0x00",
        &[
            "00-12345678901234567890123456789012-1234567890123456-01.",
            "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        ],
    );
    m.keeps(
        "test_traceparent_version_0xcc",
        &[("traceparent", "cc-12345678901234567890123456789012-1234567890123456-01")],
    );
    m.keeps(
        "test_traceparent_version_0xcc",
        &[("traceparent", "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like")],
    );
    m.restarts(
        "test_traceparent_version_0xcc",
        &["cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like"],
    );
    m.restarts("test_traceparent_version_0xff", &["ff-12345678901234567890123456789012-1234567890123456-01"]);
    m.restarts(
        "test_traceparent_version_illegal_characters",
        &[
            ".0-12345678901234567890123456789012-1234567890123456-01",
            "0.-12345678901234567890123456789012-1234567890123456-01",
        ],
    );
    m.restarts(
        "test_traceparent_version_too_long",
        &[
            "000-12345678901234567890123456789012-1234567890123456-01",
            "0000-12345678901234567890123456789012-1234567890123456-01",
        ],
    );
    m.restarts("test_traceparent_version_too_short", &["0-12345678901234567890123456789012-1234567890123456-01"]);
    m.restarts("test_traceparent_trace_id_all_zero", &["00-00000000000000000000000000000000-1234567890123456-01"]);
    m.restarts(
        "test_traceparent_trace_id_illegal_characters",
        &[
            "00-.2345678901234567890123456789012-1234567890123456-01",
            "00-1234567890123456789012345678901.-1234567890123456-01",
        ],
    );
    let got = m.one(
        "test_traceparent_trace_id_too_long",
        &[("traceparent", "00-123456789012345678901234567890123-1234567890123456-01")],
    );
    for t in ["123456789012345678901234567890123", TRACE, "23456789012345678901234567890123"] {
        assert_ne!(got.trace_id, t);
    }
    m.restarts("test_traceparent_trace_id_too_short", &["00-1234567890123456789012345678901-1234567890123456-01"]);
    m.restarts("test_traceparent_parent_id_all_zero", &["00-12345678901234567890123456789012-0000000000000000-01"]);
    m.restarts(
        "test_traceparent_parent_id_illegal_characters",
        &[
            "00-12345678901234567890123456789012-.234567890123456-01",
            "00-12345678901234567890123456789012-123456789012345.-01",
        ],
    );
    m.restarts("test_traceparent_parent_id_too_long", &["00-12345678901234567890123456789012-12345678901234567-01"]);
    m.restarts("test_traceparent_parent_id_too_short", &["00-12345678901234567890123456789012-123456789012345-01"]);
    m.restarts(
        "test_traceparent_trace_flags_illegal_characters",
        &[
            "00-12345678901234567890123456789012-1234567890123456-.0",
            "00-12345678901234567890123456789012-1234567890123456-0.",
        ],
    );
    m.restarts("test_traceparent_trace_flags_too_long", &["00-12345678901234567890123456789012-1234567890123456-001"]);
    m.restarts("test_traceparent_trace_flags_too_short", &["00-12345678901234567890123456789012-1234567890123456-1"]);
    for value in [&format!(" {TP}"), &format!("\t{TP}"), &format!("{TP} "), &format!("{TP}\t"), &format!("\t {TP} \t")]
    {
        m.keeps("test_traceparent_ows_handling", &[("traceparent", value)]);
    }

    // ---- TraceContextTest: tracestate ----
    let a = m.one("test_tracestate_included_traceparent_missing", &[("tracestate", "foo=1")]);
    let b = m.one("test_tracestate_included_traceparent_missing", &[("tracestate", "foo=1,bar=2")]);
    assert_eq!(a.tracestate.len(), b.tracestate.len());

    let got = m.keeps(
        "test_tracestate_included_traceparent_included",
        &[("traceparent", TP00), ("tracestate", "foo=1,bar=2")],
    );
    assert_eq!((got.state("foo"), got.state("bar")), (Some("1"), Some("2")));

    for name in ["trace-state", "trace.state"] {
        let got = m.one("test_tracestate_header_name", &[("traceparent", TP00), (name, "foo=1")]);
        assert_eq!(got.state("foo"), None);
    }
    for name in ["TraceState", "TrAcEsTaTe", "TRACESTATE"] {
        let got = m.one("test_tracestate_header_name_valid_casing", &[("traceparent", TP00), (name, "foo=1")]);
        assert_eq!(got.state("foo"), Some("1"));
    }

    let got = m.keeps("test_tracestate_empty_header", &[("traceparent", TP00), ("tracestate", "")]);
    assert!(got.tracestate.is_empty());
    for lines in [["foo=1", ""], ["", "foo=1"]] {
        let got = m.keeps(
            "test_tracestate_empty_header",
            &[("traceparent", TP00), ("tracestate", lines[0]), ("tracestate", lines[1])],
        );
        assert_eq!(got.state("foo"), Some("1"));
    }

    let got = m.keeps(
        "test_tracestate_multiple_headers_different_keys",
        &[
            ("traceparent", TP00),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "rojo=1,congo=2"),
            ("tracestate", "baz=3"),
        ],
    );
    let order: Vec<String> = got.tracestate.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(order, ["foo=1", "bar=2", "rojo=1", "congo=2", "baz=3"]);

    for (lines, expect) in
        [(&["foo=1,foo=1"][..], "1"), (&["foo=1,foo=2"], "1"), (&["foo=1", "foo=1"], "1"), (&["foo=1", "foo=2"], "1")]
    {
        let mut headers = vec![("traceparent", TP00)];
        headers.extend(lines.iter().map(|l| ("tracestate", *l)));
        let got = m.keeps("test_tracestate_duplicated_keys", &headers);
        assert_eq!(got.state("foo"), Some(expect), "{lines:?}: reduced to the first");
        assert_eq!(got.tracestate.len(), 1, "{lines:?}");
    }

    let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let value: String = (0x20u8..=0x2b).chain(0x2d..=0x3c).chain(0x3e..=0x7e).map(char::from).collect();
    for k in [key.to_string(), format!("{key}@a-z0-9_-*/")] {
        let line = format!("{k}={value}");
        let got = m.one("test_tracestate_all_allowed_characters", &[("traceparent", TP00), ("tracestate", &line)]);
        assert_eq!(got.state(&k), Some(value.as_str()), "{k}");
    }

    for line in ["foo=1 \t , \t bar=2, \t baz=3", "foo=1\t \t,\t \tbar=2,\t \tbaz=3"] {
        let got = m.one("test_tracestate_ows_handling", &[("traceparent", TP00), ("tracestate", line)]);
        assert_eq!((got.state("foo"), got.state("bar"), got.state("baz")), (Some("1"), Some("2"), Some("3")));
    }
    for line in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        let got = m.keeps("test_tracestate_ows_handling", &[("traceparent", TP00), ("tracestate", line)]);
        assert_eq!(got.state("foo"), Some("1"), "{line:?}");
    }

    for (line, key) in [("foo =1", "foo "), ("FOO=1", "FOO"), ("foo.bar=1", "foo.bar")] {
        let got = m.one("test_tracestate_key_illegal_characters", &[("traceparent", TP00), ("tracestate", line)]);
        assert_eq!(got.state(key), None, "{line}");
    }
    for (line, key) in
        [("foo@=1,bar=2", "foo@"), ("foo@@bar=1,bar=2", "foo@@bar"), ("foo@bar@baz=1,bar=2", "foo@bar@baz")]
    {
        let got = m.one("test_tracestate_key_illegal_vendor_format", &[("traceparent", TP00), ("tracestate", line)]);
        assert_eq!((got.state(key), got.state("bar")), (Some("1"), Some("2")), "{line}");
    }
    let got =
        m.one("test_tracestate_key_illegal_vendor_format", &[("traceparent", TP00), ("tracestate", "@foo=1,bar=2")]);
    assert_eq!(got.state("bar"), None);

    let lines = [
        "bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10",
        "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,bar20=20",
        "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,bar29=29,bar30=30",
    ];
    for (last, expect) in [("bar31=31,bar32=32", 32), ("bar31=31,bar32=32,bar33=33", 0)] {
        let mut headers = vec![("traceparent", TP00)];
        headers.extend(lines.iter().chain([&last]).map(|l| ("tracestate", *l)));
        let got = m.one("test_tracestate_member_count_limit", &headers);
        assert_eq!(got.tracestate.len(), expect, "{last}");
        assert_eq!(got.state("bar01"), (expect == 32).then_some("01"));
    }

    let long = |key: String, kept: bool| {
        let line = format!("{key}=1");
        let got = m.one(
            "test_tracestate_key_length_limit",
            &[("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", &line)],
        );
        assert_eq!(got.state("foo"), kept.then_some("1"), "{} characters", key.len());
        assert_eq!(got.state(&key), kept.then_some("1"), "{} characters", key.len());
    };
    long("z".repeat(256), true);
    long("z".repeat(257), false);
    long(format!("{}@{}", "t".repeat(241), "v".repeat(14)), true);
    long(format!("{}@v", "t".repeat(242)), true);
    long(format!("t@{}", "v".repeat(15)), true);

    let got = m.one("test_tracestate_value_illegal_characters", &[("traceparent", TP00), ("tracestate", "foo=,bar=3")]);
    assert_eq!((got.state("foo"), got.state("bar")), (None, None));

    // ---- TraceContext2Test (SPEC_LEVEL=2) ----
    let got = m.keeps(
        "test_propagates_random_flag",
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-02")],
    );
    assert_ne!(got.parent_id, "1234567890123456");
    assert_eq!(got.flags & 0x02, 0x02, "random flag not set");

    // ---- AdvancedTest ----
    let got = m.request("test_multiple_requests_with_valid_traceparent", &[("traceparent", TP)], 3);
    assert_eq!(got.iter().map(|g| g.trace_id.as_str()).collect::<HashSet<_>>(), HashSet::from([TRACE]));
    assert_eq!(got.iter().map(|g| &g.parent_id).collect::<HashSet<_>>().len(), 3);

    let got = m.request("test_multiple_requests_without_traceparent", &[], 3);
    assert_eq!(got.iter().map(|g| &g.parent_id).collect::<HashSet<_>>().len(), 3);

    let zero = "00-00000000000000000000000000000000-1234567890123456-01";
    let got = m.request("test_multiple_requests_with_illegal_traceparent", &[("traceparent", zero)], 3);
    assert!(got.iter().all(|g| g.trace_id != "00000000000000000000000000000000"));
    assert_eq!(got.iter().map(|g| &g.parent_id).collect::<HashSet<_>>().len(), 3);

    assert!(m.envoy.crash_lines().is_empty(), "{:?}", m.envoy.crash_lines());
}
