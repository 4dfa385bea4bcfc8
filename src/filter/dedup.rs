//! Event-id deduplication against the host: buckets in shared data, changed by compare-and-swap,
//! so that two workers receiving one key at the same moment let exactly one request through.

use super::{Host, HostError, MetricId, MetricKind};
use crate::dedup::store::{Bucket, Check, Effects};
use crate::dedup::{Layout, Outcome};
use crate::metrics;

/// `meshguard_dedup_total{rule,outcome}` ids of one rule, in the order of [`Outcome::ALL`].
#[derive(Clone, Debug, Default)]
pub struct DedupMetrics {
    pub outcomes: [Option<MetricId>; 8],
}

impl DedupMetrics {
    pub fn define(rule: &str, define: &mut impl FnMut(MetricKind, &str) -> Option<MetricId>) -> DedupMetrics {
        DedupMetrics {
            outcomes: Outcome::ALL.map(|o| {
                define(
                    MetricKind::Counter,
                    &metrics::name(metrics::DEDUP_TOTAL, &[("rule", rule), ("outcome", o.as_str())]),
                )
            }),
        }
    }

    pub fn outcome(&self, outcome: Outcome) -> Option<MetricId> {
        let i = Outcome::ALL.iter().position(|o| *o == outcome)?;
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
            entries: define(MetricKind::Gauge, metrics::DEDUP_ENTRIES),
            evictions: define(MetricKind::Counter, metrics::DEDUP_EVICTIONS_TOTAL),
        }
    }

    /// Accounts for the entries a change added and removed.
    pub fn apply(&self, host: &mut impl Host, fx: Effects) {
        let delta = i64::from(fx.added) - i64::from(fx.reclaimed) - i64::from(fx.evicted) - i64::from(fx.released);
        if let (Some(id), true) = (self.entries, delta != 0) {
            host.increment(id, delta);
        }
        if let (Some(id), true) = (self.evictions, fx.evicted > 0) {
            host.increment(id, i64::from(fx.evicted));
        }
    }
}

/// A request that holds its key in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub id: u128,
    pub nonce: u32,
}

fn update<R>(
    host: &mut impl Host,
    layout: &Layout,
    key: &str,
    change: impl FnMut(&mut Bucket) -> R,
) -> Result<R, HostError> {
    super::cas_update(host, key, |b| Bucket::decode(b, layout), Bucket::default, Bucket::encode, change).map(|(r, _)| r)
}

#[allow(clippy::too_many_arguments)]
pub fn check(
    host: &mut impl Host,
    layout: &Layout,
    key: &str,
    id: u128,
    fingerprint: u64,
    nonce: u32,
    now: u64,
    in_flight_ttl: u64,
) -> Result<(Check, Effects), HostError> {
    update(host, layout, key, |b| b.check(layout, id, fingerprint, nonce, now, in_flight_ttl))
}

pub fn complete(
    host: &mut impl Host,
    layout: &Layout,
    key: &str,
    held: Held,
    status: u16,
    now: u64,
    ttl: u64,
) -> Result<bool, HostError> {
    update(host, layout, key, |b| b.complete(held.id, held.nonce, status, now, ttl))
}

pub fn release(host: &mut impl Host, layout: &Layout, key: &str, held: Held) -> Result<Effects, HostError> {
    update(host, layout, key, |b| b.release(held.id, held.nonce))
}
