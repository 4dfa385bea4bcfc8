//! The circuit breaker against the host: one shared-data value per rule, read and changed with
//! compare-and-swap, so that every worker sees one circuit (docs/behaviour.md, "Where it runs" and
//! "Circuit breaking").
//!
//! Each worker keeps a [`Snapshot`] of the last state it read: a healthy (quiet) closed circuit
//! is then decided with one gauge read (the epoch) per request and per response instead of shared-data
//! reads, and an open circuit rejects without any read until its time is up (see
//! `breaker::snapshot` for why that is exact). Otherwise a request reads the shared value once
//! and swaps only when its decision changed the state (the open → half-open move, taking a probe
//! slot); a response reads it and swaps when the outcome changed the window.

use super::{Admission, CallOutcome, Phase, Snapshot, State, Transition};
use crate::config::{Breaker, LogLevel};
use crate::filter::{cas_update, Effects, Host, HostError};
use crate::metrics::CircuitMetrics;

impl CircuitMetrics {
    /// The rule's epoch, process-wide (Envoy's stats are shared by all workers); `None` when it
    /// cannot be trusted, and then no worker answers a closed circuit from its copy.
    pub fn epoch(&self, host: &mut impl Host) -> Option<u64> {
        if !self.epoch_live.get() {
            return None;
        }
        host.metric(self.epoch?)
    }

    /// Moves the epoch after a swap that recorded a failure or a slow call.
    pub fn bump_epoch(&self, host: &mut impl Host) {
        if let Some(id) = self.epoch {
            host.increment(id, 1);
        }
    }

    /// Checks, once per configuration and worker, that the epoch gauge counts: up by one and
    /// back. Another worker's bump in between makes the check fail, which only costs this
    /// worker its shortcut; so it is tried a few times.
    pub fn check_epoch(&self, host: &mut impl Host) {
        let Some(id) = self.epoch else {
            return;
        };
        let live = (0..3).any(|_| {
            let before = host.metric(id);
            host.increment(id, 1);
            let after = host.metric(id);
            host.increment(id, -1);
            matches!((before, after), (Some(b), Some(a)) if a == b.wrapping_add(1))
        });
        self.epoch_live.set(live);
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
/// `epoch` was read before; the state as left is returned as the worker's new copy.
pub fn admit(
    host: &mut impl Host,
    key: &str,
    cfg: &Breaker,
    now: u64,
    epoch: Option<u64>,
) -> Result<Updated<Admission>, HostError> {
    update(host, key, cfg, epoch, |state| state.admit(cfg, now))
}

/// Records an admitted call's outcome (`epoch` as for [`admit`]).
pub fn record(
    host: &mut impl Host,
    key: &str,
    cfg: &Breaker,
    call: Admitted,
    outcome: CallOutcome,
    now: u64,
    epoch: Option<u64>,
) -> Result<Updated<()>, HostError> {
    update(host, key, cfg, epoch, |state| ((), state.record(cfg, call.generation, call.probe, outcome, now)))
}

/// Frees the half-open slot of a probe that ended neutral (`epoch` as for [`admit`]).
pub fn free_probe(
    host: &mut impl Host,
    key: &str,
    cfg: &Breaker,
    generation: u32,
    epoch: Option<u64>,
) -> Result<Updated<()>, HostError> {
    update(host, key, cfg, epoch, |state| {
        state.free_probe(generation);
        ((), None)
    })
}

/// Creates the rule's value when it does not exist yet (`on_configure`), so that the first
/// requests of the workers swap against one value instead of racing to create it.
/// Returns the rule's phase as found or created, for `meshguard_circuit_state`.
pub fn init(host: &mut impl Host, key: &str, cfg: &Breaker) -> Result<Phase, HostError> {
    let (bytes, cas) = host.shared_get(key)?.unwrap_or_default();
    if let Some(state) = State::decode(&bytes, cfg) {
        return Ok(state.phase);
    }
    // Absent, or a value this configuration cannot read: fresh. Swapped against what was read,
    // so that a worker already running this configuration is never overwritten (a lost race
    // leaves its valid value, which the first request reads).
    let fresh = State::new(cfg);
    host.shared_set(key, &fresh.encode(), cas)?;
    Ok(fresh.phase)
}

/// What a change of the rule's state decided, and the worker's new copy of the state.
pub struct Updated<R> {
    pub decision: R,
    pub transition: Option<Transition>,
    pub copy: Option<Snapshot>,
}

/// Read, change, compare-and-swap the rule's state; the state as left becomes the worker's copy,
/// taken with `epoch` (read before the shared value).
fn update<R>(
    host: &mut impl Host,
    key: &str,
    cfg: &Breaker,
    epoch: Option<u64>,
    change: impl FnMut(&mut State) -> (R, Option<Transition>),
) -> Result<Updated<R>, HostError> {
    let ((decision, transition), state) =
        cas_update(host, key, |b| State::decode(b, cfg), || State::new(cfg), State::encode, change)?;
    Ok(Updated { decision, transition, copy: Snapshot::new(state, epoch, cfg) })
}

/// Logs and counts a transition (the caller's swap made it, so it happens once per process).
pub fn announce(fx: &mut Effects, m: &CircuitMetrics, rule: &str, t: &Transition, correlation_id: &str) {
    fx.log(
        LogLevel::Info,
        format!(
            "meshguard: circuit {rule} {} -> {} ({}) (correlation_id={correlation_id})",
            t.from.as_str(),
            t.to.as_str(),
            t.reason
        ),
    );
    fx.count(m.transition(t.to));
    fx.gauge(m.state, t.to as u64);
}
