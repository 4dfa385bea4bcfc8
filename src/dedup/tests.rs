#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::store::{Bucket, Check, EntryChanges};
use super::*;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * S;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn key_of(headers: &[(&str, &[u8])]) -> Key {
    event_key(&HeaderMap::from_pairs(headers), &names(&["x-event-id", "idempotency-key", "ce-id"]))
}

#[test]
fn first_present_header_of_the_list_is_the_key() {
    assert_eq!(key_of(&[]), Key::Missing);
    let k = key_of(&[("idempotency-key", b"k-2"), ("x-event-id", b"e-1")]);
    assert_eq!(k, Key::Valid { key: b"e-1".to_vec(), event_id: "e-1".into() });
    let k = key_of(&[("idempotency-key", b"\"abc\\\"d\"")]);
    assert_eq!(k, Key::Valid { key: b"abc\"d".to_vec(), event_id: "abc\"d".into() }, "structured-field string");
    let k = key_of(&[("idempotency-key", b"plain")]);
    assert_eq!(k, Key::Valid { key: b"plain".to_vec(), event_id: "plain".into() });
    let k = key_of(&[("ce-id", b"42"), ("ce-source", b"/orders")]);
    assert_eq!(k, Key::Valid { key: b"\x07\0\0\0/orders42".to_vec(), event_id: "42".into() });
    // Same ce-id from another source is another event; and no source and id join alike.
    assert_ne!(k, key_of(&[("ce-id", b"42"), ("ce-source", b"/billing")]));
    assert_ne!(
        key_of(&[("ce-id", b"b"), ("ce-source", b"/orders%20a")]),
        key_of(&[("ce-id", b"a%20b"), ("ce-source", b"/orders")])
    );
}

#[test]
fn invalid_keys_are_refused_with_a_reason() {
    let long = vec![b'a'; 256];
    type Case<'a> = (&'a [(&'a str, &'a [u8])], &'a str);
    let cases: &[Case] = &[
        (&[("x-event-id", b"")], "empty"),
        (&[("x-event-id", &long)], "longer than 255 bytes"),
        (&[("x-event-id", b"has space")], "must be visible ASCII (0x21-0x7E)"),
        (&[("x-event-id", b"caf\xe9")], "must be visible ASCII (0x21-0x7E)"),
        (&[("idempotency-key", b"\"open")], "not a valid structured-field string"),
        (&[("idempotency-key", b"\"bad\\escape\"")], "not a valid structured-field string"),
        (&[("idempotency-key", b"\"\"")], "empty"),
    ];
    for (headers, reason) in cases {
        match key_of(headers) {
            Key::Invalid { reason: r, .. } => assert_eq!(r, *reason, "{headers:?}"),
            other => panic!("{headers:?}: {other:?}"),
        }
    }
    assert!(matches!(key_of(&[("x-event-id", &long[..255])]), Key::Valid { .. }), "255 bytes is fine");
}

#[test]
fn ids_are_scoped_by_rule_and_caller() {
    let a = key_id("orders", None, b"k");
    assert_eq!(a, key_id("orders", None, b"k"));
    assert_ne!(a, key_id("billing", None, b"k"));
    assert_ne!(a, key_id("orders", Some(b"spiffe://a"), b"k"));
    assert_ne!(key_id("orders", Some(b"spiffe://a"), b"k"), key_id("orders", Some(b"spiffe://b"), b"k"));
}

#[test]
fn fingerprints_cover_method_path_and_the_first_64_kib_of_body() {
    assert_ne!(fingerprint(b"POST", b"/a", None), fingerprint(b"PUT", b"/a", None));
    assert_ne!(fingerprint(b"POST", b"/a", None), fingerprint(b"POST", b"/b", None));
    assert_ne!(fingerprint(b"POST", b"/a", Some(b"x")), fingerprint(b"POST", b"/a", Some(b"y")));
    let mut big = vec![0u8; MAX_BODY_FINGERPRINT];
    let a = fingerprint(b"POST", b"/a", Some(&big));
    big.push(1);
    assert_eq!(a, fingerprint(b"POST", b"/a", Some(&big)), "bytes past 64 KiB are not hashed");
    assert_ne!(fingerprint(b"POST", b"/a", None), 0);
}

fn layout(n: u32) -> Layout {
    Layout::new(n)
}

