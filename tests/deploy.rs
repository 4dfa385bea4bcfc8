//! The shipped deployables stay true (issue 6): every meshguard configuration in `istio/`
//! (WasmPlugin, TrafficExtension, EnvoyFilter) is loaded into a real Envoy with the filter and
//! accepted; the forms of one plugin carry one configuration; the outbound and inbound Istio
//! configurations do what their comments promise, end to end; and the plain-Envoy bootstraps
//! `envoy/outbound.yaml` and `envoy/inbound.yaml` run as a caller-to-consumer chain.
//! Schema validation, alert rules, the dashboard and the OCI image are checked by
//! `scripts/check-deploy.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::envoy::{Envoy, Options};
use support::http::{send, Request};
use support::upstream::Upstream;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// YAML as JSON, the way Kubernetes and Envoy read it (keys are strings).
fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => Value::from(r.parse::<f64>().unwrap_or_else(|_| panic!("bad float {r}"))),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => panic!("unsupported YAML key {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::BadValue => panic!("unsupported YAML value {y:?}"),
    }
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.iter().filter(|d| !matches!(d, Yaml::Null)).map(to_json).collect()
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

#[test]
fn every_form_of_one_plugin_carries_the_same_config() {
    let shipped = shipped_istio_configs();
    let mut names: Vec<&str> = shipped.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names, ["meshguard-inbound", "meshguard-outbound"]);
    for name in names {
        let forms: Vec<&Shipped> = shipped.iter().filter(|s| s.name == name).collect();
        let mut kinds: Vec<&str> = forms.iter().map(|s| s.kind.as_str()).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, ["EnvoyFilter", "TrafficExtension", "WasmPlugin"], "{name}");
        for form in &forms[1..] {
            assert_eq!(form.config, forms[0].config, "{name}: {} differs from {}", form.file, forms[0].file);
        }
    }
}

#[test]
fn istio_configs_leave_trace_headers_to_envoys_tracer() {
    // istio/README.md: Istio's sidecars trace by default, so meshguard must defer to Envoy's
    // tracer (two traces per request otherwise).
    for s in shipped_istio_configs() {
        assert_eq!(s.config["trace"]["mode"], "defer", "{} ({})", s.file, s.kind);
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
    // trace.mode defer: meshguard writes no trace header of its own.
    assert_eq!(received.header("traceparent"), None);

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
fn inbound_istio_config_replays_duplicates_and_refuses_events_without_id() {
    support::require_envoy!();
    let config = istio_config("wasmplugin-inbound.yaml");
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
