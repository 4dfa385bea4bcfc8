//! Status sets: lists of codes (`503`), ranges (`"500-504"`) and classes (`"5xx"`), compiled to a
//! bitset so that a lookup on the response path is one shift and one mask.

/// HTTP status codes 100..=599 as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusSet {
    bits: [u64; 8],
}

impl StatusSet {
    pub const EMPTY: StatusSet = StatusSet { bits: [0; 8] };

    pub fn contains(&self, status: u32) -> bool {
        let Some(index) = status.checked_sub(100).filter(|i| *i < 500) else {
            return false;
        };
        let word = self.bits.get((index / 64) as usize).copied().unwrap_or(0);
        word & (1 << (index % 64)) != 0
    }

    pub fn insert_range(&mut self, lo: u32, hi: u32) {
        for status in lo.max(100)..=hi.min(599) {
            let index = status - 100;
            if let Some(word) = self.bits.get_mut((index / 64) as usize) {
                *word |= 1 << (index % 64);
            }
        }
    }

    /// A set from its textual items, for defaults and tests (`&["5xx"]`).
    pub fn of(items: &[&str]) -> StatusSet {
        let mut set = StatusSet::EMPTY;
        for item in items {
            if let Ok((lo, hi)) = parse_item(item) {
                set.insert_range(lo, hi);
            }
        }
        set
    }
}

/// gRPC status codes 0..=16 as bits (`failure_grpc_status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// The highest gRPC status code (UNAUTHENTICATED).
    pub const MAX: u32 = 16;

    pub fn of(codes: &[u32]) -> GrpcCodes {
        GrpcCodes(codes.iter().filter(|c| **c <= Self::MAX).fold(0, |bits, c| bits | 1 << c))
    }

    pub fn contains(&self, code: u32) -> bool {
        code <= Self::MAX && self.0 & (1 << code) != 0
    }
}

/// One item written as a string: `"503"`, `"500-504"` or `"5xx"`.
pub fn parse_item(text: &str) -> Result<(u32, u32), String> {
    let code = |s: &str| -> Option<u32> {
        let valid = s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit());
        valid.then(|| s.parse().ok()).flatten().filter(|c| (100..=599).contains(c))
    };
    let bad = || format!("invalid status {text:?} (expected a code 100-599, a range \"500-504\" or a class \"5xx\")");
    let bytes = text.as_bytes();
    if let [first, b'x' | b'X', b'x' | b'X'] = bytes {
        let class = u32::from(first.wrapping_sub(b'0'));
        return if (1..=5).contains(&class) { Ok((class * 100, class * 100 + 99)) } else { Err(bad()) };
    }
    if let Some((lo, hi)) = text.split_once('-') {
        let (lo, hi) = (code(lo).ok_or_else(bad)?, code(hi).ok_or_else(bad)?);
        if lo > hi {
            return Err(format!("invalid status range {text:?}: start is after end"));
        }
        return Ok((lo, hi));
    }
    code(text).map(|c| (c, c)).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn items_parse_as_codes_ranges_and_classes() {
        assert_eq!(parse_item("503"), Ok((503, 503)));
        assert_eq!(parse_item("500-504"), Ok((500, 504)));
        assert_eq!(parse_item("5xx"), Ok((500, 599)));
        assert_eq!(parse_item("2XX"), Ok((200, 299)));
        for bad in ["", "5", "5000", "600", "099", "6xx", "0xx", "504-500", "a-b", "5x", "500-", "-500"] {
            assert!(parse_item(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grpc_codes_contain_exactly_their_members() {
        let set = GrpcCodes::of(&[2, 4, 13, 14, 15]);
        for code in 0..=20 {
            assert_eq!(set.contains(code), [2, 4, 13, 14, 15].contains(&code), "{code}");
        }
        assert!(!GrpcCodes::of(&[17, 40]).contains(17));
        assert!(GrpcCodes::of(&[0, 16]).contains(16));
    }

    #[test]
    fn set_contains_exactly_its_members() {
        let set = StatusSet::of(&["5xx", "429", "408-409"]);
        for status in [500, 503, 599, 429, 408, 409] {
            assert!(set.contains(status), "{status}");
        }
        for status in [0, 99, 100, 200, 404, 407, 410, 428, 430, 499, 600, 1000, u32::MAX] {
            assert!(!set.contains(status), "{status}");
        }
    }
}
