//! docs/behaviour.md "With Envoy's own tracer", in a real Envoy with its OpenTelemetry (W3C) and
//! Zipkin (B3) tracers. Envoy starts its span before meshguard runs and writes its headers at the
//! router, after meshguard. These tests pin down what each setup does, and that `mode: "defer"`
//! never logs a trace-id other than the one the upstream received.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::envoy::{Envoy, Options};
use support::http::{send, Request};
use support::upstream::Upstream;

const OTEL: &str = r#"tracing:
  random_sampling: { value: 100 }
  provider:
    name: envoy.tracers.opentelemetry
    typed_config:
      "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
      grpc_service: { envoy_grpc: { cluster_name: collector }, timeout: 0.25s }
      service_name: meshguard-test"#;

const ZIPKIN: &str = r#"tracing:
  random_sampling: { value: 100 }
  provider:
    name: envoy.tracers.zipkin
    typed_config:
      "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
      collector_cluster: collector
      collector_endpoint: /api/v2/spans
      collector_endpoint_version: HTTP_JSON"#;

/// Spans go nowhere: a collector address where nothing listens.
const COLLECTOR: &str = r#"    - name: collector
      type: STATIC
      connect_timeout: 0.25s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }
      load_assignment:
        cluster_name: collector
        endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9 } } } }] }]"#;

const PROPAGATE: &str = r#"{"trace": {"mode": "propagate"}}"#;

fn start(tracer: &'static str, plugin_config: &str, upstream: &Upstream) -> Envoy {
    let mut opts = Options::new(plugin_config, upstream.port);
    opts.hcm = Some(tracer);
    opts.clusters = Some(COLLECTOR);
    Envoy::start_with(opts)
}

fn trace_id(tp: &str) -> String {
    tp.split('-').nth(1).unwrap().to_string()
}

/// meshguard's own JSON line for the request with this correlation id.
fn own_line(envoy: &Envoy, correlation_id: &str) -> serde_json::Value {
    envoy.wait_for("meshguard's log line", 10, |e| {
        e.meshguard_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["correlation_id"] == correlation_id)
    })
}

#[test]
fn otel_tracer_overwrites_traceparent_in_propagate_mode() {
    support::require_envoy!();
    // The setup docs/behaviour.md warns about: meshguard starts a trace, Envoy's router replaces it.
    let upstream = Upstream::start();
    let envoy = start(OTEL, PROPAGATE, &upstream);
    let response = send(envoy.port, &Request::get("/")).unwrap();
    let sent = upstream.last().unwrap().header("traceparent").unwrap();
    let id = response.header("x-correlation-id").unwrap();
    let line = envoy.access_log_for(&id);
    assert_eq!(line["trace_id_envoy"].as_str(), Some(&*trace_id(&sent)), "the upstream has Envoy's trace");
    assert_ne!(line["trace_id"].as_str(), Some(&*trace_id(&sent)), "meshguard's started trace was replaced");
    wait_for_tracer_warning(&envoy);
}

/// meshguard tells the operator once per worker that `defer` is needed.
fn wait_for_tracer_warning(envoy: &Envoy) {
    envoy.wait_for("the Envoy-tracer warning", 10, |e| {
        e.meshguard_lines().iter().any(|l| l.contains("an Envoy tracer rewrote the trace headers")).then_some(())
    });
}

