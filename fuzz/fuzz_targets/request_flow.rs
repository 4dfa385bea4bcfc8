//! The whole per-request flow (`filter::Stream`) over an in-memory host, as Envoy drives it:
//! request headers, body chunks of any size with the end of stream anywhere (or trailers),
//! the response (the upstream's, or meshguard's local reply), the log. The same request is sent
//! up to three times, so later deliveries meet the entries and circuits the earlier ones left.
//!
//! Stores are small (`max_entries` ≤ 64: every bucket is created in `init_shared`, per input).
//!
//! Input: one line of directives, then header lines (`fuzz/src/lib.rs` format), then a line
//! `--` and a binary script read by `Bytes`:
//! * directives: `cfg=<digit>` picks one of the configurations below (all four features; body
//!   fingerprints; `on_missing: generate`; trace `hop` with B3; `defer` with a request-id
//!   generator) — every parser and decision on the path is reached with hostile headers;
//! * script: repeats (1-3), then per delivery: a flags byte (bit 0: end of stream with the
//!   headers, bit 1: trailers end the body, bit 2: the upstream answers before the body ends,
//!   bit 3: the stream is reset — no response), a chunk count (0-7), each chunk a length code
//!   (× 700 bytes, so 64 KiB is crossed) and a fill byte, then the upstream's status (u16).
//!
//! Invariants: nothing panics; at most one local reply per delivery, and none after the
//! upstream answered; after `Verdict::Stop` the filter is not called again with request data
//! (as in Envoy) — a `Stop` comes with a local reply; after `on_log` no dedup entry is in flight
//! (every delivery completed or released the key it held); a body chunk is either forwarded
//! whole or dropped whole; every log line meshguard writes is one JSON object.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use meshguard::config::{self, LogLevel};
use meshguard::dedup::store::{Bucket, Phase};
use meshguard::filter::{Host, HostError, MetricId, Metrics, Plugin, Stream, Verdict};
use meshguard::headers::HeaderMap;
use meshguard::ids::TestEntropy;
use meshguard_fuzz::{directive, lines, Bytes, SECOND};

const CONFIGS: [&str; 5] = [
    r#"{"log": {"requests": true}, "dedup": {"fingerprint": "method_path", "max_entries": 64},
        "routes": [{"name": "r", "match": {"prefix": "/r"}, "circuit_breaker": {"window": {"type": "count", "size": 4},
          "minimum_calls": 2, "failure_rate_threshold": 50, "open_duration": "1s", "half_open_calls": 1}}],
        "circuit_breaker": {"window": {"type": "time", "size": "10s"}, "minimum_calls": 1}}"#,
    r#"{"log": {"requests": true}, "dedup": {"fingerprint": "body", "max_entries": 4, "in_flight_ttl": "5s"}}"#,
    r#"{"dedup": {"on_missing": "generate", "fingerprint": "body", "scope": "caller", "duplicate_status": 409, "max_entries": 64}}"#,
    r#"{"trace": {"mode": "hop", "b3": "accept"}, "correlation": {"generator": "trace_id"}, "log": {"requests": true}}"#,
    r#"{"trace": {"mode": "defer"}, "correlation": {"generator": "request_id", "header": "x-request-id"},
        "dedup": {"on_missing": "reject", "headers": ["idempotency-key", "ce-id"], "max_entries": 64}, "log": {"requests": true}}"#,
];

#[derive(Default)]
struct World {
    shared: HashMap<String, (Vec<u8>, u32)>,
    metrics: Vec<String>,
    values: HashMap<MetricId, u64>,
    clock: u64,
}

struct FuzzHost<'w> {
    world: &'w mut World,
    request: Vec<(String, Vec<u8>)>,
    response: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    dropped: bool,
    local_replies: Vec<u32>,
}

impl Host for FuzzHost<'_> {
    fn request_headers(&mut self) -> HeaderMap {
        HeaderMap::from_pairs(&self.request)
    }
    fn set_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.request.retain(|(k, _)| k != name);
        self.request.push((name.to_string(), value.to_vec()));
        Ok(())
    }
    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        self.request.retain(|(k, _)| k != name);
        Ok(())
    }
    fn set_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.response.retain(|(k, _)| k != name);
        self.response.push((name.to_string(), value.to_vec()));
        Ok(())
    }
    fn add_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.response.push((name.to_string(), value.to_vec()));
        Ok(())
    }
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["connection", "uri_san_peer_certificate"] => Some(b"spiffe://cluster.local/ns/a/sa/b".to_vec()),
            ["response", "code"] => {
                let status = self.response.iter().find(|(k, _)| k == ":status")?;
                let code: u64 = std::str::from_utf8(&status.1).ok()?.parse().ok()?;
                Some(code.to_le_bytes().to_vec())
            }
            _ => None,
        }
    }
    fn set_filter_state(&mut self, _key: &str, _value: &[u8]) -> Result<(), HostError> {
        Ok(())
    }
    fn increment(&mut self, metric: MetricId, by: i64) {
        let v = self.world.values.entry(metric).or_default();
        *v = v.wrapping_add_signed(by);
    }
    fn metric(&mut self, metric: MetricId) -> Option<u64> {
        Some(self.world.values.get(&metric).copied().unwrap_or(0))
    }
    fn set_gauge(&mut self, metric: MetricId, value: u64) {
        self.world.values.insert(metric, value);
    }
    fn log(&mut self, _level: LogLevel, message: &str) {
        if message.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(message).expect("a request log line is JSON");
            assert!(v.is_object());
        } else {
            // Transitions are plain text; with a host that never fails there is no internal error.
            assert!(message.starts_with("meshguard: ") && !message.starts_with("meshguard: internal error"), "{message}");
        }
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.response.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
    fn response_trailer(&mut self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn now(&mut self) -> u64 {
        self.world.clock += 1;
        self.world.clock
    }
    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Ok(self.world.shared.get(key).cloned())
    }
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, HostError> {
        let current = self.world.shared.get(key).map(|(_, c)| *c);
        if cas != 0 && current.is_some_and(|c| c != cas) {
            return Ok(false);
        }
        self.world.shared.insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
        Ok(true)
    }
    fn send_local_reply(&mut self, reply: &meshguard::reply::Reply) -> Result<(), HostError> {
        self.local_replies.push(reply.status);
        Ok(())
    }
    fn request_body(&mut self, max: usize) -> Option<Vec<u8>> {
        Some(self.body.iter().take(max).copied().collect())
    }
    fn drop_request_body(&mut self, size: usize) -> Result<(), HostError> {
        assert_eq!(size, self.body.len(), "a chunk is dropped whole");
        self.dropped = true;
        Ok(())
    }
}

