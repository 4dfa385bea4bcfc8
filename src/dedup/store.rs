//! The dedup store's layout and bucket operations, pure.
//!
//! The store is `buckets` shared-data values of at most `per_bucket` entries; a key lives in bucket
//! `id % buckets`, so a request reads and swaps one value. Shared-data keys are never deleted by
//! the host, so the set of keys is fixed by the layout, and each value is bounded: memory is
//! bounded by configuration alone ([`Layout::bytes_bound`]). A full bucket reclaims its expired
//! entries first, then evicts its oldest.
//!
//! `max_entries` is a promise, not only a bound: a live key is not evicted while fewer than
//! `max_entries` keys are live. Keys land in buckets at random, so buckets fill unevenly: with
//! exactly `max_entries` slots in buckets of 8, 14 % of `max_entries` keys inside one `ttl` were
//! evicted while the store was mostly empty. The layout therefore has [`HEADROOM`] slots per
//! entry in buckets of [`PER_BUCKET`]: simulated over many runs (balls into bins, the hash is
//! uniform), `max_entries` unique keys then evict none in 99 % of runs at 1 000 and at most a few
//! in a million at 100 000 — within the promise of at most 0.1 % (`dedup::tests` checks it with
//! the real key hash). Two choices of bucket would need less memory but a second round trip
//! whenever the first bucket is full.

use std::cmp::Reverse;

/// Entries per bucket: small values keep each compare-and-swap cheap (one bucket is read and
/// written whole), large ones even out the luck of the hash.
pub const PER_BUCKET: u32 = 16;
/// Slots per `max_entries` (see the module's documentation).
pub const HEADROOM: u32 = 3;
/// Bytes of one encoded entry.
pub const ENTRY_BYTES: usize = 16 + 8 + 1 + 2 + 4 + 8 + 8;
/// The bucket codec's version: a value of another version reads as an empty bucket.
const VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub buckets: u32,
    pub per_bucket: u32,
}

impl Layout {
    pub fn new(max_entries: u32) -> Layout {
        let slots = max_entries.max(1).saturating_mul(HEADROOM);
        let per_bucket = PER_BUCKET.min(slots);
        Layout { buckets: slots.div_ceil(per_bucket), per_bucket }
    }

    /// Entries the store can hold: `max_entries` and its headroom.
    pub fn capacity(&self) -> u64 {
        u64::from(self.buckets) * u64::from(self.per_bucket)
    }

    pub fn bucket_of(&self, id: u128) -> u32 {
        (id % u128::from(self.buckets)) as u32
    }

    /// The shared-data key of bucket `i`; the layout is part of it, so a resized store never
    /// reads buckets of another size.
    pub fn key(&self, plugin: &str, i: u32) -> String {
        BucketKeys::new(self, plugin).key(i)
    }

    /// Upper bound of the process memory the store takes in Envoy: each bucket's value twice
    /// (Envoy keeps a value as a `std::string` that is assigned again and again as the bucket
    /// grows, and its capacity grows geometrically), plus 200 bytes for its key and map node.
    /// Measured with full stores (benches/load.py, docs/performance.md): +31 MB for 100 000
    /// entries (bound 32.0 MB), +297 MB for 1 000 000 (bound 320 MB).
    pub fn bytes_bound(&self) -> u64 {
        u64::from(self.buckets) * (2 * (2 + u64::from(self.per_bucket) * ENTRY_BYTES as u64) + 200)
    }
}

/// The shared-data keys of one store: the fixed prefix is made once per configuration, so a
/// request only appends its bucket's number (no formatting machinery on the request path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketKeys {
    prefix: String,
}

impl BucketKeys {
    pub fn new(layout: &Layout, plugin: &str) -> BucketKeys {
        BucketKeys { prefix: format!("meshguard/{plugin}/dedup/{}x{}/", layout.buckets, layout.per_bucket) }
    }

    /// `meshguard/<plugin>/dedup/<buckets>x<per bucket>/<i>`.
    pub fn key(&self, i: u32) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 10);
        key.push_str(&self.prefix);
        let mut digits = [0u8; 10];
        let mut n = i;
        let mut start = digits.len();
        loop {
            start -= 1;
            if let Some(d) = digits.get_mut(start) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || start == 0 {
                break;
            }
        }
        for &d in digits.get(start..).unwrap_or_default() {
            key.push(char::from(d));
        }
        key
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    InFlight = 0,
    Completed = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: u128,
    pub fingerprint: u64,
    pub phase: Phase,
    /// The first response's status (completed entries).
    pub status: u16,
    /// Which request owns an in-flight entry: only it completes or releases it.
    pub nonce: u32,
    pub created: u64,
    pub expires: u64,
}

/// What a request's key finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// First time (or the earlier entry expired): now in flight, owned by `nonce`.
    First,
    /// Completed before with `status`.
    Duplicate { status: u16 },
    /// Another request with this key is being processed.
    InFlight,
    /// Same key, different request fingerprint.
    Mismatch,
}

