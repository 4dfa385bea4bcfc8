//! Event keys in a JSON request body, found while the body streams (docs/behaviour.md, "Event-id
//! deduplication", *Keys in the body*): an incremental scanner that follows a few RFC 6901 JSON
//! Pointers through the bytes it is fed, chunk by chunk, and stops as soon as every pointer is
//! resolved. It never holds the document: only the container stack and the value being read. A
//! pointer near the start of a 10 MB body is decided on the chunk that completes its value.
//!
//! Differences from a parser that reads the whole document, by design: the first occurrence of a
//! duplicated member name counts (RFC 8259 leaves duplicates to the implementation; deciding early
//! needs the first); and once every pointer is resolved the rest is not read, so JSON errors after
//! the last pointed-to value do not matter. A document that is not JSON up to that point resolves
//! every unresolved pointer as [`Found::Missing`].

use super::MAX_KEY_LEN;

/// Containers deeper than this make the body "not JSON" here (no unbounded stack).
pub const MAX_DEPTH: usize = 64;
/// At most this many pointers at once (a mask of 32 bits).
pub const MAX_TARGETS: usize = 32;

/// An RFC 6901 JSON Pointer: its reference tokens, unescaped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pointer(pub Vec<Vec<u8>>);

impl Pointer {
    /// `""` (the whole document) or `/a/b~1c/0`; `~0` is `~`, `~1` is `/`.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer(Vec::new()));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("must be a JSON Pointer (RFC 6901): empty or starting with \"/\", got {text:?}"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = Vec::with_capacity(raw.len());
            let mut bytes = raw.bytes();
            while let Some(b) = bytes.next() {
                match (b, b == b'~') {
                    (_, false) => token.push(b),
                    (_, true) => match bytes.next() {
                        Some(b'0') => token.push(b'~'),
                        Some(b'1') => token.push(b'/'),
                        _ => return Err(format!("invalid JSON Pointer {text:?}: \"~\" must be followed by 0 or 1")),
                    },
                }
            }
            tokens.push(token);
        }
        Ok(Pointer(tokens))
    }

    /// A reference token as an array index: `0` or digits without a leading zero.
    fn index(token: &[u8]) -> Option<usize> {
        let digits = token.iter().all(u8::is_ascii_digit);
        if token.is_empty() || !digits || token.len() > 1 && token.first() == Some(&b'0') {
            return None;
        }
        std::str::from_utf8(token).ok()?.parse().ok()
    }
}

/// What the body showed for one pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// A string (decoded, UTF-8) or an integer (its decimal text).
    Value(Vec<u8>),
    /// A string or integer longer than a key may be.
    TooLong,
    /// Absent, `null`, another type, or the body is not JSON as far as it was read.
    Missing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// After `{` or `[`: a first member / element, or the end.
    FirstOrEnd,
    /// After `,`: a member name (object) or an element (array).
    Next,
    /// After a member name.
    Colon,
    /// After `:`.
    Value,
    /// After a member's value or an element.
    CommaOrEnd,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    kind: Kind,
    /// Targets whose path runs through this container (by bit).
    mask: u32,
    expect: Expect,
    /// The next element's index (arrays).
    index: usize,
    /// Targets matched by the member name just read (objects).
    member: u32,
}

