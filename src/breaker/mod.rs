//! The circuit breaker of one rule (docs/behaviour.md, "Circuit breaking") as a pure state machine
//! over an injected clock.
//!
//! The state lives in proxy-wasm shared data, one value per rule, and every change is a
//! compare-and-swap of the whole encoded value ([`State::encode`]), so all Envoy workers see one
//! circuit: it opens at the same call count whatever `--concurrency` is, exactly `half_open_calls`
//! probes pass in total, and the worker whose swap performs a transition is the only one that
//! logs and counts it.
//!
//! * [`State::admit`] decides a request: pass, pass as a half-open probe, or reject (with the
//!   seconds until the next probe). An open circuit whose time is up moves to half-open here.
//! * [`State::record`] takes a call's outcome. Outcomes of calls admitted under an earlier
//!   `generation` (before the last transition) are ignored, so a slow call that started while
//!   closed cannot close or reopen a circuit that has moved on.

mod codec;
pub mod shared;
mod snapshot;
pub mod stage;
#[cfg(test)]
mod tests;

pub use snapshot::{admit_cached, Cached, Snapshot};

use crate::config::{Breaker, BreakerMode, Window};

/// `meshguard_circuit_state` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::HalfOpen => "half_open",
            Phase::Open => "open",
        }
    }

    pub const ALL: [Phase; 3] = [Phase::Closed, Phase::HalfOpen, Phase::Open];
}

/// A call's outcome. A call can be both a failure and slow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallOutcome {
    pub failure: bool,
    pub slow: bool,
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed circuit: the call goes on and its outcome is recorded under `generation`.
    Pass { generation: u32 },
    /// Half-open: the call is one of the probes.
    Probe { generation: u32 },
    /// Answer locally; `retry_after_s` until the circuit lets probes through.
    Reject { retry_after_s: u64 },
    /// `metrics_only`: the circuit would have rejected this call; it goes on, unrecorded.
    WouldReject,
}

/// A change of phase, to be logged and counted once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    pub reason: String,
}

/// Everything one rule's circuit remembers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub phase: Phase,
    /// Bumped on every transition.
    pub generation: u32,
    /// When an open circuit lets its first probe through (ns since the epoch).
    pub open_until: u64,
    /// The open duration of the current (or next) opening, grown by the multiplier on reopening.
    pub open_duration: u64,
    pub probes_issued: u32,
    pub probes_succeeded: u32,
    /// Probes not completed by then free their slots (`slow_call_duration` after the last issue).
    pub probe_deadline: u64,
    pub consecutive_failures: u32,
    pub window: Calls,
}

/// The window of recorded outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Calls {
    /// The last `ring.len()` outcomes: bit 0 failure, bit 1 slow; `len` of them are filled.
    Count { ring: Vec<u8>, head: u32, len: u32 },
    /// One bucket per second: (second, calls, failures, slow calls), indexed by second % size.
    Time { buckets: Vec<Bucket> },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub second: u64,
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

/// Calls, failures and slow calls in the window at `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

const SECOND: u64 = 1_000_000_000;

impl State {
    /// A closed circuit with an empty window.
    pub fn new(cfg: &Breaker) -> State {
        let window = match cfg.window {
            Window::Count(n) => Calls::Count { ring: vec![0; n as usize], head: 0, len: 0 },
            Window::Time(secs) => Calls::Time { buckets: vec![Bucket::default(); secs as usize] },
        };
        State {
            phase: Phase::Closed,
            generation: 0,
            open_until: 0,
            open_duration: cfg.open_duration,
            probes_issued: 0,
            probes_succeeded: 0,
            probe_deadline: 0,
            consecutive_failures: 0,
            window,
        }
    }

