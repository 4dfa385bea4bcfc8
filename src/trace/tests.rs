//! Table-driven tests of every trace-context rule (run on the host and inside wasm). Case names
//! follow the W3C test suite (`test/test.py`) where a case comes from it.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::config::{self, Trace};
use crate::ids::TestEntropy;

const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";
const TRACE: &str = "12345678901234567890123456789012";
const PARENT: &str = "1234567890123456";

fn trace(json: &str) -> Trace {
    config::parse(format!(r#"{{"trace": {json}}}"#).as_bytes()).unwrap().trace
}

fn decide_with(json: &str, headers: &[(&str, &str)]) -> Decision {
    let map = HeaderMap::from_pairs(headers);
    decide(&map, &trace(json), &mut TestEntropy(9)).unwrap()
}

fn hop(headers: &[(&str, &str)]) -> Decision {
    decide_with(r#"{"mode": "hop"}"#, headers)
}

fn propagate(headers: &[(&str, &str)]) -> Decision {
    decide_with("{}", headers)
}

/// What the upstream receives as `traceparent`.
fn sent(d: &Decision, incoming: Option<&str>) -> String {
    d.traceparent.clone().or_else(|| incoming.map(str::to_string)).unwrap()
}

fn assert_valid_format(tp: &str) {
    let b = tp.as_bytes();
    assert_eq!(b.len(), 55, "{tp}");
    assert!(traceparent::parse(b).is_some_and(|p| p.canonical), "{tp}");
}

#[test]
fn valid_traceparents_are_continued() {
    // (name, value, trace-id kept)
    let cases: &[(&str, &str)] = &[
        ("plain", TP),
        ("unsampled", "00-12345678901234567890123456789012-1234567890123456-00"),
        ("random flag", "00-12345678901234567890123456789012-1234567890123456-03"),
        ("unknown flags in 00", "00-12345678901234567890123456789012-1234567890123456-ff"),
        ("version_0xcc exact", "cc-12345678901234567890123456789012-1234567890123456-01"),
        (
            "version_0xcc with future fields",
            "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        ),
        ("version 0x01 trailing dash", "01-12345678901234567890123456789012-1234567890123456-01-"),
        ("ows leading space", " 00-12345678901234567890123456789012-1234567890123456-01"),
        ("ows leading tab", "\t00-12345678901234567890123456789012-1234567890123456-01"),
        ("ows trailing space", "00-12345678901234567890123456789012-1234567890123456-01 "),
        ("ows trailing tab", "00-12345678901234567890123456789012-1234567890123456-01\t"),
        ("ows both", "\t 00-12345678901234567890123456789012-1234567890123456-01 \t"),
    ];
    for (name, value) in cases {
        for d in [hop(&[("traceparent", value)]), propagate(&[("traceparent", value)])] {
            assert_eq!(d.outcome, TraceOutcome::Propagated, "{name}");
            assert_eq!(d.context.trace_id_hex(), TRACE, "{name}");
            assert_valid_format(&sent(&d, Some(value)));
        }
    }
}

#[test]
fn invalid_traceparents_restart_the_trace() {
    let cases: &[(&str, &str)] = &[
        ("version_0x00 trailing dot", "00-12345678901234567890123456789012-1234567890123456-01."),
        (
            "version_0x00 future fields",
            "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        ),
        (
            "version_0xcc bad separator",
            "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
        ),
        ("version_0xff", "ff-12345678901234567890123456789012-1234567890123456-01"),
        ("version illegal .0", ".0-12345678901234567890123456789012-1234567890123456-01"),
        ("version illegal 0.", "0.-12345678901234567890123456789012-1234567890123456-01"),
        ("version too long 000", "000-12345678901234567890123456789012-1234567890123456-01"),
        ("version too long 0000", "0000-12345678901234567890123456789012-1234567890123456-01"),
        ("version too short", "0-12345678901234567890123456789012-1234567890123456-01"),
        ("version upper case", "0A-12345678901234567890123456789012-1234567890123456-01"),
        ("trace_id all zero", "00-00000000000000000000000000000000-1234567890123456-01"),
        ("trace_id illegal first", "00-.2345678901234567890123456789012-1234567890123456-01"),
        ("trace_id illegal last", "00-1234567890123456789012345678901.-1234567890123456-01"),
        ("trace_id upper case", "00-1234567890ABCDEF1234567890123456-1234567890123456-01"),
        ("trace_id too long", "00-123456789012345678901234567890123-1234567890123456-01"),
        ("trace_id too short", "00-1234567890123456789012345678901-1234567890123456-01"),
        ("parent_id all zero", "00-12345678901234567890123456789012-0000000000000000-01"),
        ("parent_id illegal first", "00-12345678901234567890123456789012-.234567890123456-01"),
        ("parent_id illegal last", "00-12345678901234567890123456789012-123456789012345.-01"),
        ("parent_id upper case", "00-12345678901234567890123456789012-123456789012345A-01"),
        ("parent_id too long", "00-12345678901234567890123456789012-12345678901234567-01"),
        ("parent_id too short", "00-12345678901234567890123456789012-123456789012345-01"),
        ("flags illegal .0", "00-12345678901234567890123456789012-1234567890123456-.0"),
        ("flags illegal 0.", "00-12345678901234567890123456789012-1234567890123456-0."),
        ("flags upper case", "00-12345678901234567890123456789012-1234567890123456-0A"),
        ("flags too long", "00-12345678901234567890123456789012-1234567890123456-001"),
        ("flags too short", "00-12345678901234567890123456789012-1234567890123456-1"),
        ("future version too short", "cc-12345678901234567890123456789012-1234567890123456-1"),
        ("separator _", "00_12345678901234567890123456789012-1234567890123456-01"),
        ("empty", ""),
        ("only white space", " \t "),
        ("not utf-8", "00-1234567890123456789012345678901\u{e9}-1234567890123456-01"),
        ("inner white space", "00-12345678901234567890123456789012 -1234567890123456-01"),
    ];
    for (name, value) in cases {
        for d in [hop(&[("traceparent", value)]), propagate(&[("traceparent", value)])] {
            assert_eq!(d.outcome, TraceOutcome::RestartedInvalid, "{name}");
            assert!(!value.contains(&d.context.trace_id_hex()), "{name}: kept {}", d.context.trace_id_hex());
            assert!(!d.context.trace_id_hex().contains("23456789012345678901234567890123"), "{name}");
            assert_valid_format(d.traceparent.as_deref().unwrap());
            assert_eq!(d.context.flags & RANDOM, RANDOM, "{name}: generated ids carry the random flag");
        }
    }
}

#[test]
fn raw_non_utf8_traceparent_bytes_are_invalid() {
    let mut value = TP.as_bytes().to_vec();
    value[10] = 0xe9;
    let map = HeaderMap::from_pairs(&[("traceparent", value)]);
    let d = decide(&map, &trace("{}"), &mut TestEntropy(1)).unwrap();
    assert_eq!(d.outcome, TraceOutcome::RestartedInvalid);
}

#[test]
fn traceparent_duplicated_restarts_with_a_new_trace_id() {
    let d = hop(&[
        ("traceparent", "00-12345678901234567890123456789011-1234567890123456-01"),
        ("traceparent", "00-12345678901234567890123456789012-1234567890123456-01"),
    ]);
    assert_eq!(d.outcome, TraceOutcome::RestartedInvalid);
    assert!(!d.context.trace_id_hex().starts_with("123456789012345678901234567890"));
}

#[test]
fn missing_traceparent_starts_a_sampled_random_trace() {
    let d = propagate(&[]);
    assert_eq!(d.outcome, TraceOutcome::Started);
    assert_eq!(d.context.flags, SAMPLED | RANDOM);
    assert_eq!(d.tracestate, Tracestate::Keep, "nothing to remove");
    assert_valid_format(d.traceparent.as_deref().unwrap());
}

#[test]
fn wrong_header_names_are_not_traceparent() {
    for name in ["trace-parent", "trace.parent", "traceparent2"] {
        let d = hop(&[(name, TP)]);
        assert_eq!(d.outcome, TraceOutcome::Started, "{name}");
        assert_ne!(d.context.trace_id_hex(), TRACE, "{name}");
    }
}

#[test]
fn propagate_forwards_a_canonical_header_untouched() {
    let d = propagate(&[("traceparent", TP)]);
    assert_eq!(d.traceparent, None, "no write needed");
    assert_eq!(d.context.span_id_hex(), PARENT);
    assert_eq!(d.context.flags, 0x01);
    // Unknown flags of version 00 pass through unchanged in propagate mode.
    let ff = "00-12345678901234567890123456789012-1234567890123456-ff";
    assert_eq!(propagate(&[("traceparent", ff)]).traceparent, None);
}

#[test]
fn propagate_rewrites_white_space_and_future_versions_as_version_00() {
    let d = propagate(&[("traceparent", " 00-12345678901234567890123456789012-1234567890123456-01\t")]);
    assert_eq!(d.traceparent.as_deref(), Some(TP));
    let d = propagate(&[("traceparent", "cc-12345678901234567890123456789012-1234567890123456-ff-future")]);
    assert_eq!(d.traceparent.as_deref(), Some("00-12345678901234567890123456789012-1234567890123456-03"));
}

#[test]
fn hop_gives_every_call_its_own_parent_id_and_keeps_sampled_and_random() {
    let map = HeaderMap::from_pairs(&[("traceparent", "00-12345678901234567890123456789012-1234567890123456-ff")]);
    let config = trace(r#"{"mode": "hop"}"#);
    let mut e = TestEntropy(5);
    let mut parents = std::collections::HashSet::new();
    for _ in 0..3 {
        let d = decide(&map, &config, &mut e).unwrap();
        let tp = d.traceparent.unwrap();
        assert!(tp.starts_with("00-12345678901234567890123456789012-"), "{tp}");
        assert!(tp.ends_with("-03"), "sampled and random kept, unknown bits cleared: {tp}");
        assert_ne!(d.context.span_id_hex(), PARENT);
        parents.insert(d.context.span_id_hex());
    }
    assert_eq!(parents.len(), 3);
}

#[test]
fn random_flag_is_passed_on_unchanged() {
    for (flags, expect) in [("00", 0x00), ("01", 0x01), ("02", 0x02), ("03", 0x03)] {
        let tp = format!("00-{TRACE}-{PARENT}-{flags}");
        assert_eq!(hop(&[("traceparent", &tp)]).context.flags, expect, "{flags}");
    }
}

#[test]
fn sample_ratio_decides_new_traces_only() {
    let never = r#"{"sample_ratio": 0}"#;
    assert_eq!(decide_with(never, &[]).context.flags, RANDOM);
    // A caller's decision is kept whatever the ratio.
    assert_eq!(decide_with(never, &[("traceparent", TP)]).context.flags, SAMPLED);
    let config = trace(r#"{"sample_ratio": 0.25}"#);
    let mut e = TestEntropy(3);
    let sampled = (0..4000)
        .filter(|_| decide(&HeaderMap::default(), &config, &mut e).unwrap().context.flags & SAMPLED != 0)
        .count();
    assert!((800..1200).contains(&sampled), "{sampled} of 4000 at 0.25");
}

#[test]
fn generated_ids_are_random_and_never_zero() {
    struct Zero;
    impl Entropy for Zero {
        fn fill(&mut self, buf: &mut [u8]) {
            buf.fill(0);
        }
    }
    let d = decide(&HeaderMap::default(), &trace("{}"), &mut Zero).unwrap();
    assert_ne!(d.context.trace_id, [0; 16]);
    assert_ne!(d.context.parent_id, [0; 8]);
    let mut e = TestEntropy(11);
    let a = decide(&HeaderMap::default(), &trace("{}"), &mut e).unwrap();
    let b = decide(&HeaderMap::default(), &trace("{}"), &mut e).unwrap();
    assert_ne!(a.context.trace_id, b.context.trace_id);
}

#[test]
fn disabled_and_defer_make_no_decision() {
    let map = HeaderMap::default();
    assert!(decide(&map, &trace(r#"{"enabled": false}"#), &mut TestEntropy(1)).is_none());
    assert!(decide(&map, &trace(r#"{"mode": "defer"}"#), &mut TestEntropy(1)).is_none());
}

// ---- tracestate ----

fn state_after(lines: &[&str]) -> Option<String> {
    let mut headers = vec![("traceparent", TP)];
    headers.extend(lines.iter().map(|l| ("tracestate", *l)));
    let d = hop(&headers);
    assert_eq!(d.outcome, TraceOutcome::Propagated);
    match d.tracestate {
        Tracestate::Keep => match lines {
            [] => None,
            [one] => Some(one.to_string()),
            _ => panic!("several lines kept apart: {lines:?}"),
        },
        Tracestate::Set(v) => Some(v),
        Tracestate::Remove => None,
    }
}

/// Members of a forwarded tracestate, as the W3C harness would read them.
fn members(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .map(|m| {
            let (k, v) = m.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn tracestate_lines_are_combined_in_order() {
    let v = state_after(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).unwrap();
    assert_eq!(v, "foo=1,bar=2,rojo=1,congo=2,baz=3");
    assert_eq!(state_after(&["foo=1", ""]).as_deref(), Some("foo=1"));
    assert_eq!(state_after(&["", "foo=1"]).as_deref(), Some("foo=1"));
}

#[test]
fn tracestate_single_valid_line_is_kept_as_is() {
    for v in ["foo=1,bar=2", "foo=1 \t , \t bar=2, \t baz=3", " foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        assert_eq!(state_after(&[v]).as_deref(), Some(v));
        assert!(members(v).iter().all(|(k, _)| ["foo", "bar", "baz"].contains(&k.as_str())));
    }
}

#[test]
fn tracestate_empty_is_discarded() {
    assert_eq!(state_after(&[""]), None);
    assert_eq!(state_after(&[" , ,\t"]), None);
}

#[test]
fn tracestate_duplicate_keys_are_reduced_to_the_first() {
    // W3C test_tracestate_duplicated_keys (suite with 41 tests).
    assert_eq!(state_after(&["foo=1,foo=1"]).as_deref(), Some("foo=1"));
    assert_eq!(state_after(&["foo=1,foo=2"]).as_deref(), Some("foo=1"));
    assert_eq!(state_after(&["foo=1", "foo=1"]).as_deref(), Some("foo=1"));
    assert_eq!(state_after(&["foo=1", "foo=2"]).as_deref(), Some("foo=1"));
    assert_eq!(state_after(&["a=1,b=2,a=3", "c=4"]).as_deref(), Some("a=1,b=2,c=4"));
}

#[test]
fn tracestate_keys_follow_the_level_2_grammar() {
    let z256 = format!("{}=1", "z".repeat(256));
    let t242 = format!("{}@v=1", "t".repeat(242));
    let v15 = format!("t@{}=1", "v".repeat(15));
    let t241 = format!("{}@{}=1", "t".repeat(241), "v".repeat(14));
    let v256 = format!("big={}", "x".repeat(256));
    // W3C test_tracestate_key_illegal_vendor_format and _key_length_limit: '@' is a key character.
    for line in [
        "foo@=1,bar=2",
        "foo@@bar=1,bar=2",
        "foo@bar@baz=1,bar=2",
        "0foo=1",
        "t@0v=1",
        &z256,
        &t242,
        &v15,
        &t241,
        &v256,
    ] {
        assert_eq!(state_after(&["foo=9", line]).map(|v| members(&v).len()), Some(1 + members(line).len()), "{line}");
    }
}

#[test]
fn tracestate_invalid_lists_are_discarded_whole() {
    let z257 = format!("{}=1", "z".repeat(257));
    let v257 = format!("foo={}", "x".repeat(257));
    let invalid: &[(&str, &[&str])] = &[
        ("key with space", &["foo =1"]),
        ("upper-case key", &["FOO=1"]),
        ("dot in key", &["foo.bar=1"]),
        ("key starting with @", &["@foo=1,bar=2"]),
        ("key starting with _", &["_foo=1,bar=2"]),
        ("key 257", &["foo=1", &z257]),
        ("value with =", &["foo=bar=baz"]),
        ("empty value", &["foo=,bar=3"]),
        ("value 257", &[&v257]),
        ("value with DEL", &["foo=1 x\u{7f}"]),
        ("no equals", &["foo"]),
        ("empty key", &["=1"]),
        ("not ascii", &["foo=caf\u{e9}"]),
        ("invalid member in a later line", &["a=1,b=2", "c=3,C=4"]),
    ];
    for (name, lines) in invalid {
        assert_eq!(state_after(lines), None, "{name}");
    }
}

#[test]
fn tracestate_all_allowed_characters_pass() {
    let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let value: String = (0x20u8..=0x2b).chain(0x2d..=0x3c).chain(0x3e..=0x7e).map(char::from).collect();
    for k in [key.to_string(), format!("{key}@a-z0-9_-*/")] {
        let line = format!("{k}={value}");
        let forwarded = state_after(&[&line]).unwrap();
        let (fk, fv) = forwarded.split_once('=').unwrap();
        assert_eq!((fk, fv), (k.as_str(), value.as_str()));
    }
}

#[test]
fn tracestate_member_count_limit_is_32() {
    let lines32 = [
        "bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10",
        "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,bar20=20",
        "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,bar29=29,bar30=30",
        "bar31=31,bar32=32",
    ];
    assert_eq!(members(&state_after(&lines32).unwrap()).len(), 32);
    let mut lines33 = lines32.to_vec();
    lines33[3] = "bar31=31,bar32=32,bar33=33";
    assert_eq!(state_after(&lines33), None);
    // Empty members do not count.
    assert!(state_after(&[&format!("{},,,,", lines32.join(","))]).is_some());
}

#[test]
fn tracestate_without_a_valid_traceparent_is_discarded() {
    for headers in [vec![("tracestate", "foo=1")], vec![("traceparent", "ff-bad"), ("tracestate", "foo=1,bar=2")]] {
        let d = hop(&headers);
        assert_eq!(d.tracestate, Tracestate::Remove, "{headers:?}");
    }
    let d = hop(&[
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("tracestate", "a=1"),
    ]);
    assert_eq!(d.tracestate, Tracestate::Remove);
}

#[test]
fn tracestate_wrong_header_names_are_ignored() {
    for name in ["trace-state", "trace.state"] {
        let d = hop(&[("traceparent", TP), (name, "foo=1")]);
        assert_eq!(d.tracestate, Tracestate::Keep, "{name} is not ours to touch");
    }
}

// ---- B3 ----

#[test]
fn b3_headers_continue_the_trace_when_traceparent_is_absent_or_invalid() {
    const T128: &str = "463ac35c9f6413ad48485a3953bb6124";
    const SPAN: &str = "a2fb4a1d1a96d312";
    // (name, headers, trace-id, sampled)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, u8);
    let cases: &[Case] = &[
        ("single 128", &[("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1")], T128, SAMPLED),
        ("single 64 padded", &[("b3", "48485a3953bb6124-a2fb4a1d1a96d312-0")], "000000000000000048485a3953bb6124", 0),
        (
            "single debug",
            &[("b3", "48485a3953bb6124-a2fb4a1d1a96d312-d-0020000000000001")],
            "000000000000000048485a3953bb6124",
            SAMPLED,
        ),
        ("multi", &[("x-b3-traceid", T128), ("x-b3-spanid", SPAN), ("x-b3-sampled", "1")], T128, SAMPLED),
        ("multi unsampled", &[("x-b3-traceid", T128), ("x-b3-spanid", SPAN), ("x-b3-sampled", "0")], T128, 0),
        ("multi debug flag", &[("x-b3-traceid", T128), ("x-b3-spanid", SPAN), ("x-b3-flags", "1")], T128, SAMPLED),
        (
            "single wins over multi",
            &[
                ("x-b3-traceid", "11111111111111111111111111111111"),
                ("x-b3-spanid", SPAN),
                ("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1"),
            ],
            T128,
            SAMPLED,
        ),
        (
            "invalid traceparent, b3 used",
            &[("traceparent", "00-zz-1"), ("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1")],
            T128,
            SAMPLED,
        ),
    ];
    for (name, headers, trace_id, sampled) in cases {
        let d = propagate(headers);
        assert_eq!(d.outcome, TraceOutcome::FromB3, "{name}");
        assert_eq!(d.context.trace_id_hex(), *trace_id, "{name}");
        assert_eq!(d.context.span_id_hex(), SPAN, "{name}: propagate keeps the B3 span as parent");
        assert_eq!(d.context.flags, *sampled, "{name}: random flag never set on B3 ids");
        let h = hop(headers);
        assert_eq!(h.context.trace_id_hex(), *trace_id, "{name}");
        assert_ne!(h.context.span_id_hex(), SPAN, "{name}: hop gets its own parent-id");
        assert_valid_format(h.traceparent.as_deref().unwrap());
    }
}

#[test]
fn b3_without_sampling_state_uses_sample_ratio() {
    let h = [("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312")];
    assert_eq!(decide_with("{}", &h).context.flags, SAMPLED);
    assert_eq!(decide_with(r#"{"sample_ratio": 0}"#, &h).context.flags, 0);
}

#[test]
fn b3_invalid_or_ignored_starts_a_new_trace() {
    let invalid: &[&[(&str, &str)]] = &[
        &[("b3", "463ac35c9f6413ad48485a3953bb6124")],
        &[("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d31")],
        &[("b3", "00000000000000000000000000000000-a2fb4a1d1a96d312-1")],
        &[("b3", "463ac35c9f6413ad48485a3953bb6124-0000000000000000-1")],
        &[("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-x")],
        &[("b3", "463AC35C9F6413AD48485A3953BB6124-a2fb4a1d1a96d312-1")],
        &[("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-zz")],
        &[("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-a2fb4a1d1a96d312-extra")],
        &[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")],
        &[("x-b3-traceid", "463ac35c9f6413ad4848"), ("x-b3-spanid", "a2fb4a1d1a96d312")],
    ];
    for headers in invalid {
        assert_eq!(propagate(headers).outcome, TraceOutcome::Started, "{headers:?}");
    }
    let ignore = decide_with(r#"{"b3": "ignore"}"#, &[("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1")]);
    assert_eq!(ignore.outcome, TraceOutcome::Started);
}

#[test]
fn b3_sampling_only_decides_the_new_trace() {
    assert_eq!(propagate(&[("b3", "0")]).context.flags, RANDOM);
    assert_eq!(propagate(&[("b3", "d")]).context.flags, RANDOM | SAMPLED);
    let d = decide_with(r#"{"sample_ratio": 0}"#, &[("x-b3-sampled", "1")]);
    assert_eq!((d.outcome, d.context.flags), (TraceOutcome::Started, RANDOM | SAMPLED));
}

#[test]
fn valid_traceparent_wins_over_b3() {
    let d = propagate(&[("traceparent", TP), ("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1")]);
    assert_eq!((d.outcome, d.context.trace_id_hex().as_str()), (TraceOutcome::Propagated, TRACE));
}

#[test]
fn ce_traceparent_is_not_traceparent() {
    let d = propagate(&[("ce-traceparent", TP)]);
    assert_eq!(d.outcome, TraceOutcome::Started);
}

// ---- defer: ids read back from what Envoy's tracer wrote ----

#[test]
fn upstream_ids_come_from_traceparent_or_b3() {
    let w3c = HeaderMap::from_pairs(&[("traceparent", TP), ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")]);
    assert_eq!(from_upstream_headers(&w3c).unwrap().trace_id_hex(), TRACE);
    let b3 = HeaderMap::from_pairs(&[("x-b3-traceid", "48485a3953bb6124"), ("x-b3-spanid", "a2fb4a1d1a96d312")]);
    let c = from_upstream_headers(&b3).unwrap();
    assert_eq!(
        (c.trace_id_hex().as_str(), c.span_id_hex().as_str()),
        ("000000000000000048485a3953bb6124", "a2fb4a1d1a96d312")
    );
    assert!(from_upstream_headers(&HeaderMap::default()).is_none());
}
