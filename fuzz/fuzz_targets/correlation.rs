//! Correlation-id check and generation (SPEC §4) on arbitrary header bytes.
//!
//! Input: `name:value` lines; `x-correlation-id` (every line is tried) and `x-request-id` are
//! read; `trace-id` stands for the request's trace-id. Optional first line: `@max=N` (1-4096),
//! `@gen=trace_id` or `@gen=request_id`.
//!
//! Invariants: a kept id is exactly the incoming bytes and is visible ASCII within `max_length`
//! (never raw bytes into a log line); anything else is replaced; a generated id is visible ASCII
//! and, when it is not a fresh UUID, is exactly the trace-id or request-id it was made from; with
//! `max_length` ≥ 36 the next hop keeps it (see docs/fuzzing.md for shorter limits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::config::{Correlation, Generator};
use meshguard::correlation::{check, generate, is_valid, CorrelationOutcome};
use meshguard_fuzz::{directive, lines, visible_ascii, Entropy};

fuzz_target!(|data: &[u8]| {
    let input = lines(data);
    let mut config = Correlation::default();
    if let Some(max) = directive(input.directives, "max") {
        let n: usize = std::str::from_utf8(max).ok().and_then(|s| s.parse().ok()).unwrap_or(128);
        config.max_length = n.clamp(1, 4096);
    }
    match directive(input.directives, "gen") {
        Some(b"trace_id") => config.generator = Generator::TraceId,
        Some(b"request_id") => config.generator = Generator::RequestId,
        _ => {}
    }
    let headers = &input.headers;
    let get = |name: &'static [u8]| headers.iter().filter(move |(n, _)| *n == name).map(|(_, v)| *v);
    let mut ids: Vec<Option<&[u8]>> = get(b"x-correlation-id").map(Some).collect();
    ids.push(None);
    for incoming in ids {
        match check(incoming, &config) {
            Ok(id) => {
                assert_eq!(Some(id.as_bytes()), incoming);
                assert!(!id.is_empty() && id.len() <= config.max_length && visible_ascii(id.as_bytes()));
            }
            Err(CorrelationOutcome::Generated) => assert!(incoming.is_none()),
            Err(CorrelationOutcome::ReplacedInvalid) => {
                assert!(!is_valid(incoming.expect("replaced means present"), config.max_length))
            }
            Err(CorrelationOutcome::Kept) => panic!("check never reports kept as an error"),
        }
    }
    let trace_id = get(b"trace-id").next().map(|t| String::from_utf8_lossy(t).into_owned());
    let request_id = get(b"x-request-id").next().map(<[u8]>::to_vec);
    let id = generate(&config, trace_id.as_deref(), || request_id.clone(), &mut Entropy(7));
    assert!(!id.is_empty() && visible_ascii(id.as_bytes()), "generated {id:?}");
    let is_uuid = id.len() == 36 && id.as_bytes()[14] == b'4';
    if !is_uuid || trace_id.as_deref() == Some(id.as_str()) || request_id.as_deref() == Some(id.as_bytes()) {
        let source = match config.generator {
            Generator::TraceId => trace_id.as_deref().map(str::as_bytes),
            Generator::RequestId => request_id.as_deref(),
            Generator::Uuid4 => None,
        };
        if !is_uuid {
            assert_eq!(source, Some(id.as_bytes()), "a borrowed id is copied exactly");
        }
        assert!(is_valid(id.as_bytes(), config.max_length), "a borrowed id fits max_length");
    }
    if config.max_length >= 36 {
        assert!(is_valid(id.as_bytes(), config.max_length), "the next hop keeps a generated id");
    }
});