    /// Decides one request at `now` (ns). May move an open circuit to half-open.
    pub fn admit(&mut self, cfg: &Breaker, now: u64) -> (Admission, Option<Transition>) {
        if let Some(admission) = forced(cfg) {
            return (admission, None);
        }
        let metrics_only = cfg.mode == BreakerMode::MetricsOnly;
        let reject =
            |retry_after_s| if metrics_only { Admission::WouldReject } else { Admission::Reject { retry_after_s } };
        match self.phase {
            Phase::Closed => (Admission::Pass { generation: self.generation }, None),
            Phase::Open if now < self.open_until => (reject(secs_ceil(self.open_until - now)), None),
            Phase::Open => {
                let waited = self.open_duration;
                let t = self.transition(Phase::HalfOpen, format!("after {}", human(waited)));
                self.probes_issued = 1;
                self.probes_succeeded = 0;
                self.probe_deadline = now.saturating_add(cfg.slow_call_duration);
                (Admission::Probe { generation: self.generation }, Some(t))
            }
            Phase::HalfOpen => {
                if now > self.probe_deadline && self.probes_issued > self.probes_succeeded {
                    // Probes that never completed free their slots.
                    self.probes_issued = self.probes_succeeded;
                }
                if self.probes_issued < cfg.half_open_calls {
                    self.probes_issued += 1;
                    self.probe_deadline = now.saturating_add(cfg.slow_call_duration);
                    (Admission::Probe { generation: self.generation }, None)
                } else {
                    (reject(1), None)
                }
            }
        }
    }

    /// Records the outcome of a call admitted under `generation` (a probe when `probe`).
    pub fn record(
        &mut self,
        cfg: &Breaker,
        generation: u32,
        probe: bool,
        outcome: CallOutcome,
        now: u64,
    ) -> Option<Transition> {
        if generation != self.generation {
            return None;
        }
        match (self.phase, probe) {
            (Phase::Closed, false) => self.record_closed(cfg, outcome, now),
            (Phase::HalfOpen, true) => {
                let slow_trips = cfg.slow_call_rate_threshold < 100.0 && outcome.slow;
                if outcome.failure || slow_trips {
                    let what = if outcome.failure { "probe failed" } else { "probe was slow" };
                    return Some(self.open(cfg, now, what.to_string()));
                }
                // Saturating: counters come from shared data, which may hold any value.
                self.probes_succeeded = self.probes_succeeded.saturating_add(1);
                if self.probes_succeeded >= cfg.half_open_calls {
                    let n = self.probes_succeeded;
                    let t = self.transition(Phase::Closed, format!("{n} of {n} probes succeeded"));
                    self.open_duration = cfg.open_duration;
                    self.reset_window();
                    return Some(t);
                }
                None
            }
            _ => None,
        }
    }

    /// A probe admitted under `generation` ended neutral (abandoned, ignored status, gRPC
    /// CANCELLED): its slot is free for another probe. True when the state changed.
    pub fn free_probe(&mut self, generation: u32) -> bool {
        if self.phase != Phase::HalfOpen || generation != self.generation || self.probes_issued <= self.probes_succeeded
        {
            return false;
        }
        self.probes_issued -= 1;
        true
    }

    fn record_closed(&mut self, cfg: &Breaker, outcome: CallOutcome, now: u64) -> Option<Transition> {
        self.push(outcome, now);
        self.consecutive_failures = if outcome.failure { self.consecutive_failures.saturating_add(1) } else { 0 };
        if cfg.consecutive_failures > 0 && self.consecutive_failures >= cfg.consecutive_failures {
            let reason = format!("{} consecutive failures", self.consecutive_failures);
            return Some(self.open(cfg, now, reason));
        }
        let totals = self.totals(now);
        if totals.calls < cfg.minimum_calls.max(1) {
            return None;
        }
        let rate = |n: u32| f64::from(n) * 100.0 / f64::from(totals.calls);
        let failure_rate = rate(totals.failures);
        if totals.failures > 0 && failure_rate >= cfg.failure_rate_threshold {
            let reason = format!("failure rate {}% of {} calls", failure_rate.round(), totals.calls);
            return Some(self.open(cfg, now, reason));
        }
        let slow_rate = rate(totals.slow);
        if cfg.slow_call_rate_threshold < 100.0 && totals.slow > 0 && slow_rate >= cfg.slow_call_rate_threshold {
            let reason = format!("slow call rate {}% of {} calls", slow_rate.round(), totals.calls);
            return Some(self.open(cfg, now, reason));
        }
        None
    }

    /// Opens (or reopens) the circuit; a reopening without a close in between waits longer.
    fn open(&mut self, cfg: &Breaker, now: u64, reason: String) -> Transition {
        if self.phase == Phase::HalfOpen {
            let grown = self.open_duration as f64 * cfg.open_duration_multiplier;
            self.open_duration =
                if grown >= cfg.max_open_duration as f64 { cfg.max_open_duration } else { grown as u64 };
        }
        self.open_until = now.saturating_add(self.open_duration);
        let reason = format!("{reason}; open for {}", human(self.open_duration));
        let t = self.transition(Phase::Open, reason);
        self.probes_issued = 0;
        self.probes_succeeded = 0;
        t
    }

