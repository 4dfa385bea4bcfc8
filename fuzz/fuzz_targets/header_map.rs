//! `HeaderMap::from_serialized`: proxy-wasm's serialised header map exactly as the host hands it
//! over (`u32` count, `count` pairs of `u32` lengths, then each key and value NUL-terminated).
//!
//! Invariants: any bytes give a map (a malformed buffer an empty one) without panicking or
//! over-allocating; every pair lies inside the buffer; re-serialising the pairs and parsing
//! again gives the same pairs; `get` is the first of `all`; and in the other direction, pairs cut
//! from the input serialise and parse back to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::headers::HeaderMap;
use meshguard_fuzz::Bytes;

fuzz_target!(|data: &[u8]| {
    let map = HeaderMap::from_serialized(data.to_vec());
    let pairs: Vec<(&[u8], &[u8])> = map.iter().collect();
    assert_eq!(pairs.len(), map.len(), "every indexed pair is readable");
    assert!(map.len() <= data.len() / 10, "each pair takes at least 10 bytes");
    assert_eq!(map.serialized(), data);
    let again = HeaderMap::from_pairs(&pairs);
    assert_eq!(again.iter().collect::<Vec<_>>(), pairs);
    for (name, _) in pairs.iter().take(8) {
        if let Ok(name) = std::str::from_utf8(name) {
            assert_eq!(map.get(name), map.all(name).next());
            assert!(map.all(name).count() >= 1);
        }
    }

    // The other direction: arbitrary pairs survive the encoding the host uses.
    let mut b = Bytes(data);
    let mut built: Vec<(&[u8], &[u8])> = Vec::new();
    while !b.is_empty() && built.len() < 16 {
        let k = b.take(usize::from(b.0.first().copied().unwrap_or(0) % 16) + 1);
        let v = b.take(usize::from(b.0.first().copied().unwrap_or(0) % 64));
        built.push((k, v));
    }
    let m = HeaderMap::from_pairs(&built);
    assert_eq!(m.iter().collect::<Vec<_>>(), built);
    // Every cut of a well-formed buffer short of its end is malformed: an empty map, no panic.
    let whole = m.serialized().to_vec();
    if !built.is_empty() {
        let cut = usize::from(data[0]) % whole.len();
        assert!(HeaderMap::from_serialized(whole[..cut].to_vec()).is_empty(), "cut at {cut}");
    }
});
