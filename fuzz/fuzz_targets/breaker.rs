//! The circuit breaker's shared-data value and state machine (SPEC §1): decode arbitrary,
//! corrupted or truncated bytes as another worker may have left them, then run a sequence of
//! admissions, outcomes and clock steps.
//!
//! Input: 5 configuration bytes (`breaker_config` in `fuzz/src/lib.rs`: window kind and size,
//! minimum calls, thresholds, consecutive failures, probes and mode, open duration, multiplier and
//! cap), a `u16`-length-prefixed stored value (anything that does not decode means "start
//! closed", as in the filter; `0xff` + fields is shaped into a decodable value, see
//! `shaped_state`), a `u16` clock offset (ms), then operations, one byte each (+ args):
//! `op % 5` = 0 admit, 1-2 record an admitted call (or a stale generation), 3 advance the clock,
//! 4 swap the state through its encoding (another worker reads it).
//!
//! Invariants: decode is canonical (`encode(decode(b)) == b`) and encode→decode is the identity
//! after every step; window indices stay in range; every transition changes the phase and bumps
//! the generation by one, nothing else does; a closed circuit passes, an open one rejects until
//! `open_until` with `retry-after` = the whole seconds left, then lets one probe through;
//! `forced_open` rejects everything, `metrics_only` never rejects; stale outcomes change nothing;
//! opening sets `open_until = now + open_duration`; closing empties the window and resets the
//! open duration; from a fresh state: probes never exceed `half_open_calls`, the open duration
//! stays within [open_duration, max_open_duration], failures never exceed calls in the window.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::breaker::{Admission, Calls, CallOutcome, Phase, State, Transition};
use meshguard::config::{BreakerMode, Window};
use meshguard_fuzz::{breaker_config, Bytes, SECOND};

fn check_transition(before: &State, after: &State, t: &Option<Transition>) {
    match t {
        Some(t) => {
            assert_eq!((t.from, t.to), (before.phase, after.phase));
            assert_ne!(t.from, t.to);
            assert_eq!(after.generation, before.generation.wrapping_add(1));
        }
        None => {
            assert_eq!(after.phase, before.phase, "phase changed without a transition");
            assert_eq!(after.generation, before.generation, "generation changed without a transition");
        }
    }
}

