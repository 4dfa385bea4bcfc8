//! Random bytes for ids from WASI `random_get` (Envoy serves it from its CSPRNG). Bytes are drawn
//! in blocks so that one host call serves many requests; each byte is used once.

use crate::ids::Entropy;

const BLOCK: usize = 1024;

pub struct Pool {
    buf: [u8; BLOCK],
    used: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool { buf: [0; BLOCK], used: BLOCK }
    }
}

impl Entropy for Pool {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(BLOCK) {
            if self.used + chunk.len() > BLOCK {
                if getrandom::fill(&mut self.buf).is_err() {
                    // Never hand out the same bytes twice: a failing host source is a host bug,
                    // so fall back to the time-mixed bytes below rather than to zeros or a crash.
                    fallback(&mut self.buf);
                }
                self.used = 0;
            }
            let end = self.used + chunk.len();
            if let Some(src) = self.buf.get(self.used..end) {
                chunk.copy_from_slice(src);
            }
            self.used = end;
        }
    }
}

fn fallback(buf: &mut [u8]) {
    let mut x = proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
}
