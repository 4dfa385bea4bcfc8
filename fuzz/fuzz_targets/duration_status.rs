//! Durations (`"250ms"`, `"1m30s"`, `"1.5s"`) and status-set items (`503`, `"500-504"`, `"5xx"`)
//! as configuration strings, and status sets as bitsets.
//!
//! Invariants: an accepted duration is at most 30 days and formats back to itself; appending
//! `1ns` adds exactly one nanosecond (no silent wrap-around); an accepted status item is a range
//! within 100-599 and the compiled set holds exactly that range; `insert_range` with any bounds
//! holds exactly their intersection with 100-599.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::config::duration::{self, MAX_NANOS};
use meshguard::config::status::{self, StatusSet};
use meshguard_fuzz::Bytes;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(nanos) = duration::parse(&text) {
        assert!(nanos <= MAX_NANOS, "{text:?} -> {nanos}");
        assert_eq!(duration::parse(&duration::format(nanos)), Ok(nanos), "{text:?} formats back");
        let longer = duration::parse(&format!("{text}1ns"));
        if nanos < MAX_NANOS {
            assert_eq!(longer, Ok(nanos + 1), "{text:?} + 1ns");
        } else {
            assert!(longer.is_err(), "{text:?} + 1ns is beyond the cap");
        }
    }
    if let Ok((lo, hi)) = status::parse_item(&text) {
        assert!(100 <= lo && lo <= hi && hi <= 599, "{text:?} -> {lo}-{hi}");
        let set = StatusSet::of(&[&text]);
        for s in 0..700 {
            assert_eq!(set.contains(s), (lo..=hi).contains(&s), "{text:?} contains {s}");
        }
    }
    let mut b = Bytes(data);
    let (lo, hi, probe) = (b.u32(), b.u32(), b.u32());
    let mut set = StatusSet::EMPTY;
    set.insert_range(lo, hi);
    for s in [probe, lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1), 100, 599] {
        assert_eq!(set.contains(s), s >= lo.max(100) && s <= hi.min(599), "{lo}-{hi} contains {s}");
    }
});
