//! Micro-benchmarks of the pure core (host only): `cargo bench --bench core`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use meshguard::config::{self, Correlation};
use meshguard::correlation;
use meshguard::filter::Stream;
use meshguard::headers::HeaderMap;
use meshguard::ids::{self, TestEntropy};
use meshguard::logline::RequestLog;
use meshguard::rules::{self, Facts};
use meshguard::testing::{self, FakeHost};
use meshguard::trace::{self, traceparent, tracestate};
use meshguard::{breaker, dedup};

const SPEC_EXAMPLE: &str = include_str!("../tests/data/spec-example.json");

struct Req<'a> {
    method: &'a [u8],
    path: &'a [u8],
    authority: &'a [u8],
    route: &'a [u8],
    cluster: &'a [u8],
}
impl Facts for Req<'_> {
    fn method(&mut self) -> Option<&[u8]> {
        Some(self.method)
    }
    fn path(&mut self) -> Option<&[u8]> {
        Some(self.path)
    }
    fn authority(&mut self) -> Option<&[u8]> {
        Some(self.authority)
    }
    fn route_name(&mut self) -> Option<&[u8]> {
        Some(self.route)
    }
    fn cluster(&mut self) -> Option<&[u8]> {
        Some(self.cluster)
    }
}

fn benches(c: &mut Criterion) {
    c.bench_function("config/parse spec example", |b| b.iter(|| config::parse(black_box(SPEC_EXAMPLE.as_bytes()))));

    let cfg = config::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
    c.bench_function("rules/select first rule (all 5 fields)", |b| {
        b.iter(|| {
            let mut req = Req {
                method: b"POST",
                path: b"/charge/123",
                authority: b"payments.prod:8080",
                route: b"payments-v1",
                cluster: b"outbound|8080||payments.prod.svc.cluster.local",
            };
            rules::select(black_box(&cfg.rules), &mut req)
        })
    });
    c.bench_function("rules/select no match (default)", |b| {
        b.iter(|| {
            let mut req =
                Req { method: b"GET", path: b"/orders", authority: b"orders.prod", route: b"orders", cluster: b"c" };
            rules::select(black_box(&cfg.rules), &mut req)
        })
    });

    let corr = Correlation::default();
    c.bench_function("correlation/check valid id", |b| {
        b.iter(|| correlation::check(black_box(Some(b"6b7c2a32-1b1f-4a44-9d1e-0f64e0f6f1a2".as_slice())), &corr))
    });
    let mut entropy = TestEntropy(0x9e37_79b9_7f4a_7c15);
    c.bench_function("ids/uuid4", |b| b.iter(|| ids::uuid4(&mut entropy)));

    let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    c.bench_function("trace/traceparent parse", |b| b.iter(|| traceparent::parse(black_box(tp))));
    let ctx = traceparent::parse(tp).unwrap().context;
    c.bench_function("trace/traceparent format", |b| b.iter(|| black_box(&ctx).traceparent()));
    let lines: [&[u8]; 2] = [b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", b"vendor@tenant=abc,x=1"];
    c.bench_function("trace/tracestate combine 2 lines", |b| {
        b.iter(|| tracestate::combine(black_box(lines).into_iter()))
    });
    let cfg = config::parse(b"{}").unwrap();
    let hop = config::parse(br#"{"trace": {"mode": "hop"}}"#).unwrap();
    let empty = request_headers(&[]);
    let traced = request_headers(&[("traceparent", &tp[..]), ("tracestate", lines[0])]);
    c.bench_function("trace/decide new trace", |b| {
        b.iter(|| trace::decide(black_box(&empty), &cfg.trace, &mut entropy))
    });
    c.bench_function("trace/decide propagate", |b| {
        b.iter(|| trace::decide(black_box(&traced), &cfg.trace, &mut entropy))
    });
    c.bench_function("trace/decide hop", |b| b.iter(|| trace::decide(black_box(&traced), &hop.trace, &mut entropy)));

    let raw = HeaderMap::from_pairs(&REQUEST).serialized().to_vec();
    c.bench_function("headers/parse 8 request headers", |b| {
        b.iter(|| HeaderMap::from_serialized(black_box(raw.clone())))
    });

    // The whole request path of the default configuration against the project's test double of
    // the host (`meshguard::testing`): the CPU meshguard itself adds per request, plus what the
    // double's calls cost. Those are not free: it builds the header map on every read (about
    // 0.25 µs, two reads per stream; a copy would take 30 ns), keeps every header and
    // filter-state write, and locks the process for each stat, clock or shared-data call. Each
    // iteration is a new stream; making its host is not measured.
    let mut host = FakeHost::new();
    let plugin = testing::plugin("{}", &mut host, "bench");
    c.bench_function("flow/request+response, default config, test double host", |b| {
        b.iter_batched_ref(
            || new_stream(&host, &[]),
            |host| {
                let mut stream = Stream::default();
                stream.on_request_headers(&plugin, host, &mut entropy);
                stream.on_response_headers(&plugin, host, true);
                stream.on_log(&plugin, host);
            },
            BatchSize::SmallInput,
        )
    });

    // All four features (breaker closed, dedup on a first-seen key): the same, shared data kept by
    // the double over all iterations (every bucket created by `init_shared`, as in Envoy).
    let mut host = FakeHost::new();
    let plugin = testing::plugin(r#"{"circuit_breaker": {}, "dedup": {}}"#, &mut host, "bench");
    plugin.init_shared(&mut host).unwrap();
    let mut n = 0u64;
    c.bench_function("flow/request+response, all features, first-seen event id, test double host", |b| {
        b.iter_batched_ref(
            || {
                n += 1;
                new_stream(&host, &[("x-event-id", format!("evt-{n}").as_bytes())])
            },
            |host| {
                let mut stream = Stream::default();
                stream.on_request_headers(&plugin, host, &mut entropy);
                stream.on_response_headers(&plugin, host, true);
                stream.on_log(&plugin, host);
            },
            BatchSize::SmallInput,
        )
    });

    let cb = config::parse(br#"{"circuit_breaker": {}}"#).unwrap().default_rule.circuit_breaker.unwrap();
    let mut state = breaker::State::new(&cb);
    let ok = breaker::CallOutcome::default();
    for _ in 0..25 {
        let (admission, _) = state.admit(&cb, 0);
        if let breaker::Admission::Pass { generation } = admission {
            state.record(&cb, generation, false, ok, 0);
        }
    }
    let encoded = state.encode();
    c.bench_function("breaker/admit from shared bytes (decode, decide), count window 20", |b| {
        b.iter(|| {
            let mut s = breaker::State::decode(black_box(&encoded), &cb).unwrap();
            s.admit(&cb, 1)
        })
    });
    let failed = breaker::CallOutcome { failure: true, slow: false };
    c.bench_function("breaker/record a failure (decode, record, encode), count window 20", |b| {
        b.iter(|| {
            let mut s = breaker::State::decode(black_box(&encoded), &cb).unwrap();
            s.record(&cb, 0, false, failed, 1);
            s.encode()
        })
    });
    let copy = breaker::Snapshot::new(state.clone(), Some(0), &cb);
    c.bench_function("breaker/admit from the worker's copy (quiet closed)", |b| {
        b.iter(|| breaker::admit_cached(black_box(copy.as_ref()), &cb, 1))
    });

    let layout = dedup::Layout::new(100_000);
    let mut bucket = dedup::store::Bucket::default();
    for i in 0..7u128 {
        bucket.check(&layout, i, 0, 1, 1, 60_000_000_000);
    }
    let seven = bucket.encode();
    c.bench_function("dedup/check a first-seen key in a 7-entry bucket (decode, check, encode)", |b| {
        b.iter(|| {
            let mut bucket = dedup::store::Bucket::decode(black_box(&seven), &layout).unwrap();
            let r = bucket.check(&layout, 99, 0, 7, 2, 60_000_000_000);
            (r, bucket.encode())
        })
    });
    c.bench_function("dedup/complete an in-flight key (decode, complete, encode)", |b| {
        b.iter(|| {
            let mut bucket = dedup::store::Bucket::decode(black_box(&seven), &layout).unwrap();
            bucket.complete(3, 1, 201, 3, 600_000_000_000);
            bucket.encode()
        })
    });
    let evt = request_headers(&[("x-event-id", b"order-4711-created")]);
    let names: Vec<String> = ["x-event-id", "idempotency-key", "ce-id"].map(String::from).to_vec();
    c.bench_function("dedup/event key from headers and its 128-bit id", |b| {
        b.iter(|| match dedup::event_key(black_box(&evt), &names) {
            dedup::Key::Valid { key, .. } => dedup::key_id("payments", None, &key),
            _ => 0,
        })
    });

    // A key in a 1 KiB JSON event (the load benchmark's body-key row): the scan stops at the key
    // (first member), then at the end of a body that has it last.
    let first = format!(r#"{{"eventId":"evt_789012","eventType":"OrderPlaced","data":"{}"}}"#, "x".repeat(960));
    let last = format!(r#"{{"eventType":"OrderPlaced","data":"{}","eventId":"evt_789012"}}"#, "x".repeat(960));
    let pointer = [dedup::body_key::Pointer::parse("/eventId").unwrap()];
    for (what, body) in [("first member", &first), ("last member", &last)] {
        c.bench_function(&format!("dedup/body key of a 1 KiB JSON event, {what}, and its 128-bit id"), |b| {
            b.iter(|| {
                let mut scan = dedup::body_key::Scan::new(&pointer);
                scan.feed(black_box(body.as_bytes()));
                match scan.finish().first() {
                    Some(dedup::body_key::Found::Value(key)) => dedup::key_id("payments", None, key),
                    _ => 0,
                }
            })
        });
    }

    let line = RequestLog {
        correlation_id: "6b7c2a32-1b1f-4a44-9d1e-0f64e0f6f1a2",
        rule: "payments",
        route_name: Some(b"payments-v1"),
        method: Some(b"POST"),
        path: Some(b"/charge/123?card=4111"),
        authority: Some(b"payments.prod:8080"),
        status: Some(201),
        duration_ms: Some(12.5),
        upstream_cluster: Some(b"outbound|8080||payments.prod.svc.cluster.local"),
        response_flags: Some(0),
        dedup: "none",
        ..RequestLog::default()
    };
    c.bench_function("logline/to_json", |b| b.iter(|| black_box(&line).to_json(false)));
}

const REQUEST: [(&str, &[u8]); 8] = [
    (":authority", b"orders.prod.svc.cluster.local:8080"),
    (":path", b"/orders/123"),
    (":method", b"POST"),
    (":scheme", b"http"),
    ("user-agent", b"orders-client/1.4"),
    ("content-type", b"application/json"),
    ("x-forwarded-proto", b"http"),
    ("x-request-id", b"0489cb0a-8c2f-4a44-9d1e-0f64e0f6f1a2"),
];

fn request_headers(extra: &[(&str, &[u8])]) -> HeaderMap {
    let mut all: Vec<(&str, &[u8])> = REQUEST.to_vec();
    all.extend_from_slice(extra);
    HeaderMap::from_pairs(&all)
}

/// A new stream on `host`'s process: [`REQUEST`] and `extra` as its request, answered 200.
fn new_stream(host: &FakeHost, extra: &[(&str, &[u8])]) -> FakeHost {
    let mut stream = host.next_stream();
    let mut all: Vec<(&str, &[u8])> = REQUEST.to_vec();
    all.extend_from_slice(extra);
    stream.set_request(&all);
    stream.respond(&[(":status", b"200")]);
    stream
}

criterion_group!(core, benches);
criterion_main!(core);