    fn transition(&mut self, to: Phase, reason: String) -> Transition {
        let from = self.phase;
        self.phase = to;
        self.generation = self.generation.wrapping_add(1);
        Transition { from, to, reason }
    }

    fn reset_window(&mut self) {
        self.consecutive_failures = 0;
        match &mut self.window {
            Calls::Count { ring, head, len } => {
                ring.fill(0);
                *head = 0;
                *len = 0;
            }
            Calls::Time { buckets } => buckets.fill(Bucket::default()),
        }
    }

    fn push(&mut self, outcome: CallOutcome, now: u64) {
        let bits = u8::from(outcome.failure) | u8::from(outcome.slow) << 1;
        match &mut self.window {
            Calls::Count { ring, head, len } => {
                let size = ring.len() as u32;
                // A success into a full window of successes changes nothing (order does not
                // matter among equals): the healthy closed circuit needs no shared-data write.
                if size == 0 || bits == 0 && *len == size && ring.iter().all(|b| *b == 0) {
                    return;
                }
                if let Some(slot) = ring.get_mut(*head as usize) {
                    *slot = bits;
                }
                *head = (*head + 1) % size;
                *len = (*len + 1).min(size);
            }
            Calls::Time { buckets } => {
                let size = buckets.len() as u64;
                let second = now / SECOND;
                let Some(bucket) = buckets.get_mut((second % size.max(1)) as usize) else {
                    return;
                };
                if bucket.second != second {
                    *bucket = Bucket { second, ..Bucket::default() };
                }
                // Saturating: a bucket read from shared data may hold any count.
                bucket.calls = bucket.calls.saturating_add(1);
                bucket.failures = bucket.failures.saturating_add(u32::from(outcome.failure));
                bucket.slow = bucket.slow.saturating_add(u32::from(outcome.slow));
            }
        }
    }

    /// The outcomes in the window at `now`.
    pub fn totals(&self, now: u64) -> Totals {
        let mut t = Totals::default();
        match &self.window {
            Calls::Count { ring, len, .. } => {
                // Unfilled slots are zero, so they add nothing.
                t.calls = *len;
                for bits in ring {
                    t.failures += u32::from(bits & 1);
                    t.slow += u32::from(bits >> 1 & 1);
                }
            }
            Calls::Time { buckets } => {
                let second = now / SECOND;
                let oldest = second.saturating_sub(buckets.len() as u64 - 1);
                for b in buckets.iter().filter(|b| b.calls > 0 && b.second >= oldest && b.second <= second) {
                    t.calls = t.calls.saturating_add(b.calls);
                    t.failures = t.failures.saturating_add(b.failures);
                    t.slow = t.slow.saturating_add(b.slow);
                }
            }
        }
        t
    }
}

/// `forced_open` rejects every request whatever the state is (`retry-after` is `open_duration`).
pub fn forced(cfg: &Breaker) -> Option<Admission> {
    (cfg.mode == BreakerMode::ForcedOpen).then(|| Admission::Reject { retry_after_s: secs_ceil(cfg.open_duration) })
}

fn secs_ceil(ns: u64) -> u64 {
    ns.div_ceil(SECOND).max(1)
}

/// `30s`, `1m30s`, `250ms`: durations in transition log lines.
fn human(ns: u64) -> String {
    let ms = ns / 1_000_000;
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// `response.flags` bits of responses Envoy made itself because the upstream failed: UH, UT, UR,
/// UF, UC, UO, URX, UPE (bit order of Envoy's `CoreResponseFlag`, see `logline::response_flags`).
pub const UPSTREAM_FAILURE_FLAGS: u64 = 1 << 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 15 | 1 << 23;

/// `response.flags` bits of a call the caller abandoned: DC (the downstream connection was
/// closed) and DR (the downstream reset the stream, e.g. a gRPC client's deadline or cancel).
pub const ABANDONED_FLAGS: u64 = 1 << 14 | 1 << 28;

/// gRPC CANCELLED: the caller gave up; never the service's fault.
const GRPC_CANCELLED: u32 = 1;

/// How a call ended, as far as the stream showed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ending {
    /// The response's HTTP status; `None` when the stream ended without response headers.
    pub status: Option<u32>,
    /// The request was a gRPC call: an HTTP 200 says nothing, its `grpc-status` does.
    pub grpc: bool,
    /// `grpc-status` from a trailers-only response or from the trailers; `None` when the stream
    /// ended without one.
    pub grpc_status: Option<u32>,
    /// The caller's gRPC deadline (`grpc-timeout`, ns), when it sent one.
    pub deadline: Option<u64>,
}