#[test]
fn layout_has_headroom_over_max_entries_and_a_bound() {
    for max in [1, 5, 7, 8, 9, 17, 100, 1000, 100_000, 1_000_000] {
        let l = Layout::new(max);
        let slots = u64::from(max) * u64::from(store::HEADROOM);
        assert!(l.capacity() >= slots && l.capacity() < slots + u64::from(store::PER_BUCKET), "{max}: {l:?}");
        assert!(l.per_bucket <= store::PER_BUCKET && l.per_bucket >= 1, "{max}: {l:?}");
    }
    assert_eq!(Layout::new(1), Layout { buckets: 1, per_bucket: 3 });
    assert_eq!(Layout::new(100_000), Layout { buckets: 18_750, per_bucket: 16 });
    assert_eq!(Layout::new(100_000).bytes_bound(), 18_750 * (2 * (2 + 16 * 47) + 200));
}

/// The store in memory, filled as requests would fill it: `n` unique keys of one rule inside one
/// `ttl`. Returns how many live keys were evicted.
fn fill(max_entries: u32, n: u32, key: impl Fn(u32) -> String) -> u32 {
    let l = Layout::new(max_entries);
    let mut buckets = vec![Bucket::default(); l.buckets as usize];
    let mut evicted = 0;
    for i in 0..n {
        let id = key_id("events", None, key(i).as_bytes());
        let b = &mut buckets[l.bucket_of(id) as usize];
        let (check, fx) = b.check(&l, id, 0, i | 1, T0 + u64::from(i), 60 * S);
        assert_eq!(check, Check::First);
        assert!(b.complete(id, i | 1, 200, T0 + u64::from(i), 600 * S));
        evicted += fx.evicted;
    }
    evicted
}

/// docs/behaviour.md: a live key is not evicted while fewer than `max_entries` keys are live; at
/// `max_entries` live keys at most 0.1 % may have been (was 14.8 % at 1 000 with buckets of 8).
#[test]
fn max_entries_unique_keys_evict_at_most_a_thousandth() {
    for (max, keys) in [(1_000, 1_000), (100_000, 100_000)] {
        for shape in [0, 1] {
            let key = |i: u32| {
                if shape == 0 {
                    format!("evt-{i}")
                } else {
                    format!("{:08x}-order", i.wrapping_mul(2_654_435_761))
                }
            };
            let evicted = fill(max, keys, key);
            assert!(u64::from(evicted) * 1000 <= u64::from(keys), "{max}: {evicted} of {keys} evicted");
        }
    }
    // Below max_entries nothing at all is evicted.
    assert_eq!(fill(1_000, 900, |i| format!("e{i}")), 0);
}

#[test]
fn lifecycle_first_in_flight_completed_duplicate_expired() {
    let l = layout(8);
    let mut b = Bucket::default();
    let (c, fx) = b.check(&l, 7, 1, 100, T0, 60 * S);
    assert_eq!((c, fx.added), (Check::First, 1));
    assert_eq!(b.check(&l, 7, 1, 101, T0 + S, 60 * S).0, Check::InFlight);
    assert_eq!(b.check(&l, 7, 2, 101, T0 + S, 60 * S).0, Check::Mismatch);
    assert!(!b.complete(7, 999, 201, T0 + S, 600 * S), "not this request's entry");
    assert!(b.complete(7, 100, 201, T0 + S, 600 * S));
    assert_eq!(b.check(&l, 7, 1, 102, T0 + 2 * S, 60 * S).0, Check::Duplicate { status: 201 });
    assert_eq!(b.check(&l, 7, 2, 102, T0 + 2 * S, 60 * S).0, Check::Mismatch);
    // After ttl the key is new again.
    let (c, fx) = b.check(&l, 7, 1, 103, T0 + 601 * S + 1, 60 * S);
    assert_eq!((c, fx.reclaimed, fx.added), (Check::First, 1, 1));
    assert_eq!(b.entries.len(), 1);
}

#[test]
fn in_flight_entries_expire_after_in_flight_ttl_and_release_removes_them() {
    let l = layout(8);
    let mut b = Bucket::default();
    b.check(&l, 7, 1, 1, T0, 60 * S);
    assert_eq!(b.check(&l, 7, 1, 2, T0 + 60 * S - 1, 60 * S).0, Check::InFlight);
    assert_eq!(b.check(&l, 7, 1, 3, T0 + 60 * S, 60 * S).0, Check::First, "the vanished request's key expired");
    // The old owner can neither complete nor release the new request's entry.
    assert!(!b.complete(7, 1, 200, T0 + 61 * S, S));
    assert_eq!(b.release(7, 1), EntryChanges::default());
    assert_eq!(b.release(7, 3).released, 1);
    assert_eq!(b.check(&l, 7, 1, 4, T0 + 61 * S, 60 * S).0, Check::First);
}