/// The token being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// Between tokens.
    None,
    /// A string: a member name (`key`) or a value; `escape` counts the bytes of an escape seen
    /// so far (1 after `\`, 2..=5 in `\uXXXX`); `utf8` the continuation bytes still expected.
    String { key: bool, escape: u8, unit: u16, high: Option<u16>, utf8: u8, lo: u8, hi: u8 },
    /// A number, in its grammar's states.
    Number(Num),
    /// `true`, `false` or `null`: the bytes still expected.
    Literal(&'static [u8]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

/// The scanner: feed it the body's bytes in order, in chunks of any size.
#[derive(Clone, Debug)]
pub struct Scan {
    pointers: Vec<Pointer>,
    found: Vec<Option<Found>>,
    stack: Vec<Frame>,
    token: Token,
    /// Targets the value being read is (its pointer ends here), and those it leads towards.
    value_mask: u32,
    path_mask: u32,
    /// The value or member name being read, when it matters (capped).
    text: Vec<u8>,
    /// The text grew past what can matter.
    overflow: bool,
    /// The top-level value is complete.
    ended: bool,
    /// Not JSON: nothing more is read.
    failed: bool,
}

impl Scan {
    /// Follows `pointers` (at most [`MAX_TARGETS`]; more are ignored).
    pub fn new(pointers: &[Pointer]) -> Scan {
        let pointers: Vec<Pointer> = pointers.iter().take(MAX_TARGETS).cloned().collect();
        let all = if pointers.is_empty() { 0 } else { u32::MAX >> (32 - pointers.len()) };
        let mut scan = Scan {
            found: vec![None; pointers.len()],
            pointers,
            stack: Vec::new(),
            token: Token::None,
            value_mask: 0,
            path_mask: 0,
            text: Vec::new(),
            overflow: false,
            ended: false,
            failed: false,
        };
        scan.split(all, 0);
        scan
    }

    /// Every pointer is resolved: no more bytes are needed.
    pub fn done(&self) -> bool {
        self.found.iter().all(Option::is_some)
    }

    /// What each pointer found so far (`None`: not resolved yet).
    pub fn found(&self) -> &[Option<Found>] {
        &self.found
    }

    /// Reads more of the body. Returns [`Scan::done`].
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.done() || self.failed {
                break;
            }
            if !self.byte(b) {
                self.fail();
            }
        }
        self.done()
    }

    /// The body ended (or the part that is read): what is still unresolved is missing. A number
    /// that the end completes (a document that is just `42`) is read first.
    pub fn finish(mut self) -> Vec<Found> {
        if let Token::Number(state) = self.token {
            if state.complete() && self.stack.is_empty() {
                self.end_number(state);
            }
        }
        self.found.into_iter().map(|f| f.unwrap_or(Found::Missing)).collect()
    }

    fn unresolved(&self, mask: u32) -> u32 {
        let mut m = mask;
        for (i, f) in self.found.iter().enumerate() {
            if f.is_some() {
                m &= !(1 << i);
            }
        }
        m
    }

    fn resolve(&mut self, mask: u32, found: &Found) {
        for i in 0..self.found.len() {
            if mask & (1 << i) != 0 {
                if let Some(slot) = self.found.get_mut(i) {
                    slot.get_or_insert_with(|| found.clone());
                }
            }
        }
    }

    fn fail(&mut self) {
        self.failed = true;
        self.resolve(u32::MAX, &Found::Missing);
    }

    /// Splits `mask` (targets matched down to `depth` tokens) into those whose pointer ends at
    /// the coming value and those that go deeper.
    fn split(&mut self, mask: u32, depth: usize) {
        let mask = self.unresolved(mask);
        let (mut here, mut deeper) = (0, 0);
        for (i, p) in self.pointers.iter().enumerate() {
            if mask & (1 << i) != 0 {
                if p.0.len() == depth {
                    here |= 1 << i;
                } else {
                    deeper |= 1 << i;
                }
            }
        }
        self.value_mask = here;
        self.path_mask = deeper;
    }

    /// Targets of `mask` whose token at `depth` is this member name or array index.
    fn matching(&self, mask: u32, depth: usize, name: Option<&[u8]>, index: usize) -> u32 {
        let mut m = 0;
        for (i, p) in self.pointers.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let Some(token) = p.0.get(depth) else {
                continue;
            };
            let hit = match name {
                Some(name) => token.as_slice() == name,
                None => Pointer::index(token) == Some(index),
            };
            if hit {
                m |= 1 << i;
            }
        }
        m
    }

    fn is_space(b: u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\n' | b'\r')
    }

    /// One byte. False: not JSON.
    fn byte(&mut self, b: u8) -> bool {
        match self.token {
            Token::String { .. } => self.string_byte(b),
            Token::Number(state) => match number_step(state, b) {
                Some(next) => {
                    self.token = Token::Number(next);
                    self.keep(b);
                    true
                }
                None if state.complete() => {
                    self.end_number(state);
                    self.structural(b)
                }
                None => false,
            },
            Token::Literal(rest) => match rest.split_first() {
                Some((&want, tail)) if want == b => {
                    self.token = Token::Literal(tail);
                    if tail.is_empty() {
                        self.token = Token::None;
                        self.value_done();
                    }
                    true
                }
                _ => false,
            },
            Token::None => self.structural(b),
        }
    }

    fn keep(&mut self, b: u8) {
        if self.value_mask == 0 && !matches!(self.token, Token::String { key: true, .. }) {
            return;
        }
        if self.text.len() >= MAX_KEY_LEN {
            self.overflow = true;
        } else {
            self.text.push(b);
        }
    }

    fn keep_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.keep(b);
        }
    }

    /// Outside a token: structure, whitespace, or the start of a value.
    fn structural(&mut self, b: u8) -> bool {
        if Self::is_space(b) {
            return true;
        }
        if self.ended {
            return false;
        }
        let Some(frame) = self.stack.last().copied() else {
            return self.start_value(b);
        };
        match (frame.kind, frame.expect, b) {
            (Kind::Object, Expect::FirstOrEnd | Expect::Next, b'"') => {
                self.start_string(true);
                true
            }
            (Kind::Object, Expect::FirstOrEnd, b'}') | (Kind::Array, Expect::FirstOrEnd, b']') => self.close(),
            (_, Expect::CommaOrEnd, b'}') if frame.kind == Kind::Object => self.close(),
            (_, Expect::CommaOrEnd, b']') if frame.kind == Kind::Array => self.close(),
            (_, Expect::CommaOrEnd, b',') => {
                self.set_expect(Expect::Next);
                true
            }
            (Kind::Object, Expect::Colon, b':') => {
                self.set_expect(Expect::Value);
                let depth = self.stack.len();
                self.split(frame.member, depth);
                true
            }
            (Kind::Object, Expect::Value, _) => self.start_value(b),
            (Kind::Array, Expect::FirstOrEnd | Expect::Next, _) => {
                let depth = self.stack.len();
                let member = self.matching(frame.mask, depth - 1, None, frame.index);
                if let Some(top) = self.stack.last_mut() {
                    top.index += 1;
                }
                self.split(member, depth);
                self.start_value(b)
            }
            _ => false,
        }
    }

    fn set_expect(&mut self, expect: Expect) {
        if let Some(top) = self.stack.last_mut() {
            top.expect = expect;
        }
    }

    fn start_value(&mut self, b: u8) -> bool {
        self.text.clear();
        self.overflow = false;
        // The container holding this value (if any) expects a comma or its end next.
        self.set_expect(Expect::CommaOrEnd);
        match b {
            b'{' | b'[' => {
                // A container is not a key; the pointers that go deeper follow it.
                self.resolve(self.value_mask, &Found::Missing);
                if self.stack.len() >= MAX_DEPTH {
                    return false;
                }
                let kind = if b == b'{' { Kind::Object } else { Kind::Array };
                let mask = self.path_mask;
                self.stack.push(Frame { kind, mask, expect: Expect::FirstOrEnd, index: 0, member: 0 });
                true
            }
            b'"' => {
                self.start_string(false);
                true
            }
            b'-' | b'0'..=b'9' => {
                self.token = Token::Number(if b == b'-' {
                    Num::Minus
                } else if b == b'0' {
                    Num::Zero
                } else {
                    Num::Int
                });
                self.keep(b);
                true
            }
            b't' => self.literal(b"rue"),
            b'f' => self.literal(b"alse"),
            b'n' => self.literal(b"ull"),
            _ => false,
        }
    }

    fn literal(&mut self, rest: &'static [u8]) -> bool {
        self.token = Token::Literal(rest);
        true
    }

    fn start_string(&mut self, key: bool) {
        self.text.clear();
        self.overflow = false;
        self.token = Token::String { key, escape: 0, unit: 0, high: None, utf8: 0, lo: 0x80, hi: 0xBF };
    }

    fn string_byte(&mut self, b: u8) -> bool {
        let Token::String { key, escape, unit, high, utf8, lo, hi } = self.token else {
            return false;
        };
        let mut next = (escape, unit, high, utf8, lo, hi);
        if utf8 > 0 {
            // A continuation byte within the range RFC 3629 allows at this position.
            if b < lo || b > hi {
                return false;
            }
            self.keep(b);
            next = (0, 0, high, utf8 - 1, 0x80, 0xBF);
        } else if escape == 1 {
            let out = match b {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 0x08,
                b'f' => 0x0C,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    self.token = Token::String { key, escape: 2, unit: 0, high, utf8, lo, hi };
                    return true;
                }
                _ => return false,
            };
            if high.is_some() {
                return false; // a high surrogate must be followed by a low one
            }
            self.keep(out);
            next.0 = 0;
        } else if escape >= 2 {
            let Some(digit) = (b as char).to_digit(16) else {
                return false;
            };
            let unit = unit << 4 | digit as u16;
            if escape < 5 {
                self.token = Token::String { key, escape: escape + 1, unit, high, utf8, lo, hi };
                return true;
            }
            // A complete \uXXXX.
            let code = match (high, unit) {
                (None, 0xD800..=0xDBFF) => {
                    self.token = Token::String { key, escape: 0, unit: 0, high: Some(unit), utf8, lo, hi };
                    return true;
                }
                (None, 0xDC00..=0xDFFF) => return false,
                (None, u) => u32::from(u),
                (Some(h), 0xDC00..=0xDFFF) => 0x10000 + ((u32::from(h) - 0xD800) << 10) + (u32::from(unit) - 0xDC00),
                (Some(_), _) => return false,
            };
            let Some(c) = char::from_u32(code) else {
                return false;
            };
            let mut buf = [0u8; 4];
            self.keep_all(c.encode_utf8(&mut buf).as_bytes());
            next = (0, 0, None, 0, 0x80, 0xBF);
        } else if high.is_some() && b != b'\\' {
            return false;
        } else {
            match b {
                b'"' => return self.end_string(key),
                b'\\' => next.0 = 1,
                0x00..=0x1F => return false,
                0x20..=0x7F => self.keep(b),
                _ => {
                    let Some((utf8, lo, hi)) = utf8_lead(b) else {
                        return false;
                    };
                    self.keep(b);
                    next = (0, 0, None, utf8, lo, hi);
                }
            }
        }
        let (escape, unit, high, utf8, lo, hi) = next;
        self.token = Token::String { key, escape, unit, high, utf8, lo, hi };
        true
    }

    fn end_string(&mut self, key: bool) -> bool {
        self.token = Token::None;
        if key {
            let depth = self.stack.len();
            let (mask, name) = match self.stack.last() {
                Some(frame) => (frame.mask, (!self.overflow).then(|| self.text.clone())),
                None => return false,
            };
            let member = match name {
                Some(name) => self.matching(self.unresolved(mask), depth - 1, Some(&name), 0),
                None => 0,
            };
            if let Some(top) = self.stack.last_mut() {
                top.member = member;
                top.expect = Expect::Colon;
            }
            return true;
        }
        let found = if self.overflow { Found::TooLong } else { Found::Value(std::mem::take(&mut self.text)) };
        self.resolve(self.value_mask, &found);
        self.resolve(self.path_mask, &Found::Missing);
        self.value_done();
        true
    }

    fn end_number(&mut self, state: Num) {
        self.token = Token::None;
        let found = match state {
            Num::Zero | Num::Int if self.overflow => Found::TooLong,
            Num::Zero | Num::Int => Found::Value(std::mem::take(&mut self.text)),
            _ => Found::Missing,
        };
        self.resolve(self.value_mask, &found);
        self.resolve(self.path_mask, &Found::Missing);
        self.value_done();
    }

    /// A scalar value ended (containers end in `close`).
    fn value_done(&mut self) {
        if matches!(self.token, Token::None) {
            // Literals resolve their targets as missing; strings and numbers did already.
            self.resolve(self.value_mask | self.path_mask, &Found::Missing);
        }
        self.value_mask = 0;
        self.path_mask = 0;
        if self.stack.is_empty() {
            self.ended = true;
        }
    }

    fn close(&mut self) -> bool {
        let Some(frame) = self.stack.pop() else {
            return false;
        };
        // What the container did not hold is absent.
        self.resolve(frame.mask, &Found::Missing);
        if self.stack.is_empty() {
            self.ended = true;
        }
        true
    }
}

