#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;

fn ok(json: &str) -> Config {
    match parse(json.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("rejected {json}: {e:?}"),
    }
}

fn errors(json: &str) -> Vec<String> {
    match parse(json.as_bytes()) {
        Ok(_) => panic!("accepted {json}"),
        Err(e) => e,
    }
}

#[test]
fn empty_configuration_means_trace_and_correlation_only() {
    for json in ["", "  \n", "{}"] {
        let c = ok(json);
        assert_eq!(c, Config::default());
        assert!(c.trace.enabled);
        assert_eq!(c.correlation.header, "x-correlation-id");
        assert!(c.default_rule.circuit_breaker.is_none());
        assert!(c.default_rule.dedup.is_none());
    }
}

#[test]
fn present_section_turns_feature_on_with_defaults() {
    let c = ok(r#"{"circuit_breaker": {}, "dedup": {}}"#);
    assert_eq!(c.default_rule.circuit_breaker, Some(Breaker::default()));
    assert_eq!(c.default_rule.dedup, Some(Dedup::default()));
    let c = ok(r#"{"circuit_breaker": "disabled", "dedup": "disabled"}"#);
    assert!(c.default_rule.circuit_breaker.is_none() && c.default_rule.dedup.is_none());
    let c = ok(r#"{"circuit_breaker": {"mode": "disabled"}}"#);
    assert!(c.default_rule.circuit_breaker.is_none());
}

/// The example of every key (`tests/data/spec-example.json`; docs/configuration.md) is accepted
/// and means what it says.
#[test]
fn spec_example_is_accepted() {
    let c = ok(include_str!("../../tests/data/spec-example.json"));
    assert_eq!(c.rules.len(), 2);
    let payments = &c.rules[0];
    assert_eq!(payments.name, "payments");
    assert_eq!(payments.matcher.route_name.as_deref(), Some("payments-v1"));
    assert_eq!(payments.matcher.host.as_deref(), Some("payments.prod"));
    assert_eq!(payments.matcher.methods, vec!["POST".to_string()]);
    let b = payments.circuit_breaker.as_ref().unwrap();
    assert_eq!(b.failure_rate_threshold, 25.0);
    assert_eq!(b.window, Window::Count(20));
    assert_eq!(b.open_duration, 30 * SECOND);
    assert_eq!(b.max_open_duration, 300 * SECOND);
    assert_eq!(payments.dedup.as_ref().unwrap().on_missing, OnMissing::Reject);
    assert_eq!(payments.dedup.as_ref().unwrap().ttl, 600 * SECOND);
    let health = &c.rules[1];
    assert!(health.circuit_breaker.is_none() && health.dedup.is_none());
}

#[test]
fn rule_sections_merge_over_top_level() {
    let c = ok(r#"{
        "circuit_breaker": {"failure_rate_threshold": 40, "window": {"type": "time", "size": "30s"}, "open_duration": "10s"},
        "routes": [
            {"name": "a", "circuit_breaker": {"minimum_calls": 3}},
            {"name": "b"},
            {"name": "c", "circuit_breaker": "disabled"},
            {"name": "d", "dedup": {"ttl": "1m"}}
        ]}"#);
    let a = c.rules[0].circuit_breaker.as_ref().unwrap();
    assert_eq!((a.failure_rate_threshold, a.minimum_calls, a.window), (40.0, 3, Window::Time(30)));
    assert_eq!(a.open_duration, 10 * SECOND);
    assert_eq!(c.rules[1].circuit_breaker, c.default_rule.circuit_breaker);
    assert!(c.rules[2].circuit_breaker.is_none());
    // A rule may turn on a feature that is off at the top level: merged over the defaults.
    assert_eq!(c.rules[3].dedup.as_ref().unwrap().ttl, 60 * SECOND);
    assert!(c.default_rule.dedup.is_none());
    assert_eq!(c.default_rule.name, "default");
}

#[test]
fn values_are_compiled() {
    let c = ok(r#"{
        "correlation": {"header": "X-Request-Trace", "generator": "request_id", "echo_downstream": false, "max_length": 64},
        "trace": {"mode": "hop", "sample_ratio": 0.25, "b3": "ignore", "traceresponse": "server-timing"},
        "log": {"requests": true, "level": "debug", "include_query": true},
        "circuit_breaker": {"failure_status": [503, "500-502", "4xx"], "slow_call_duration": "1.5s", "mode": "metrics_only"},
        "dedup": {"headers": ["Idempotency-Key"], "duplicate_status": 409, "fingerprint": "body", "scope": "caller",
                  "success_status": ["2xx", 304], "max_entries": 10}
    }"#);
    assert_eq!(c.correlation.header, "x-request-trace");
    assert_eq!(c.correlation.generator, Generator::RequestId);
    assert!(!c.correlation.echo_downstream);
    assert_eq!(c.trace.mode, TraceMode::Hop);
    assert_eq!(c.trace.traceresponse, TraceResponse::ServerTiming);
    assert_eq!(c.log.level, LogLevel::Debug);
    let b = c.default_rule.circuit_breaker.unwrap();
    for status in [503, 500, 501, 502, 400, 499] {
        assert!(b.failure_status.contains(status), "{status}");
    }
    assert!(!b.failure_status.contains(504));
    assert_eq!(b.slow_call_duration, 1_500_000_000);
    assert_eq!(b.mode, BreakerMode::MetricsOnly);
    let d = c.default_rule.dedup.unwrap();
    assert_eq!(d.headers, vec!["idempotency-key".to_string()]);
    assert_eq!(d.duplicate_status, DuplicateStatus::Fixed(409));
    assert!(d.success_status.contains(304) && d.success_status.contains(201) && !d.success_status.contains(404));
    assert_eq!((d.fingerprint, d.scope, d.max_entries), (Fingerprint::Body, Scope::Caller, 10));
    assert_eq!(ok(r#"{"trace": {"traceresponse": true}}"#).trace.traceresponse, TraceResponse::Header);
}

/// Each invalid configuration with the exact message an operator reads.
#[test]
fn invalid_values_are_reported_with_their_json_path() {
    let cases: &[(&str, &str)] = &[
        (r#"[]"#, "$: must be an object, got an array"),
        (r#"{"tracing": {}}"#, "tracing: unknown key (expected one of: correlation, trace, log, circuit_breaker, dedup, routes)"),
        (r#"{"correlation": {"header": "bad header"}}"#, "correlation.header: invalid header name \"bad header\""),
        (r#"{"correlation": {"header": ":path"}}"#, "correlation.header: invalid header name \":path\""),
        (r#"{"correlation": {"generator": "uuid7"}}"#, "correlation.generator: must be one of \"uuid4\", \"trace_id\", \"request_id\", got \"uuid7\""),
        (r#"{"correlation": {"max_length": 0}}"#, "correlation.max_length: must be an integer from 1 to 4096, got 0"),
        (
            r#"{"correlation": {"max_length": 35}}"#,
            "correlation.max_length: must be at least 36, the length of the ids the generator makes, got 35",
        ),
        (
            r#"{"correlation": {"max_length": 31, "generator": "trace_id"}}"#,
            "correlation.max_length: must be at least 32, the length of the ids the generator makes, got 31",
        ),
        (r#"{"correlation": {"echo_downstream": "yes"}}"#, "correlation.echo_downstream: must be a boolean, got a string"),
        (r#"{"trace": {"sample_ratio": 1.5}}"#, "trace.sample_ratio: must be from 0 to 1, got 1.5"),
        (r#"{"trace": {"sample_ratio": -0.1}}"#, "trace.sample_ratio: must be from 0 to 1, got -0.1"),
        (r#"{"trace": {"traceresponse": "yes"}}"#, "trace.traceresponse: must be true, false, \"traceresponse\" or \"server-timing\", got \"yes\""),
        (r#"{"log": {"level": "verbose"}}"#, "log.level: must be one of \"trace\", \"debug\", \"info\", \"warn\", \"error\", \"critical\", got \"verbose\""),
        (r#"{"circuit_breaker": {"failure_rate_threshold": 101}}"#, "circuit_breaker.failure_rate_threshold: must be from 0 to 100, got 101"),
        (r#"{"circuit_breaker": {"slow_call_rate_threshold": -1}}"#, "circuit_breaker.slow_call_rate_threshold: must be from 0 to 100, got -1"),
        (r#"{"circuit_breaker": {"window": {"size": 0}}}"#, "circuit_breaker.window.size: must be > 0"),
        (r#"{"circuit_breaker": {"window": {"type": "time", "size": "0s"}}}"#, "circuit_breaker.window.size: must be greater than 0"),
        (r#"{"circuit_breaker": {"window": {"type": "time", "size": "1500ms"}}}"#, "circuit_breaker.window.size: must be whole seconds (the window counts in one-second buckets)"),
        (r#"{"circuit_breaker": {"window": {"type": "time", "size": 60}}}"#, "circuit_breaker.window.size: a time window's size is a duration such as \"60s\""),
        (r#"{"circuit_breaker": {"window": {"type": "sliding"}}}"#, "circuit_breaker.window.type: must be one of \"count\", \"time\", got \"sliding\""),
        (r#"{"circuit_breaker": {"window": {"size": 1001}}}"#, "circuit_breaker.window.size: must be an integer from 1 to 1000, got 1001"),
        (r#"{"circuit_breaker": {"window": 20}}"#, "circuit_breaker.window: must be an object, got a number"),
        (r#"{"circuit_breaker": {"open_duration": "30"}}"#, "circuit_breaker.open_duration: invalid duration \"30\" (expected e.g. \"250ms\", \"30s\", \"10m\", \"1h\")"),
        (r#"{"circuit_breaker": {"open_duration": "10m"}}"#, "circuit_breaker.max_open_duration: must be at least open_duration (10m), got 5m"),
        (r#"{"circuit_breaker": {"open_duration_multiplier": 0.5}}"#, "circuit_breaker.open_duration_multiplier: must be from 1 to 100, got 0.5"),
        (r#"{"circuit_breaker": {"half_open_calls": 0}}"#, "circuit_breaker.half_open_calls: must be an integer from 1 to 1000, got 0"),
        (r#"{"circuit_breaker": {"minimum_calls": 2.5}}"#, "circuit_breaker.minimum_calls: must be an integer from 1 to 4294967295, got 2.5"),
        (r#"{"circuit_breaker": {"failure_status": ["5xx", 600]}}"#, "circuit_breaker.failure_status[1]: invalid status 600 (expected a code from 100 to 599)"),
        (r#"{"circuit_breaker": {"failure_status": "5xx"}}"#, "circuit_breaker.failure_status: must be an array, got a string"),
        (r#"{"circuit_breaker": {"mode": "on"}}"#, "circuit_breaker.mode: must be one of \"enforce\", \"metrics_only\", \"forced_open\", \"disabled\", got \"on\""),
        (r#"{"circuit_breaker": {"open_status": 99}}"#, "circuit_breaker.open_status: must be an integer from 200 to 599, got 99"),
        (r#"{"circuit_breaker": {"failure_grpc_status": [14, 17]}}"#, "circuit_breaker.failure_grpc_status[1]: must be a gRPC status code from 0 to 16, got 17"),
        (r#"{"circuit_breaker": {"ignore_status": ["6xx"]}}"#, "circuit_breaker.ignore_status[0]: invalid status \"6xx\" (expected a code 100-599, a range \"500-504\" or a class \"5xx\")"),
        (r#"{"routes": [{"name": "o", "dedup": {"body_key": "eventId"}}]}"#, "routes[0].dedup.body_key: must be a JSON Pointer (RFC 6901): empty or starting with \"/\", got \"eventId\""),
        (r#"{"dedup": {"body_key": "/a~2"}}"#, "dedup.body_key: invalid JSON Pointer \"/a~2\": \"~\" must be followed by 0 or 1"),
        (r#"{"dedup": {"body_key": 5}}"#, "dedup.body_key: must be a string, got a number"),
        (r#"{"trace": {"mode": "follow"}}"#, "trace.mode: must be one of \"auto\", \"propagate\", \"hop\", \"defer\", got \"follow\""),
        (r#"{"circuit_breaker": {"treshold": 5}}"#, "circuit_breaker.treshold: unknown key (expected one of: failure_rate_threshold, slow_call_rate_threshold, slow_call_duration, window, minimum_calls, consecutive_failures, open_duration, max_open_duration, open_duration_multiplier, half_open_calls, failure_status, ignore_status, failure_grpc_status, mode, open_status)"),
        (r#"{"circuit_breaker": true}"#, "circuit_breaker: must be an object or \"disabled\", got a boolean"),
        (r#"{"dedup": "off"}"#, "dedup: must be an object or \"disabled\", got a string"),
        (r#"{"dedup": {"headers": []}}"#, "dedup.headers: must not be empty"),
        (r#"{"dedup": {"headers": ["x-event-id", 3]}}"#, "dedup.headers[1]: must be a string, got a number"),
        (r#"{"dedup": {"methods": ["PO ST"]}}"#, "dedup.methods[0]: invalid method \"PO ST\""),
        (r#"{"dedup": {"ttl": "0s"}}"#, "dedup.ttl: must be greater than 0"),
        (r#"{"dedup": {"ttl": "31d"}}"#, "dedup.ttl: invalid duration \"31d\" (expected e.g. \"250ms\", \"30s\", \"10m\", \"1h\")"),
        (r#"{"dedup": {"in_flight_ttl": "721h"}}"#, "dedup.in_flight_ttl: duration \"721h\" is longer than 30 days"),
        (r#"{"dedup": {"on_missing": "drop"}}"#, "dedup.on_missing: must be one of \"pass\", \"reject\", \"generate\", got \"drop\""),
        (r#"{"dedup": {"duplicate_status": "same"}}"#, "dedup.duplicate_status: must be \"replay\" or a status code from 200 to 599, got \"same\""),
        (r#"{"dedup": {"duplicate_status": 600}}"#, "dedup.duplicate_status: must be an integer from 200 to 599, got 600"),
        (r#"{"dedup": {"fingerprint": "sha"}}"#, "dedup.fingerprint: must be one of \"none\", \"method_path\", \"body\", got \"sha\""),
        (r#"{"dedup": {"scope": "global"}}"#, "dedup.scope: must be one of \"rule\", \"caller\", got \"global\""),
        (r#"{"dedup": {"max_entries": 0}}"#, "dedup.max_entries: must be an integer from 1 to 1000000, got 0"),
        (r#"{"dedup": {"mode": "dry_run"}}"#, "dedup.mode: must be one of \"enforce\", \"metrics_only\", got \"dry_run\""),
        (r#"{"dedup": {"mode": "disabled"}}"#, "dedup.mode: must be one of \"enforce\", \"metrics_only\", got \"disabled\""),
        (r#"{"routes": [{"name": "a", "dedup": {"mode": 1}}]}"#, "routes[0].dedup.mode: must be a string, got a number"),
        (r#"{"dedup": {"mod": "enforce"}}"#, "dedup.mod: unknown key (expected one of: headers, methods, ttl, in_flight_ttl, on_missing, duplicate_status, success_status, fingerprint, scope, max_entries, mode, body_key, store)"),
        (r#"{"routes": {}}"#, "routes: must be an array, got an object"),
        (r#"{"routes": [{}]}"#, "routes[0].name: is required"),
        (r#"{"routes": [{"name": ""}]}"#, "routes[0].name: must be 1-64 characters of A-Z a-z 0-9 _ - ., got \"\""),
        (r#"{"routes": [{"name": "a;b"}]}"#, "routes[0].name: must be 1-64 characters of A-Z a-z 0-9 _ - ., got \"a;b\""),
        (r#"{"routes": [{"name": "default"}]}"#, "routes[0].name: \"default\" is reserved for requests that match no rule"),
        (r#"{"routes": [{"name": "a"}, {"name": "a"}]}"#, "routes[1].name: duplicate rule name \"a\" (also routes[0])"),
        (r#"{"routes": [{"name": "a", "match": {"path": "/x"}}]}"#, "routes[0].match.path: unknown key (expected one of: route_name, cluster, host, prefix, methods)"),
        (r#"{"routes": [{"name": "a", "match": {"prefix": "x"}}]}"#, "routes[0].match.prefix: must start with \"/\", got \"x\""),
        (r#"{"routes": [{"name": "a", "match": {"methods": []}}]}"#, "routes[0].match.methods: must not be empty"),
        (r#"{"routes": [{"name": "a", "match": {"host": "a b"}}]}"#, "routes[0].match.host: invalid host \"a b\""),
        (r#"{"routes": [{"name": "a", "circuit_breaker": {"window": {"size": 0}}}]}"#, "routes[0].circuit_breaker.window.size: must be > 0"),
        (r#"{"routes": [{"name": "a", "dedup": {"methods": "POST"}}]}"#, "routes[0].dedup.methods: must be an array of strings, got a string"),
        (r#"{"routes": [{"name": "a", "priority": 1}]}"#, "routes[0].priority: unknown key (expected one of: name, match, circuit_breaker, dedup)"),
    ];
    for (json, expected) in cases {
        assert_eq!(errors(json), vec![expected.to_string()], "{json}");
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let errs = errors(
        r#"{
        "correlation": {"max_length": -1},
        "trace": {"sample_ratio": 2},
        "routes": [
            {"name": "ok"},
            {"name": "bad", "circuit_breaker": {"window": {"type": "count", "size": 0}, "open_duration": "x"}},
            {"name": "ok"}
        ]}"#,
    );
    assert_eq!(
        errs,
        vec![
            "correlation.max_length: must be an integer from 1 to 4096, got -1",
            "trace.sample_ratio: must be from 0 to 1, got 2",
            "routes[1].circuit_breaker.window.size: must be > 0",
            "routes[1].circuit_breaker.open_duration: invalid duration \"x\" (expected e.g. \"250ms\", \"30s\", \"10m\", \"1h\")",
            "routes[2].name: duplicate rule name \"ok\" (also routes[0])",
        ]
    );
}

#[test]
fn merged_rule_is_checked_as_a_whole() {
    // Valid on its own, but the rule's open_duration exceeds the inherited max_open_duration.
    let errs = errors(
        r#"{"circuit_breaker": {"max_open_duration": "1m"}, "routes": [{"name": "r", "circuit_breaker": {"open_duration": "2m"}}]}"#,
    );
    assert_eq!(errs, vec!["routes[0].circuit_breaker.max_open_duration: must be at least open_duration (2m), got 1m"]);
}

#[test]
fn malformed_json_is_refused_with_position() {
    let errs = errors(r#"{"trace": {"enabled": tru}}"#);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("$: not valid JSON: "), "{errs:?}");
    assert!(errs[0].contains("line 1"), "{errs:?}");
    assert!(parse(b"\xff\xfe{}").is_err());
    assert!(parse(b"{} {}").is_err());
}

#[test]
fn limits_are_enforced() {
    let many: Vec<String> = (0..=MAX_RULES).map(|i| format!(r#"{{"name": "r{i}"}}"#)).collect();
    let errs = errors(&format!(r#"{{"routes": [{}]}}"#, many.join(",")));
    assert_eq!(errs, vec![format!("routes: must have at most {MAX_RULES} rules, got {}", MAX_RULES + 1)]);
    let c = ok(r#"{"circuit_breaker": {"window": {"type": "time", "size": "10m"}}}"#);
    assert_eq!(c.default_rule.circuit_breaker.unwrap().window, Window::Time(600));
    assert_eq!(
        errors(r#"{"circuit_breaker": {"window": {"type": "time", "size": "11m"}}}"#),
        vec!["circuit_breaker.window.size: must be at most 600s"]
    );
}

#[test]
fn trace_id_generator_needs_a_trace_id_meshguard_chooses() {
    let expected =
        "correlation.generator: \"trace_id\" needs trace.enabled and trace.mode \"auto\", \"propagate\" or \"hop\"";
    for trace in [r#"{"mode": "defer"}"#, r#"{"enabled": false}"#] {
        let json = format!(r#"{{"correlation": {{"generator": "trace_id"}}, "trace": {trace}}}"#);
        assert_eq!(errors(&json), vec![expected.to_string()]);
    }
    assert!(parse(br#"{"correlation": {"generator": "trace_id"}, "trace": {"mode": "hop"}}"#).is_ok());
}

#[test]
fn correlation_header_cannot_be_a_trace_header() {
    for header in ["traceparent", "TraceState", "b3", "x-b3-traceid"] {
        let json = format!(r#"{{"correlation": {{"header": "{header}"}}}}"#);
        assert_eq!(errors(&json), vec!["correlation.header: must not be a trace-context header".to_string()]);
    }
}

#[test]
fn errors_escape_control_characters_of_keys() {
    // The errors become one Envoy log line: a key holding a line break must not split it.
    let errs = errors("{\"\\u0004\": 1, \"routes\": [{\"name\": \"a\", \"x\\ny\": 2}]}");
    assert_eq!(
        errs,
        vec![
            "\\u{4}: unknown key (expected one of: correlation, trace, log, circuit_breaker, dedup, routes)"
                .to_string(),
            "routes[0].x\\u{a}y: unknown key (expected one of: name, match, circuit_breaker, dedup)".to_string(),
        ]
    );
    assert!(errs.iter().all(|e| !e.chars().any(char::is_control)));
}

#[test]
fn durations_too_large_to_add_up_are_rejected_not_wrapped() {
    // The invariant of the `duration_status` fuzz target: the components' sum overflowed u128 (a
    // panic in a debug build; in the release wasm a wrap-around to a small duration, accepted).
    for text in [
        "1ns340282366920938463463374607431768211455ns",
        "2ns340282366920938463463374607431768211455ns",
        "340282366920938463463374607431.9s",
    ] {
        assert!(duration::parse(text).is_err(), "{text}");
        let json = format!(r#"{{"circuit_breaker": {{"open_duration": "{text}"}}}}"#);
        assert_eq!(errors(&json).len(), 1, "{text}");
    }
}

/// docs/behaviour.md, "Event-id deduplication", *Modes*: the dry run is a dedup key like the
/// others, merged per rule.
#[test]
fn dedup_mode_defaults_to_enforce_and_merges_per_rule() {
    assert_eq!(ok(r#"{"dedup": {}}"#).default_rule.dedup.unwrap().mode, DedupMode::Enforce);
    let c = ok(r#"{
        "dedup": {"mode": "metrics_only", "ttl": "1m"},
        "routes": [
            {"name": "inherits"},
            {"name": "enforces", "dedup": {"mode": "enforce"}},
            {"name": "other-key", "dedup": {"ttl": "2m"}},
            {"name": "off", "dedup": "disabled"}
        ]}"#);
    let mode = |i: usize| c.rules[i].dedup.as_ref().map(|d| d.mode);
    assert_eq!(c.default_rule.dedup.as_ref().unwrap().mode, DedupMode::MetricsOnly);
    assert_eq!(mode(0), Some(DedupMode::MetricsOnly));
    assert_eq!(mode(1), Some(DedupMode::Enforce));
    // Setting another key keeps the inherited mode (merged, not replaced).
    assert_eq!(mode(2), Some(DedupMode::MetricsOnly));
    assert_eq!(c.rules[2].dedup.as_ref().unwrap().ttl, 120 * SECOND);
    assert_eq!(mode(3), None);
    // A rule turning dedup on under a top level without dedup starts from the default, enforce;
    // and a rule can start its own dry run under an enforcing top level.
    let c = ok(r#"{"routes": [{"name": "a", "dedup": {}}, {"name": "b", "dedup": {"mode": "metrics_only"}}]}"#);
    assert_eq!(c.rules[0].dedup.as_ref().unwrap().mode, DedupMode::Enforce);
    assert_eq!(c.rules[1].dedup.as_ref().unwrap().mode, DedupMode::MetricsOnly);
    assert!(c.default_rule.dedup.is_none());
}

#[test]
fn dedup_store_defaults_to_local_and_etcd_takes_its_defaults() {
    assert_eq!(ok(r#"{"dedup": {}}"#).default_rule.dedup.unwrap().store, Store::Local);
    assert_eq!(ok(r#"{"dedup": {"store": {"type": "local"}}}"#).default_rule.dedup.unwrap().store, Store::Local);
    let c = ok(r#"{"dedup": {"store": {"type": "etcd", "cluster": "outbound|2379||etcd.store.svc.cluster.local"}}}"#);
    let Store::Etcd(e) = c.default_rule.dedup.unwrap().store else { panic!("not etcd") };
    assert_eq!(e.cluster, "outbound|2379||etcd.store.svc.cluster.local");
    assert_eq!(e.authority, e.cluster, "authority defaults to the cluster");
    assert_eq!(e.prefix, "/meshguard/");
    assert_eq!(e.timeout, 100_000_000);
    assert_eq!(e.on_error, OnStoreError::Local);
    let c = ok(r#"{"dedup": {"store": {"type": "etcd", "cluster": "etcd", "authority": "etcd.store:2379",
        "prefix": "/orders/", "timeout": "250ms", "on_error": "reject"}}}"#);
    let Store::Etcd(e) = c.default_rule.dedup.unwrap().store else { panic!("not etcd") };
    assert_eq!((e.authority.as_str(), e.prefix.as_str(), e.timeout), ("etcd.store:2379", "/orders/", 250_000_000));
    assert_eq!(e.on_error, OnStoreError::Reject);
}

#[test]
fn dedup_store_errors_name_their_json_path() {
    let cases = [
        (r#"{"dedup": {"store": {}}}"#, "dedup.store.type"),
        (r#"{"dedup": {"store": {"type": "redis"}}}"#, "dedup.store.type"),
        (r#"{"dedup": {"store": {"type": "etcd"}}}"#, "dedup.store.cluster"),
        (r#"{"dedup": {"store": {"type": "etcd", "cluster": ""}}}"#, "dedup.store.cluster"),
        (r#"{"dedup": {"store": {"type": "etcd", "cluster": "e", "prefix": "meshguard/"}}}"#, "dedup.store.prefix"),
        (r#"{"dedup": {"store": {"type": "etcd", "cluster": "e", "authority": "a b"}}}"#, "dedup.store.authority"),
        (r#"{"dedup": {"store": {"type": "etcd", "cluster": "e", "timeout": "11s"}}}"#, "dedup.store.timeout"),
        (r#"{"dedup": {"store": {"type": "etcd", "cluster": "e", "timeout": "0s"}}}"#, "dedup.store.timeout"),
        (r#"{"dedup": {"store": {"type": "etcd", "cluster": "e", "on_error": "retry"}}}"#, "dedup.store.on_error"),
        (r#"{"dedup": {"store": {"type": "etcd", "cluster": "e", "ttl": "1s"}}}"#, "dedup.store.ttl"),
        (r#"{"dedup": {"store": {"type": "local", "cluster": "e"}}}"#, "dedup.store.cluster"),
        (r#"{"dedup": {"store": "etcd"}}"#, "dedup.store"),
        (r#"{"routes": [{"name": "r", "dedup": {"store": {"type": "etcd"}}}]}"#, "routes[0].dedup.store.cluster"),
    ];
    for (json, path) in cases {
        let errs = errors(json);
        assert!(errs.iter().any(|e| e.starts_with(path)), "{json}: {errs:?} should name {path}");
    }
}

#[test]
fn a_rule_replaces_the_store_as_a_whole() {
    let c = ok(r#"{"dedup": {"store": {"type": "etcd", "cluster": "e", "on_error": "pass"}},
        "routes": [{"name": "local", "dedup": {"store": {"type": "local"}}}, {"name": "inherits", "dedup": {}}]}"#);
    assert_eq!(c.rules[0].dedup.as_ref().unwrap().store, Store::Local);
    let Store::Etcd(e) = &c.rules[1].dedup.as_ref().unwrap().store else { panic!("not inherited") };
    assert_eq!(e.on_error, OnStoreError::Pass);
}
