//! Metric names. Proxy-wasm metrics have no labels, so tags are encoded in the name with the
//! convention Istio's stats extraction understands: `rule=.=payments;.;meshguard_requests_total`.
//! Envoy stores it as `wasmcustom.<name>`; the tag regexes in the shipped bootstrap (and Istio's
//! `extraStatTags`) turn it into `meshguard_requests_total{rule="payments"}` in Prometheus.
//!
//! Also the one home of metric ids: [`Metrics`] defines every stat of a configuration once (in
//! `on_configure`; proxy-wasm hands out a new id on every definition) and keeps the ids.

use std::cell::Cell;

use crate::breaker::Phase;
use crate::config::{Config, Store};
use crate::correlation::CorrelationOutcome;
use crate::dedup::remote::StoreOutcome;
use crate::dedup::store::EntryChanges;
use crate::dedup::DedupOutcome;
use crate::filter::{Effects, MetricId, MetricKind};
use crate::trace::TraceOutcome;

pub const REQUESTS_TOTAL: &str = "meshguard_requests_total";
pub const CORRELATION_TOTAL: &str = "meshguard_correlation_total";
pub const TRACE_TOTAL: &str = "meshguard_trace_total";
pub const ERRORS_TOTAL: &str = "meshguard_errors_total";
pub const DEDUP_TOTAL: &str = "meshguard_dedup_total";
pub const DEDUP_ENTRIES: &str = "meshguard_dedup_entries";
pub const DEDUP_EVICTIONS_TOTAL: &str = "meshguard_dedup_evictions_total";
pub const DEDUP_STORE_TOTAL: &str = "meshguard_dedup_store_total";
pub const DEDUP_STORE_DURATION: &str = "meshguard_dedup_store_duration_ms";
pub const CIRCUIT_STATE: &str = "meshguard_circuit_state";
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "meshguard_circuit_transitions_total";
pub const CIRCUIT_REJECTED_TOTAL: &str = "meshguard_circuit_rejected_total";
pub const CIRCUIT_FAILURES_TOTAL: &str = "meshguard_circuit_failures_total";
pub const CIRCUIT_SLOW_TOTAL: &str = "meshguard_circuit_slow_total";
pub const CIRCUIT_NEUTRAL_TOTAL: &str = "meshguard_circuit_neutral_total";
/// Internal, not part of the dashboard: a per-rule change counter (a gauge, so that its liveness
/// can be checked by moving it up and back down) that lets each worker trust its copy of the
/// circuit (`breaker::snapshot`).
pub(crate) const CIRCUIT_EPOCH: &str = "meshguard_circuit_epoch";

/// The stat name for `metric` with `tags` (name, value) encoded in order.
pub fn name(metric: &str, tags: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(metric.len() + tags.len() * 24);
    for (tag, value) in tags {
        out.push_str(tag);
        out.push_str("=.=");
        out.push_str(value);
        out.push_str(";.;");
    }
    out.push_str(metric);
    out
}

/// Metric ids of one configuration, kept for its life.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// `meshguard_requests_total{rule}`, by rule index; the default rule last.
    pub requests: Vec<Option<MetricId>>,
    /// `meshguard_correlation_total{outcome}`, in the order of [`CorrelationOutcome::ALL`].
    pub correlation: [Option<MetricId>; 3],
    /// `meshguard_trace_total{outcome}`, in the order of [`TraceOutcome::ALL`].
    pub trace: [Option<MetricId>; 4],
    pub errors: Option<MetricId>,
    /// `meshguard_circuit_*{rule}` by rule index (default rule last); `None` without a breaker.
    pub circuit: Vec<Option<CircuitMetrics>>,
    /// `meshguard_dedup_total{rule,outcome}` by rule index; `None` without dedup.
    pub dedup: Vec<Option<DedupMetrics>>,
    pub store: StoreMetrics,
    /// The etcd store's calls, when a rule uses one.
    pub remote: RemoteMetrics,
}

