//! One `traceparent` header line (W3C Trace Context §3.2).
//!
//! Invariants: a parsed context has non-zero ids; formatting it gives the canonical version-00
//! line, which parses back to the same context and is marked canonical; an input marked canonical
//! is byte-for-byte that line (so skipping the header write is safe); a version-00 input is
//! accepted only at exactly 55 characters after trimming white space.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::trace::traceparent::{self, trim_ows, LEN};

fuzz_target!(|data: &[u8]| {
    let Some(parsed) = traceparent::parse(data) else {
        return;
    };
    let c = parsed.context;
    assert_ne!(c.trace_id, [0; 16]);
    assert_ne!(c.parent_id, [0; 8]);
    let line = traceparent::format(&c);
    assert_eq!(line.len(), LEN);
    assert!(line.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let again = traceparent::parse(line.as_bytes()).expect("the canonical form parses");
    assert_eq!(again.context, c);
    assert!(again.canonical);
    if parsed.canonical {
        assert_eq!(data, line.as_bytes(), "canonical input is the line meshguard would write");
    }
    let trimmed = trim_ows(data);
    assert!(trimmed.len() >= LEN);
    if trimmed.starts_with(b"00") {
        assert_eq!(trimmed.len(), LEN, "version 00 is exactly 55 characters");
    } else {
        assert_ne!(&trimmed[..2], b"ff");
    }
});
