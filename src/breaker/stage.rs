//! The circuit breaker's part of one request: admit or refuse it at the request headers, record
//! the outcome of a call it let through when the response (or the end of the stream) says what it
//! was. The circuit itself is in shared data ([`super::shared`]); the worker's copy of it
//! ([`Snapshot`]) answers quiet closed and open circuits without reading shared data.

use std::cell::RefCell;

use super::shared::{self, Admitted};
use super::{admit_cached, classify, Admission, Cached, Ending, Snapshot, Transition};
use crate::config::Breaker;
use crate::filter::{int, state, Effects, Host};
use crate::metrics::CircuitMetrics;
use crate::reply::Refusal;

/// One rule's circuit as a worker holds it.
pub struct CircuitRule<'a> {
    pub name: &'a str,
    pub config: &'a Breaker,
    /// The circuit's shared-data key.
    pub key: &'a str,
    /// This worker's copy of the circuit, when one can answer for it.
    pub copy: &'a RefCell<Option<Snapshot>>,
    pub metrics: Option<&'a CircuitMetrics>,
}

#[derive(Debug, Default)]
pub struct CircuitStage {
    /// A call the circuit let through whose outcome is still to be recorded.
    admitted: Option<Admitted>,
    /// `closed`, `half_open`, `open` (passed in `metrics_only`) or `rejected`.
    label: Option<&'static str>,
}

impl CircuitStage {
    pub fn label(&self) -> Option<&'static str> {
        self.label
    }

    /// A call was let through and its outcome is not recorded yet.
    pub fn awaits_outcome(&self) -> bool {
        self.admitted.is_some()
    }

    /// The circuit decides the request: `Some` when it must be refused. A failing shared-data
    /// call lets the request through (fail open, the error in `fx`).
    pub fn on_request_headers(
        &mut self,
        rule: &CircuitRule,
        host: &mut impl Host,
        correlation_id: &str,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let cfg = rule.config;
        let now = host.now();
        let cached = admit_cached(rule.copy.borrow().as_ref(), cfg, now);
        let (admission, transition) = match cached {
            Cached::Exact(admission) => (admission, None),
            cached => {
                // Read before the shared value (if it comes to that), as the copy's rule requires.
                let epoch = rule.metrics.and_then(|m| m.epoch(host));
                match cached {
                    Cached::IfEpoch(seen, admission) if epoch == Some(seen) => (admission, None),
                    _ => match shared::admit(host, rule.key, cfg, now, epoch) {
                        Ok(updated) => {
                            *rule.copy.borrow_mut() = updated.copy;
                            (updated.decision, updated.transition)
                        }
                        Err(e) => {
                            fx.fail(e);
                            return None;
                        }
                    },
                }
            }
        };
        announce(rule, transition.as_ref(), correlation_id, fx);
        let rejected = rule.metrics.and_then(|m| m.rejected);
        let (label, refusal) = match admission {
            Admission::Pass { generation } => {
                self.admitted = Some(Admitted { generation, probe: false, start: now });
                ("closed", None)
            }
            Admission::Probe { generation } => {
                self.admitted = Some(Admitted { generation, probe: true, start: now });
                ("half_open", None)
            }
            Admission::WouldReject => {
                fx.count(rejected);
                ("open", None)
            }
            Admission::Reject { retry_after_s } => {
                fx.count(rejected);
                ("rejected", Some(Refusal::CircuitOpen { retry_after_s }))
            }
        };
        self.label = Some(label);
        fx.state(state::CIRCUIT, label.as_bytes());
        refusal
    }

    /// Records the outcome of the call the circuit let through, once it is known: at the
    /// response headers, at the trailers of a gRPC call, or at the end of a stream that had
    /// neither. `responded_at` is when the response headers came (slow calls are measured to
    /// them), `None` without response headers.
    pub fn on_outcome(
        &mut self,
        rule: &CircuitRule,
        host: &mut impl Host,
        end: &Ending,
        responded_at: Option<u64>,
        correlation_id: &str,
        fx: &mut Effects,
    ) {
        let Some(call) = self.admitted.take() else {
            return;
        };
        let cfg = rule.config;
        let now = host.now();
        let elapsed = responded_at.unwrap_or(now).saturating_sub(call.start);
        let m = rule.metrics;
        let Some(outcome) = classify(cfg, end, || int(host.property(&["response", "flags"])), elapsed) else {
            fx.count(m.and_then(|m| m.neutral));
            if call.probe {
                // Its slot goes to another probe.
                let epoch = m.and_then(|m| m.epoch(host));
                match shared::free_probe(host, rule.key, cfg, call.generation, epoch) {
                    Ok(updated) => *rule.copy.borrow_mut() = updated.copy,
                    Err(e) => fx.fail(e),
                }
            }
            return;
        };
        let noop = rule.copy.borrow().as_ref().and_then(|s| s.noop_record(call.generation, outcome));
        let epoch = m.and_then(|m| m.epoch(host));
        if noop.is_some() && noop == epoch {
            // A success into a quiet circuit nobody changed since this worker's copy: nothing to do.
            return;
        }
        let result = shared::record(host, rule.key, cfg, call, outcome, now, epoch);
        if outcome.failure {
            fx.count(m.and_then(|m| m.failures));
        }
        if outcome.slow {
            fx.count(m.and_then(|m| m.slow));
        }
        if let (true, Some(m)) = (outcome.failure || outcome.slow, m) {
            // After the swap: other workers compare their copies with the epoch
            // (`breaker::snapshot`).
            m.bump_epoch(host);
        }
        match result {
            Ok(updated) => {
                *rule.copy.borrow_mut() = updated.copy;
                announce(rule, updated.transition.as_ref(), correlation_id, fx);
            }
            Err(e) => {
                *rule.copy.borrow_mut() = None;
                fx.fail(e);
            }
        }
    }
}

fn announce(rule: &CircuitRule, transition: Option<&Transition>, correlation_id: &str, fx: &mut Effects) {
    if let (Some(t), Some(m)) = (transition, rule.metrics) {
        shared::announce(fx, m, rule.name, t, correlation_id);
    }
}