impl Metrics {
    /// `define` registers one metric by kind and full stat name and returns its id.
    pub fn define(config: &Config, mut define: impl FnMut(MetricKind, &str) -> Option<MetricId>) -> Metrics {
        let mut counter = |n: &str, tags: &[(&str, &str)]| define(MetricKind::Counter, &name(n, tags));
        let requests = config.all_rules().map(|r| counter(REQUESTS_TOTAL, &[("rule", &r.name)])).collect();
        let correlation = CorrelationOutcome::ALL.map(|o| counter(CORRELATION_TOTAL, &[("outcome", o.as_str())]));
        let trace = TraceOutcome::ALL.map(|o| counter(TRACE_TOTAL, &[("outcome", o.as_str())]));
        let errors = counter(ERRORS_TOTAL, &[]);
        let circuit = config
            .all_rules()
            .map(|r| r.circuit_breaker.as_ref().map(|_| CircuitMetrics::define(&r.name, &mut define)))
            .collect();
        let dedup =
            config.all_rules().map(|r| r.dedup.as_ref().map(|_| DedupMetrics::define(&r.name, &mut define))).collect();
        let store = if config.all_rules().any(|r| r.dedup.is_some()) {
            StoreMetrics::define(&mut define)
        } else {
            StoreMetrics::default()
        };
        let etcd = config.all_rules().any(|r| r.dedup.as_ref().is_some_and(|d| matches!(d.store, Store::Etcd(_))));
        let remote = if etcd { RemoteMetrics::define(&mut define) } else { RemoteMetrics::default() };
        Metrics { requests, correlation, trace, errors, circuit, dedup, store, remote }
    }

    /// `rule`: the index of a rule, the default rule last.
    pub fn requests(&self, rule: usize) -> Option<MetricId> {
        self.requests.get(rule).copied().flatten()
    }

    pub fn correlation(&self, outcome: CorrelationOutcome) -> Option<MetricId> {
        let index = CorrelationOutcome::ALL.iter().position(|o| *o == outcome)?;
        self.correlation.get(index).copied().flatten()
    }

    pub fn trace(&self, outcome: TraceOutcome) -> Option<MetricId> {
        let index = TraceOutcome::ALL.iter().position(|o| *o == outcome)?;
        self.trace.get(index).copied().flatten()
    }

    pub fn circuit(&self, rule: usize) -> Option<&CircuitMetrics> {
        self.circuit.get(rule)?.as_ref()
    }

    pub fn dedup(&self, rule: usize) -> Option<&DedupMetrics> {
        self.dedup.get(rule)?.as_ref()
    }
}

/// `meshguard_circuit_*{rule}` ids of one rule.
#[derive(Clone, Debug, Default)]
pub struct CircuitMetrics {
    pub state: Option<MetricId>,
    /// `meshguard_circuit_transitions_total{rule,to}`, indexed by [`Phase`] as `to`.
    pub transitions: [Option<MetricId>; 3],
    pub rejected: Option<MetricId>,
    pub failures: Option<MetricId>,
    pub slow: Option<MetricId>,
    /// Calls that count neither way: ignored status, abandoned by the caller, gRPC CANCELLED.
    pub neutral: Option<MetricId>,
    /// `meshguard_circuit_epoch{rule}`: moved after every swap that records a failure or slow
    /// call; the workers' copies of the circuit are valid while it stands still
    /// (`breaker::snapshot`, `breaker::shared`).
    pub epoch: Option<MetricId>,
    /// The epoch gauge really counts: Envoy hands out a stat that ignores writes and reads 0
    /// when its stats matcher rejects the name (Istio without `proxyStatsMatcher` for
    /// meshguard), and a frozen epoch would make stale copies look current.
    pub epoch_live: Cell<bool>,
}

impl CircuitMetrics {
    pub fn define(rule: &str, define: &mut impl FnMut(MetricKind, &str) -> Option<MetricId>) -> CircuitMetrics {
        let r = [("rule", rule)];
        let mut counter = |n: &str| define(MetricKind::Counter, &name(n, &r));
        let rejected = counter(CIRCUIT_REJECTED_TOTAL);
        let failures = counter(CIRCUIT_FAILURES_TOTAL);
        let slow = counter(CIRCUIT_SLOW_TOTAL);
        let neutral = counter(CIRCUIT_NEUTRAL_TOTAL);
        let transitions = Phase::ALL.map(|to| {
            define(MetricKind::Counter, &name(CIRCUIT_TRANSITIONS_TOTAL, &[("rule", rule), ("to", to.as_str())]))
        });
        let state = define(MetricKind::Gauge, &name(CIRCUIT_STATE, &r));
        let epoch = define(MetricKind::Gauge, &name(CIRCUIT_EPOCH, &r));
        CircuitMetrics { state, transitions, rejected, failures, slow, neutral, epoch, epoch_live: Cell::new(false) }
    }

