//! The circuit breaker against the host: one shared-data value per rule, read and changed with
//! compare-and-swap, so that every worker sees one circuit (SPEC §1, "Where it runs").
//!
//! The closed-circuit path costs one shared-data read per request and one read-and-swap per
//! response; a request on an open circuit is rejected after the read alone; only a request that
//! changes the state (the open → half-open move, taking a probe slot) swaps on the request path.

use super::{increment, Host, HostError, MetricId, MetricKind};
use crate::breaker::{Admission, Phase, State, Transition};
use crate::config::{Breaker, LogLevel};
use crate::metrics;

/// `meshguard_circuit_*{rule}` ids of one rule.
#[derive(Clone, Debug, Default)]
pub struct CircuitMetrics {
    pub state: Option<MetricId>,
    /// `meshguard_circuit_transitions_total{rule,to}`, indexed by [`Phase`] as `to`.
    pub transitions: [Option<MetricId>; 3],
    pub rejected: Option<MetricId>,
    pub failures: Option<MetricId>,
    pub slow: Option<MetricId>,
}

impl CircuitMetrics {
    pub fn define(rule: &str, define: &mut impl FnMut(MetricKind, &str) -> Option<MetricId>) -> CircuitMetrics {
        let r = [("rule", rule)];
        let mut counter = |name: &str| define(MetricKind::Counter, &metrics::name(name, &r));
        let rejected = counter(metrics::CIRCUIT_REJECTED_TOTAL);
        let failures = counter(metrics::CIRCUIT_FAILURES_TOTAL);
        let slow = counter(metrics::CIRCUIT_SLOW_TOTAL);
        let transitions = Phase::ALL.map(|to| {
            define(
                MetricKind::Counter,
                &metrics::name(metrics::CIRCUIT_TRANSITIONS_TOTAL, &[("rule", rule), ("to", to.as_str())]),
            )
        });
        let state = define(MetricKind::Gauge, &metrics::name(metrics::CIRCUIT_STATE, &r));
        CircuitMetrics { state, transitions, rejected, failures, slow }
    }

    fn transition(&self, to: Phase) -> Option<MetricId> {
        self.transitions.get(to as usize).copied().flatten()
    }
}

/// A request the circuit let through, and what its outcome needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub generation: u32,
    pub probe: bool,
    /// When the request started (ns), for slow calls.
    pub start: u64,
}

/// Reads the rule's state and decides the request; swaps only when the decision changed the state.
pub fn admit(
    host: &mut impl Host,
    key: &str,
    cfg: &Breaker,
    now: u64,
) -> Result<(Admission, Option<Transition>), HostError> {
    update(host, key, cfg, |state| state.admit(cfg, now))
}

/// Records an admitted call's outcome.
pub fn record(
    host: &mut impl Host,
    key: &str,
    cfg: &Breaker,
    call: Admitted,
    outcome: crate::breaker::Outcome,
    now: u64,
) -> Result<Option<Transition>, HostError> {
    update(host, key, cfg, |state| ((), state.record(cfg, call.generation, call.probe, outcome, now))).map(|(_, t)| t)
}

/// Creates the rule's value when it does not exist yet (`on_configure`), so that the first
/// requests of the workers swap against one value instead of racing to create it.
pub fn init(host: &mut impl Host, key: &str, cfg: &Breaker) -> Result<(), HostError> {
    if host.shared_get(key)?.is_none() {
        host.shared_set(key, &State::new(cfg).encode(), 0)?;
    }
    Ok(())
}

/// Read, change, compare-and-swap the rule's state.
fn update<R>(
    host: &mut impl Host,
    key: &str,
    cfg: &Breaker,
    change: impl FnMut(&mut State) -> (R, Option<Transition>),
) -> Result<(R, Option<Transition>), HostError> {
    super::cas_update(host, key, |b| State::decode(b, cfg), || State::new(cfg), State::encode, change)
}

/// Logs and counts a transition (the caller's swap made it, so it happens once per process).
pub fn announce(host: &mut impl Host, m: &CircuitMetrics, rule: &str, t: &Transition, correlation_id: &str) {
    host.log(
        LogLevel::Info,
        &format!(
            "meshguard: circuit {rule} {} -> {} ({}) (correlation_id={correlation_id})",
            t.from.as_str(),
            t.to.as_str(),
            t.reason
        ),
    );
    increment(host, m.transition(t.to));
    if let Some(id) = m.state {
        host.set_gauge(id, t.to as u64);
    }
}
