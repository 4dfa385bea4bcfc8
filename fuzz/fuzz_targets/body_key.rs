//! Event keys in a streamed JSON body (docs/behaviour.md "Keys in the body"): the incremental
//! scanner `dedup::body_key::Scan`, fed arbitrary bytes in arbitrary chunks.
//!
//! Input: one byte picks the pointers, the next bytes pick chunk sizes (until a 0), the rest is
//! the body.
//!
//! Invariants: no panic; the answer is the same for every chunking and for the body fed whole;
//! once `feed` says done, more bytes change nothing; and on a body that serde_json accepts (with
//! the first of duplicate members kept, as the scanner does) and that is not nested too deeply,
//! each pointer finds exactly what serde_json's value holds there: a string (its UTF-8 bytes),
//! an integer (its decimal text), too long (over 255 bytes), or missing.
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use meshguard::dedup::body_key::{Found, Pointer, Scan, MAX_DEPTH};
use meshguard::dedup::MAX_KEY_LEN;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

const POINTERS: [&str; 8] = ["", "/id", "/source", "/eventId", "/data/orderId", "/a/0", "/a/1/id", "/\u{e9}"];

/// A serde_json value where the first of duplicate members wins.
struct FirstWins(Value);

impl<'de> Deserialize<'de> for FirstWins {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FirstWinsVisitor)
    }
}

struct FirstWinsVisitor;

impl<'de> Visitor<'de> for FirstWinsVisitor {
    type Value = FirstWins;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<FirstWins, E> {
        Ok(FirstWins(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstWins, A::Error> {
        let mut out = Vec::new();
        while let Some(FirstWins(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(FirstWins(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FirstWins, A::Error> {
        let mut out = Map::new();
        while let Some((k, FirstWins(v))) = map.next_entry::<String, FirstWins>()? {
            out.entry(k).or_insert(v);
        }
        Ok(FirstWins(Value::Object(out)))
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What the scanner must find; `None` where serde_json cannot tell: an integer too large for
/// 64 bits is an f64 there (its digits are lost), while it is still an integer key here.
fn expected(v: &Value, pointer: &str) -> Option<Found> {
    let key = match v.pointer(pointer) {
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string().into_bytes(),
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => return None,
        _ => return Some(Found::Missing),
    };
    Some(if key.len() > MAX_KEY_LEN { Found::TooLong } else { Found::Value(key) })
}

fn run(pointers: &[Pointer], chunks: &mut dyn Iterator<Item = &[u8]>) -> Vec<Found> {
    let mut scan = Scan::new(pointers);
    let mut done_at: Option<Vec<Option<Found>>> = None;
    for chunk in chunks {
        let done = scan.feed(chunk);
        match &done_at {
            Some(before) => assert_eq!(before.as_slice(), scan.found(), "changed after done"),
            None if done => done_at = Some(scan.found().to_vec()),
            None => {}
        }
    }
    scan.finish()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let chosen: Vec<&str> = POINTERS.iter().enumerate().filter(|(i, _)| pick & (1 << i) != 0).map(|(_, p)| *p).collect();
    let pointers: Vec<Pointer> = chosen.iter().map(|p| Pointer::parse(p).expect("valid pointer")).collect();
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (sizes, body) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());

    let whole = run(&pointers, &mut std::iter::once(body));
    let mut at = 0;
    let mut sizes_iter = sizes.iter().cycle();
    let mut chunks = Vec::new();
    while at < body.len() {
        let size = sizes_iter.next().map_or(body.len(), |&s| usize::from(s));
        let end = (at + size.max(1)).min(body.len());
        chunks.push(&body[at..end]);
        at = end;
    }
    let chunked = run(&pointers, &mut chunks.into_iter());
    assert_eq!(whole, chunked, "the chunking changed the answer");

    if let Ok(FirstWins(value)) = serde_json::from_slice::<FirstWins>(body) {
        if depth(&value) < MAX_DEPTH {
            for (pointer, found) in chosen.iter().zip(&whole) {
                if let Some(expected) = expected(&value, pointer) {
                    assert_eq!(found, &expected, "pointer {pointer:?}");
                }
            }
        }
    }
});