impl Ending {
    /// The call ran (`took` ns, to its end) until the caller's deadline: within 5 % of it, as
    /// the server measures from when it got the request, a little after meshguard.
    pub fn past_deadline(&self, took: u64) -> bool {
        self.deadline.is_some_and(|d| took.saturating_add(d / 20) >= d)
    }
}

/// gRPC DEADLINE_EXCEEDED.
const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// A `grpc-timeout` request header (gRPC over HTTP/2, "Requests": 1 to 8 digits and a unit
/// `H`, `M`, `S`, `m`, `u` or `n`) in nanoseconds.
pub fn grpc_timeout(value: &[u8]) -> Option<u64> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let scale = match unit {
        b'H' => 3_600 * SECOND,
        b'M' => 60 * SECOND,
        b'S' => SECOND,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Classifies a call (docs/behaviour.md "Circuit breaking": outcome of a call, neutral calls,
/// gRPC calls); `None` for a neutral call, which counts neither as success nor as failure: an
/// ignored status, gRPC CANCELLED, or a call the caller abandoned (unless it had already run past
/// `slow_call_duration`: the caller's timeout says it was slow). `elapsed` is the time from the
/// request to the response headers (or to the end, without them), `took` to the end of the call;
/// `flags` (Envoy's `response.flags`) is read only when the status alone cannot tell.
///
/// A DEADLINE_EXCEEDED that comes once the caller's own `grpc-timeout` has run out is the
/// caller's deadline, as if the caller had reset the stream: the server enforces the deadline it
/// was sent, and its status often reaches Envoy before the caller's reset does.
pub fn classify(
    cfg: &Breaker,
    end: &Ending,
    flags: impl FnOnce() -> Option<u64>,
    elapsed: u64,
    took: u64,
) -> Option<CallOutcome> {
    let slow = elapsed > cfg.slow_call_duration;
    let abandoned = |flags: Option<u64>| flags.is_some_and(|f| f & ABANDONED_FLAGS != 0);
    let failure = match (end.status, end.grpc) {
        (Some(200), true) => match end.grpc_status {
            Some(GRPC_CANCELLED) => return None,
            Some(GRPC_DEADLINE_EXCEEDED) if end.past_deadline(took) => {
                return slow.then_some(CallOutcome { failure: false, slow });
            }
            Some(code) => cfg.failure_grpc_status.contains(code),
            // The stream ended without a gRPC status: the caller went away, or the call broke.
            None if abandoned(flags()) => return slow.then_some(CallOutcome { failure: false, slow }),
            None => true,
        },
        (Some(s), _) if cfg.ignore_status.contains(s) => return None,
        (Some(s), _) if cfg.failure_status.contains(s) => true,
        (Some(s), _) if s >= 500 => flags().is_some_and(|f| f & UPSTREAM_FAILURE_FLAGS != 0),
        (Some(_), _) => false,
        (None, _) if abandoned(flags()) => return slow.then_some(CallOutcome { failure: false, slow }),
        // Reset before any response (upstream reset, connection failure without a reply).
        (None, _) => true,
    };
    Some(CallOutcome { failure, slow })
}

/// The shared-data key of a rule's circuit: per plugin (two meshguard plugins on one proxy share
/// Envoy's shared-data map) and per window shape, so that a renamed rule or a resized window
/// starts from a fresh circuit instead of reading the old one.
pub fn key(plugin: &str, rule: &str, cfg: &Breaker) -> String {
    let window = match cfg.window {
        Window::Count(n) => format!("count{n}"),
        Window::Time(s) => format!("time{s}s"),
    };
    format!("meshguard/{plugin}/circuit/{rule}/{window}")
}
