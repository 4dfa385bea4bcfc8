//! Dedup event keys (SPEC §2): `x-event-id`, `Idempotency-Key` (an RFC 8941 sf-string or a bare
//! token), CloudEvents `ce-id` + `ce-source`; plus `:authority` without port for rule matching.
//!
//! Input: `name:value` lines; an optional first line `@name name …` replaces the default header
//! list (`x-event-id idempotency-key ce-id`).
//!
//! Invariants: the first present header of the list decides; a key header (or `ce-source`) on
//! more than one line is invalid; a valid key is 1-255 bytes of visible ASCII (CloudEvents:
//! `ce-source` length-prefixed, then `ce-id`, each percent-decoded); the event id for logs is the decoded
//! value; an Idempotency-Key re-encoded as an sf-string gives the same key back;
//! `Missing` only when no listed header is present; the key id and fingerprint are deterministic
//! and the fingerprint is never 0 (0 means "none").
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::dedup::{event_key, fingerprint, key_id, Key, MAX_KEY_LEN};
use meshguard::headers::HeaderMap;
use meshguard::rules::host_without_port;
use meshguard_fuzz::{lines, visible_ascii, words};

fn valid_value(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_KEY_LEN && visible_ascii(v)
}

/// `%XX` decoded, as the CloudEvents HTTP binding says; `None` for a broken `%`.
fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            // Two hex digits exactly (from_str_radix alone would take a sign: "%+e").
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Some(out)
}

fn sf_encode(key: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in key {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

fuzz_target!(|data: &[u8]| {
    let input = lines(data);
    let mut names: Vec<String> = words(input.directives).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
    if names.is_empty() {
        names = vec!["x-event-id".into(), "idempotency-key".into(), "ce-id".into()];
    }
    let headers = HeaderMap::from_pairs(&input.headers);
    let first = names.iter().find(|n| headers.get(n).is_some());
    let key = event_key(&headers, &names);
    match (&key, first) {
        (Key::Missing, None) => {}
        (Key::Missing, Some(n)) => panic!("{n} is present but the key is missing"),
        (_, None) => panic!("a key without any listed header: {key:?}"),
        (Key::Invalid { header, reason }, Some(n)) => {
            assert!(header == n || (n == "ce-id" && header == "ce-source"), "{header} vs {n}");
            let lines = headers.all(header).count();
            if *reason == "sent on more than one line" {
                assert!(lines > 1, "{header}: {lines} lines");
            } else {
                assert_eq!(lines, 1, "one line, or that is the reason");
                if n != "idempotency-key" && header == n && n != "ce-id" {
                    assert!(!valid_value(headers.get(n).unwrap_or_default()));
                }
                if n == "ce-id" {
                    // The raw values are visible ASCII, percent-decoding fails, or the decoded
                    // id is no key.
                    let raw = headers.get(header).unwrap_or_default();
                    let decoded = percent_decode(raw);
                    let bad_text = |v: &[u8]| v.is_empty() || v.len() > MAX_KEY_LEN || std::str::from_utf8(v).is_err() || v.iter().any(|b| b.is_ascii_control());
                    assert!(
                        !valid_value(raw) && !(header == "ce-source" && raw.is_empty())
                            || decoded.is_none()
                            || header == "ce-id" && decoded.as_deref().is_some_and(bad_text),
                        "{header}: {reason}"
                    );
                }
            }
        }
        (Key::Valid { key, event_id }, Some(n)) => {
            let raw = headers.get(n).unwrap_or_default();
            assert_eq!(headers.all(n).count(), 1, "a key header on one line");
            if n == "ce-id" {
                let source = headers.get("ce-source").unwrap_or_default();
                assert!(source.is_empty() || valid_value(source));
                assert!(valid_value(raw));
                let source = percent_decode(source).expect("a valid source decodes");
                let mut expected = (source.len() as u32).to_le_bytes().to_vec();
                expected.extend_from_slice(&source);
                let id = percent_decode(raw).expect("a valid id decodes");
                expected.extend_from_slice(&id);
                assert_eq!(*key, expected);
                assert_eq!(event_id.as_bytes(), &id[..]);
            } else {
                assert!(valid_value(key), "key {key:?}");
                assert_eq!(event_id.as_bytes(), &key[..]);
                if n == "idempotency-key" {
                    let again = HeaderMap::from_pairs(&[("idempotency-key", sf_encode(key))]);
                    let k2 = event_key(&again, &["idempotency-key".to_string()]);
                    assert_eq!(k2, Key::Valid { key: key.clone(), event_id: event_id.clone() }, "sf-string round trip");
                } else {
                    assert_eq!(&key[..], raw);
                }
            }
            let caller = headers.get("x-caller");
            let id = key_id("rule", caller, key);
            assert_eq!(id, key_id("rule", caller, key));
        }
    }
    let method = headers.get(":method").unwrap_or_default();
    let path = headers.get(":path").unwrap_or_default();
    let body = headers.get("body");
    let f = fingerprint(method, path, body);
    assert!(f != 0 && f == fingerprint(method, path, body));
    if let Some(authority) = headers.get(":authority") {
        let host = host_without_port(authority);
        assert!(authority.starts_with(host), "host is a prefix of the authority");
        if !authority.contains(&b':') {
            assert_eq!(host, authority, "nothing but a port is stripped");
        }
    }
});
