//! The whole per-request trace decision (`trace::decide`) from a request's header map:
//! traceparent (any number of lines), tracestate, single and multi-header B3, in each mode.
//!
//! Input: `name:value` lines (see `fuzz/src/lib.rs`); an optional first line `@hop`, `@defer`,
//! `@propagate`, `@off`, `@b3=ignore`, `@ratio=0`… picks the configuration (default: `auto`,
//! which decides as `propagate` does: it only defers once a worker has seen Envoy's tracer).
//!
//! Invariants: the ids going upstream are never zero; a header meshguard writes parses back to
//! exactly the context it reports (so logs and the upstream agree); a kept header is the
//! canonical line of that context; `propagated` continues the incoming trace-id (and, in
//! `propagate` mode, its parent-id and flags); new traces carry the random flag and drop
//! `tracestate`, B3 ones don't carry it; a combined `tracestate` is a valid list; sampling
//! follows `sample_ratio` 0 and 1 exactly unless B3 decided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::config::{Trace, TraceMode, B3 as B3Setting};
use meshguard::headers::HeaderMap;
use meshguard::trace::b3::B3;
use meshguard::trace::tracestate::{self, State};
use meshguard::trace::{self, traceparent, TraceOutcome, Tracestate, RANDOM, SAMPLED};
use meshguard_fuzz::{directive, lines, words, Entropy};

fuzz_target!(|data: &[u8]| {
    let input = lines(data);
    let mut config = Trace::default();
    for w in words(input.directives) {
        match w {
            b"hop" => config.mode = TraceMode::Hop,
            b"defer" => config.mode = TraceMode::Defer,
            b"propagate" => config.mode = TraceMode::Propagate,
            b"off" => config.enabled = false,
            b"b3=ignore" => config.b3 = B3Setting::Ignore,
            _ => {}
        }
    }
    if let Some(r) = directive(input.directives, "ratio") {
        config.sample_ratio = match r {
            b"0" => 0.0,
            b"1" => 1.0,
            _ => 0.5,
        };
    }
    let headers = HeaderMap::from_pairs(&input.headers);
    let b3 = B3::read(&headers);
    if let Some((t, s)) = b3.ids {
        assert!(t != [0; 16] && s != [0; 8]);
    }
    if let Some(c) = trace::from_upstream_headers(&headers) {
        assert!(c.trace_id != [0; 16] && c.parent_id != [0; 8]);
    }

    let decision = trace::decide(&headers, &config, &mut Entropy(data.len() as u64));
    // `auto` decides as `propagate` (the stage defers, not the decision).
    let propagating = matches!(config.mode, TraceMode::Propagate | TraceMode::Auto);
    let Some(d) = decision else {
        assert!(!config.enabled || config.mode == TraceMode::Defer);
        return;
    };
    assert!(config.enabled && config.mode != TraceMode::Defer);
    let c = d.context;
    assert!(c.trace_id != [0; 16] && c.parent_id != [0; 8]);
    let incoming: Vec<&[u8]> = headers.all("traceparent").collect();
    match &d.traceparent {
        Some(line) => {
            let p = traceparent::parse(line.as_bytes()).expect("meshguard writes valid traceparent");
            assert!(p.canonical);
            assert_eq!(p.context, c, "the header written is the context reported");
        }
        None => {
            assert_eq!(d.outcome, TraceOutcome::Propagated);
            assert!(propagating);
            assert_eq!(incoming.len(), 1);
            let p = traceparent::parse(incoming[0]).expect("kept header is valid");
            assert!(p.canonical && p.context == c, "a kept header is the canonical line of the context");
        }
    }
    let has_tracestate = headers.get("tracestate").is_some();
    match d.outcome {
        TraceOutcome::Propagated => {
            assert_eq!(incoming.len(), 1);
            let p = traceparent::parse(incoming[0]).expect("propagated means valid");
            assert_eq!(p.context.trace_id, c.trace_id);
            if propagating {
                assert_eq!(p.context, c);
            } else {
                assert_eq!(c.flags, p.context.flags & (SAMPLED | RANDOM));
            }
        }
        TraceOutcome::Started | TraceOutcome::RestartedInvalid => {
            assert_eq!(incoming.is_empty(), d.outcome == TraceOutcome::Started);
            assert!(c.flags & RANDOM != 0, "generated trace-ids carry the random flag");
            if b3.sampled.is_none() {
                if config.sample_ratio == 0.0 {
                    assert_eq!(c.flags & SAMPLED, 0);
                }
                if config.sample_ratio == 1.0 {
                    assert_eq!(c.flags & SAMPLED, SAMPLED);
                }
            }
        }
        TraceOutcome::FromB3 => {
            assert_eq!(config.b3, B3Setting::Accept);
            assert_eq!(c.flags & RANDOM, 0, "B3 ids carry no randomness promise");
            assert_eq!(b3.ids.map(|(t, _)| t), Some(c.trace_id));
        }
    }
    if d.outcome != TraceOutcome::Propagated {
        let expected = if has_tracestate { Tracestate::Remove } else { Tracestate::Keep };
        assert_eq!(d.tracestate, expected, "a restarted trace drops tracestate");
    }
    if let Tracestate::Set(value) = &d.tracestate {
        assert_eq!(tracestate::combine(std::iter::once(value.as_bytes())), State::Line(value.as_bytes()));
    }
});
