//! Durations as operators write them: `"250ms"`, `"30s"`, `"10m"`, `"1h"`, also compound
//! (`"1m30s"`) and fractional (`"1.5s"`), the way Go and Envoy users already write them.

/// Upper bound for any configured duration. Generous for TTLs, and it keeps every sum of a
/// timestamp and a duration far from `u64` overflow.
pub const MAX_NANOS: u64 = 30 * 24 * 3600 * 1_000_000_000;

/// Parses a duration into nanoseconds. The error is the message shown after the JSON path.
pub fn parse(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid duration {text:?} (expected e.g. \"250ms\", \"30s\", \"10m\", \"1h\")");
    let mut rest = text.as_bytes();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
        let (number, tail) = rest.split_at(digits);
        let units = tail.iter().take_while(|b| b.is_ascii_alphabetic()).count();
        let (unit, tail) = tail.split_at(units);
        let scale: u128 = match unit {
            b"ns" => 1,
            b"us" => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        // Checked: a wrapped sum would turn a huge duration into a small valid one.
        total = total.checked_add(scaled(number, scale).ok_or_else(invalid)?).ok_or_else(invalid)?;
        if total > u128::from(MAX_NANOS) {
            return Err(format!("duration {text:?} is longer than 30 days"));
        }
        rest = tail;
    }
    u64::try_from(total).map_err(|_| invalid())
}

/// `number * scale` for a decimal like `1.25`, exact to the nanosecond (extra digits are cut).
fn scaled(number: &[u8], scale: u128) -> Option<u128> {
    let text = std::str::from_utf8(number).ok()?;
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut value = whole.checked_mul(scale)?;
    let mut unit = scale;
    for digit in frac.bytes() {
        unit /= 10;
        value = value.checked_add(u128::from(digit - b'0') * unit)?;
    }
    Some(value)
}

/// Formats nanoseconds back in the largest unit that divides them (for messages).
pub fn format(nanos: u64) -> String {
    const UNITS: [(u64, &str); 5] =
        [(3_600_000_000_000, "h"), (60_000_000_000, "m"), (1_000_000_000, "s"), (1_000_000, "ms"), (1, "ns")];
    for (scale, name) in UNITS {
        if nanos >= scale && nanos.is_multiple_of(scale) {
            return format!("{}{name}", nanos / scale);
        }
    }
    "0s".to_string()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn parses_single_units() {
        let cases: &[(&str, u64)] = &[
            ("250ms", 250_000_000),
            ("30s", 30_000_000_000),
            ("10m", 600_000_000_000),
            ("1h", 3_600_000_000_000),
            ("0s", 0),
            ("1.5s", 1_500_000_000),
            ("0.25s", 250_000_000),
            ("1m30s", 90_000_000_000),
            ("100us", 100_000),
            ("7ns", 7),
        ];
        for (text, nanos) in cases {
            assert_eq!(parse(text), Ok(*nanos), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for text in ["", "10", "s", "10x", "-1s", "1 s", " 1s", "1.2.3s", ".s", "10S", "1d", "1sm"] {
            assert!(parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn rejects_durations_beyond_the_cap() {
        assert!(parse("721h").is_err());
        assert_eq!(parse("720h"), Ok(MAX_NANOS));
        assert!(parse("99999999999999999999999999999h").is_err());
    }

    #[test]
    fn formats_in_largest_unit() {
        assert_eq!(format(30_000_000_000), "30s");
        assert_eq!(format(300_000_000_000), "5m");
        assert_eq!(format(1_500_000_000), "1500ms");
        assert_eq!(format(0), "0s");
    }
}
