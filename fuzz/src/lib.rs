//! Helpers shared by the fuzz targets: readable input formats, so that the seed corpus can be
//! written by hand, and a byte reader for the binary (shared-data) targets.
//!
//! Header-driven targets read their input as text-like lines (any bytes but `\n` in a line):
//!
//! ```text
//! @hop b3=ignore            <- optional first line: target-specific directives
//! traceparent: 00-4bf9…-01  <- "name:value" (one optional space after the colon is dropped)
//! :method:POST              <- a pseudo-header: the name's own leading ':' is kept
//! ```

/// A header line list and the directive line (empty when the input has none).
pub struct Lines<'a> {
    pub directives: &'a [u8],
    pub headers: Vec<(&'a [u8], &'a [u8])>,
}

/// Splits the input into an optional `@…` directive line and `name:value` header lines. A line
/// without a colon is a header with an empty value.
pub fn lines(data: &[u8]) -> Lines<'_> {
    let mut directives: &[u8] = &[];
    let mut headers = Vec::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if i == 0 {
            if let Some(d) = line.strip_prefix(b"@") {
                directives = d;
                continue;
            }
        }
        if line.is_empty() {
            continue;
        }
        // The name ends at the first ':' after its first byte (pseudo-headers start with ':').
        let colon = line.iter().skip(1).position(|&b| b == b':').map(|p| p + 1);
        let (name, value) = match colon {
            Some(c) => (&line[..c], &line[c + 1..]),
            None => (line, &line[line.len()..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        headers.push((name, value));
    }
    Lines { directives, headers }
}

/// Directive words (split on spaces and commas).
pub fn words(directives: &[u8]) -> impl Iterator<Item = &[u8]> {
    directives.split(|&b| b == b' ' || b == b',').filter(|w| !w.is_empty())
}

/// The value of a `key=value` directive.
pub fn directive<'a>(directives: &'a [u8], key: &str) -> Option<&'a [u8]> {
    words(directives).find_map(|w| w.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
}

/// A reader over fuzz bytes that never fails: past the end every read is zero.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// A length-prefixed (`u16`) byte string.
    pub fn blob(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Deterministic entropy so that a crash input reproduces exactly.
pub struct Entropy(pub u64);

impl meshguard::ids::Entropy for Entropy {
    fn fill(&mut self, buf: &mut [u8]) {
        meshguard::ids::Entropy::fill(&mut meshguard::ids::TestEntropy(self.0 | 1), buf);
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    }
}

/// True when `s` is visible ASCII only (0x21-0x7E).
pub fn visible_ascii(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_graphic)
}