#[test]
fn a_full_bucket_reclaims_expired_entries_then_evicts_the_oldest() {
    let l = Layout { buckets: 1, per_bucket: 3 };
    let mut b = Bucket::default();
    b.check(&l, 1, 1, 1, T0, 10 * S);
    b.check(&l, 2, 1, 2, T0 + S, 100 * S);
    b.check(&l, 3, 1, 3, T0 + 2 * S, 100 * S);
    // Entry 1 expired: reclaimed, nothing evicted.
    let (_, fx) = b.check(&l, 4, 1, 4, T0 + 20 * S, 100 * S);
    assert_eq!((fx.reclaimed, fx.evicted), (1, 0));
    // All live: the oldest (2) goes.
    let (_, fx) = b.check(&l, 5, 1, 5, T0 + 21 * S, 100 * S);
    assert_eq!((fx.reclaimed, fx.evicted), (0, 1));
    let ids: Vec<u128> = b.entries.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![3, 4, 5]);
    assert!(b.entries.len() <= 3);
}

#[test]
fn buckets_round_trip_and_refuse_other_layouts() {
    let l = Layout { buckets: 4, per_bucket: 3 };
    let mut b = Bucket::default();
    b.check(&l, u128::MAX - 5, 42, 9, T0, S);
    b.check(&l, 3, 1, 10, T0, S);
    b.complete(3, 10, 204, T0, S);
    assert_eq!(Bucket::decode(&b.encode(), &l), Some(b.clone()));
    assert_eq!(Bucket::decode(&b.encode(), &Layout { buckets: 4, per_bucket: 1 }), None);
    let bytes = b.encode();
    for cut in 0..bytes.len() {
        assert_eq!(Bucket::decode(&bytes[..cut], &l), None);
    }
    assert_eq!(Bucket::decode(&[], &l), None);
    assert_eq!(Bucket::decode(&[1, 0], &l), Some(Bucket::default()));
}

#[test]
fn bucket_keys_name_the_plugin_the_layout_and_the_bucket() {
    let layout = Layout::new(100_000);
    let keys = store::BucketKeys::new(&layout, "meshguard-inbound");
    assert_eq!(keys.key(0), "meshguard/meshguard-inbound/dedup/18750x16/0");
    assert_eq!(keys.key(7), "meshguard/meshguard-inbound/dedup/18750x16/7");
    assert_eq!(keys.key(12_499), "meshguard/meshguard-inbound/dedup/18750x16/12499");
    assert_eq!(keys.key(u32::MAX), "meshguard/meshguard-inbound/dedup/18750x16/4294967295");
    for i in [1, 9, 10, 99, 100, 1234, 100_000, 999_999] {
        assert_eq!(keys.key(i), format!("meshguard/meshguard-inbound/dedup/18750x16/{i}"));
    }
}

#[test]
fn ids_and_fingerprints_are_the_same_on_every_platform_and_build() {
    // Shared data outlives a VM: a new build loaded into a running Envoy must find the entries
    // the old one wrote. These values are part of the store's format; changing them is a
    // breaking change of the store, not a refactoring.
    assert_eq!(key_id("default", None, b"e-1"), 0x4d8019a800a8adc77f05e639b45b5934);
    let caller = b"spiffe://cluster.local/ns/a/sa/b";
    assert_eq!(key_id("default", Some(caller), b"e-1"), 0x65e0fd44cf88192fb7871479bf6469a7);
    assert_eq!(fingerprint(b"POST", b"/e", None), 0x40f493c08bb70dff);
    assert_eq!(fingerprint(b"POST", b"/e", Some(b"{\"a\":1}")), 0x8793b6dc9ffc5aab);
    // No field runs into the next one.
    assert_ne!(key_id("default", Some(b""), b"e-1"), key_id("default", None, b"e-1"));
    assert_ne!(key_id("a", None, b"bc"), key_id("ab", None, b"c"));
    assert_ne!(fingerprint(b"POST", b"/e", Some(b"")), fingerprint(b"POST", b"/e", None));
    assert_ne!(fingerprint(b"POST", b"/ex", None), fingerprint(b"POST/", b"ex", None));
}