/// Entries that came and went in a change, for `meshguard_dedup_entries` and `_evictions_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryChanges {
    pub added: u32,
    /// Expired entries removed.
    pub reclaimed: u32,
    /// Live entries removed to make room (the oldest).
    pub evicted: u32,
    /// Entries removed by a release.
    pub released: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub entries: Vec<Entry>,
}

impl Bucket {
    /// Looks `id` up at `now`; records it in flight when it is new.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &mut self,
        layout: &Layout,
        id: u128,
        fingerprint: u64,
        nonce: u32,
        now: u64,
        in_flight_ttl: u64,
    ) -> (Check, EntryChanges) {
        let mut fx = EntryChanges::default();
        if let Some(e) = self.entries.iter().find(|e| e.id == id && e.expires > now) {
            let check = if e.fingerprint != fingerprint {
                Check::Mismatch
            } else if e.phase == Phase::Completed {
                Check::Duplicate { status: e.status }
            } else {
                Check::InFlight
            };
            return (check, fx);
        }
        let before = self.entries.len();
        self.entries.retain(|e| e.id != id);
        fx.reclaimed += (before - self.entries.len()) as u32;
        if self.entries.len() >= layout.per_bucket as usize {
            let before = self.entries.len();
            self.entries.retain(|e| e.expires > now);
            fx.reclaimed += (before - self.entries.len()) as u32;
        }
        while !self.entries.is_empty() && self.entries.len() >= layout.per_bucket as usize {
            // The oldest entry goes first.
            if let Some(oldest) =
                self.entries.iter().enumerate().min_by_key(|(_, e)| (e.created, Reverse(e.expires))).map(|(i, _)| i)
            {
                self.entries.remove(oldest);
                fx.evicted += 1;
            }
        }
        self.entries.push(Entry {
            id,
            fingerprint,
            phase: Phase::InFlight,
            status: 0,
            nonce,
            created: now,
            expires: now.saturating_add(in_flight_ttl),
        });
        fx.added += 1;
        (Check::First, fx)
    }

    /// Marks the request's in-flight entry completed with `status` for `ttl`. False when the
    /// entry is no longer this request's (it expired and the key was taken again, or evicted).
    pub fn complete(&mut self, id: u128, nonce: u32, status: u16, now: u64, ttl: u64) -> bool {
        match self.entries.iter_mut().find(|e| e.id == id && e.nonce == nonce && e.phase == Phase::InFlight) {
            Some(e) => {
                e.phase = Phase::Completed;
                e.status = status;
                e.expires = now.saturating_add(ttl);
                true
            }
            None => false,
        }
    }

    /// Removes the request's in-flight entry, so that a redelivery is processed again.
    pub fn release(&mut self, id: u128, nonce: u32) -> EntryChanges {
        let before = self.entries.len();
        self.entries.retain(|e| !(e.id == id && e.nonce == nonce && e.phase == Phase::InFlight));
        EntryChanges { released: (before - self.entries.len()) as u32, ..EntryChanges::default() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.entries.len() * ENTRY_BYTES);
        out.push(VERSION);
        out.push(self.entries.len() as u8);
        for e in &self.entries {
            out.extend_from_slice(&e.id.to_le_bytes());
            out.extend_from_slice(&e.fingerprint.to_le_bytes());
            out.push(e.phase as u8);
            out.extend_from_slice(&e.status.to_le_bytes());
            out.extend_from_slice(&e.nonce.to_le_bytes());
            out.extend_from_slice(&e.created.to_le_bytes());
            out.extend_from_slice(&e.expires.to_le_bytes());
        }
        out
    }

    /// A bucket of this layout, or `None` for bytes of another format or size.
    pub fn decode(bytes: &[u8], layout: &Layout) -> Option<Bucket> {
        let (&version, rest) = bytes.split_first()?;
        let (&count, mut rest) = rest.split_first()?;
        if version != VERSION || u32::from(count) > layout.per_bucket || rest.len() != usize::from(count) * ENTRY_BYTES
        {
            return None;
        }
        let mut entries = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let (e, tail) = rest.split_at_checked(ENTRY_BYTES)?;
            rest = tail;
            let u64_at = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(e.get(at..at + 8)?.try_into().ok()?)) };
            entries.push(Entry {
                id: u128::from_le_bytes(e.get(0..16)?.try_into().ok()?),
                fingerprint: u64_at(16)?,
                phase: match e.get(24)? {
                    0 => Phase::InFlight,
                    1 => Phase::Completed,
                    _ => return None,
                },
                status: u16::from_le_bytes(e.get(25..27)?.try_into().ok()?),
                nonce: u32::from_le_bytes(e.get(27..31)?.try_into().ok()?),
                created: u64_at(31)?,
                expires: u64_at(39)?,
            });
        }
        Some(Bucket { entries })
    }
}
