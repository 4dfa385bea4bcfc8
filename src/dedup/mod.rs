//! Event-id deduplication (docs/behaviour.md, "Event-id deduplication"): the key of a request, and
//! the bounded store of keys.
//!
//! * [`event_key`] finds and validates a request's key: the first present header of `headers`
//!   (`Idempotency-Key` may be a structured-field string; `ce-id` is keyed with `ce-source`).
//! * [`Store`] is a fixed set of buckets in shared data, each a small list of entries changed by
//!   compare-and-swap; its layout bounds memory by configuration (see [`Layout`]).

pub mod body_key;
pub mod etcd;
pub mod remote;
pub mod shared;
pub mod stage;
pub mod store;
#[cfg(test)]
mod tests;

use std::hash::Hasher;

use crate::headers::HeaderMap;

pub use store::{Entry, Layout, Phase};

/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// Body bytes hashed by `fingerprint: "body"`.
pub const MAX_BODY_FINGERPRINT: usize = 64 * 1024;

/// `meshguard_dedup_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupOutcome {
    First,
    Duplicate,
    InFlight,
    Released,
    Missing,
    Invalid,
    Mismatch,
    Generated,
    /// A CloudEvents batch: several events, no single key; passed on.
    Batch,
    /// The shared store could not tell (down, slow, or cooling off) and its `on_error` is
    /// `reject` (refused with 503) or `pass` (passed on unchecked).
    Unavailable,
}

impl DedupOutcome {
    pub const ALL: [DedupOutcome; 10] = [
        DedupOutcome::First,
        DedupOutcome::Duplicate,
        DedupOutcome::InFlight,
        DedupOutcome::Released,
        DedupOutcome::Missing,
        DedupOutcome::Invalid,
        DedupOutcome::Mismatch,
        DedupOutcome::Generated,
        DedupOutcome::Batch,
        DedupOutcome::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DedupOutcome::First => "first",
            DedupOutcome::Duplicate => "duplicate",
            DedupOutcome::InFlight => "in_flight",
            DedupOutcome::Released => "released",
            DedupOutcome::Missing => "missing",
            DedupOutcome::Invalid => "invalid",
            DedupOutcome::Mismatch => "mismatch",
            DedupOutcome::Generated => "generated",
            DedupOutcome::Batch => "batch",
            DedupOutcome::Unavailable => "unavailable",
        }
    }
}

/// A request's event key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// No header of the list is present.
    Missing,
    /// `header` is present but its value is not a valid key.
    Invalid { header: String, reason: &'static str },
    /// The key (for CloudEvents, `ce-source` length-prefixed, then `ce-id`) and the event id as
    /// it goes into logs.
    Valid { key: Vec<u8>, event_id: String },
}

/// Which request owns an entry while it is in flight: random, so that no other request can
/// complete or release it; never 0.
pub fn nonce(entropy: &mut impl crate::ids::Entropy) -> u32 {
    let mut bytes = [0u8; 4];
    entropy.fill(&mut bytes);
    u32::from_le_bytes(bytes) | 1
}

/// The key of a request by the configured header list. A key header sent on more than one line
/// is invalid: the lines reach the service joined (`a, b`), and keying on one of them would later
/// answer a genuine `a` as a duplicate it never was.
pub fn event_key(headers: &HeaderMap, names: &[String]) -> Key {
    for name in names {
        let mut lines = headers.all(name);
        let Some(raw) = lines.next() else {
            continue;
        };
        if lines.next().is_some() {
            return Key::Invalid { header: name.clone(), reason: "sent on more than one line" };
        }
        if name == "ce-id" {
            return cloudevent_key(headers, raw);
        }
        let value = if name == "idempotency-key" { sf_string(raw) } else { Some(raw.to_vec()) };
        let Some(value) = value else {
            return Key::Invalid { header: name.clone(), reason: "not a valid structured-field string" };
        };
        if let Some(reason) = invalid(&value) {
            return Key::Invalid { header: name.clone(), reason };
        }
        let event_id = String::from_utf8_lossy(&value).into_owned();
        return Key::Valid { key: value, event_id };
    }
    Key::Missing
}

/// A binary-mode CloudEvent: identified by `ce-source` and `ce-id` together, each
/// percent-decoded as the CloudEvents HTTP binding says (§3.1.3.2), so that the same event in
/// structured mode (`source`, `id` in the JSON body) has the same key.
fn cloudevent_key(headers: &HeaderMap, raw_id: &[u8]) -> Key {
    let invalid_header = |header: &str, reason| Key::Invalid { header: header.to_string(), reason };
    if let Some(reason) = invalid(raw_id) {
        return invalid_header("ce-id", reason);
    }
    let Some(id) = percent_decode(raw_id) else {
        return invalid_header("ce-id", "not a valid percent-encoded value");
    };
    let mut sources = headers.all("ce-source");
    let raw_source = sources.next().unwrap_or_default();
    if sources.next().is_some() {
        return invalid_header("ce-source", "sent on more than one line");
    }
    if !raw_source.is_empty() && invalid(raw_source).is_some() {
        return invalid_header("ce-source", "must be visible ASCII, at most 255 bytes");
    }
    let Some(source) = percent_decode(raw_source) else {
        return invalid_header("ce-source", "not a valid percent-encoded value");
    };
    match cloudevent(&source, &id) {
        Ok(key) => key,
        Err(reason) => invalid_header("ce-id", reason),
    }
}

