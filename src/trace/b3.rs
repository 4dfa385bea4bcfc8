//! B3 propagation (openzipkin/b3-propagation), accepted when a request has no valid
//! `traceparent`: the single `b3` header (which wins when valid) or the multi-header form
//! `x-b3-traceid` / `x-b3-spanid` / `x-b3-sampled` / `x-b3-flags`. 64-bit trace-ids are padded
//! with zeros on the left. Debug (`d`, `x-b3-flags: 1`) means sampled.

use super::traceparent::{hex_into, trim_ows};
use crate::headers::HeaderMap;

/// What the B3 headers say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct B3 {
    /// Trace-id (padded to 16 bytes) and span-id, when the headers carry a valid pair.
    pub ids: Option<([u8; 16], [u8; 8])>,
    /// The sampling decision, when the headers carry one.
    pub sampled: Option<bool>,
}

/// Any B3 header (single `b3` or `x-b3-*`) is present.
pub fn present(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, _)| name == b"b3" || name.starts_with(b"x-b3-"))
}

impl B3 {
    pub fn read(headers: &HeaderMap) -> B3 {
        // Most requests carry no B3 at all: one pass over the names instead of five lookups.
        if !present(headers) {
            return B3::default();
        }
        if let Some(single) = headers.get("b3").and_then(single) {
            return single;
        }
        let ids = match (headers.get("x-b3-traceid"), headers.get("x-b3-spanid")) {
            (Some(t), Some(s)) => ids(trim_ows(t), trim_ows(s)),
            _ => None,
        };
        let debug = headers.get("x-b3-flags").map(trim_ows) == Some(b"1");
        let sampled = match headers.get("x-b3-sampled").map(trim_ows) {
            _ if debug => Some(true),
            Some(b"1" | b"true") => Some(true),
            Some(b"0" | b"false") => Some(false),
            _ => None,
        };
        B3 { ids, sampled }
    }
}

/// `{trace-id}-{span-id}[-{sampling}[-{parent-span-id}]]`, or a lone sampling state.
fn single(raw: &[u8]) -> Option<B3> {
    let value = trim_ows(raw);
    let mut parts = value.split(|&b| b == b'-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        return Some(B3 { ids: None, sampled: Some(sampling(first)?) });
    };
    let ids = ids(first, span)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(sampling(s)?),
    };
    if let Some(parent) = parts.next() {
        let mut p = [0u8; 8];
        hex_into(parent, &mut p)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3 { ids: Some(ids), sampled })
}

fn sampling(s: &[u8]) -> Option<bool> {
    match s {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

fn ids(trace: &[u8], span: &[u8]) -> Option<([u8; 16], [u8; 8])> {
    let mut trace_id = [0u8; 16];
    match trace.len() {
        32 => hex_into(trace, &mut trace_id)?,
        16 => hex_into(trace, trace_id.get_mut(8..)?)?,
        _ => return None,
    }
    let mut span_id = [0u8; 8];
    hex_into(span, &mut span_id)?;
    (trace_id != [0; 16] && span_id != [0; 8]).then_some((trace_id, span_id))
}