#[test]
fn otel_tracer_with_defer_logs_the_trace_the_upstream_received() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = start(OTEL, r#"{"trace": {"mode": "defer"}, "log": {"requests": true}}"#, &upstream);
    for incoming in [None, Some("00-12345678901234567890123456789012-1234567890123456-01")] {
        let mut request = Request::get("/");
        if let Some(tp) = incoming {
            request = request.header("traceparent", tp);
        }
        let response = send(envoy.port, &request).unwrap();
        let got = upstream.last().unwrap();
        let tps = got.header_all("traceparent");
        assert_eq!(tps.len(), 1, "one trace, Envoy's: {tps:?}");
        let sent = trace_id(&tps[0]);
        if incoming.is_some() {
            assert_eq!(sent, "12345678901234567890123456789012", "Envoy continued the caller's trace");
        }
        let id = response.header("x-correlation-id").unwrap();
        assert_eq!(envoy.access_log_for(&id)["trace_id_envoy"].as_str(), Some(&*sent));
        let own = own_line(&envoy, &id);
        assert_eq!(own["trace_id"].as_str(), Some(&*sent));
        assert_eq!(own["span_id"].as_str(), Some(tps[0].split('-').nth(2).unwrap()));
    }
    assert_eq!(envoy.metric(r#"meshguard_trace_total{outcome="started"}"#), Some(0.0));
}

#[test]
fn zipkin_tracer_with_defer_logs_the_b3_trace_the_upstream_received() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = start(ZIPKIN, r#"{"trace": {"mode": "defer"}, "log": {"requests": true}}"#, &upstream);
    let response = send(envoy.port, &Request::get("/")).unwrap();
    let got = upstream.last().unwrap();
    assert!(got.header("traceparent").is_none(), "meshguard adds no second trace");
    let b3_trace = got.header("x-b3-traceid").unwrap();
    let id = response.header("x-correlation-id").unwrap();
    let own = own_line(&envoy, &id);
    let logged = own["trace_id"].as_str().unwrap();
    assert!(logged.ends_with(&b3_trace) && logged.len() == 32, "{logged} vs {b3_trace}");
    assert_eq!(own["span_id"].as_str(), got.header("x-b3-spanid").as_deref());
}

#[test]
fn zipkin_tracer_in_propagate_mode_makes_a_second_trace() {
    support::require_envoy!();
    // Why `defer` is the recommendation with Envoy's Zipkin tracer (Istio's default): Envoy's B3
    // trace and meshguard's W3C trace of one request differ.
    let upstream = Upstream::start();
    let envoy = start(ZIPKIN, PROPAGATE, &upstream);
    send(envoy.port, &Request::get("/")).unwrap();
    let got = upstream.last().unwrap();
    let w3c = trace_id(&got.header("traceparent").unwrap());
    let b3 = got.header("x-b3-traceid").unwrap();
    assert!(!w3c.ends_with(&b3), "{w3c} / {b3}");
    wait_for_tracer_warning(&envoy);
}

/// `auto` (the default, `{}`): each worker learns Envoy's tracer from its first traced response.
/// Every access-log line, that first one included, names the trace the upstream received, and
/// after it meshguard leaves the trace headers to Envoy: one trace per request.
fn auto_follows(tracer: &'static str, their_trace: impl Fn(&support::upstream::Received) -> String) {
    let upstream = Upstream::start();
    let envoy = start(tracer, "{}", &upstream);
    let mut both = 0;
    for i in 0..12 {
        let response = send(envoy.port, &Request::get("/").header("x-correlation-id", format!("auto-{i}"))).unwrap();
        assert_eq!(response.status, 200);
        let got = upstream.last().unwrap();
        let theirs = their_trace(&got);
        let line = envoy.access_log_for(&format!("auto-{i}"));
        // meshguard's filter state names the upstream's trace, or none once Envoy's tracer
        // owns the headers (the access log prints Envoy's %TRACE_ID% beside it).
        if let Some(logged) = line["trace_id"].as_str() {
            assert!(logged.ends_with(&theirs), "request {i}: logged {logged}, upstream got {theirs}");
        }
        assert!(line["trace_id_envoy"].as_str().is_some_and(|t| t.ends_with(&theirs)), "{line}");
        let extra = got.header("traceparent").is_some_and(|tp| !tp.contains(&theirs));
        both += usize::from(extra || got.header_all("traceparent").len() > 1);
    }
    // A worker learns on its first traced request; Envoy runs two.
    assert!(both <= 2, "{both} requests carried meshguard's trace beside Envoy's");
    envoy.wait_for("the auto-mode note", 10, |e| {
        e.meshguard_lines().iter().any(|l| l.contains("trace.mode \"auto\" follows it")).then_some(())
    });
    assert!(!envoy.meshguard_lines().iter().any(|l| l.contains("rewrote the trace headers")), "no warning in auto");
}

#[test]
fn auto_mode_follows_the_otel_tracer() {
    support::require_envoy!();
    auto_follows(OTEL, |got| trace_id(&got.header("traceparent").unwrap()));
}

#[test]
fn auto_mode_follows_the_zipkin_tracer() {
    support::require_envoy!();
    auto_follows(ZIPKIN, |got| got.header("x-b3-traceid").unwrap());
}

#[test]
fn auto_mode_without_a_tracer_writes_w3c_trace_context() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start("{}", upstream.port);
    for i in 0..12 {
        let response = send(envoy.port, &Request::get("/").header("x-correlation-id", format!("none-{i}"))).unwrap();
        let tp = upstream.last().unwrap().header("traceparent").expect("meshguard's traceparent");
        let line = envoy.access_log_for(&format!("none-{i}"));
        assert_eq!(line["trace_id"].as_str(), Some(&*trace_id(&tp)));
        assert_eq!(response.status, 200);
    }
    assert_eq!(envoy.metric(r#"meshguard_trace_total{outcome="started"}"#), Some(12.0));
}