/// A UTF-8 lead byte (RFC 3629 §4): the continuation bytes that follow it, and the range the
/// first of them must be in (which rules out overlong forms and surrogates); `None` for a byte
/// that cannot start a character.
fn utf8_lead(b: u8) -> Option<(u8, u8, u8)> {
    Some(match b {
        0xC2..=0xDF => (1, 0x80, 0xBF),
        0xE0 => (2, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
        0xED => (2, 0x80, 0x9F),
        0xF0 => (3, 0x90, 0xBF),
        0xF1..=0xF3 => (3, 0x80, 0xBF),
        0xF4 => (3, 0x80, 0x8F),
        _ => return None,
    })
}

fn number_step(state: Num, b: u8) -> Option<Num> {
    Some(match (state, b) {
        (Num::Minus, b'0') => Num::Zero,
        (Num::Minus, b'1'..=b'9') => Num::Int,
        (Num::Int, b'0'..=b'9') => Num::Int,
        (Num::Zero | Num::Int, b'.') => Num::Dot,
        (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
        (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
        (Num::Exp, b'+' | b'-') => Num::ExpSign,
        (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => Num::ExpDigits,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn p(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    fn scan(pointers: &[&str], body: &[u8]) -> Vec<Found> {
        let pointers: Vec<Pointer> = pointers.iter().map(|t| p(t)).collect();
        let mut s = Scan::new(&pointers);
        s.feed(body);
        s.finish()
    }

    fn value(v: &str) -> Found {
        Found::Value(v.as_bytes().to_vec())
    }

    #[test]
    fn pointers_parse_per_rfc_6901() {
        assert_eq!(p(""), Pointer(vec![]));
        assert_eq!(p("/eventId"), Pointer(vec![b"eventId".to_vec()]));
        assert_eq!(p("/a~1b/~0c/0/"), Pointer(vec![b"a/b".to_vec(), b"~c".to_vec(), b"0".to_vec(), vec![]]));
        assert!(Pointer::parse("eventId").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("/a~").is_err());
        assert_eq!(Pointer::index(b"0"), Some(0));
        assert_eq!(Pointer::index(b"12"), Some(12));
        assert_eq!(Pointer::index(b"01"), None);
        assert_eq!(Pointer::index(b"-"), None);
    }

    #[test]
    fn strings_and_integers_are_keys_other_types_are_missing() {
        let body = br#"{"s":"evt_1","i":42,"n":-7,"f":1.5,"e":1e3,"t":true,"z":null,"o":{},"a":[1]}"#;
        let got = scan(&["/s", "/i", "/n", "/f", "/e", "/t", "/z", "/o", "/a", "/absent"], body);
        let m = Found::Missing;
        assert_eq!(
            got,
            vec![
                value("evt_1"),
                value("42"),
                value("-7"),
                m.clone(),
                m.clone(),
                m.clone(),
                m.clone(),
                m.clone(),
                m.clone(),
                m
            ]
        );
    }

    #[test]
    fn nested_members_and_array_elements() {
        let body = br#"{"data":{"order":{"id":"o-9"},"items":[{"sku":"a"},{"sku":"b"}]},"x/y":"slash","t~":"tilde"}"#;
        let got = scan(
            &["/data/order/id", "/data/items/1/sku", "/data/items/2/sku", "/x~1y", "/t~0", "/data/items/01/sku"],
            body,
        );
        assert_eq!(got, vec![value("o-9"), value("b"), Found::Missing, value("slash"), value("tilde"), Found::Missing]);
    }

    #[test]
    fn escapes_are_decoded_in_names_and_values() {
        let body = br#"{"\u0069d":"a\"b\\c\/d\n\u00e9\ud83d\ude00"}"#;
        assert_eq!(scan(&["/id"], body), vec![Found::Value("a\"b\\c/d\né😀".as_bytes().to_vec())]);
    }

    #[test]
    fn the_decision_comes_with_the_value_not_the_end_of_the_body() {
        let pointers = [p("/source"), p("/id")];
        let mut s = Scan::new(&pointers);
        assert!(!s.feed(br#"{"specversion":"1.0","id":"e-1","#));
        assert!(s.feed(br#""source":"/orders","data":{"huge":"#));
        assert_eq!(s.found(), &[Some(value("/orders")), Some(value("e-1"))]);
        // The rest is never needed, and is not even read.
        assert!(s.feed(b"not json at all"));
    }

    #[test]
    fn bodies_that_are_not_json_have_no_key() {
        for body in [
            &b"eventId=1"[..],
            b"{\"eventId\" \"x\"}",
            b"{\"eventId\":x}",
            b"",
            b"{\"eventId\":\"a\x01\"}",
            b"{\"eventId\":\"\xff\"}",
            b"[1,]",
        ] {
            assert_eq!(scan(&["/eventId"], body), vec![Found::Missing], "{}", String::from_utf8_lossy(body));
        }
        // A truncated body (the first 64 KiB of a larger one) that never reached the member.
        assert_eq!(scan(&["/eventId"], br#"{"data":"long..."#), vec![Found::Missing]);
    }

    #[test]
    fn the_first_of_duplicate_members_counts() {
        assert_eq!(scan(&["/id"], br#"{"id":"first","id":"second"}"#), vec![value("first")]);
    }

    #[test]
    fn values_longer_than_a_key_are_too_long() {
        let long = format!(r#"{{"id":"{}","n":{}}}"#, "x".repeat(MAX_KEY_LEN + 1), "9".repeat(MAX_KEY_LEN + 1));
        assert_eq!(scan(&["/id", "/n"], long.as_bytes()), vec![Found::TooLong, Found::TooLong]);
        let exact = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_KEY_LEN));
        assert_eq!(scan(&["/id"], exact.as_bytes()), vec![value(&"x".repeat(MAX_KEY_LEN))]);
    }

    #[test]
    fn a_whole_document_pointer_and_top_level_scalars() {
        assert_eq!(scan(&[""], b" \"abc\" "), vec![value("abc")]);
        assert_eq!(scan(&[""], b"42"), vec![value("42")], "the end completes the number");
        assert_eq!(scan(&[""], b"{}"), vec![Found::Missing]);
        assert_eq!(scan(&["/a"], b"\"abc\""), vec![Found::Missing]);
    }

    #[test]
    fn any_chunking_gives_the_same_answer() {
        let body = br#" { "schemaVersion" : "2.1.0", "eventId" : "evt_789012", "eventType":"OrderPlaced", "n": [1, 2.5e-3, {"k": "\u00e9"}], "id": 12345 } "#;
        let pointers = [p("/eventId"), p("/id"), p("/n/2/k")];
        let whole = {
            let mut s = Scan::new(&pointers);
            s.feed(body);
            s.finish()
        };
        assert_eq!(whole, vec![value("evt_789012"), value("12345"), Found::Value("é".as_bytes().to_vec())]);
        for size in 1..body.len() {
            let mut s = Scan::new(&pointers);
            for chunk in body.chunks(size) {
                s.feed(chunk);
            }
            assert_eq!(s.finish(), whole, "chunks of {size}");
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(scan(&["/0"], deep.as_bytes()), vec![Found::Missing]);
    }
}
