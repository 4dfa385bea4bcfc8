//! Event-id deduplication against the host: buckets in shared data, changed by compare-and-swap,
//! so that two workers receiving one key at the same moment let exactly one request through.

use super::store::{Bucket, Check, EntryChanges};
use super::Layout;
use crate::filter::{cas_update, Host, HostError};

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
    cas_update(host, key, |b| Bucket::decode(b, layout), Bucket::default, Bucket::encode, change).map(|(r, _)| r)
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
) -> Result<(Check, EntryChanges), HostError> {
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

pub fn release(host: &mut impl Host, layout: &Layout, key: &str, held: Held) -> Result<EntryChanges, HostError> {
    update(host, layout, key, |b| b.release(held.id, held.nonce))
}