/// Parses a configuration and checks what every outcome promises.
pub fn check_config(data: &[u8]) {
    use meshguard::config::{self, duration::MAX_NANOS, Window};
    let parsed = config::parse(data);
    assert_eq!(parsed, config::parse(data), "parse is deterministic");
    match parsed {
        Ok(c) => {
            assert!(c.rules.len() <= config::MAX_RULES);
            let c_max = c.correlation.max_length;
            assert!((1..=4096).contains(&c_max), "max_length {c_max}");
            let h = &c.correlation.header;
            assert!(!h.is_empty() && !h.starts_with(':') && *h == h.to_ascii_lowercase(), "header {h:?}");
            assert!((0.0..=1.0).contains(&c.trace.sample_ratio));
            let mut names: Vec<&str> = c.rules.iter().map(|r| r.name.as_str()).collect();
            for name in &names {
                assert!(*name != config::DEFAULT_RULE && !name.is_empty() && name.len() <= 64, "rule {name:?}");
                assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)), "rule {name:?}");
            }
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), c.rules.len(), "rule names are unique");
            for rule in c.all_rules() {
                if let Some(b) = &rule.circuit_breaker {
                    match b.window {
                        Window::Count(n) => assert!((1..=config::MAX_COUNT_WINDOW as u32).contains(&n)),
                        Window::Time(s) => assert!((1..=config::MAX_TIME_WINDOW_SECS as u32).contains(&s)),
                    }
                    for d in [b.slow_call_duration, b.open_duration, b.max_open_duration] {
                        assert!((1..=MAX_NANOS).contains(&d), "duration {d}");
                    }
                    assert!(b.max_open_duration >= b.open_duration);
                    assert!((0.0..=100.0).contains(&b.failure_rate_threshold));
                    assert!((0.0..=100.0).contains(&b.slow_call_rate_threshold));
                    assert!((1.0..=100.0).contains(&b.open_duration_multiplier));
                    assert!((1..=1000).contains(&b.half_open_calls));
                    assert!((200..=599).contains(&b.open_status));
                    // The fresh circuit of this configuration survives its own codec.
                    let fresh = meshguard::breaker::State::new(b);
                    assert_eq!(meshguard::breaker::State::decode(&fresh.encode(), b), Some(fresh));
                }
                if let Some(d) = &rule.dedup {
                    assert!(!d.headers.is_empty());
                    for h in &d.headers {
                        assert!(!h.is_empty() && *h == h.to_ascii_lowercase(), "dedup header {h:?}");
                    }
                    assert!((1..=MAX_NANOS).contains(&d.ttl) && (1..=MAX_NANOS).contains(&d.in_flight_ttl));
                    assert!((1..=config::MAX_DEDUP_ENTRIES as u32).contains(&d.max_entries));
                    let layout = meshguard::dedup::Layout::new(d.max_entries);
                    assert!(layout.buckets >= 1 && layout.per_bucket >= 1);
                    let slots = u64::from(d.max_entries) * u64::from(meshguard::dedup::store::HEADROOM);
                    assert!(layout.capacity() >= slots, "headroom over max_entries");
                    assert!(layout.capacity() < slots + u64::from(meshguard::dedup::store::PER_BUCKET), "no more");
                    assert!(layout.per_bucket <= 255, "the bucket codec counts entries in one byte");
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a rejected configuration says why");
            for e in &errors {
                assert!(e.contains(": "), "error without a path: {e:?}");
                // The errors become one Envoy log line: no line breaks or other control characters.
                assert!(!e.chars().any(char::is_control), "control character in error: {e:?}");
            }
        }
    }
}