/// The key of the CloudEvent `source` + `id` (decoded), from headers or from a JSON body alike.
/// The source is length-prefixed: joined with a separator, (`/orders a`, `b`) and (`/orders`,
/// `a b`) would be one key, and the second event answered as a duplicate of the first.
pub fn cloudevent(source: &[u8], id: &[u8]) -> Result<Key, &'static str> {
    if let Some(reason) = invalid_text(id) {
        return Err(reason);
    }
    let mut key = Vec::with_capacity(4 + source.len() + id.len());
    key.extend_from_slice(&(source.len() as u32).to_le_bytes());
    key.extend_from_slice(source);
    key.extend_from_slice(id);
    Ok(Key::Valid { key, event_id: String::from_utf8_lossy(id).into_owned() })
}

/// A key found in a JSON body (`body_key`): decoded text, not a header value, so any UTF-8
/// without control characters, 1 to 255 bytes.
pub fn body_key(value: &[u8]) -> Key {
    match invalid_text(value) {
        Some(reason) => Key::Invalid { header: "body".into(), reason },
        None => Key::Valid { key: value.to_vec(), event_id: String::from_utf8_lossy(value).into_owned() },
    }
}

fn invalid_text(value: &[u8]) -> Option<&'static str> {
    if value.is_empty() {
        Some("empty")
    } else if value.len() > MAX_KEY_LEN {
        Some("longer than 255 bytes")
    } else if std::str::from_utf8(value).is_err() || value.iter().any(|b| b.is_ascii_control()) {
        Some("must be UTF-8 text without control characters")
    } else {
        None
    }
}

/// `%XX` sequences decoded; `None` for a `%` not followed by two hex digits.
fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hi = (*bytes.next()? as char).to_digit(16)?;
        let lo = (*bytes.next()? as char).to_digit(16)?;
        out.push((hi * 16 + lo) as u8);
    }
    Some(out)
}

fn invalid(value: &[u8]) -> Option<&'static str> {
    if value.is_empty() {
        Some("empty")
    } else if value.len() > MAX_KEY_LEN {
        Some("longer than 255 bytes")
    } else if !value.iter().all(u8::is_ascii_graphic) {
        Some("must be visible ASCII (0x21-0x7E)")
    } else {
        None
    }
}

/// An `Idempotency-Key` value: a structured-field string (`"abc"`, with `\"` and `\\` escapes,
/// RFC 8941 §3.3.3) or, leniently, a bare token. `None` for a malformed string.
fn sf_string(raw: &[u8]) -> Option<Vec<u8>> {
    let Some(inner) = raw.strip_prefix(b"\"") else {
        return Some(raw.to_vec());
    };
    let inner = inner.strip_suffix(b"\"")?;
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&e @ (b'"' | b'\\')) => out.push(e),
                _ => return None,
            },
            b'"' => return None,
            b => out.push(b),
        }
    }
    Some(out)
}

/// SipHash-1-3 with fixed keys, fed length-prefixed fields: the same value on every platform and
/// from every build. Ids and fingerprints live in shared data, which outlives a VM: a reload with a
/// new build of meshguard (a rolling upgrade) must find the entries the old build wrote, so the
/// hash cannot be `std`'s `DefaultHasher`, whose algorithm may change between Rust releases (and
/// whose slice length prefix is 4 bytes on wasm32, 8 on the host).
struct StableHasher(siphasher::sip::SipHasher13);

impl StableHasher {
    fn new(salt: u64) -> StableHasher {
        StableHasher(siphasher::sip::SipHasher13::new_with_keys(salt, 0))
    }

    fn field(&mut self, bytes: &[u8]) -> &mut StableHasher {
        self.0.write(&(bytes.len() as u64).to_le_bytes());
        self.0.write(bytes);
        self
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// The 128-bit id of a key in the store: scoped by rule and, with `scope: "caller"`, by caller.
pub fn key_id(rule: &str, caller: Option<&[u8]>, key: &[u8]) -> u128 {
    let half = |salt: u64| {
        let mut h = StableHasher::new(salt);
        h.field(rule.as_bytes());
        match caller {
            // A caller is never confused with no caller: the marker is a field of its own.
            Some(caller) => h.field(b"caller").field(caller),
            None => h.field(b""),
        };
        h.field(key).finish()
    };
    u128::from(half(1)) << 64 | u128::from(half(2))
}

/// A request fingerprint (0 for `fingerprint: "none"`, so never 0 here).
pub fn fingerprint(method: &[u8], path: &[u8], body: Option<&[u8]>) -> u64 {
    let mut h = StableHasher::new(3);
    h.field(method).field(path);
    if let Some(body) = body {
        h.field(b"body").field(body.get(..MAX_BODY_FINGERPRINT).unwrap_or(body));
    }
    h.finish().max(1)
}
