//! All request headers, read from the host in one call and looked up by name here.
//!
//! One `proxy_get_header_map_pairs` costs about as much as one single-header read, and meshguard
//! needs several headers per request (pseudo-headers for rules, the correlation id, the trace
//! headers, `x-request-id`). It is also the only way to see every line of a repeated header: the
//! single-value getter returns the first line only, and W3C Trace Context needs all of them (two
//! `traceparent` lines make the context invalid; `tracestate` lines are combined).
//!
//! The buffer is proxy-wasm's serialised map: `u32` count, then `count` pairs of `u32` key and
//! value lengths, then each key and value followed by a NUL. Everything is little-endian bytes;
//! nothing here assumes UTF-8, and a malformed buffer yields an empty map, never a panic.

use std::ops::Range;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    buf: Vec<u8>,
    entries: Vec<(Range<usize>, Range<usize>)>,
}

impl HeaderMap {
    /// Parses a serialised map. A truncated or inconsistent buffer gives an empty map.
    pub fn from_serialized(buf: Vec<u8>) -> HeaderMap {
        let entries = index(&buf).unwrap_or_default();
        HeaderMap { buf, entries }
    }

    /// Builds the serialised form of `pairs` (tests, benchmarks), then parses it.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> HeaderMap {
        let mut buf = Vec::new();
        buf.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
        for (k, v) in pairs {
            buf.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
            buf.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            buf.extend_from_slice(k.as_ref());
            buf.push(0);
            buf.extend_from_slice(v.as_ref());
            buf.push(0);
        }
        HeaderMap::from_serialized(buf)
    }

    /// The first line of header `name` (names are lower case in Envoy's maps).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
    }

    /// Every line of header `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().filter_map(|(k, v)| Some((self.buf.get(k.clone())?, self.buf.get(v.clone())?)))
    }

    /// The serialised form this map was parsed from.
    pub fn serialized(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn index(buf: &[u8]) -> Option<Vec<(Range<usize>, Range<usize>)>> {
    if buf.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(buf, 0)? as usize;
    // Each entry needs 8 bytes of lengths and two NULs: a count beyond that is corrupt.
    if count > buf.len() / 10 {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for n in 0..count {
        let key_len = u32_at(buf, 4 + n * 8)? as usize;
        let value_len = u32_at(buf, 8 + n * 8)? as usize;
        let key = data..data.checked_add(key_len)?;
        let value_start = key.end.checked_add(1)?;
        let value = value_start..value_start.checked_add(value_len)?;
        data = value.end.checked_add(1)?;
        if data > buf.len() {
            return None;
        }
        entries.push((key, value));
    }
    Some(entries)
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn looks_up_first_and_all_lines_as_bytes() {
        let map = HeaderMap::from_pairs(&[
            (":method", &b"GET"[..]),
            ("tracestate", b"a=1"),
            ("x-odd", b"caf\xe9"),
            ("tracestate", b""),
            ("tracestate", b"b=2"),
        ]);
        assert_eq!(map.len(), 5);
        assert_eq!(map.get(":method"), Some(&b"GET"[..]));
        assert_eq!(map.get("x-odd"), Some(&b"caf\xe9"[..]));
        assert_eq!(map.all("tracestate").collect::<Vec<_>>(), vec![&b"a=1"[..], b"", b"b=2"]);
        assert_eq!(map.get("traceparent"), None);
        assert_eq!(map.get("method"), None);
    }

    #[test]
    fn empty_and_malformed_buffers_give_an_empty_map() {
        assert!(HeaderMap::from_serialized(Vec::new()).is_empty());
        let good = HeaderMap::from_pairs(&[("a", "1"), ("bb", "22")]).buf;
        for cut in 1..good.len() {
            let map = HeaderMap::from_serialized(good[..cut].to_vec());
            assert!(map.is_empty(), "truncated at {cut}");
        }
        // A count that claims more entries than the buffer can hold.
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::from_serialized(huge).is_empty());
        // A length that points past the end.
        let mut long = good;
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::from_serialized(long).is_empty());
    }
}
