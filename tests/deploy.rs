//! The shipped deployables stay true (issue 6): every meshguard configuration in `istio/`
//! (WasmPlugin, TrafficExtension, EnvoyFilter) is loaded into a real Envoy with the filter and
//! accepted; the forms of one plugin carry one configuration; the outbound and inbound Istio
//! configurations do what their comments promise, end to end; and the plain-Envoy bootstraps
//! `envoy/outbound.yaml` and `envoy/inbound.yaml` run as a caller-to-consumer chain. The etcd
//! variants (`istio/wasmplugin-inbound-etcd.yaml`, `istio/etcd-store.yaml`,
//! `envoy/inbound-etcd.yaml`) are the inbound plugin plus `dedup.store` and agree with each other
//! and with the test harness's etcd cluster; the bootstrap runs beside a real etcd member.
//! `meshguard validate` accepts every shipped file and reports every error of broken copies, as
//! the filter in Envoy does. Schema validation, alert rules, the dashboard and the OCI image are
//! checked by `scripts/check-deploy.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;
/// The code of `meshguard validate` (src/bin/meshguard), compiled into this test: the binary
/// itself needs `--features cli`, which plain `cargo test` does not build.
#[path = "../src/bin/meshguard/validate.rs"]
#[allow(dead_code)]
mod validate;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::envoy::{Envoy, Options};
use support::http::{send, Request};
use support::upstream::Upstream;
use validate::Finding;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.iter().filter(|d| !matches!(d, Yaml::Null)).map(|d| validate::to_json(d).unwrap()).collect()
}

/// One meshguard configuration shipped in `istio/`.
struct Shipped {
    file: String,
    kind: String,
    /// `metadata.name`: one name per side (meshguard-outbound, meshguard-inbound) across kinds.
    name: String,
    config: Value,
}

const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