    pub fn transition(&self, to: Phase) -> Option<MetricId> {
        self.transitions.get(to as usize).copied().flatten()
    }
}

/// `meshguard_dedup_total{rule,outcome}` ids of one rule, in the order of [`DedupOutcome::ALL`].
#[derive(Clone, Debug, Default)]
pub struct DedupMetrics {
    pub outcomes: [Option<MetricId>; 10],
}

impl DedupMetrics {
    pub fn define(rule: &str, define: &mut impl FnMut(MetricKind, &str) -> Option<MetricId>) -> DedupMetrics {
        DedupMetrics {
            outcomes: DedupOutcome::ALL
                .map(|o| define(MetricKind::Counter, &name(DEDUP_TOTAL, &[("rule", rule), ("outcome", o.as_str())]))),
        }
    }

    pub fn outcome(&self, outcome: DedupOutcome) -> Option<MetricId> {
        let i = DedupOutcome::ALL.iter().position(|o| *o == outcome)?;
        self.outcomes.get(i).copied().flatten()
    }
}

/// The store-wide `meshguard_dedup_entries` gauge and `meshguard_dedup_evictions_total` counter.
#[derive(Clone, Debug, Default)]
pub struct StoreMetrics {
    pub entries: Option<MetricId>,
    pub evictions: Option<MetricId>,
}

impl StoreMetrics {
    pub fn define(define: &mut impl FnMut(MetricKind, &str) -> Option<MetricId>) -> StoreMetrics {
        StoreMetrics {
            entries: define(MetricKind::Gauge, DEDUP_ENTRIES),
            evictions: define(MetricKind::Counter, DEDUP_EVICTIONS_TOTAL),
        }
    }

    /// Accounts for the entries a change added and removed.
    pub fn count(&self, fx: &mut Effects, changes: EntryChanges) {
        let delta = i64::from(changes.added)
            - i64::from(changes.reclaimed)
            - i64::from(changes.evicted)
            - i64::from(changes.released);
        fx.add(self.entries, delta);
        fx.add(self.evictions, i64::from(changes.evicted));
    }
}

/// `meshguard_dedup_store_total{outcome}` (in the order of [`StoreOutcome::ALL`]) and the
/// histogram of the store's round trips, `meshguard_dedup_store_duration_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteMetrics {
    pub outcomes: [Option<MetricId>; 6],
    pub duration_ms: Option<MetricId>,
}

impl RemoteMetrics {
    pub fn define(define: &mut impl FnMut(MetricKind, &str) -> Option<MetricId>) -> RemoteMetrics {
        RemoteMetrics {
            outcomes: StoreOutcome::ALL
                .map(|o| define(MetricKind::Counter, &name(DEDUP_STORE_TOTAL, &[("outcome", o.as_str())]))),
            duration_ms: define(MetricKind::Histogram, DEDUP_STORE_DURATION),
        }
    }

    pub fn outcome(&self, outcome: StoreOutcome) -> Option<MetricId> {
        let i = StoreOutcome::ALL.iter().position(|o| *o == outcome)?;
        self.outcomes.get(i).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn tags_use_istio_convention() {
        assert_eq!(name(REQUESTS_TOTAL, &[("rule", "payments")]), "rule=.=payments;.;meshguard_requests_total");
        assert_eq!(
            name("meshguard_circuit_transitions_total", &[("rule", "a"), ("to", "open")]),
            "rule=.=a;.;to=.=open;.;meshguard_circuit_transitions_total"
        );
        assert_eq!(name(ERRORS_TOTAL, &[]), "meshguard_errors_total");
    }
}
