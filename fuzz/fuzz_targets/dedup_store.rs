//! One dedup bucket (SPEC §2) as shared data holds it: decode arbitrary, corrupted or truncated
//! bytes, then run check / complete / release sequences and clock steps on it.
//!
//! Input: a layout byte (`max_entries` 1-40, or 100000 with the top bit), a TTL byte, a
//! `u16`-length-prefixed stored value (what does not decode is an empty bucket, as in the
//! filter), a `u16` clock offset, then operations (`op % 5`): 0 check a key, 1 complete a held
//! key, 2 release a held key, 3 advance the clock, 4 swap through the encoding. Keys come from a
//! small pool and from the decoded entries, so operations meet corrupted entries too.
//!
//! Invariants: decode is canonical and encode→decode the identity after every step; a bucket
//! never holds more than `per_bucket` entries; entry counts match the effects reported (added −
//! reclaimed − evicted − released); `First` leaves exactly one entry of the key, in flight, owned
//! by the request; any other answer changes nothing and matches a live entry; a completed key is
//! a duplicate with its status until it expires; a release leaves no in-flight entry of the
//! request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::dedup::store::{Bucket, Check, EntryChanges};
use meshguard::dedup::{Layout, Phase};
use meshguard_fuzz::{Bytes, SECOND};

fn accounted(before: &Bucket, after: &Bucket, fx: EntryChanges) {
    let expected = before.entries.len() as i64 + i64::from(fx.added)
        - i64::from(fx.reclaimed)
        - i64::from(fx.evicted)
        - i64::from(fx.released);
    assert_eq!(after.entries.len() as i64, expected, "effects account for every entry: {fx:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let l = b.u8();
    let layout = Layout::new(if l & 0x80 != 0 { 100_000 } else { u32::from(l % 40) + 1 });
    let t = b.u8();
    let in_flight_ttl = u64::from(t % 4 + 1) * 10 * SECOND;
    let ttl = u64::from(t >> 2 & 3) * 60 * SECOND + SECOND;
    let stored = b.blob();
    let decoded = Bucket::decode(stored, &layout);
    if let Some(d) = &decoded {
        assert_eq!(d.encode(), stored, "decode is canonical");
        assert!(d.entries.len() <= layout.per_bucket as usize);
    }
    let mut bucket = decoded.unwrap_or_default();
    let mut now = 1_700_000_000 * SECOND + u64::from(b.u16()) * 1_000_000;
    let mut nonce = 0u32;
    let mut held: Vec<(u128, u32, u64)> = Vec::new();
    while !b.is_empty() {
        let op = b.u8();
        let before = bucket.clone();
        match op % 5 {
            0 => {
                let pick = usize::from(b.u8());
                let id = match bucket.entries.get(pick.wrapping_sub(4)) {
                    Some(e) if pick >= 4 => e.id,
                    _ => [1u128, 2, 3, u128::MAX][pick % 4],
                };
                let fp = u64::from(op >> 3 & 1) + 1;
                nonce += 1;
                let (check, fx) = bucket.check(&layout, id, fp, nonce, now, in_flight_ttl);
                accounted(&before, &bucket, fx);
                assert!(bucket.entries.len() <= layout.per_bucket as usize, "{} entries", bucket.entries.len());
                let live = before.entries.iter().find(|e| e.id == id && e.expires > now);
                match check {
                    Check::First => {
                        assert!(live.is_none());
                        let mine: Vec<_> = bucket.entries.iter().filter(|e| e.id == id).collect();
                        assert_eq!(mine.len(), 1, "one entry per key");
                        let e = mine[0];
                        assert!(e.phase == Phase::InFlight && e.nonce == nonce && e.fingerprint == fp);
                        assert_eq!(e.expires, now + in_flight_ttl);
                        assert_eq!(fx.added, 1);
                        held.push((id, nonce, fp));
                    }
                    other => {
                        assert_eq!(bucket, before, "only a first request changes the bucket");
                        let e = live.expect("an answer other than first matches a live entry");
                        let expected = if e.fingerprint != fp {
                            Check::Mismatch
                        } else if e.phase == Phase::Completed {
                            Check::Duplicate { status: e.status }
                        } else {
                            Check::InFlight
                        };
                        assert_eq!(other, expected);
                    }
                }
            }
            1 | 2 if !held.is_empty() => {
                let (id, n, fp) = held[usize::from(b.u8()) % held.len()];
                let owned = before.entries.iter().any(|e| e.id == id && e.nonce == n && e.phase == Phase::InFlight);
                if op % 5 == 1 {
                    let status = 200 + u16::from(b.u8());
                    let done = bucket.complete(id, n, status, now, ttl);
                    assert_eq!(done, owned);
                    assert_eq!(bucket.entries.len(), before.entries.len());
                    if done {
                        let mut probe = bucket.clone();
                        let (again, _) = probe.check(&layout, id, fp, u32::MAX, now, in_flight_ttl);
                        assert_eq!(again, Check::Duplicate { status }, "a completed key is a duplicate");
                    } else {
                        assert_eq!(bucket, before);
                    }
                } else {
                    let fx = bucket.release(id, n);
                    accounted(&before, &bucket, fx);
                    assert_eq!(fx.released > 0, owned);
                    assert!(!bucket.entries.iter().any(|e| e.id == id && e.nonce == n && e.phase == Phase::InFlight));
                }
            }
            3 => now = now.saturating_add(u64::from(b.u16()) * 100_000_000),
            _ => {
                bucket = Bucket::decode(&bucket.encode(), &layout).expect("another worker decodes the bucket");
                assert_eq!(bucket, before);
            }
        }
        assert_eq!(Bucket::decode(&bucket.encode(), &layout).as_ref(), Some(&bucket), "encode/decode round trip");
    }
});