fn plugin(json: &str, world: &mut World) -> Plugin {
    let config = config::parse(json.as_bytes()).expect("the target's configurations are valid");
    let metrics = Metrics::define(&config, |_, name| {
        let id = world.metrics.iter().position(|n| n == name).unwrap_or_else(|| {
            world.metrics.push(name.to_string());
            world.metrics.len() - 1
        });
        Some(id as MetricId)
    });
    let plugin = Plugin::new(config, metrics, "fuzz");
    let mut host = FuzzHost {
        world,
        request: Vec::new(),
        response: Vec::new(),
        body: Vec::new(),
        dropped: false,
        local_replies: Vec::new(),
    };
    plugin.init_shared(&mut host).expect("init_shared with a working host");
    plugin
}

/// One delivery of the request; returns whether meshguard answered it.
fn deliver(plugin: &Plugin, world: &mut World, headers: &[(String, Vec<u8>)], b: &mut Bytes, n: u64) -> bool {
    let flags = b.u8();
    let chunks = b.u8() % 8;
    let mut host = FuzzHost {
        world,
        request: headers.to_vec(),
        response: Vec::new(),
        body: Vec::new(),
        dropped: false,
        local_replies: Vec::new(),
    };
    let mut stream = Stream::default();
    let eos_with_headers = flags & 1 != 0 || chunks == 0 && flags & 2 == 0;
    let mut entropy = TestEntropy(n * 7919 + 1);
    let mut verdict = stream.on_request_headers_eos(plugin, &mut host, &mut entropy, eos_with_headers);
    let mut upstream_answered = false;
    if verdict != Verdict::Stop && !eos_with_headers {
        for i in 0..chunks {
            let len = usize::from(b.u8()) * 700;
            host.body = vec![b.u8(); len];
            host.dropped = false;
            let last = i + 1 == chunks && flags & 2 == 0;
            if i == 1 && flags & 4 != 0 && !upstream_answered {
                // The upstream answers while the body is still arriving.
                host.response = vec![(":status".to_string(), b"408".to_vec())];
                stream.on_response_headers(plugin, &mut host, true);
                upstream_answered = true;
            }
            verdict = stream.on_request_body(plugin, &mut host, len, last);
            if verdict == Verdict::Stop {
                break;
            }
        }
        if verdict != Verdict::Stop && flags & 2 != 0 {
            host.body.clear();
            verdict = stream.on_request_body(plugin, &mut host, 0, true);
        }
    }
    host.world.clock += u64::from(b.u8()) * SECOND / 10;
    assert!(host.local_replies.len() <= 1, "one answer per request: {:?}", host.local_replies);
    assert_eq!(verdict == Verdict::Stop, !host.local_replies.is_empty(), "Stop comes with a local reply");
    assert!(!(upstream_answered && !host.local_replies.is_empty()), "no local reply after the upstream's answer");
    let status = b.u16() % 600;
    if let Some(&local) = host.local_replies.first() {
        // The local reply passes through the encoder filters, meshguard's included.
        host.response = vec![(":status".to_string(), local.to_string().into_bytes())];
        stream.on_response_headers(plugin, &mut host, true);
    } else if flags & 8 == 0 && !upstream_answered {
        host.response = vec![(":status".to_string(), status.to_string().into_bytes())];
        stream.on_response_headers(plugin, &mut host, true);
    }
    stream.on_log(plugin, &mut host);
    !host.local_replies.is_empty()
}

fuzz_target!(|data: &[u8]| {
    let (text, script) = match data.windows(4).position(|w| w == b"\n--\n") {
        Some(p) => (&data[..p], &data[p + 4..]),
        None => (data, &[][..]),
    };
    let parsed = lines(text);
    let cfg = directive(parsed.directives, "cfg").and_then(|d| d.first()).map_or(0, |d| usize::from(d % 5));
    let headers: Vec<(String, Vec<u8>)> = parsed
        .headers
        .iter()
        .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?.to_ascii_lowercase(), v.to_vec())))
        .collect();
    let mut world = World { clock: 1_700_000_000 * SECOND, ..World::default() };
    let plugin = plugin(CONFIGS[cfg], &mut world);
    let mut b = Bytes(script);
    let repeats = b.u8() % 3 + 1;
    for n in 0..repeats {
        deliver(&plugin, &mut world, &headers, &mut b, u64::from(n));
        // Every delivery settled the key it held: nothing is left in flight.
        if let Some(layout) = plugin.dedup_layout() {
            for (key, (value, _)) in &world.shared {
                if key.contains("/dedup/") {
                    let bucket = Bucket::decode(value, &layout).expect("meshguard writes buckets that decode");
                    assert!(bucket.entries.iter().all(|e| e.phase != Phase::InFlight), "an entry left in flight");
                }
            }
        }
    }
});
