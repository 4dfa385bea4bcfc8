//! Metric names. Proxy-wasm metrics have no labels, so tags are encoded in the name with the
//! convention Istio's stats extraction understands: `rule=.=payments;.;meshguard_requests_total`.
//! Envoy stores it as `wasmcustom.<name>`; the tag regexes in the shipped bootstrap (and Istio's
//! `extraStatTags`) turn it into `meshguard_requests_total{rule="payments"}` in Prometheus.

pub const REQUESTS_TOTAL: &str = "meshguard_requests_total";
pub const CORRELATION_TOTAL: &str = "meshguard_correlation_total";
pub const TRACE_TOTAL: &str = "meshguard_trace_total";
pub const ERRORS_TOTAL: &str = "meshguard_errors_total";
pub const DEDUP_TOTAL: &str = "meshguard_dedup_total";
pub const DEDUP_ENTRIES: &str = "meshguard_dedup_entries";
pub const DEDUP_EVICTIONS_TOTAL: &str = "meshguard_dedup_evictions_total";
pub const CIRCUIT_STATE: &str = "meshguard_circuit_state";
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "meshguard_circuit_transitions_total";
pub const CIRCUIT_REJECTED_TOTAL: &str = "meshguard_circuit_rejected_total";
pub const CIRCUIT_FAILURES_TOTAL: &str = "meshguard_circuit_failures_total";
pub const CIRCUIT_SLOW_TOTAL: &str = "meshguard_circuit_slow_total";
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
