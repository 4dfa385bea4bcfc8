//! `tracestate` header lines combined (W3C Trace Context Level 2 §3.3). Lines are separated by
//! `\n` in the input.
//!
//! Invariants: the result forwarded upstream is itself a valid list of at most 32 members with
//! unique keys, which combines to itself (`Line`) when read back as one line; `Line` is only ever
//! the single input line; no members means the header is removed, no lines means it was absent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::trace::tracestate::{combine, valid_key, valid_value, State, MAX_MEMBERS};

fn check_list(list: &[u8]) {
    let members: Vec<&[u8]> =
        list.split(|&b| b == b',').map(meshguard::trace::traceparent::trim_ows).filter(|m| !m.is_empty()).collect();
    assert!(!members.is_empty() && members.len() <= MAX_MEMBERS, "{} members", members.len());
    let mut keys = Vec::new();
    for m in &members {
        let eq = m.iter().position(|&b| b == b'=').expect("key=value");
        let (k, v) = (&m[..eq], &m[eq + 1..]);
        assert!(valid_key(k) && valid_value(v), "member {:?}", String::from_utf8_lossy(m));
        assert!(!keys.contains(&k), "duplicate key {:?}", String::from_utf8_lossy(k));
        keys.push(k);
    }
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = if data.is_empty() { Vec::new() } else { data.split(|&b| b == b'\n').collect() };
    match combine(lines.iter().copied()) {
        State::Absent => assert!(lines.is_empty()),
        State::Discard => assert!(!lines.is_empty()),
        State::Line(line) => {
            assert_eq!(lines.len(), 1);
            assert_eq!(line, lines[0]);
            check_list(line);
        }
        State::Combined(value) => {
            assert!(value.len() <= data.len(), "combining never grows the list");
            check_list(value.as_bytes());
            assert_eq!(combine(std::iter::once(value.as_bytes())), State::Line(value.as_bytes()));
        }
    }
});
