//! The state machine against an injected clock: every transition and edge.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::config;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000 * S;

const OK: CallOutcome = CallOutcome { failure: false, slow: false };
const FAIL: CallOutcome = CallOutcome { failure: true, slow: false };
const SLOW: CallOutcome = CallOutcome { failure: false, slow: true };

fn cfg(json: &str) -> Breaker {
    let c = config::parse(format!(r#"{{"circuit_breaker": {json}}}"#).as_bytes()).unwrap();
    c.default_rule.circuit_breaker.unwrap()
}

/// Admits and records one call at `now`, round-tripping the state through its encoding as the
/// shell does; returns the admission and any transitions.
fn call(state: &mut State, cfg: &Breaker, outcome: CallOutcome, now: u64) -> (Admission, Vec<Transition>) {
    let mut transitions = Vec::new();
    let (admission, t) = state.admit(cfg, now);
    transitions.extend(t);
    *state = State::decode(&state.encode(), cfg).unwrap();
    let recorded = match admission {
        Admission::Pass { generation } => state.record(cfg, generation, false, outcome, now),
        Admission::Probe { generation } => state.record(cfg, generation, true, outcome, now),
        _ => None,
    };
    transitions.extend(recorded);
    *state = State::decode(&state.encode(), cfg).unwrap();
    (admission, transitions)
}

fn calls(state: &mut State, cfg: &Breaker, outcomes: &[CallOutcome], now: u64) -> Vec<Transition> {
    outcomes.iter().flat_map(|o| call(state, cfg, *o, now).1).collect()
}

fn is_reject(a: Admission) -> bool {
    matches!(a, Admission::Reject { .. })
}

#[test]
fn opens_exactly_at_the_failure_rate_threshold_once_minimum_calls_are_in() {
    let c = cfg(r#"{"failure_rate_threshold": 50, "window": {"type": "count", "size": 10}, "minimum_calls": 4}"#);
    let mut s = State::new(&c);
    // 3 failures in 3 calls: 100% but under minimum_calls.
    assert!(calls(&mut s, &c, &[FAIL, FAIL, FAIL], T0).is_empty());
    // The 4th call: 3 of 4 = 75% ≥ 50%.
    let t = calls(&mut s, &c, &[OK], T0);
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].from, t[0].to), (Phase::Closed, Phase::Open));
    assert_eq!(t[0].reason, "failure rate 75% of 4 calls; open for 30s");

    // Exactly 50% trips; 49% does not.
    let c = cfg(r#"{"failure_rate_threshold": 50, "window": {"type": "count", "size": 100}, "minimum_calls": 4}"#);
    let mut s = State::new(&c);
    assert!(calls(&mut s, &c, &[OK, OK, OK], T0).is_empty());
    assert_eq!(calls(&mut s, &c, &[FAIL, FAIL, FAIL], T0).len(), 1, "3 of 6 = 50%");
    let c = cfg(r#"{"failure_rate_threshold": 50, "window": {"type": "count", "size": 100}, "minimum_calls": 100}"#);
    let mut s = State::new(&c);
    let mut outcomes = vec![OK; 51];
    outcomes.extend([FAIL; 49]);
    assert!(calls(&mut s, &c, &outcomes, T0).is_empty(), "49%");
}

#[test]
fn count_window_forgets_the_oldest_outcome() {
    let c = cfg(r#"{"failure_rate_threshold": 50, "window": {"type": "count", "size": 4}, "minimum_calls": 4}"#);
    let mut s = State::new(&c);
    assert!(calls(&mut s, &c, &[FAIL, OK, OK, OK], T0).is_empty(), "25%");
    // The FAIL slides out, a new one in: still 25%.
    assert!(calls(&mut s, &c, &[FAIL], T0).is_empty());
    assert_eq!(s.totals(T0), Totals { calls: 4, failures: 1, slow: 0 });
    assert_eq!(calls(&mut s, &c, &[FAIL], T0).len(), 1, "2 of the last 4");
}

#[test]
fn time_window_counts_only_the_last_seconds() {
    let c = cfg(r#"{"failure_rate_threshold": 50, "window": {"type": "time", "size": "10s"}, "minimum_calls": 4}"#);
    let mut s = State::new(&c);
    assert!(calls(&mut s, &c, &[FAIL, FAIL, FAIL], T0).is_empty());
    // Ten seconds later the three failures have left the window.
    assert!(calls(&mut s, &c, &[OK], T0 + 10 * S).is_empty());
    assert_eq!(s.totals(T0 + 10 * S), Totals { calls: 1, failures: 0, slow: 0 });
    // Within the window they count.
    let mut s = State::new(&c);
    assert!(calls(&mut s, &c, &[FAIL, FAIL, FAIL], T0).is_empty());
    assert_eq!(calls(&mut s, &c, &[OK], T0 + 9 * S).len(), 1);
}

#[test]
fn slow_calls_trip_by_their_own_rate_and_100_never_trips() {
    let c = cfg(r#"{"slow_call_rate_threshold": 50, "slow_call_duration": "1s", "minimum_calls": 2}"#);
    let mut s = State::new(&c);
    let t = calls(&mut s, &c, &[OK, SLOW], T0);
    assert_eq!(t.len(), 1);
    assert!(t[0].reason.starts_with("slow call rate 50% of 2 calls"), "{}", t[0].reason);
    let c = cfg(r#"{"slow_call_rate_threshold": 100, "minimum_calls": 2}"#);
    let mut s = State::new(&c);
    assert!(calls(&mut s, &c, &[SLOW; 30], T0).is_empty());
}

#[test]
fn consecutive_failures_trip_without_minimum_calls() {
    let c = cfg(r#"{"consecutive_failures": 3, "minimum_calls": 100, "window": {"type": "count", "size": 100}}"#);
    let mut s = State::new(&c);
    assert!(calls(&mut s, &c, &[FAIL, FAIL, OK, FAIL, FAIL], T0).is_empty(), "a success resets the run");
    let t = calls(&mut s, &c, &[FAIL], T0);
    assert_eq!(t[0].reason, "3 consecutive failures; open for 30s");
}

#[test]
fn open_rejects_until_open_duration_then_lets_exactly_half_open_calls_probe() {
    let c = cfg(r#"{"consecutive_failures": 1, "open_duration": "10s", "half_open_calls": 2}"#);
    let mut s = State::new(&c);
    calls(&mut s, &c, &[FAIL], T0);
    assert_eq!(s.phase, Phase::Open);
    assert_eq!(s.admit(&c, T0).0, Admission::Reject { retry_after_s: 10 });
    assert_eq!(s.admit(&c, T0 + 9 * S + 1).0, Admission::Reject { retry_after_s: 1 });
    assert_eq!(s.admit(&c, T0 + 2500 * MS).0, Admission::Reject { retry_after_s: 8 }, "rounded up");

    let (a, t) = s.admit(&c, T0 + 10 * S);
    assert!(matches!(a, Admission::Probe { .. }));
    assert_eq!((t.as_ref().unwrap().from, t.as_ref().unwrap().to), (Phase::Open, Phase::HalfOpen));
    assert!(matches!(s.admit(&c, T0 + 10 * S).0, Admission::Probe { .. }));
    assert!(is_reject(s.admit(&c, T0 + 10 * S).0), "a third probe is refused");
}

#[test]
fn all_probes_succeeding_closes_with_an_empty_window() {
    let c = cfg(r#"{"consecutive_failures": 2, "open_duration": "1s", "half_open_calls": 3}"#);
    let mut s = State::new(&c);
    calls(&mut s, &c, &[FAIL, FAIL], T0);
    let now = T0 + S;
    let probes: Vec<_> = (0..3).map(|_| s.admit(&c, now).0).collect();
    let gens: Vec<u32> =
        probes.iter().map(|p| if let Admission::Probe { generation } = p { *generation } else { panic!() }).collect();
    assert!(s.record(&c, gens[0], true, OK, now).is_none());
    assert!(s.record(&c, gens[1], true, OK, now).is_none());
    let t = s.record(&c, gens[2], true, OK, now).unwrap();
    assert_eq!((t.from, t.to, t.reason.as_str()), (Phase::HalfOpen, Phase::Closed, "3 of 3 probes succeeded"));
    assert_eq!(s.totals(now), Totals::default());
    assert_eq!(s.consecutive_failures, 0);
    assert_eq!(calls(&mut s, &c, &[FAIL], now).len(), 0, "one failure is not two in a row");
}

#[test]
fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
    let c = cfg(
        r#"{"consecutive_failures": 1, "open_duration": "10s", "open_duration_multiplier": 2, "max_open_duration": "35s", "half_open_calls": 1}"#,
    );
    let mut s = State::new(&c);
    calls(&mut s, &c, &[FAIL], T0);
    let mut now;
    let mut waits = Vec::new();
    for _ in 0..4 {
        now = s.open_until;
        let (a, _) = s.admit(&c, now);
        let Admission::Probe { generation } = a else { panic!("{a:?}") };
        let t = s.record(&c, generation, true, FAIL, now).unwrap();
        assert_eq!((t.from, t.to), (Phase::HalfOpen, Phase::Open));
        waits.push((s.open_until - now) / S);
    }
    assert_eq!(waits, vec![20, 35, 35, 35]);
    // Closing resets the duration.
    now = s.open_until;
    let Admission::Probe { generation } = s.admit(&c, now).0 else { panic!() };
    s.record(&c, generation, true, OK, now).unwrap();
    calls(&mut s, &c, &[FAIL], now);
    assert_eq!(s.open_until - now, 10 * S);
}

#[test]
fn stale_outcomes_of_an_earlier_generation_are_ignored() {
    let c = cfg(r#"{"consecutive_failures": 1, "open_duration": "1s", "half_open_calls": 1}"#);
    let mut s = State::new(&c);
    let Admission::Pass { generation: old } = s.admit(&c, T0).0 else { panic!() };
    calls(&mut s, &c, &[FAIL], T0);
    // A call admitted while closed finishes after the circuit opened and half-opened.
    let Admission::Probe { generation } = s.admit(&c, T0 + S).0 else { panic!() };
    assert!(s.record(&c, old, false, FAIL, T0 + S).is_none());
    assert_eq!(s.phase, Phase::HalfOpen);
    // A non-probe outcome cannot close a half-open circuit either.
    assert!(s.record(&c, generation, false, OK, T0 + S).is_none());
    assert_eq!(s.phase, Phase::HalfOpen);
}

#[test]
fn probes_that_never_complete_free_their_slots_after_slow_call_duration() {
    let c =
        cfg(r#"{"consecutive_failures": 1, "open_duration": "1s", "half_open_calls": 1, "slow_call_duration": "2s"}"#);
    let mut s = State::new(&c);
    calls(&mut s, &c, &[FAIL], T0);
    assert!(matches!(s.admit(&c, T0 + S).0, Admission::Probe { .. }));
    assert!(is_reject(s.admit(&c, T0 + 3 * S).0), "still within slow_call_duration");
    assert!(matches!(s.admit(&c, T0 + 3 * S + 1).0, Admission::Probe { .. }), "slot freed");
}

#[test]
fn metrics_only_computes_everything_but_never_rejects() {
    let c = cfg(r#"{"consecutive_failures": 1, "mode": "metrics_only", "open_duration": "5s"}"#);
    let mut s = State::new(&c);
    assert_eq!(calls(&mut s, &c, &[FAIL], T0).len(), 1);
    assert_eq!(s.phase, Phase::Open);
    let (a, t) = call(&mut s, &c, FAIL, T0 + S);
    assert_eq!((a, t.len()), (Admission::WouldReject, 0), "not recorded while open");
    let (a, t) = call(&mut s, &c, OK, T0 + 5 * S);
    assert!(matches!(a, Admission::Probe { .. }));
    assert_eq!(t.len(), 1, "open -> half_open");
}

#[test]
fn forced_open_rejects_everything_without_transitions() {
    let c = cfg(r#"{"mode": "forced_open", "open_duration": "30s"}"#);
    let mut s = State::new(&c);
    for i in 0..5 {
        let (a, t) = call(&mut s, &c, OK, T0 + i * S);
        assert_eq!(a, Admission::Reject { retry_after_s: 30 });
        assert!(t.is_empty());
    }
}

#[test]
fn encoding_round_trips_and_refuses_other_windows() {
    let count = cfg(r#"{"window": {"type": "count", "size": 5}, "consecutive_failures": 2}"#);
    let mut s = State::new(&count);
    calls(&mut s, &count, &[FAIL, OK, SLOW], T0);
    assert_eq!(State::decode(&s.encode(), &count), Some(s.clone()));
    let bigger = cfg(r#"{"window": {"type": "count", "size": 6}}"#);
    assert_eq!(State::decode(&s.encode(), &bigger), None, "a resized window starts empty");
    let time = cfg(r#"{"window": {"type": "time", "size": "5s"}}"#);
    assert_eq!(State::decode(&s.encode(), &time), None);
    let mut t = State::new(&time);
    calls(&mut t, &time, &[FAIL, OK], T0);
    assert_eq!(State::decode(&t.encode(), &time), Some(t.clone()));
    // Truncated, padded or foreign bytes never decode.
    let bytes = s.encode();
    for cut in 0..bytes.len() {
        assert_eq!(State::decode(&bytes[..cut], &count), None);
    }
    let mut padded = bytes.clone();
    padded.push(0);
    assert_eq!(State::decode(&padded, &count), None);
    let mut foreign = bytes;
    foreign[0] = 9;
    assert_eq!(State::decode(&foreign, &count), None);
}

#[test]
fn human_durations() {
    assert_eq!(human(30 * S), "30s");
    assert_eq!(human(90 * S), "1m30s");
    assert_eq!(human(300 * S), "5m");
    assert_eq!(human(250 * MS), "250ms");
    assert_eq!(human(3600 * S), "1h0m0s");
}

fn http(status: Option<u32>) -> Ending {
    Ending { status, grpc: false, grpc_status: None }
}

fn grpc(status: Option<u32>, grpc_status: Option<u32>) -> Ending {
    Ending { status, grpc: true, grpc_status }
}

const DC: u64 = 1 << 14;
const DR: u64 = 1 << 28;

#[test]
fn classification_by_status_envoy_flags_and_duration() {
    let c = cfg(r#"{"failure_status": [500, "502-503"], "slow_call_duration": "1s"}"#);
    let no_flags = || -> Option<u64> { panic!("flags read although the status decided") };
    assert_eq!(classify(&c, &http(Some(200)), no_flags, S), Some(OK));
    assert_eq!(classify(&c, &http(Some(200)), no_flags, S + 1), Some(SLOW));
    assert_eq!(classify(&c, &http(Some(502)), no_flags, 0), Some(FAIL));
    assert_eq!(classify(&c, &http(Some(404)), no_flags, 0), Some(OK));
    assert_eq!(classify(&c, &http(None), || Some(0), 0), Some(FAIL), "reset before response headers");
    assert_eq!(classify(&c, &http(None), || None, 0), Some(FAIL), "flags unreadable: a reset");
    // 504 is not in the set: a failure only when Envoy made it (UT, upstream timeout).
    assert_eq!(classify(&c, &http(Some(504)), || Some(1 << 2), 0), Some(FAIL));
    assert_eq!(classify(&c, &http(Some(504)), || Some(0), 0), Some(OK));
    assert_eq!(classify(&c, &http(Some(504)), || Some(1 << 8), 0), Some(OK), "NR is not an upstream failure");
    for bit in [1, 2, 4, 5, 6, 7, 15, 23] {
        assert_eq!(classify(&c, &http(Some(503)), || unreachable!(), 0), Some(FAIL));
        assert_eq!(classify(&c, &http(Some(599)), || Some(1 << bit), 0), Some(FAIL), "bit {bit}");
    }
}

#[test]
fn ignored_statuses_are_neutral_and_win_over_failure_statuses() {
    let c = cfg(r#"{"failure_status": ["4xx", "5xx"], "ignore_status": [429, "404"]}"#);
    for status in [429, 404] {
        assert_eq!(classify(&c, &http(Some(status)), || unreachable!(), 10 * S), None, "{status}");
    }
    assert_eq!(classify(&c, &http(Some(400)), || unreachable!(), 0), Some(FAIL));
    let grpc_ignored = cfg(r#"{"ignore_status": [503]}"#);
    assert_eq!(classify(&grpc_ignored, &grpc(Some(503), None), || unreachable!(), 0), None, "non-200 gRPC as HTTP");
}

#[test]
fn calls_the_caller_abandoned_are_neutral_or_slow() {
    let c = cfg(r#"{"slow_call_duration": "2s"}"#);
    for flags in [DC, DR, DC | DR, DR | 1 << 2] {
        assert_eq!(classify(&c, &http(None), || Some(flags), S), None, "flags {flags:#x}");
        assert_eq!(classify(&c, &http(None), || Some(flags), 3 * S), Some(SLOW), "flags {flags:#x}");
        // A gRPC stream the caller cancelled after the response headers, before the status.
        assert_eq!(classify(&c, &grpc(Some(200), None), || Some(flags), S), None);
        assert_eq!(classify(&c, &grpc(Some(200), None), || Some(flags), 3 * S), Some(SLOW));
    }
    // A response that arrived is judged by its status, whatever the caller did after it.
    assert_eq!(classify(&c, &http(Some(503)), || Some(DR), 0), Some(FAIL));
}

/// Every gRPC status on every kind of ending: trailers-only or trailers (the same `Ending`), a
/// stream that ended without a status, and a non-200 HTTP status.
#[test]
fn grpc_calls_are_judged_by_grpc_status() {
    let c = cfg(r#"{"slow_call_duration": "1s"}"#);
    let failures = [2, 4, 13, 14, 15];
    for code in 0..=16 {
        let expected = match code {
            1 => None,
            c if failures.contains(&c) => Some(FAIL),
            _ => Some(OK),
        };
        assert_eq!(classify(&c, &grpc(Some(200), Some(code)), || unreachable!(), 0), expected, "grpc-status {code}");
        let slow = expected.map(|o| CallOutcome { slow: true, ..o });
        assert_eq!(classify(&c, &grpc(Some(200), Some(code)), || unreachable!(), 2 * S), slow, "slow {code}");
    }
    assert_eq!(classify(&c, &grpc(Some(200), None), || Some(0), 0), Some(FAIL), "ended without grpc-status");
    assert_eq!(classify(&c, &grpc(None, None), || Some(1 << 4), 0), Some(FAIL), "upstream reset");
    assert_eq!(classify(&c, &grpc(Some(503), None), || unreachable!(), 0), Some(FAIL), "Envoy's own 503");
    assert_eq!(classify(&c, &grpc(Some(503), Some(0)), || unreachable!(), 0), Some(FAIL), "HTTP status decides");
    assert_eq!(classify(&c, &grpc(Some(404), None), || unreachable!(), 0), Some(OK));
    // The codes are configurable; HTTP 200 of a non-gRPC call ignores any grpc-status.
    let custom = cfg(r#"{"failure_grpc_status": [8]}"#);
    assert_eq!(classify(&custom, &grpc(Some(200), Some(8)), || unreachable!(), 0), Some(FAIL));
    assert_eq!(classify(&custom, &grpc(Some(200), Some(14)), || unreachable!(), 0), Some(OK));
    assert_eq!(
        classify(&c, &Ending { status: Some(200), grpc: false, grpc_status: Some(14) }, || unreachable!(), 0),
        Some(OK)
    );
}

#[test]
fn a_neutral_probe_frees_its_slot() {
    let c = cfg(r#"{"consecutive_failures": 1, "half_open_calls": 2, "open_duration": "1s"}"#);
    let mut s = State::new(&c);
    s.record(&c, 0, false, FAIL, 0);
    assert_eq!(s.phase, Phase::Open);
    let g = match s.admit(&c, 2 * S).0 {
        Admission::Probe { generation } => generation,
        other => panic!("{other:?}"),
    };
    assert!(matches!(s.admit(&c, 2 * S).0, Admission::Probe { .. }));
    assert!(matches!(s.admit(&c, 2 * S).0, Admission::Reject { .. }), "both slots taken");
    assert!(s.free_probe(g));
    assert!(matches!(s.admit(&c, 2 * S).0, Admission::Probe { .. }), "the freed slot is taken again");
    assert!(!s.free_probe(g + 1), "another generation's probe frees nothing");
    s.record(&c, g, true, OK, 2 * S);
    s.record(&c, g, true, OK, 2 * S);
    assert_eq!(s.phase, Phase::Closed);
    assert!(!s.free_probe(g), "a closed circuit has no probe to free");
}

#[test]
fn keys_change_with_rule_name_and_window() {
    let count = cfg(r#"{"window": {"type": "count", "size": 20}}"#);
    let time = cfg(r#"{"window": {"type": "time", "size": "1m"}}"#);
    assert_eq!(key("mg", "payments", &count), "meshguard/mg/circuit/payments/count20");
    assert_eq!(key("mg", "payments", &time), "meshguard/mg/circuit/payments/time60s");
}

#[test]
fn a_success_into_a_full_healthy_count_window_changes_nothing() {
    let c = cfg(r#"{"window": {"type": "count", "size": 3}}"#);
    let mut s = State::new(&c);
    calls(&mut s, &c, &[OK, OK, OK], T0);
    let before = s.clone();
    calls(&mut s, &c, &[OK], T0);
    assert_eq!(s, before);
    calls(&mut s, &c, &[FAIL, OK, OK, OK], T0);
    assert_eq!(s.totals(T0), Totals { calls: 3, failures: 0, slow: 0 }, "the failure slid out");
}

// ---- the worker's copy (snapshot) ----

/// Every state reachable by short outcome sequences: `quiet` holds exactly when admitting and
/// recording a success leave the state as it is (the property the copy relies on).
#[test]
fn quiet_means_a_success_and_an_admission_change_nothing() {
    let c = cfg(r#"{"window": {"type": "count", "size": 3}, "minimum_calls": 3, "consecutive_failures": 2}"#);
    for n in 0..=6u32 {
        for bits in 0..(1u32 << n) {
            let mut state = State::new(&c);
            let outcomes: Vec<CallOutcome> = (0..n).map(|i| if bits >> i & 1 == 1 { FAIL } else { OK }).collect();
            calls(&mut state, &c, &outcomes, T0);
            let mut after = state.clone();
            let (admission, t) = after.admit(&c, T0);
            let changes = match admission {
                Admission::Pass { generation } => t.is_some() || after.record(&c, generation, false, OK, T0).is_some(),
                _ => true,
            };
            let unchanged = !changes && after == state;
            assert_eq!(state.quiet(&c), unchanged && state.phase == Phase::Closed, "{outcomes:?} -> {state:?}");
        }
    }
    let time = cfg(r#"{"window": {"type": "time", "size": "10s"}}"#);
    let mut state = State::new(&time);
    calls(&mut state, &time, &[OK; 20], T0);
    assert!(!state.quiet(&time), "every success changes a time window's bucket");
}

#[test]
fn a_copy_answers_only_for_open_before_its_time_and_quiet_closed_with_an_epoch() {
    let c = cfg(r#"{"window": {"type": "count", "size": 2}, "consecutive_failures": 1, "open_duration": "10s"}"#);
    let mut state = State::new(&c);
    assert_eq!(Snapshot::new(state.clone(), Some(0), &c), None, "window not full yet");
    calls(&mut state, &c, &[OK, OK], T0);
    assert_eq!(Snapshot::new(state.clone(), None, &c), None, "closed needs an epoch");
    let quiet = Snapshot::new(state.clone(), Some(7), &c);
    assert_eq!(admit_cached(quiet.as_ref(), &c, T0), Cached::IfEpoch(7, Admission::Pass { generation: 0 }));
    assert_eq!(quiet.as_ref().unwrap().noop_record(0, OK), Some(7));
    assert_eq!(quiet.as_ref().unwrap().noop_record(0, FAIL), None);
    assert_eq!(quiet.as_ref().unwrap().noop_record(0, SLOW), None);
    assert_eq!(quiet.as_ref().unwrap().noop_record(1, OK), None, "another generation");

    calls(&mut state, &c, &[FAIL], T0);
    let open = Snapshot::new(state.clone(), None, &c);
    assert_eq!(admit_cached(open.as_ref(), &c, T0 + 4 * S), Cached::Exact(Admission::Reject { retry_after_s: 6 }));
    assert_eq!(
        admit_cached(open.as_ref(), &c, T0 + 10 * S),
        Cached::Miss,
        "time is up: half-open is decided on the shared value"
    );

    let mut half_open = state.clone();
    half_open.admit(&c, T0 + 10 * S);
    assert_eq!(Snapshot::new(half_open, Some(1), &c), None);

    let forced = cfg(r#"{"mode": "forced_open", "open_duration": "3s"}"#);
    assert_eq!(admit_cached(None, &forced, T0), Cached::Exact(Admission::Reject { retry_after_s: 3 }));
}

#[test]
fn corrupted_counters_in_shared_data_saturate_instead_of_overflowing() {
    // Shared data another build or a corrupted write left: counters at their maximum. Decoding
    // accepts them (they are in range for the format); using them must not overflow (a panic
    // would kill the VM in a debug build, a silent wrap in release).
    let time = cfg(r#"{"window": {"type": "time", "size": "2s"}, "minimum_calls": 1}"#);
    let mut state = State::new(&time);
    let second = T0 / S;
    if let Calls::Time { buckets } = &mut state.window {
        buckets[(second % 2) as usize] = Bucket { second, calls: u32::MAX, failures: 0, slow: 0 };
        buckets[((second - 1) % 2) as usize] = Bucket { second: second - 1, calls: u32::MAX, failures: 0, slow: 0 };
    }
    let mut state = State::decode(&state.encode(), &time).unwrap();
    assert_eq!(state.totals(T0).calls, u32::MAX);
    state.record(&time, 0, false, OK, T0);
    assert_eq!(state.totals(T0).calls, u32::MAX);

    let count = cfg(r#"{"half_open_calls": 2}"#);
    let mut state = State::new(&count);
    state.phase = Phase::HalfOpen;
    state.probes_issued = u32::MAX;
    state.probes_succeeded = u32::MAX;
    let mut state = State::decode(&state.encode(), &count).unwrap();
    let t = state.record(&count, 0, true, OK, T0).expect("enough probes succeeded");
    assert_eq!((t.from, t.to), (Phase::HalfOpen, Phase::Closed));
}
