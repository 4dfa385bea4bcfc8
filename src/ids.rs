//! Identifier formatting from random bytes. Randomness itself is injected ([`Entropy`]): the shell
//! reads it from WASI `random_get` (the host's CSPRNG), tests from a fixed sequence.

/// A source of random bytes.
pub trait Entropy {
    fn fill(&mut self, buf: &mut [u8]);
}

/// Appends the lower-case hex form of `bytes`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0x0f));
    }
}

fn hex_digit(nibble: u8) -> char {
    match nibble {
        0..=9 => (b'0' + nibble) as char,
        _ => (b'a' + (nibble & 0x0f) - 10) as char,
    }
}

/// An RFC 9562 version-4 UUID (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`).
pub fn uuid4(entropy: &mut impl Entropy) -> String {
    let mut b = [0u8; 16];
    entropy.fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, chunk) in [&b[0..4], &b[4..6], &b[6..8], &b[8..10], &b[10..16]].into_iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        push_hex(&mut out, chunk);
    }
    out
}

/// Fills `buf` with random bytes, never all zero (W3C ids must not be).
pub fn fill_nonzero(entropy: &mut impl Entropy, buf: &mut [u8]) {
    entropy.fill(buf);
    if buf.iter().all(|&b| b == 0) {
        // Probability 2^-64 or less; a fixed non-zero byte keeps the id valid without looping.
        if let Some(last) = buf.last_mut() {
            *last = 1;
        }
    }
}

/// Deterministic entropy for tests and benchmarks: a seeded xorshift, never for production ids.
#[doc(hidden)]
pub struct TestEntropy(pub u64);

impl Entropy for TestEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_per_byte_across_chunk_boundaries() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let mut out = String::from("x");
        push_hex(&mut out, &bytes);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(out, format!("x{expected}"));
        let mut empty = String::new();
        push_hex(&mut empty, &[]);
        assert_eq!(empty, "");
    }

    struct Fixed(u8);
    impl Entropy for Fixed {
        fn fill(&mut self, buf: &mut [u8]) {
            buf.fill(self.0);
        }
    }

    #[test]
    fn uuid4_has_version_and_variant_bits() {
        assert_eq!(uuid4(&mut Fixed(0xff)), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid4(&mut Fixed(0x00)), "00000000-0000-4000-8000-000000000000");
        let mut e = TestEntropy(7);
        for _ in 0..100 {
            let id = uuid4(&mut e);
            let b = id.as_bytes();
            assert_eq!(id.len(), 36);
            assert_eq!((b[8], b[13], b[14], b[18], b[23]), (b'-', b'-', b'4', b'-', b'-'));
            assert!(b"89ab".contains(&b[19]), "{id}");
            assert!(id.bytes().all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        }
    }

    #[test]
    fn fill_nonzero_never_yields_all_zero() {
        let mut id = [0u8; 16];
        fill_nonzero(&mut Fixed(0), &mut id);
        assert_ne!(id, [0; 16]);
        fill_nonzero(&mut Fixed(0xab), &mut id);
        assert_eq!(id, [0xab; 16]);
    }

    #[test]
    fn consecutive_ids_differ() {
        let mut e = TestEntropy(1);
        assert_ne!(uuid4(&mut e), uuid4(&mut e));
    }
}
