//! Micro-benchmarks of the pure core (host only): `cargo bench --bench core`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use meshguard::config::{self, Correlation};
use meshguard::correlation;
use meshguard::ids::{self, TestEntropy};
use meshguard::logline::RequestLog;
use meshguard::rules::{self, Facts};

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
    c.bench_function("ids/trace_id", |b| b.iter(|| ids::trace_id(&mut entropy)));

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

criterion_group!(core, benches);
criterion_main!(core);