/// The encoding of a state of `cfg`'s window with every field from `raw` (see the codec in
/// `src/breaker/codec.rs`: version, phase, seven counters and times, window kind, size, body).
fn shaped_state(cfg: &meshguard::config::Breaker, raw: &[u8]) -> Vec<u8> {
    let mut r = Bytes(raw);
    let mut out = vec![1, r.u8() % 3];
    for width in [4, 8, 8, 4, 4, 8, 4] {
        let field = r.take(width);
        out.extend_from_slice(field);
        out.resize(out.len() + width - field.len(), 0);
    }
    match cfg.window {
        Window::Count(n) => {
            out.push(0);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(r.u32() % n).to_le_bytes());
            out.extend_from_slice(&(r.u32() % (n + 1)).to_le_bytes());
            out.extend((0..n).map(|_| r.u8() % 4));
        }
        Window::Time(n) => {
            out.push(1);
            out.extend_from_slice(&n.to_le_bytes());
            for _ in 0..n * 20 {
                out.push(r.u8());
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let cfg = breaker_config(&mut b);
    let blob = b.blob();
    // A blob starting with 0xff (never a format version) is shaped into a value that decodes for
    // this window, every field taken from the input: states another worker, an older build or a
    // corrupted write could leave, which random bytes rarely reach through the strict decoder.
    let shaped;
    let stored = match blob.split_first() {
        Some((0xff, rest)) => {
            shaped = shaped_state(&cfg, rest);
            &shaped[..]
        }
        _ => blob,
    };
    let decoded = State::decode(stored, &cfg);
    if blob.first() == Some(&0xff) {
        assert!(decoded.is_some(), "a shaped value decodes");
    }
    if let Some(s) = &decoded {
        assert_eq!(s.encode(), stored, "decode is canonical");
    }
    let fresh = decoded.is_none();
    let mut state = decoded.unwrap_or_else(|| State::new(&cfg));
    let mut now = 1_700_000_000 * SECOND + u64::from(b.u16()) * 1_000_000;
    let mut admitted: Vec<(u32, bool)> = Vec::new();
    let size = match cfg.window {
        Window::Count(n) | Window::Time(n) => n,
    };
    while !b.is_empty() {
        let op = b.u8();
        let before = state.clone();
        match op % 5 {
            0 => {
                let (admission, t) = state.admit(&cfg, now);
                check_transition(&before, &state, &t);
                match admission {
                    Admission::Reject { retry_after_s } => {
                        assert!(retry_after_s >= 1);
                        assert_ne!(cfg.mode, BreakerMode::MetricsOnly);
                    }
                    Admission::WouldReject => assert_eq!(cfg.mode, BreakerMode::MetricsOnly),
                    Admission::Pass { generation } => {
                        assert_eq!(before.phase, Phase::Closed);
                        assert_eq!(generation, state.generation);
                        admitted.push((generation, false));
                    }
                    Admission::Probe { generation } => {
                        assert_eq!(state.phase, Phase::HalfOpen);
                        assert_eq!(generation, state.generation);
                        admitted.push((generation, true));
                    }
                }
                if cfg.mode == BreakerMode::ForcedOpen {
                    assert!(matches!(admission, Admission::Reject { .. }));
                    assert_eq!(state, before, "forced_open changes nothing");
                } else if before.phase == Phase::Closed {
                    assert_eq!(state, before);
                } else if before.phase == Phase::Open && now < before.open_until {
                    let left = (before.open_until - now).div_ceil(SECOND).max(1);
                    let expected = if cfg.mode == BreakerMode::MetricsOnly {
                        Admission::WouldReject
                    } else {
                        Admission::Reject { retry_after_s: left }
                    };
                    assert_eq!(admission, expected);
                    assert_eq!(state, before);
                } else if before.phase == Phase::Open {
                    assert!(matches!(admission, Admission::Probe { .. }), "open time is up: one probe");
                    assert_eq!(state.probes_issued, 1);
                }
            }
            1 | 2 => {
                let outcome = CallOutcome { failure: op & 0x20 != 0, slow: op & 0x40 != 0 };
                let (generation, probe) = if op & 0x80 == 0 && !admitted.is_empty() {
                    admitted.remove(usize::from(b.u8()) % admitted.len())
                } else {
                    (b.u32(), b.u8() & 1 != 0)
                };
                let t = state.record(&cfg, generation, probe, outcome, now);
                check_transition(&before, &state, &t);
                if generation != before.generation {
                    assert_eq!(state, before, "a stale outcome changes nothing");
                }
                if let Some(t) = &t {
                    match t.to {
                        Phase::Open => {
                            assert_eq!(state.open_until, now.saturating_add(state.open_duration));
                            assert_eq!((state.probes_issued, state.probes_succeeded), (0, 0));
                            if before.phase == Phase::HalfOpen && fresh {
                                let grown = before.open_duration as f64 * cfg.open_duration_multiplier;
                                let expected = if grown >= cfg.max_open_duration as f64 {
                                    cfg.max_open_duration
                                } else {
                                    grown as u64
                                };
                                assert_eq!(state.open_duration, expected);
                            }
                        }
                        Phase::Closed => {
                            assert_eq!(state.totals(now).calls, 0, "a closed circuit starts with an empty window");
                            assert_eq!(state.open_duration, cfg.open_duration);
                            assert_eq!(state.consecutive_failures, 0);
                        }
                        Phase::HalfOpen => panic!("only admission moves to half-open"),
                    }
                } else if before.phase == Phase::Closed
                    && generation == before.generation
                    && !probe
                    && outcome.failure
                    && cfg.consecutive_failures == 1
                {
                    panic!("consecutive_failures 1: a failure must open the circuit");
                }
            }
            3 => now = now.saturating_add(u64::from(b.u16()) * 10_000_000),
            _ => {
                state = State::decode(&state.encode(), &cfg).expect("another worker decodes the value");
                assert_eq!(state, before);
            }
        }
        assert_eq!(State::decode(&state.encode(), &cfg).as_ref(), Some(&state), "encode/decode round trip");
        match &state.window {
            Calls::Count { ring, head, len } => {
                assert_eq!(ring.len(), size as usize);
                assert!(*head < size && *len <= size);
                assert!(ring.iter().all(|b| *b <= 3));
            }
            Calls::Time { buckets } => assert_eq!(buckets.len(), size as usize),
        }
        let totals = state.totals(now);
        if fresh {
            if matches!(cfg.window, Window::Count(_)) {
                assert!(totals.calls <= size);
            }
            assert!(totals.failures <= totals.calls && totals.slow <= totals.calls, "{totals:?}");
            assert!(state.probes_succeeded <= cfg.half_open_calls, "succeeded {}", state.probes_succeeded);
            assert!(state.probes_issued <= cfg.half_open_calls, "probes {}", state.probes_issued);
            assert!(
                (cfg.open_duration..=cfg.max_open_duration).contains(&state.open_duration),
                "open duration {}",
                state.open_duration
            );
        }
    }
});