fn shipped_istio_configs() -> Vec<Shipped> {
    let mut files: Vec<PathBuf> = fs::read_dir(repo().join("istio"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut shipped = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in yaml_docs(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let configs: Vec<Value> = match kind.as_str() {
                "WasmPlugin" => vec![doc["spec"]["pluginConfig"].clone()],
                "TrafficExtension" => vec![doc["spec"]["wasm"]["pluginConfig"].clone()],
                "EnvoyFilter" => doc["spec"]["configPatches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| &p["patch"]["value"]["typed_config"])
                    .filter(|t| t["@type"] == WASM_FILTER)
                    .map(|t| {
                        let text = t["config"]["configuration"]["value"].as_str().expect("StringValue JSON");
                        serde_json::from_str(text).unwrap_or_else(|e| panic!("{file}: configuration is not JSON: {e}"))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for config in configs {
                assert!(config.is_object(), "{file} {kind} {name}: no meshguard configuration object");
                shipped.push(Shipped { file: file.clone(), kind: kind.clone(), name: name.clone(), config });
            }
        }
    }
    shipped
}

fn istio_config(file: &str) -> Value {
    shipped_istio_configs().into_iter().find(|s| s.file == file).unwrap_or_else(|| panic!("no config in {file}")).config
}

/// The plugin configuration a shipped Envoy bootstrap carries (its meshguard filter's StringValue).
fn bootstrap_config(file: &str) -> String {
    let doc = &yaml_docs(&repo().join(file))[0];
    let filters = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array()
        .unwrap();
    let meshguard = filters.iter().find(|f| f["typed_config"]["@type"] == WASM_FILTER).expect("meshguard filter");
    meshguard["typed_config"]["config"]["configuration"]["value"].as_str().unwrap().to_string()
}

fn assert_accepted(envoy: &Envoy, what: &str) {
    let bad: Vec<String> =
        envoy.meshguard_lines().into_iter().filter(|l| l.contains("invalid configuration")).collect();
    assert!(bad.is_empty(), "{what}: {bad:?}");
    assert!(envoy.crash_lines().is_empty(), "{what}: {:?}", envoy.crash_lines());
}

fn is_uuid(id: &str) -> bool {
    id.len() == 36 && id.bytes().enumerate().all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == b'-'))
}

#[test]
fn every_istio_plugin_config_is_accepted_by_a_real_envoy() {
    support::require_envoy!();
    let shipped = shipped_istio_configs();
    // Two sides times WasmPlugin, TrafficExtension, EnvoyFilter: an empty list would prove nothing.
    assert!(shipped.len() >= 6, "found only {} meshguard configurations in istio/", shipped.len());
    let upstream = Upstream::start();
    for s in &shipped {
        let what = format!("{} ({} {})", s.file, s.kind, s.name);
        let text = serde_json::to_string(&s.config).unwrap();
        let envoy = Envoy::try_start(Options::new(&text, upstream.port))
            .unwrap_or_else(|log| panic!("{what}: Envoy refused the configuration:\n{log}"));
        assert_accepted(&envoy, &what);
        // The plugin is up and acting: the health rule of every shipped config counts the
        // request, and the correlation id comes back.
        let response = send(envoy.port, &Request::get("/healthz").header("x-correlation-id", "deploy-check")).unwrap();
        assert_eq!(response.status, 200, "{what}");
        assert_eq!(response.header("x-correlation-id").as_deref(), Some("deploy-check"), "{what}");
        envoy.wait_metric(r#"meshguard_requests_total{rule="health"}"#, 1.0);
    }
}

/// The consumer plugin with the shared etcd store: the same resource as `wasmplugin-inbound.yaml`
/// (applied instead of it) plus `dedup.store`, so not one of the forms compared below.
const ETCD_VARIANT: &str = "wasmplugin-inbound-etcd.yaml";

#[test]
fn every_form_of_one_plugin_carries_the_same_config() {
    let shipped: Vec<Shipped> = shipped_istio_configs().into_iter().filter(|s| s.file != ETCD_VARIANT).collect();
    let mut names: Vec<&str> = shipped.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names, ["meshguard-inbound", "meshguard-outbound"]);
    for name in names {
        let forms: Vec<&Shipped> = shipped.iter().filter(|s| s.name == name).collect();
        let mut kinds: Vec<&str> = forms.iter().map(|s| s.kind.as_str()).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, ["EnvoyFilter", "TrafficExtension", "WasmPlugin"], "{name}");
        // The same configuration as the filter compiles it: Istio sends the YAML forms' numbers
        // as doubles (`2.0` arrives as `2`), the EnvoyFilter's JSON string goes as written.
        let compiled = |s: &Shipped| meshguard::config::parse(s.config.to_string().as_bytes()).unwrap();
        for form in &forms[1..] {
            assert_eq!(compiled(form), compiled(forms[0]), "{name}: {} differs from {}", form.file, forms[0].file);
        }
    }
}

#[test]
fn the_etcd_variant_is_the_inbound_plugin_plus_the_store_and_its_destination_rule_matches() {
    // docs/etcd-store.md "Istio": the variant differs from wasmplugin-inbound.yaml in
    // pluginConfig.dedup.store alone (metadata and every other field included).
    let inbound = yaml_docs(&repo().join("istio/wasmplugin-inbound.yaml")).remove(0);
    let mut etcd = yaml_docs(&repo().join(format!("istio/{ETCD_VARIANT}"))).remove(0);
    let store = etcd["spec"]["pluginConfig"]["dedup"].as_object_mut().unwrap().remove("store").expect("dedup.store");
    assert_eq!(etcd, inbound, "{ETCD_VARIANT} differs from wasmplugin-inbound.yaml beyond dedup.store");
    assert_eq!(store["type"], "etcd");
    let compiled = meshguard::config::parse(istio_config(ETCD_VARIANT).to_string().as_bytes()).unwrap();
    let meshguard::config::Store::Etcd(e) = compiled.default_rule.dedup.unwrap().store else {
        panic!("{ETCD_VARIANT}: the store is not etcd")
    };
    // Every rule inherits it (none sets its own), the disabled health rule aside.
    for rule in &compiled.rules {
        if let Some(dedup) = &rule.dedup {
            assert_eq!(dedup.store, meshguard::config::Store::Etcd(e.clone()), "rule {}", rule.name);
        }
    }
    // The cluster is Istio's outbound cluster of the Service the DestinationRule configures.
    let rule = yaml_docs(&repo().join("istio/etcd-store.yaml")).remove(0);
    assert_eq!(rule["kind"], "DestinationRule");
    let host = rule["spec"]["host"].as_str().unwrap();
    let settings = rule["spec"]["trafficPolicy"]["portLevelSettings"].as_array().unwrap();
    let port = settings.iter().find(|s| s["port"]["number"] == 2379).expect("settings for port 2379");
    assert_eq!(e.cluster, format!("outbound|2379||{host}"));
    let short = host.strip_suffix(".svc.cluster.local").unwrap().to_string();
    assert_eq!(e.authority, format!("{short}:2379"));
    assert_eq!(port["tls"]["mode"], "ISTIO_MUTUAL");
    // Never HTTP/2 towards etcd's plaintext port (docs/etcd-store.md "The Envoy cluster").
    assert_eq!(port["connectionPool"]["http"]["h2UpgradePolicy"], "DO_NOT_UPGRADE");
    // The same ejection rule as the harness's cluster, which tests/support_selftest.rs checks.
    let harness = support::etcd::etcd_cluster_json("etcd", &[2379]);
    let outlier = &port["outlierDetection"];
    assert_eq!(outlier["consecutiveGatewayErrors"], harness["outlier_detection"]["consecutive_gateway_failure"]);
    assert_eq!(outlier["maxEjectionPercent"], harness["outlier_detection"]["max_ejection_percent"]);
    assert_eq!(outlier.get("splitExternalLocalOriginErrors"), None);
}

#[test]
fn inbound_etcd_bootstrap_runs_beside_a_real_etcd() {
    support::require_envoy!();
    support::require_etcd!();
    // envoy/inbound-etcd.yaml is envoy/inbound.yaml plus the store and its cluster; its cluster
    // is the harness's (whose behaviour tests/support_selftest.rs checks against real members).
    let mut with_store: Value = serde_json::from_str(&bootstrap_config("envoy/inbound-etcd.yaml")).unwrap();
    let store = with_store["dedup"].as_object_mut().unwrap().remove("store").expect("dedup.store");
    let plain: Value = serde_json::from_str(&bootstrap_config("envoy/inbound.yaml")).unwrap();
    assert_eq!(with_store, plain, "inbound-etcd.yaml's configuration differs from inbound.yaml's beyond dedup.store");
    assert_eq!((store["type"].as_str(), store["cluster"].as_str()), (Some("etcd"), Some("etcd")));
    let doc = &yaml_docs(&repo().join("envoy/inbound-etcd.yaml"))[0];
    let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
    let shipped = clusters.iter().find(|c| c["name"] == "etcd").expect("a cluster named like store.cluster");
    assert_eq!(*shipped, support::etcd::etcd_cluster_json("etcd", &[2379]));
    assert!(!doc["node"]["cluster"].as_str().unwrap_or_default().is_empty(), "node.cluster: the scope of the keys");
    let text = bootstrap_config("envoy/inbound-etcd.yaml");
    assert!(
        matches!(validate::check_file("inbound-etcd.json", text.as_bytes(), false).as_slice(), [Finding::Valid(_)]),
        "meshguard validate refuses envoy/inbound-etcd.yaml's configuration"
    );

    let etcd = support::etcd::Etcd::start();
    let upstream = Upstream::start();
    let mut opts = Options::new(&text, upstream.port);
    opts.bootstrap = "envoy/inbound-etcd.yaml";
    opts.ports = vec![("etcd", etcd.client_port(0))];
    let envoy = Envoy::start_with(opts);
    assert_accepted(&envoy, "envoy/inbound-etcd.yaml");
    // The etcd cluster points at the member.
    let clusters = envoy.admin_get("/clusters").unwrap_or_default();
    assert!(clusters.contains(&format!("etcd::127.0.0.1:{}::", etcd.client_port(0))), "{clusters}");
    // Dedup works (from the proxy's own store until the filter uses etcd).
    let event = |id: &str| Request::post("/events").header("x-event-id", "evt-etcd").header("x-correlation-id", id);
    assert_eq!(send(envoy.port, &event("etcd-1").body("{}")).unwrap().status, 200);
    let again = send(envoy.port, &event("etcd-2").body("{}")).unwrap();
    assert_eq!(again.header("x-meshguard-dedup").as_deref(), Some("duplicate"));
    assert_eq!(upstream.hits(), 1);
    // A filter that uses the store (it exports meshguard_dedup_store_total) claims in etcd once
    // its first leases are granted, counting `skipped` until then: send fresh events until one is
    // claimed. Whatever it writes is under the bootstrap's scope, node.cluster:
    // <prefix><scope>/<32 hex> (docs/etcd-store.md "How it works").
    if envoy.prometheus().contains("meshguard_dedup_store_total") {
        let mut n = 0;
        envoy.wait_for("an event claimed in etcd", 20, |e| {
            n += 1;
            let event = Request::post("/events").header("x-event-id", format!("evt-etcd-{n}")).body("{}");
            send(e.port, &event).ok()?;
            (e.metric(r#"meshguard_dedup_store_total{outcome="claimed"}"#)? >= 1.0).then_some(())
        });
        assert!(!etcd.keys("").is_empty(), "a claim was counted, no key is in etcd");
    }
    for (key, _) in etcd.keys("") {
        let id =
            key.strip_prefix("/meshguard/orders-consumer/").unwrap_or_else(|| panic!("key {key:?} outside the scope"));
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "key {key:?}");
    }
}

#[test]
fn istio_configs_leave_the_trace_mode_to_the_default() {
    // docs/deploy.md "Trace context": Istio configures no tracer by default since 1.22, so a
    // fixed `defer` would switch trace context off; the default writes W3C context without a
    // tracer and follows Envoy's tracer when there is one (trace.mode "auto", docs/behaviour.md "Trace context").
    for s in shipped_istio_configs() {
        assert_eq!(s.config["trace"].get("mode"), None, "{} ({})", s.file, s.kind);
    }
}

#[test]
fn outbound_istio_config_stamps_event_ids_and_meters_the_breaker_without_rejecting() {
    support::require_envoy!();
    let config = istio_config("wasmplugin-outbound.yaml");
    let breaker = &config["circuit_breaker"];
    assert_eq!(breaker["mode"], "metrics_only", "roll-out starts in metrics_only");
    let minimum_calls = breaker["minimum_calls"].as_u64().unwrap();
    let upstream = Upstream::start();
    let envoy = Envoy::start(&serde_json::to_string(&config).unwrap(), upstream.port);
    assert_accepted(&envoy, "wasmplugin-outbound.yaml");

    // Producer side: an event without an id gets one on its way upstream.
    let response = send(envoy.port, &Request::post("/events").header("x-correlation-id", "out-1").body("{}")).unwrap();
    assert_eq!(response.status, 200);
    let received = upstream.last().unwrap();
    let event_id = received.header("x-event-id").expect("x-event-id stamped");
    assert!(is_uuid(&event_id), "{event_id}");
    assert_eq!(received.header("x-correlation-id").as_deref(), Some("out-1"));
    let line = envoy.access_log_for("out-1");
    assert_eq!(line["event_id"], event_id.as_str());
    assert_eq!(line["dedup"], "generated");
    // No tracer in this Envoy (as in a default Istio mesh): the default trace mode writes W3C
    // trace context, and the access log names the trace the upstream received.
    let traceparent = received.header("traceparent").expect("a traceparent on a mesh without a tracer");
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((fields.len(), fields[0]), (4, "00"), "{traceparent}");
    assert_eq!(line["trace_id"], fields[1], "{traceparent}");

    // An event that already has a key of the consumer's list keeps it: no fresh x-event-id on
    // each send (which would make every re-send a new event to the consumer).
    for i in 0..2 {
        let id = format!("out-idem-{i}");
        let r = send(
            envoy.port,
            &Request::post("/events").header("idempotency-key", "order-7").header("x-correlation-id", &id),
        );
        assert_eq!(r.unwrap().status, 200);
        let received = upstream.last().unwrap();
        assert_eq!(received.header("x-event-id"), None, "send {i}: no id stamped beside the Idempotency-Key");
        assert_eq!(received.header("idempotency-key").as_deref(), Some("order-7"));
    }

    // The breaker opens on failures, in stats only: nothing is rejected.
    for i in 0..minimum_calls {
        let r = send(envoy.port, &Request::get(&format!("/charge/{i}?status=500"))).unwrap();
        assert_eq!(r.status, 500, "the failure itself reaches the client");
    }
    envoy.wait_metric(r#"meshguard_circuit_transitions_total{rule="default",to="open"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_circuit_state{rule="default"}"#, 2.0);
    let hits = upstream.hits();
    for i in 0..3 {
        let id = format!("out-open-{i}");
        let r = send(envoy.port, &Request::get("/charge").header("x-correlation-id", &id)).unwrap();
        assert_eq!(r.status, 200, "metrics_only never rejects");
        assert_eq!(r.header("x-meshguard-circuit"), None);
        assert_eq!(envoy.access_log_for(&id)["circuit"], "open");
    }
    assert_eq!(upstream.hits(), hits + 3, "every request reached the upstream");
    // Every request passed while open is a would-be rejection (the last failures above may be
    // among them: the POST's success shares the window).
    let open_lines = envoy.access_log().iter().filter(|l| l["circuit"] == "open").count();
    assert!(open_lines >= 3, "{open_lines}");
    envoy.wait_metric(r#"meshguard_circuit_rejected_total{rule="default"}"#, open_lines as f64);
}

#[test]
fn inbound_istio_config_replays_duplicates_and_refuses_events_without_id_once_enforcing() {
    support::require_envoy!();
    // The roll-out's second step (docs/deploy.md "Roll-out"): the shipped consumer configuration
    // with dedup.mode switched from metrics_only to enforce.
    let mut config = istio_config("wasmplugin-inbound.yaml");
    assert_eq!(config["dedup"]["mode"], "metrics_only", "the shipped consumer side starts as a dry run");
    config["dedup"]["mode"] = json!("enforce");
    let upstream = Upstream::start();
    let envoy = Envoy::start(&serde_json::to_string(&config).unwrap(), upstream.port);
    assert_accepted(&envoy, "wasmplugin-inbound.yaml");
    let event = |body: &str, correlation: &str| {
        Request::post("/events").header("x-event-id", "evt-1").header("x-correlation-id", correlation).body(body)
    };

    let first = send(envoy.port, &event(r#"{"order":42}"#, "in-1")).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(upstream.hits(), 1);
    assert_eq!(envoy.access_log_for("in-1")["dedup"], "first");

    // A redelivery: answered locally with the first status, the service sees it once.
    let again = send(envoy.port, &event(r#"{"order":42}"#, "in-2")).unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-meshguard-dedup").as_deref(), Some("duplicate"));
    assert_eq!(again.header("x-correlation-id").as_deref(), Some("in-2"));
    assert_eq!(upstream.hits(), 1);
    let line = envoy.access_log_for("in-2");
    assert_eq!(
        (line["dedup"].as_str(), line["event_id"].as_str(), line["rule"].as_str()),
        (Some("duplicate"), Some("evt-1"), Some("events"))
    );

    // The events rule fingerprints the body: the same id with another body is a different event.
    let other = send(envoy.port, &event(r#"{"order":43}"#, "in-3")).unwrap();
    assert_eq!(other.status, 422);
    // And refuses events without an id.
    let missing = send(envoy.port, &Request::post("/events").body("{}")).unwrap();
    assert_eq!(missing.status, 400);
    assert_eq!(upstream.hits(), 1);
    envoy.wait_metric(r#"meshguard_dedup_total{rule="events",outcome="duplicate"}"#, 1.0);
}

#[test]
fn inbound_istio_config_starts_as_a_dry_run_that_answers_nothing() {
    support::require_envoy!();
    // docs/behaviour.md "Event-id deduplication", modes: under metrics_only every request reaches the service — no 400, 409, 422
    // or replayed duplicate, no x-meshguard-dedup — while the outcomes are counted as when
    // enforcing.
    let config = istio_config("wasmplugin-inbound.yaml");
    let upstream = Upstream::start();
    let envoy = Envoy::start(&serde_json::to_string(&config).unwrap(), upstream.port);
    assert_accepted(&envoy, "wasmplugin-inbound.yaml");
    let event = |body: &str| Request::post("/events").header("x-event-id", "evt-dry").body(body);
    for (request, what) in [
        (event(r#"{"order":1}"#), "first"),
        (event(r#"{"order":1}"#), "duplicate"),
        (event(r#"{"order":2}"#), "same id, other body"),
        (Request::post("/events").body("{}"), "no id"),
    ] {
        let response = send(envoy.port, &request).unwrap();
        assert_eq!(response.status, 200, "{what}");
        assert_eq!(response.header("x-meshguard-dedup"), None, "{what}");
    }
    assert_eq!(upstream.hits(), 4, "every request reached the service");
    envoy.wait_metric(r#"meshguard_dedup_total{rule="events",outcome="duplicate"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_dedup_total{rule="events",outcome="mismatch"}"#, 1.0);
    envoy.wait_metric(r#"meshguard_dedup_total{rule="events",outcome="missing"}"#, 1.0);
}

#[test]
fn outbound_and_inbound_bootstraps_chain_caller_to_consumer() {
    support::require_envoy!();
    let upstream = Upstream::start();
    let inbound_config = bootstrap_config("envoy/inbound.yaml");
    let mut opts = Options::new(&inbound_config, upstream.port);
    opts.bootstrap = "envoy/inbound.yaml";
    let inbound = Envoy::start_with(opts);
    assert_accepted(&inbound, "envoy/inbound.yaml");
    let outbound_config = bootstrap_config("envoy/outbound.yaml");
    let mut opts = Options::new(&outbound_config, inbound.port);
    opts.bootstrap = "envoy/outbound.yaml";
    let outbound = Envoy::start_with(opts);
    assert_accepted(&outbound, "envoy/outbound.yaml");

    // The app posts an event without an id through its outbound sidecar.
    let response =
        send(outbound.port, &Request::post("/events").header("x-correlation-id", "chain-1").body(r#"{"n":1}"#))
            .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-correlation-id").as_deref(), Some("chain-1"));
    let received = upstream.last().unwrap();
    let event_id = received.header("x-event-id").expect("stamped by the outbound side");
    assert!(is_uuid(&event_id), "{event_id}");
    assert_eq!(received.header("x-correlation-id").as_deref(), Some("chain-1"));
    assert!(received.header("traceparent").is_some(), "hop mode: a trace goes along");
    let out_line = outbound.access_log_for("chain-1");
    assert_eq!(
        (out_line["rule"].as_str(), out_line["event_id"].as_str()),
        (Some("orders-events"), Some(event_id.as_str()))
    );
    assert_eq!(out_line["circuit"], "closed");
    let in_line = inbound.access_log_for("chain-1");
    assert_eq!((in_line["rule"].as_str(), in_line["dedup"].as_str()), (Some("events"), Some("first")));
    assert_eq!(in_line["event_id"], event_id.as_str());
    // Each side is its own hop of one trace.
    assert_eq!(out_line["trace_id"], in_line["trace_id"]);
    assert_ne!(out_line["span_id"], in_line["span_id"]);

    // A redelivery of that event straight to the consumer is replayed, not processed again.
    let hits = upstream.hits();
    let replay =
        send(inbound.port, &Request::post("/events").header("x-event-id", &event_id).body(r#"{"n":1}"#)).unwrap();
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("x-meshguard-dedup").as_deref(), Some("duplicate"));
    // The consumer's events rule refuses events without an id.
    let missing = send(inbound.port, &Request::post("/events").body("{}")).unwrap();
    assert_eq!(missing.status, 400);
    assert_eq!(upstream.hits(), hits);
    // Stats carry their labels through the bootstraps' stats_tags.
    outbound.wait_metric(r#"meshguard_dedup_total{rule="orders-events",outcome="generated"}"#, 1.0);
    inbound.wait_metric(r#"meshguard_dedup_total{rule="events",outcome="duplicate"}"#, 1.0);
}

// ---------------------------------------------------------------------------------------------
// `meshguard validate`

/// Runs `meshguard validate ARGS` (the command's own code); returns exit status and output.
fn meshguard_validate(args: &[&str]) -> (i32, String) {
    let mut argv: Vec<std::ffi::OsString> = vec!["validate".into()];
    argv.extend(args.iter().map(Into::into));
    let mut out = Vec::new();
    let code = validate::main(&argv, &mut std::io::empty(), &mut out);
    (code, String::from_utf8(out).unwrap())
}

fn shipped_yaml_files() -> Vec<String> {
    let mut files: Vec<String> = fs::read_dir(repo().join("istio"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

/// A copy of shipped `file` with `from` replaced by `to` (which must occur exactly once), in a
/// fresh directory; returns its path.
fn broken_copy(file: &str, from: &str, to: &str) -> String {
    let text = fs::read_to_string(repo().join(file)).unwrap();
    assert_eq!(text.matches(from).count(), 1, "{file}: {from:?} must occur once to be broken");
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("meshguard-validate-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(Path::new(file).file_name().unwrap());
    fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn validate_accepts_every_shipped_istio_file() {
    let files = shipped_yaml_files();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (code, out) = meshguard_validate(&args);
    assert_eq!(code, 0, "{out}");
    // Every plugin configuration of istio/ was checked, none skipped as foreign.
    let expected = shipped_istio_configs().len();
    assert_eq!(out.lines().filter(|l| l.ends_with(": valid")).count(), expected, "{out}");
    assert!(out.contains(&format!("meshguard validate: {expected} valid configurations, 0 errors")), "{out}");
    for s in shipped_istio_configs() {
        assert!(out.lines().any(|l| l.contains(&s.file) && l.ends_with(": valid")), "{}: {out}", s.file);
    }
    // The files without a meshguard plugin are skipped, not errors, so `meshguard validate
    // istio/*.yaml` stays the one documented command (the hash policy is checked by
    // tests/hash_policy.rs and scripts/check-deploy.sh).
    for (file, line) in [
        (
            "envoyfilter-hash-policy.yaml",
            "EnvoyFilter checkout/orders-consumer-hash-policy: patches no wasm filter (skipped)",
        ),
        (
            "destinationrule-event-id.yaml",
            "DestinationRule orders/orders-consumer-by-event-id: no meshguard configuration (skipped)",
        ),
    ] {
        assert!(out.lines().any(|l| l.ends_with(&format!("{file}: {line}"))), "{file}: {out}");
    }
}

#[test]
fn validate_reports_every_error_of_broken_copies_with_file_and_json_path() {
    let unknown_dedup_key = format!(
        "WasmPlugin orders/meshguard-inbound: spec.pluginConfig: dedup.max_entry: unknown key (expected one of: {})",
        meshguard::config::DEDUP_KEYS.join(", ")
    );
    // (shipped file, text, broken text, the lines expected after "<copy>: ")
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "istio/wasmplugin-inbound.yaml",
            "scope: caller",
            "scope: global\n      max_entry: 5",
            &[
                &unknown_dedup_key,
                "WasmPlugin orders/meshguard-inbound: spec.pluginConfig: dedup.scope: must be one of \"rule\", \"caller\", got \"global\"",
            ],
        ),
        (
            "istio/trafficextension-outbound.yaml",
            "failure_rate_threshold: 25",
            "failure_rate_threshold: 250",
            &["TrafficExtension checkout/meshguard-outbound: spec.wasm.pluginConfig: routes[0].circuit_breaker.failure_rate_threshold: must be from 0 to 100, got 250"],
        ),
        (
            "istio/envoyfilter-inbound.yaml",
            "\"scope\": \"caller\"",
            "\"scope\": \"caller\", \"mode\": \"dry_run\"",
            &["EnvoyFilter orders/meshguard-inbound: spec.configPatches[0].patch.value.typed_config.config.configuration.value: dedup.mode: must be one of \"enforce\", \"metrics_only\", got \"dry_run\""],
        ),
        (
            "tests/data/spec-example.json",
            "\"ttl\": \"10m\"",
            "\"ttl\": \"10 minutes\"",
            &["dedup.ttl: invalid duration \"10 minutes\" (expected e.g. \"250ms\", \"30s\", \"10m\", \"1h\")"],
        ),
    ];
    for (file, from, to, expected) in cases {
        let copy = broken_copy(file, from, to);
        // The broken copy beside an intact file: every error is reported, the intact file still
        // shows as valid, and the exit status says "error".
        let good = repo().join("istio/wasmplugin-outbound.yaml").to_string_lossy().into_owned();
        let (code, out) = meshguard_validate(&[&good, &copy]);
        assert_eq!(code, 1, "{file}: {out}");
        let errors: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(&copy) && !l.ends_with(": valid"))
            .map(|l| &l[copy.len() + 2..])
            .collect();
        assert_eq!(errors, *expected, "{file}:\n{out}");
        assert!(out.lines().any(|l| l.starts_with(&good) && l.ends_with(": valid")), "{out}");
        assert!(out.contains(&format!("{} error", expected.len())), "{out}");
    }
}

#[test]
fn validate_reads_numbers_the_way_istio_sends_them() {
    // Istio forwards pluginConfig through a protobuf Struct: 20.0 reaches meshguard as 20 (an
    // integer the filter accepts), 20.5 stays a fraction (refused).
    let plugin = |minimum_calls: &str| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: meshguard, namespace: a}}\n\
             spec:\n  url: file:///m.wasm\n  failStrategy: FAIL_OPEN\n  pluginConfig:\n    circuit_breaker:\n      minimum_calls: {minimum_calls}\n"
        )
    };
    assert_eq!(
        validate::check_file("p.yaml", plugin("20.0").as_bytes(), false),
        [Finding::Valid("p.yaml: WasmPlugin a/meshguard: spec.pluginConfig".into())]
    );
    assert_eq!(validate::check_file("p.yaml", plugin("20.5").as_bytes(), false), [Finding::Error(
        "p.yaml: WasmPlugin a/meshguard: spec.pluginConfig: circuit_breaker.minimum_calls: must be an integer from 1 to 4294967295, got 20.5"
            .into()
    )]);
    // An empty pluginConfig is no configuration at all: meshguard's defaults.
    let empty = plugin("1").replace("  pluginConfig:\n    circuit_breaker:\n      minimum_calls: 1\n", "");
    assert_eq!(
        validate::check_file("p.yaml", empty.as_bytes(), false),
        [Finding::Valid("p.yaml: WasmPlugin a/meshguard: spec.pluginConfig".into())]
    );
}

#[test]
fn validate_skips_other_resources_and_plugins_unless_asked() {
    let other = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: authz, namespace: a}\n\
                 spec:\n  url: oci://registry.example.com/authz:1\n  failStrategy: FAIL_CLOSE\n  pluginConfig: {policy: strict}\n";
    let dir = std::env::temp_dir().join(format!("meshguard-validate-other-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("authz.yaml");
    fs::write(&path, other).unwrap();
    let path = path.to_string_lossy().into_owned();
    // Someone else's plugin is not judged by meshguard's rules; a run that found no meshguard
    // configuration at all is an error (a CI step pointed at the wrong files).
    let (code, out) = meshguard_validate(&[&path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a meshguard plugin (url oci://registry.example.com/authz:1"), "{out}");
    assert!(out.contains("no meshguard configuration found"), "{out}");
    let (code, out) = meshguard_validate(&["--all", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{path}: WasmPlugin a/authz: spec.pluginConfig: policy: unknown key")), "{out}");
    assert!(out.contains("warning: ") && out.contains("spec.failStrategy: FAIL_CLOSE"), "{out}");
    // Usage errors are status 2, distinct from a configuration error.
    assert_eq!(meshguard_validate(&[]).0, 2);
    assert_eq!(meshguard_validate(&["--strict", &path]).0, 2);
}

#[test]
fn validate_reports_what_envoy_refuses_in_the_same_words() {
    support::require_envoy!();
    // The command and the filter share the parser: a configuration Envoy refuses is reported
    // by `meshguard validate` with the text of the sidecar's `invalid configuration` line.
    let broken = r#"{"dedup": {"mode": "dry_run", "ttl": "0s"}, "routes": [{"name": "a"}, {"name": "a"}]}"#;
    let findings = validate::check_file("c.json", broken.as_bytes(), false);
    let reported: Vec<String> = findings
        .iter()
        .map(|f| match f {
            Finding::Error(e) => e.strip_prefix("c.json: ").unwrap().to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(reported.len(), 3, "{reported:?}");
    let upstream = Upstream::start();
    let log = match Envoy::try_start(Options::new(broken, upstream.port)) {
        Ok(_) => panic!("Envoy accepted a configuration meshguard validate refuses"),
        Err(log) => log,
    };
    let line = log.lines().find_map(|l| l.split_once("meshguard: invalid configuration: ")).map(|(_, e)| e);
    assert_eq!(line, Some(reported.join("; ").as_str()), "{log}");
}

// ---------------------------------------------------------------------------------------------
// An Envoy shaped like an Istio sidecar, for the claims docs/deploy.md makes about Istio: the
// filter comes through ECDS (istio/istio pilot/pkg/networking/core/extension/extensionfilter.go:
// `config_discovery` for the wasm and RBAC types, no default configuration) and the stats
// settings are those of Istio 1.31's bootstrap.

/// Istio's default `stats_matcher` inclusion list of a sidecar (istio/istio 1.31.0-rc.0,
/// `pkg/bootstrap/config.go` requiredEnvoyStatsMatcherInclusionPrefixes / rbac suffixes /
/// regexes, and `tools/packaging/common/envoy_bootstrap.json`, which adds `reporter=`,
/// `component` and `istio`), and the `stats_tags` it makes of `extraStatTags` (the same file:
/// `({{tag}}=\.=(.*?);\.;)`).
fn istio_stats_config(extra_stat_tags: &[&str]) -> Value {
    let mut patterns: Vec<Value> =
        ["reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm"]
            .iter()
            .map(|p| json!({ "prefix": p }))
            .collect();
    patterns.extend(
        ["rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied"].iter().map(|s| json!({ "suffix": s })),
    );
    patterns.push(json!({ "safe_regex": { "regex": "vhost\\..*\\.route\\..*" } }));
    patterns.extend(["component", "istio"].iter().map(|p| json!({ "prefix": p })));
    let tags: Vec<Value> =
        extra_stat_tags.iter().map(|t| json!({ "tag_name": t, "regex": format!("({t}=\\.=(.*?);\\.;)") })).collect();
    json!({ "stats_tags": tags, "stats_matcher": { "inclusion_list": { "patterns": patterns } } })
}

const ISTIO_FILTER: &str = "orders.meshguard-inbound";

/// Istio's wasm filter as ECDS delivers it (istio/istio pilot/pkg/model/extensions.go
/// `buildWasmConfig`: name `<namespace>.<name>`, root id = pluginName, no vm_id).
fn istio_wasm_filter(plugin_config: &str, failure_policy: &str) -> Value {
    json!({
        "@type": WASM_FILTER,
        "config": {
            "name": ISTIO_FILTER,
            "root_id": "meshguard",
            "failure_policy": failure_policy,
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": { "local": { "filename": support::envoy::wasm_path() } }
            },
            "configuration": { "@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config }
        }
    })
}

/// What Istio's agent puts in the filter's place when it cannot fetch the module and the
/// failStrategy is not FAIL_OPEN (istio/istio pkg/wasm/convert.go, `denyHTTPTypedConfig`).
fn istio_deny_all_fallback() -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {},
        "rules_stat_prefix": "wasm-default-deny"
    })
}

struct SidecarLike {
    envoy: Envoy,
    watch: PathBuf,
    version: u32,
}

/// Writes an ECDS resource and renames it over the watched file (how Envoy's file-based xDS
/// expects a change).
fn write_ecds(watch: &Path, version: u32, filter: Value) {
    let resource = json!({
        "version_info": format!("v{version}"),
        "resources": [{ "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", "name": ISTIO_FILTER, "typed_config": filter }]
    });
    let staged = watch.with_file_name(format!("v{version}.json"));
    fs::write(&staged, resource.to_string()).unwrap();
    fs::rename(&staged, watch.join("ecds.json")).unwrap();
}

impl SidecarLike {
    /// Starts Envoy with `filter` as the first ECDS delivery of the filter `ISTIO_FILTER`.
    fn start(filter: Value, upstream_port: u16) -> SidecarLike {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("meshguard-sidecar-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let watch = root.join("watch");
        fs::create_dir_all(&watch).unwrap();
        write_ecds(&watch, 1, filter);
        let source = json!({
            "resource_api_version": "V3",
            "path_config_source": { "path": watch.join("ecds.json"), "watched_directory": { "path": watch } }
        });
        let bootstrap = json!({
            "node": { "id": "sidecar~10.0.0.1~orders-consumer-1.orders~orders.svc.cluster.local", "cluster": "orders-consumer.orders" },
            "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
            "stats_config": istio_stats_config(&["rule", "to", "outcome"]),
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                    "filter_chains": [{ "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "inbound_0.0.0.0_8080",
                            "access_log": [{ "name": "envoy.access_loggers.stdout", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                                "log_format": { "json_format": {
                                    "path": "%REQ(:PATH)%", "status": "%RESPONSE_CODE%",
                                    "response_flags": "%RESPONSE_FLAGS%", "details": "%RESPONSE_CODE_DETAILS%"
                                } }
                            } }],
                            "route_config": { "virtual_hosts": [{ "name": "app", "domains": ["*"], "routes": [{
                                "name": "default", "match": { "prefix": "/" },
                                "route": { "cluster": "inbound|8080||", "timeout": "10s" }
                            }] }] },
                            "http_filters": [
                                { "name": ISTIO_FILTER, "config_discovery": { "config_source": source, "type_urls": [
                                    WASM_FILTER, "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
                                ] } },
                                { "name": "envoy.filters.http.router", "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
                            ]
                        }
                    }] }]
                }],
                "clusters": [{
                    "name": "inbound|8080||", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": { "cluster_name": "inbound|8080||", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                        "address": { "socket_address": { "address": "127.0.0.1", "port_value": upstream_port } } } }] }] }
                }]
            }
        });
        let envoy = Envoy::try_start_bootstrap(&bootstrap.to_string(), 2, &[])
            .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"));
        SidecarLike { envoy, watch, version: 1 }
    }

    /// The next version of the filter's configuration, as istiod would push it.
    fn deliver(&mut self, filter: Value) {
        self.version += 1;
        write_ecds(&self.watch, self.version, filter);
    }

    fn get(&self, path: &str) -> support::http::Response {
        send(self.envoy.port, &Request::get(path)).unwrap()
    }

    fn access_log_for_path(&self, path: &str) -> Value {
        self.envoy.wait_for(&format!("access log of {path}"), 10, |e| {
            e.access_log().into_iter().rev().find(|l| l["path"] == path)
        })
    }
}

#[test]
fn a_first_configuration_envoy_rejects_answers_500_on_every_request() {
    support::require_envoy!();
    // docs/validate.md "Why it matters": a pod that starts while a configuration the module
    // refuses is live has no previous configuration to keep. FAIL_OPEN does not help: it is about
    // fetching the module and VM failures, not a refused configuration.
    let upstream = Upstream::start();
    let mut sidecar =
        SidecarLike::start(istio_wasm_filter(r#"{"dedup": {"mode": "dry_run"}}"#, "FAIL_OPEN"), upstream.port);
    for path in ["/events", "/healthz"] {
        let response = sidecar.get(path);
        assert_eq!(response.status, 500, "{path}");
        assert_eq!(sidecar.access_log_for_path(path)["response_flags"], "NFCF", "{path}");
    }
    assert_eq!(upstream.hits(), 0);
    // Istio's default stats drop Envoy's ECDS counters (`extension_config_discovery.*`): the
    // refusal shows in the sidecar's log, in istiod's pilot_total_xds_rejects{type="ecds"}, and
    // as response_flags="NFCF" in Istio's request metrics (docs/observability.md).
    assert!(!sidecar.envoy.prometheus().contains("extension_config_discovery"));
    assert!(sidecar.envoy.log().contains("meshguard: invalid configuration: dedup.mode"));
    // The next configuration the module accepts ends it, without a restart.
    sidecar.deliver(istio_wasm_filter("{}", "FAIL_OPEN"));
    let ok = sidecar.envoy.wait_for("a valid configuration to serve", 20, |s| {
        let r = send(s.port, &Request::get("/after")).ok()?;
        (r.status == 200).then_some(r)
    });
    assert!(ok.header("x-correlation-id").is_some(), "meshguard runs");
}

#[test]
fn a_missing_module_file_is_refused_like_an_invalid_configuration_even_fail_open() {
    support::require_envoy!();
    // docs/deploy.md "Failure modes": with a file:// url (or the EnvoyFilter form) nothing is
    // fetched; a module file that is not there makes Envoy refuse the filter configuration, and
    // FAIL_OPEN does not turn that into a pass-through.
    let upstream = Upstream::start();
    let mut filter = istio_wasm_filter("{}", "FAIL_OPEN");
    filter["config"]["vm_config"]["code"]["local"]["filename"] = json!("/nonexistent/meshguard.wasm");
    let sidecar = SidecarLike::start(filter, upstream.port);
    assert_eq!(sidecar.get("/events").status, 500);
    assert_eq!(sidecar.access_log_for_path("/events")["response_flags"], "NFCF");
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn module_fetch_fallback_denies_every_request_and_istio_drops_its_stat() {
    support::require_envoy!();
    // docs/deploy.md "Failure strategy": the filter Istio's agent installs when it cannot fetch
    // the module and failStrategy is not FAIL_OPEN — every request of the listener gets 403.
    let upstream = Upstream::start();
    let sidecar = SidecarLike::start(istio_deny_all_fallback(), upstream.port);
    for path in ["/events", "/healthz"] {
        assert_eq!(sidecar.get(path).status, 403, "{path}");
        let line = sidecar.access_log_for_path(path);
        assert_eq!(line["details"], "rbac_access_denied_matched_policy[none]", "{path}");
        // No response flag: in Istio's metrics it is a plain 403, like an authorization denial.
        assert_eq!(line["response_flags"], "-", "{path}");
    }
    assert_eq!(upstream.hits(), 0);
    // Its counter is http.<prefix>.rbac.wasm-default-deny.denied: it neither starts with one of
    // Istio's kept prefixes nor ends with `rbac.denied`, so a default sidecar does not export it.
    // The signal is the agent's istio_agent_wasm_remote_fetch_count / _config_conversion_count.
    let prometheus = sidecar.envoy.prometheus();
    assert!(!prometheus.contains("wasm_default_deny"), "{prometheus}");
}

#[test]
fn istio_default_stats_keep_meshguard_metrics_without_a_matcher() {
    support::require_envoy!();
    // docs/deploy.md "Mesh settings": no proxyStatsMatcher is needed — Envoy names meshguard's
    // stats `wasmcustom.…`, inside Istio's default inclusion prefix `wasm` — and extraStatTags
    // alone turns the encoded tags into labels.
    let upstream = Upstream::start();
    let config = istio_config("wasmplugin-outbound.yaml");
    let sidecar = SidecarLike::start(istio_wasm_filter(&config.to_string(), "FAIL_OPEN"), upstream.port);
    assert_eq!(sidecar.get("/healthz").status, 200);
    sidecar.envoy.wait_metric(r#"meshguard_requests_total{rule="health"}"#, 1.0);
    let prometheus = sidecar.envoy.prometheus();
    for sample in [
        r#"meshguard_circuit_state{rule="payments"}"#,
        r#"meshguard_circuit_transitions_total{rule="payments",to="open"}"#,
        r#"meshguard_dedup_total{rule="orders-events",outcome="generated"}"#,
        r#"meshguard_correlation_total{outcome="generated"}"#,
        "meshguard_errors_total{}",
    ] {
        assert!(support::envoy::metric_in(&prometheus, sample).is_some(), "{sample} missing:\n{prometheus}");
    }
    // Every metric name meshguard exports passes the default matcher.
    for name in [
        meshguard::metrics::REQUESTS_TOTAL,
        meshguard::metrics::CORRELATION_TOTAL,
        meshguard::metrics::TRACE_TOTAL,
        meshguard::metrics::ERRORS_TOTAL,
        meshguard::metrics::DEDUP_TOTAL,
        meshguard::metrics::DEDUP_ENTRIES,
        meshguard::metrics::DEDUP_EVICTIONS_TOTAL,
        meshguard::metrics::CIRCUIT_STATE,
        meshguard::metrics::CIRCUIT_TRANSITIONS_TOTAL,
        meshguard::metrics::CIRCUIT_REJECTED_TOTAL,
        meshguard::metrics::CIRCUIT_FAILURES_TOTAL,
        meshguard::metrics::CIRCUIT_SLOW_TOTAL,
    ] {
        assert!(prometheus.contains(&format!("\n{name}{{")), "{name} missing");
    }
    // The matcher is really applied: Envoy's own stats outside the list are gone.
    assert!(!prometheus.contains("downstream_rq"), "stats matcher not in effect");
}
