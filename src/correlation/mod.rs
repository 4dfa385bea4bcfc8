//! Correlation-id rules (docs/behaviour.md, "Correlation ids and logging"): keep a valid incoming
//! id, otherwise make one. An invalid value is replaced and never logged raw, so a client cannot
//! inject text into log lines.

pub mod stage;

use crate::config::{Correlation, Generator};
use crate::ids::{self, Entropy};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorrelationOutcome {
    Kept,
    Generated,
    ReplacedInvalid,
}

impl CorrelationOutcome {
    pub const ALL: [CorrelationOutcome; 3] =
        [CorrelationOutcome::Kept, CorrelationOutcome::Generated, CorrelationOutcome::ReplacedInvalid];

    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationOutcome::Kept => "kept",
            CorrelationOutcome::Generated => "generated",
            CorrelationOutcome::ReplacedInvalid => "replaced_invalid",
        }
    }
}

/// Visible ASCII (0x21-0x7E), 1 to `max_length` bytes.
pub fn is_valid(value: &[u8], max_length: usize) -> bool {
    !value.is_empty() && value.len() <= max_length && value.iter().all(|b| b.is_ascii_graphic())
}

/// The decision for one request: `Ok(id)` keeps the incoming id; `Err(outcome)` says a new one is
/// needed (see [`generate`]).
pub fn check(incoming: Option<&[u8]>, config: &Correlation) -> Result<String, CorrelationOutcome> {
    match incoming {
        None => Err(CorrelationOutcome::Generated),
        Some(value) if is_valid(value, config.max_length) => {
            // Visible ASCII is valid UTF-8.
            Ok(String::from_utf8_lossy(value).into_owned())
        }
        Some(_) => Err(CorrelationOutcome::ReplacedInvalid),
    }
}

/// A new id by the configured generator. `request_id` is Envoy's `x-request-id` (read only when
/// this generator is chosen); `trace_id` the request's trace-id when trace context is on. Either
/// falls back to a UUID when missing or not a valid correlation id.
pub fn generate(
    config: &Correlation,
    trace_id: Option<&str>,
    request_id: impl FnOnce() -> Option<Vec<u8>>,
    entropy: &mut impl Entropy,
) -> String {
    let borrowed = match config.generator {
        Generator::Uuid4 => None,
        Generator::TraceId => trace_id.map(|t| t.as_bytes().to_vec()),
        Generator::RequestId => request_id(),
    };
    match borrowed {
        Some(id) if is_valid(&id, config.max_length) => String::from_utf8_lossy(&id).into_owned(),
        _ => ids::uuid4(entropy),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::ids::TestEntropy;

    fn config(generator: Generator, max_length: usize) -> Correlation {
        Correlation { generator, max_length, ..Correlation::default() }
    }

    #[test]
    fn valid_incoming_id_is_kept() {
        let c = Correlation::default();
        assert_eq!(check(Some(b"abc-123"), &c), Ok("abc-123".to_string()));
        assert_eq!(check(Some(b"!~\"{}"), &c), Ok("!~\"{}".to_string()));
        let longest = vec![b'a'; 128];
        assert!(check(Some(&longest), &c).is_ok());
    }

    #[test]
    fn missing_id_is_generated() {
        assert_eq!(check(None, &Correlation::default()), Err(CorrelationOutcome::Generated));
    }

    #[test]
    fn invalid_incoming_id_is_replaced() {
        let c = config(Generator::Uuid4, 8);
        let cases: &[&[u8]] =
            &[b"", b"has space", b"tab\there", b"nl\nx", b"\xe9t\xe9", b"\x7f", b"123456789", b"\x00"];
        for value in cases {
            assert_eq!(check(Some(value), &c), Err(CorrelationOutcome::ReplacedInvalid), "{value:?}");
        }
    }

    #[test]
    fn uuid4_generator_makes_uuids() {
        let id = generate(&config(Generator::Uuid4, 128), Some("t"), || Some(b"r".to_vec()), &mut TestEntropy(3));
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
    }

    #[test]
    fn trace_id_generator_uses_the_trace_id() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let c = config(Generator::TraceId, 128);
        assert_eq!(generate(&c, Some(trace), || None, &mut TestEntropy(3)), trace);
        assert_eq!(generate(&c, None, || None, &mut TestEntropy(3)).len(), 36);
    }

    #[test]
    fn request_id_generator_uses_x_request_id_when_valid() {
        let c = config(Generator::RequestId, 64);
        let rid = "6b7c2a32-1b1f-4a44-9d1e-0f64e0f6f1a2";
        assert_eq!(generate(&c, None, || Some(rid.as_bytes().to_vec()), &mut TestEntropy(3)), rid);
        let fallback = generate(&c, None, || Some(b"bad id".to_vec()), &mut TestEntropy(3));
        assert_eq!(fallback.len(), 36);
        assert_ne!(fallback, "bad id");
        assert_eq!(generate(&c, None, || None, &mut TestEntropy(3)).len(), 36);
    }

    #[test]
    fn request_id_is_not_read_for_other_generators() {
        let mut asked = false;
        generate(
            &config(Generator::Uuid4, 128),
            None,
            || {
                asked = true;
                None
            },
            &mut TestEntropy(3),
        );
        assert!(!asked);
    }
}