/// A JSON configuration from the configuration's own vocabulary, driven by `b`.
pub fn json_config(b: &mut Bytes) -> serde_json::Value {
    use serde_json::{json, Map, Value};

    fn pick<T: Clone>(b: &mut Bytes, items: &[T]) -> T {
        items[usize::from(b.u8()) % items.len()].clone()
    }

    /// Anything, mostly wrong: for type and range errors.
    fn junk(b: &mut Bytes) -> Value {
        match b.u8() % 12 {
            0 => Value::Null,
            1 => json!(true),
            2 => json!(-1),
            3 => json!(0),
            4 => json!(1.5),
            5 => json!(u64::MAX),
            6 => json!(1e300),
            7 => json!([]),
            8 => json!({}),
            9 => json!("disabled"),
            10 => json!(b.u16()),
            _ => Value::String(String::from_utf8_lossy(b.blob()).into_owned()),
        }
    }

    /// An object with some of `keys`, each valued by `value` (or junk), and sometimes a stray key.
    fn object(b: &mut Bytes, keys: &[&str], value: &dyn Fn(&mut Bytes, &str) -> Value) -> Value {
        let mut map = Map::new();
        let n = b.u8() % (keys.len() as u8 + 1);
        for _ in 0..n {
            let key = pick(b, keys);
            let v = if b.u8().is_multiple_of(8) { junk(b) } else { value(b, key) };
            map.insert(key.to_string(), v);
        }
        if b.u8().is_multiple_of(16) {
            map.insert(String::from_utf8_lossy(b.blob()).into_owned(), junk(b));
        }
        Value::Object(map)
    }

    const DURATIONS: &[&str] =
        &["250ms", "30s", "10m", "1h", "0s", "1.5s", "1m30s", "720h", "721h", "2s", "5m", "7ns", "60s"];
    const STATUSES: &[&str] = &["5xx", "2xx", "503", "500-504", "504-500", "6xx", "429", "100", "599", "600"];
    fn status_set(b: &mut Bytes) -> Value {
        let n = b.u8() % 4;
        Value::Array(
            (0..n)
                .map(|_| if b.u8().is_multiple_of(3) { json!(b.u16() % 700) } else { json!(pick(b, STATUSES)) })
                .collect(),
        )
    }
    fn duration(b: &mut Bytes) -> Value {
        json!(pick(b, DURATIONS))
    }
    fn percent(b: &mut Bytes) -> Value {
        pick(b, &[json!(0), json!(25), json!(50), json!(100), json!(101), json!(-1), json!(62.5)])
    }
    fn header_list(b: &mut Bytes) -> Value {
        let names = ["x-event-id", "idempotency-key", "ce-id", "X-Event-Id", "bad header", ""];
        let n = b.u8() % 4;
        Value::Array((0..n).map(|_| json!(pick(b, &names))).collect())
    }
    fn breaker(b: &mut Bytes) -> Value {
        if b.u8().is_multiple_of(6) {
            return json!("disabled");
        }
        object(b, meshguard::config::BREAKER_KEYS, &|b, key| match key {
            "failure_rate_threshold" | "slow_call_rate_threshold" => percent(b),
            "slow_call_duration" | "open_duration" | "max_open_duration" => duration(b),
            "window" => object(b, &["type", "size"], &|b, key| match key {
                "type" => json!(pick(b, &["count", "time", "sliding"])),
                _ => pick(
                    b,
                    &[json!(20), json!(0), json!(1000), json!(1001), json!("60s"), json!("1.5s"), json!("601s")],
                ),
            }),
            "minimum_calls" | "consecutive_failures" | "half_open_calls" => json!(b.u16() % 1100),
            "open_duration_multiplier" => pick(b, &[json!(1.0), json!(2.0), json!(0.5), json!(100), json!(101)]),
            "failure_status" => status_set(b),
            "mode" => json!(pick(b, &["enforce", "metrics_only", "forced_open", "disabled", "off"])),
            _ => json!(b.u16() % 700),
        })
    }
    fn dedup(b: &mut Bytes) -> Value {
        if b.u8().is_multiple_of(6) {
            return json!("disabled");
        }
        object(b, meshguard::config::DEDUP_KEYS, &|b, key| match key {
            "headers" => header_list(b),
            "methods" => json!(["POST", "PUT"]),
            "ttl" | "in_flight_ttl" => duration(b),
            "on_missing" => json!(pick(b, &["pass", "reject", "generate", "drop"])),
            "duplicate_status" => pick(b, &[json!("replay"), json!(200), json!(409), json!(199), json!(600)]),
            "success_status" => status_set(b),
            "fingerprint" => json!(pick(b, &["none", "method_path", "body", "hash"])),
            "scope" => json!(pick(b, &["rule", "caller", "global"])),
            _ => pick(b, &[json!(1), json!(7), json!(8), json!(100000), json!(1000000), json!(1000001), json!(0)]),
        })
    }

    object(b, &["correlation", "trace", "log", "circuit_breaker", "dedup", "routes"], &|b, key| match key {
        "correlation" => object(b, &["header", "generator", "echo_downstream", "max_length"], &|b, key| match key {
            "header" => json!(pick(b, &["x-correlation-id", "X-Req", ":path", "traceparent", "bad name", ""])),
            "generator" => json!(pick(b, &["uuid4", "trace_id", "request_id", "ulid"])),
            "echo_downstream" => json!(b.u8() % 2 == 0),
            _ => pick(b, &[json!(1), json!(128), json!(4096), json!(4097), json!(0)]),
        }),
        "trace" => object(b, &["enabled", "mode", "sample_ratio", "b3", "traceresponse"], &|b, key| match key {
            "enabled" => json!(b.u8() % 2 == 0),
            "mode" => json!(pick(b, &["propagate", "hop", "defer", "restart"])),
            "sample_ratio" => pick(b, &[json!(0), json!(0.5), json!(1.0), json!(1.5), json!(-0.1)]),
            "b3" => json!(pick(b, &["accept", "ignore", "emit"])),
            _ => pick(b, &[json!(true), json!(false), json!("traceresponse"), json!("server-timing"), json!("x")]),
        }),
        "log" => object(b, &["requests", "level", "include_query"], &|b, key| match key {
            "level" => json!(pick(b, &["trace", "debug", "info", "warn", "error", "critical", "fatal"])),
            _ => json!(b.u8() % 2 == 0),
        }),
        "circuit_breaker" => breaker(b),
        "dedup" => dedup(b),
        _ => {
            let n = b.u8() % 5;
            Value::Array(
                (0..n)
                    .map(|_| {
                        object(b, &["name", "match", "circuit_breaker", "dedup"], &|b, key| match key {
                            "name" => json!(pick(b, &["payments", "health", "default", "a.b-c_d", "bad name", ""])),
                            "match" => {
                                object(
                                    b,
                                    &["route_name", "cluster", "host", "prefix", "methods"],
                                    &|b, key| match key {
                                        "methods" => {
                                            json!(pick(b, &[json!(["POST"]), json!([]), json!(["bad method"])]))
                                        }
                                        _ => json!(pick(b, &["payments-v1", "/charge", "Payments.Prod:8080", ""])),
                                    },
                                )
                            }
                            "circuit_breaker" => breaker(b),
                            _ => dedup(b),
                        })
                    })
                    .collect(),
            )
        }
    })
}

