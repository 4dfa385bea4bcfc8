//! `dedup.scope: "caller"` in a real Envoy whose listener requires mTLS: keys are scoped by the
//! peer's URI SAN (the SPIFFE id in Istio), so two callers neither collide nor learn anything of
//! each other's keys. Certificates are made by the test with the `openssl` command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/certs.rs"]
mod certs;
#[path = "support/streaming.rs"]
mod streaming;
mod support;

use std::thread;
use std::time::Duration;

use certs::Certs;
use streaming::{curl, nothing, TempDir};
use support::envoy::{render_bootstrap, Envoy, Options};
use support::http::{send, Request, Response};
use support::upstream::Upstream;

const ONE: &str = "spiffe://cluster.local/ns/a/sa/one";
const TWO: &str = "spiffe://cluster.local/ns/a/sa/two";

fn outcome(name: &str) -> String {
    format!(r#"meshguard_dedup_total{{rule="default",outcome="{name}"}}"#)
}

/// The shipped bootstrap with `plugin_config`, its listener requiring client certificates.
fn start_mtls(plugin_config: &str, upstream_port: u16, certs: &Certs) -> Envoy {
    let text = render_bootstrap(&Options::new(plugin_config, upstream_port), 0, 0);
    let anchor = "        - filters:\n";
    assert_eq!(text.matches(anchor).count(), 1, "envoy/envoy.yaml: one filter chain expected");
    let tls = certs.downstream_tls("          ");
    let tls = format!("        - {}", tls.trim_start());
    let text = text.replace(anchor, &format!("{tls}          filters:\n"));
    Envoy::try_start_bootstrap(&text, 2, &[]).unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
}

/// A POST over mTLS as `who` (a client certificate's name) with curl.
fn post(envoy: &Envoy, certs: &Certs, who: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let (ca, cert, key) = (certs.file("ca.pem"), certs.file(&format!("{who}.pem")), certs.file(&format!("{who}.key")));
    let url = format!("https://127.0.0.1:{}{path}", envoy.port);
    let lines: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    let mut args = vec!["--cacert", &ca, "--cert", &cert, "--key", &key, "-X", "POST", "--data-binary", body];
    for line in &lines {
        args.extend(["-H", line]);
    }
    args.push(&url);
    curl(&args, &[], &nothing)
}

fn marker(r: &Response) -> Option<String> {
    r.header("x-meshguard-dedup")
}

#[test]
fn keys_are_per_caller_and_a_caller_cannot_probe_another_callers_keys() {
    support::require_envoy!();
    let tmp = TempDir::new("mtls");
    let certs = Certs::make(&tmp.0, &[("one", ONE), ("two", TWO)]);
    let upstream = Upstream::start();
    let envoy = start_mtls(r#"{"dedup": {"scope": "caller"}}"#, upstream.port, &certs);
    let key = |k: &'static str| [("x-event-id", k)];

    // The same key from two callers: two events, both reach the service.
    let r = post(&envoy, &certs, "one", "/pay?status=201", &key("k-1"), "");
    assert_eq!((r.status, marker(&r), upstream.hits()), (201, None, 1));
    let r = post(&envoy, &certs, "two", "/pay?status=202", &key("k-1"), "");
    assert_eq!((r.status, marker(&r), upstream.hits()), (202, None, 2), "caller two's k-1 is its own event");
    // Each caller's redelivery is a duplicate for that caller only, with that caller's status.
    let r = post(&envoy, &certs, "one", "/pay?status=201", &key("k-1"), "");
    assert_eq!((r.status, marker(&r).as_deref()), (201, Some("duplicate")));
    let r = post(&envoy, &certs, "two", "/pay?status=202", &key("k-1"), "");
    assert_eq!((r.status, marker(&r).as_deref()), (202, Some("duplicate")));
    assert_eq!(upstream.hits(), 2);

    // Probing: caller one completes p-1; caller two's first p-1 gets exactly what a brand-new key
    // gets — it reaches the service and is recorded `first`.
    assert_eq!(post(&envoy, &certs, "one", "/pay", &key("p-1"), "").status, 200);
    let probe = post(&envoy, &certs, "two", "/pay", &[("x-event-id", "p-1"), ("x-correlation-id", "probe")], "");
    let fresh = post(&envoy, &certs, "two", "/pay", &[("x-event-id", "p-new"), ("x-correlation-id", "fresh")], "");
    assert_eq!((probe.status, marker(&probe)), (fresh.status, marker(&fresh)));
    assert_eq!((probe.status, marker(&probe)), (200, None));
    assert_eq!(upstream.hits(), 5);
    assert_eq!(envoy.access_log_for("probe")["dedup"], envoy.access_log_for("fresh")["dedup"]);
    assert_eq!(envoy.access_log_for("probe")["dedup"], "first");

    // Nor while one's delivery is in flight: two is not told 409.
    let slow = thread::scope(|s| {
        let one = s.spawn(|| post(&envoy, &certs, "one", "/pay?delay_ms=2500", &key("f-1"), ""));
        assert!(upstream.wait_for_hits(6, Duration::from_secs(10)), "caller one's delivery in flight");
        let two = post(&envoy, &certs, "two", "/pay", &key("f-1"), "");
        assert_eq!((two.status, marker(&two)), (200, None), "caller two saw caller one's in-flight key");
        one.join().unwrap()
    });
    assert_eq!((slow.status, marker(&slow)), (200, None));
    assert_eq!(upstream.hits(), 7);
    // While caller one's own redelivery of an in-flight key is 409 (the scope still holds it).
    thread::scope(|s| {
        let first = s.spawn(|| post(&envoy, &certs, "one", "/pay?delay_ms=2500", &key("f-2"), ""));
        assert!(upstream.wait_for_hits(8, Duration::from_secs(10)));
        let again = post(&envoy, &certs, "one", "/pay", &key("f-2"), "");
        assert_eq!((again.status, marker(&again).as_deref()), (409, Some("in-flight")));
        assert_eq!(first.join().unwrap().status, 200);
    });

    // A key in the body is scoped the same way (a structured CloudEvent).
    let event = r#"{"specversion":"1.0","source":"/orders","id":"ce-1","type":"t"}"#;
    let ce = [("content-type", "application/cloudevents+json")];
    for who in ["one", "two"] {
        let r = post(&envoy, &certs, who, "/events", &ce, event);
        assert_eq!((r.status, marker(&r)), (200, None), "{who}");
    }
    for who in ["one", "two"] {
        let r = post(&envoy, &certs, who, "/events", &ce, event);
        assert_eq!(marker(&r).as_deref(), Some("duplicate"), "{who}");
    }
    assert_eq!(upstream.hits(), 10);
    envoy.wait_metric(&outcome("first"), 10.0);
    envoy.wait_metric(&outcome("duplicate"), 4.0);
    envoy.wait_metric(&outcome("in_flight"), 1.0);
}

/// Without mTLS there is no caller identity: every caller shares the rule's scope (documented),
/// and the key behaves as with `scope: "rule"`.
#[test]
fn without_mtls_callers_share_the_rules_scope() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let envoy = Envoy::start(r#"{"dedup": {"scope": "caller"}}"#, upstream.port);
    let request = Request::post("/pay").header("x-event-id", "plain-1").header("content-length", "0");
    assert_eq!(marker(&send(envoy.port, &request).unwrap()), None);
    assert_eq!(marker(&send(envoy.port, &request).unwrap()).as_deref(), Some("duplicate"));
    assert_eq!(upstream.hits(), 1);
}