/// Nanoseconds in a second.
pub const SECOND: u64 = 1_000_000_000;

/// A breaker configuration from 5 bytes, within the bounds configuration validation allows
/// (see `fuzz_targets/breaker.rs` for the layout).
pub fn breaker_config(b: &mut Bytes) -> meshguard::config::Breaker {
    use meshguard::config::{Breaker, BreakerMode, Window};
    let (w, calls, rates, probes, open) = (b.u8(), b.u8(), b.u8(), b.u8(), b.u8());
    let size = u32::from(w & 0x3f) + 1;
    let open_duration = u64::from(open % 8 + 1) * SECOND;
    Breaker {
        window: if w & 0x80 != 0 { Window::Time(size) } else { Window::Count(size) },
        minimum_calls: u32::from(calls % 30) + 1,
        failure_rate_threshold: [0.0, 10.0, 25.0, 50.0, 75.0, 100.0][usize::from(rates % 6)],
        slow_call_rate_threshold: [0.0, 50.0, 100.0][usize::from(rates / 6 % 3)],
        consecutive_failures: u32::from(probes % 5),
        half_open_calls: u32::from(probes >> 3 & 3) + 1,
        mode: match probes >> 5 {
            5 | 6 => BreakerMode::MetricsOnly,
            7 => BreakerMode::ForcedOpen,
            _ => BreakerMode::Enforce,
        },
        open_duration,
        open_duration_multiplier: [1.0, 1.5, 2.0, 3.0][usize::from(open >> 3 & 3)],
        max_open_duration: open_duration * [1, 2, 4, 10][usize::from(open >> 5 & 3)],
        slow_call_duration: 2 * SECOND,
        ..Breaker::default()
    }
}

/// The 5 configuration bytes that [`breaker_config`] reads back as a window of `size` (1-64):
/// minimum 4 calls, 50% failure rate, slow calls never trip, 3 consecutive failures, 2 probes,
/// enforce, open 2s growing ×2 up to 4s.
pub fn breaker_config_bytes(time: bool, size: u8) -> [u8; 5] {
    [(size - 1) & 0x3f | if time { 0x80 } else { 0 }, 3, 15, 13, 1 | 2 << 3 | 1 << 5]
}
