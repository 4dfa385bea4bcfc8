//! Consistent hashing by event key, in a real Envoy with a ring-hash cluster of three endpoints:
//! one event reaches one endpoint, whichever of its key headers it carries and whatever other
//! key headers come along, while distinct events spread over the endpoints.
//!
//! Two hash-policy lists are run: the one Istio gives the callers' routes once
//! `istio/destinationrule-event-id.yaml` and `istio/envoyfilter-hash-policy.yaml` are applied
//! (modelled from the shipped files: Istio's entry for the DestinationRule, then the patch's
//! entries appended, as Istio's MERGE does with a repeated field — the comments of the EnvoyFilter
//! name the source), and the shipped `envoy/outbound.yaml` as it is, meshguard included. A
//! control runs the list that appends only `idempotency-key` and `ce-id` behind Istio's
//! non-terminal `x-event-id`, and shows that the checks catch what it gets wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;
/// `to_json` of `meshguard validate`, to read the shipped YAML.
#[path = "../src/bin/meshguard/validate.rs"]
#[allow(dead_code)]
mod validate;

use std::fs;
use std::path::PathBuf;

use serde_json::{json, Value};
use support::envoy::{Envoy, Options};
use support::http::{send, Request};
use support::upstream::Upstream;
use yaml_rust2::{Yaml, YamlLoader};

const KEY_HEADERS: [&str; 3] = ["x-event-id", "idempotency-key", "ce-id"];
/// Distinct events per check. Each of three endpoints must get at least `MIN_PER_ENDPOINT` of
/// them: with a third of the ring each, the chance that one gets fewer is about 1e-8.
const KEYS: usize = 60;
const MIN_PER_ENDPOINT: usize = 3;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_docs(file: &str) -> Vec<Value> {
    let text = fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    docs.iter().filter(|d| !matches!(d, Yaml::Null)).map(|d| validate::to_json(d).unwrap()).collect()
}

fn yaml_text_to_json(text: &str) -> Value {
    let docs = YamlLoader::load_from_str(text).unwrap();
    validate::to_json(&docs[0]).unwrap()
}

fn destination_rule() -> Value {
    yaml_docs("istio/destinationrule-event-id.yaml").remove(0)
}

fn envoy_filter() -> Value {
    yaml_docs("istio/envoyfilter-hash-policy.yaml").remove(0)
}

/// The entry Istio writes into each route to a service whose DestinationRule sets
/// `consistentHash.httpHeaderName` (istio/istio pilot/pkg/networking/core/route/route.go,
/// `ConsistentHashToHashPolicy`): the header, not terminal.
fn istio_entry(dr: &Value) -> Value {
    let header = dr["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]["httpHeaderName"]
        .as_str()
        .expect("the DestinationRule hashes on a header");
    json!({ "header": { "header_name": header } })
}

/// The hash_policy entries the EnvoyFilter's HTTP_ROUTE patch merges into the routes. MERGE
/// appends to a repeated field (istio/istio pkg/proto/merge/merge.go, `mergeList`); any other
/// operation would need another model.
fn patched_entries(ef: &Value) -> Vec<Value> {
    let patches = ef["spec"]["configPatches"].as_array().unwrap();
    let routes: Vec<&Value> = patches.iter().filter(|p| p["applyTo"] == "HTTP_ROUTE").collect();
    assert_eq!(routes.len(), 1, "one HTTP_ROUTE patch");
    assert_eq!(routes[0]["patch"]["operation"], "MERGE", "the model below is MERGE's (append)");
    routes[0]["patch"]["value"]["route"]["hash_policy"].as_array().expect("route.hash_policy").clone()
}

fn header_of(entry: &Value) -> &str {
    entry["header"]["header_name"].as_str().expect("a header hash policy")
}

/// The route list Istio serves after the patch, given the entries Istio generated itself.
fn after_patch(generated: &[Value], ef: &Value) -> Vec<Value> {
    let mut list = generated.to_vec();
    list.extend(patched_entries(ef));
    list
}

fn ring_size(dr: &Value) -> u64 {
    dr["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]["ringHash"]["minimumRingSize"].as_u64().unwrap()
}

fn endpoints(upstreams: &[Upstream]) -> Value {
    let lb_endpoints: Vec<Value> = upstreams
        .iter()
        .map(|u| json!({ "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": u.port } } } }))
        .collect();
    json!([{ "lb_endpoints": lb_endpoints }])
}

fn three_upstreams() -> Vec<Upstream> {
    (0..3).map(|_| Upstream::start()).collect()
}

/// An Envoy whose routes `/<name>/…` carry the given hash-policy lists, all to one ring-hash
/// cluster (as Istio builds it from the DestinationRule: RING_HASH with its minimum ring size,
/// istio/istio pilot/pkg/networking/core/cluster_traffic_policy.go) over `upstreams`.
fn ring_hash_envoy(routes: &[(&str, Vec<Value>)], minimum_ring_size: u64, upstreams: &[Upstream]) -> Envoy {
    let routes: Vec<Value> = routes
        .iter()
        .map(|(name, list)| {
            json!({
                "name": name,
                "match": { "prefix": format!("/{name}/") },
                "route": { "cluster": "consumer", "timeout": "10s", "hash_policy": list }
            })
        })
        .collect();
    let bootstrap = json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "outbound",
                        "route_config": { "virtual_hosts": [{ "name": "consumer", "domains": ["*"], "routes": routes }] },
                        "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
                    }
                }] }]
            }],
            "clusters": [{
                "name": "consumer", "type": "STATIC", "connect_timeout": "1s",
                "lb_policy": "RING_HASH",
                "ring_hash_lb_config": { "minimum_ring_size": minimum_ring_size },
                "load_assignment": { "cluster_name": "consumer", "endpoints": endpoints(upstreams) }
            }]
        }
    });
    Envoy::try_start_bootstrap(&bootstrap.to_string(), 2, &[])
        .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
}

/// Sends requests to one route and says which endpoint each reached.
struct Probe<'a> {
    port: u16,
    method: &'a str,
    path: String,
    upstreams: &'a [Upstream],
}

impl Probe<'_> {
    /// The index of the endpoint that received one request with `headers`; a new connection per
    /// request, so both of Envoy's workers (each with its own load balancer) take part.
    fn endpoint(&self, headers: &[(&str, &str)]) -> usize {
        let before: Vec<usize> = self.upstreams.iter().map(Upstream::hits).collect();
        let mut request = Request::new(self.method, &self.path);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = send(self.port, &request).unwrap();
        assert_eq!(response.status, 200, "{} {} {headers:?}: {}", self.method, self.path, response.text());
        let reached: Vec<usize> =
            (0..self.upstreams.len()).filter(|&i| self.upstreams[i].hits() != before[i]).collect();
        assert_eq!(reached.len(), 1, "{headers:?} reached {reached:?}");
        reached[0]
    }

    /// Every way in which one event does not stay on one endpoint, or distinct events do not
    /// spread, for `KEYS` events per key header.
    fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut per_endpoint = [[0usize; 3]; 3];
        for k in 0..KEYS {
            let key = format!("evt-{k}");
            let other = format!("other-{k}");
            let mut alone = [0usize; 3];
            for (h, header) in KEY_HEADERS.iter().enumerate() {
                let first = self.endpoint(&[(header, &key)]);
                let again = self.endpoint(&[(header, &key)]);
                if first != again {
                    found.push(format!("{header}: {key} reached endpoint {first}, then {again}"));
                }
                alone[h] = first;
                per_endpoint[h][first] += 1;
            }
            // The same event with more key headers: the first header of the list decides, as
            // in the consumer's dedup.headers.
            let (x, idem, ce) = (KEY_HEADERS[0], KEY_HEADERS[1], KEY_HEADERS[2]);
            for (headers, decides) in [
                (vec![(x, key.as_str()), (idem, other.as_str())], 0),
                (vec![(x, key.as_str()), (ce, other.as_str())], 0),
                (vec![(x, key.as_str()), (idem, other.as_str()), (ce, other.as_str())], 0),
                (vec![(idem, key.as_str()), (ce, other.as_str())], 1),
            ] {
                let got = self.endpoint(&headers);
                if got != alone[decides] {
                    let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
                    found.push(format!(
                        "{} with {names:?}: endpoint {got}, but {} alone: {}",
                        KEY_HEADERS[decides], KEY_HEADERS[decides], alone[decides]
                    ));
                }
            }
        }
        for (h, counts) in per_endpoint.iter().enumerate() {
            if counts.iter().any(|&n| n < MIN_PER_ENDPOINT) {
                found.push(format!("{}: {KEYS} events not spread over the endpoints: {counts:?}", KEY_HEADERS[h]));
            }
        }
        found
    }
}

#[test]
fn the_envoyfilter_orders_the_key_headers_as_the_consumer_keys_them() {
    // The hash must be a function of the header the consumer's meshguard keys on: the first
    // present one of its dedup.headers.
    let consumer = &yaml_docs("istio/wasmplugin-inbound.yaml")[0]["spec"]["pluginConfig"]["dedup"]["headers"];
    let consumer: Vec<&str> = consumer.as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    assert_eq!(consumer, KEY_HEADERS);
    let ef = envoy_filter();
    let entries = patched_entries(&ef);
    let headers: Vec<&str> = entries.iter().map(header_of).collect();
    assert_eq!(headers, consumer, "the EnvoyFilter's order");
    for entry in &entries {
        assert_eq!(entry["terminal"], true, "{entry}: every entry terminal");
    }
    // Istio's own entry comes first and hashes the first of them.
    let dr = destination_rule();
    assert_eq!(header_of(&istio_entry(&dr)), consumer[0]);
    // The patch reaches the routes to the DestinationRule's service: Istio names the outbound
    // virtual host `<FQDN>:<port>` (pilot/pkg/networking/core/httproute.go).
    let patch = &ef["spec"]["configPatches"][0];
    assert_eq!(patch["match"]["context"], "SIDECAR_OUTBOUND");
    let vhost = patch["match"]["routeConfiguration"]["vhost"]["name"].as_str().unwrap();
    let host = dr["spec"]["host"].as_str().unwrap();
    let port = vhost.strip_prefix(&format!("{host}:")).unwrap_or_else(|| panic!("{vhost} is not {host}:<port>"));
    assert!(port.parse::<u16>().is_ok(), "{vhost}");
    assert_eq!(patch["match"]["routeConfiguration"]["vhost"]["route"]["action"], "ROUTE");
    // The callers that stamp or route to the consumer in the shipped outbound plugin use that port.
    let outbound = fs::read_to_string(repo().join("istio/wasmplugin-outbound.yaml")).unwrap();
    assert!(outbound.contains(&format!("outbound|{port}||{host}")), "no outbound route to {host}:{port}");
}

#[test]
fn istio_routes_after_the_envoyfilter_keep_one_event_on_one_endpoint() {
    support::require_envoy!();
    let dr = destination_rule();
    let ef = envoy_filter();
    let generated = istio_entry(&dr);
    // Whatever Istio generated before the patch: nothing (no consistentHash on that route), its
    // entry, or one per destination of a VirtualService route with two weighted destinations
    // (route.go, processWeightedDestination).
    let istio = [
        ("istio-none", after_patch(&[], &ef)),
        ("istio-one", after_patch(std::slice::from_ref(&generated), &ef)),
        ("istio-two", after_patch(&[generated.clone(), generated.clone()], &ef)),
    ];
    // The control: only the other two headers appended behind Istio's non-terminal entry.
    let mut naive = vec![generated.clone()];
    naive.extend(patched_entries(&ef).into_iter().filter(|e| header_of(e) != header_of(&generated)));
    assert_eq!(naive.len(), 3, "{naive:?}");

    let upstreams = three_upstreams();
    let mut routes: Vec<(&str, Vec<Value>)> = istio.to_vec();
    routes.push(("naive", naive));
    let envoy = ring_hash_envoy(&routes, ring_size(&dr), &upstreams);
    for (name, list) in &istio {
        let probe = Probe { port: envoy.port, method: "POST", path: format!("/{name}/events"), upstreams: &upstreams };
        let violations = probe.violations();
        assert!(violations.is_empty(), "{name} {list:?}:\n{}", violations.join("\n"));
    }

    // Envoy stops after a terminal entry once ANY hash exists (source/common/http/hash_policy.cc):
    // with x-event-id first and not terminal, an idempotency-key that comes along is combined into
    // the hash, so the same event lands elsewhere for about two keys in three; a ce-id that comes
    // along is not (the terminal idempotency-key entry already stops, with x-event-id's hash).
    let probe = Probe { port: envoy.port, method: "POST", path: "/naive/events".into(), upstreams: &upstreams };
    let violations = probe.violations();
    assert!(violations.len() >= KEYS / 3, "the control should split events:\n{}", violations.join("\n"));
    for v in &violations {
        assert!(
            v.starts_with("x-event-id with") && v.contains("\"idempotency-key\""),
            "only x-event-id + idempotency-key is combined: {v}"
        );
    }
}

/// The plugin configuration in a shipped bootstrap (the StringValue of its meshguard filter).
fn bootstrap_config(bootstrap: &Value) -> String {
    let filters = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array()
        .unwrap();
    let meshguard = filters.iter().find(|f| f["name"] == "meshguard").expect("meshguard filter");
    meshguard["typed_config"]["config"]["configuration"]["value"].as_str().unwrap().to_string()
}

fn route<'a>(bootstrap: &'a Value, name: &str) -> &'a Value {
    let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
    routes.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no route {name}"))
}

fn cluster<'a>(bootstrap: &'a mut Value, name: &str) -> &'a mut Value {
    let clusters = bootstrap["static_resources"]["clusters"].as_array_mut().unwrap();
    clusters.iter_mut().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no cluster {name}"))
}

#[test]
fn outbound_bootstrap_hashes_like_istio_and_on_the_id_meshguard_stamps() {
    let mut shipped = yaml_docs("envoy/outbound.yaml").remove(0);
    let events = route(&shipped, "orders-events").clone();
    // The same list as the Istio routes' patch, and the same ring as the DestinationRule's.
    let list = events["route"]["hash_policy"].as_array().unwrap().clone();
    assert_eq!(list, patched_entries(&envoy_filter()), "envoy/outbound.yaml vs istio/envoyfilter-hash-policy.yaml");
    let consumer = cluster(&mut shipped, events["route"]["cluster"].as_str().unwrap());
    assert_eq!(consumer["lb_policy"], "RING_HASH");
    assert_eq!(consumer["ring_hash_lb_config"]["minimum_ring_size"].as_u64(), Some(ring_size(&destination_rule())));

    support::require_envoy!();
    // The shipped bootstrap as the tests render it (ports, module, its own configuration), with
    // three consumer endpoints instead of one.
    let config = bootstrap_config(&shipped);
    let mut opts = Options::new(&config, 0);
    opts.bootstrap = "envoy/outbound.yaml";
    let mut bootstrap = yaml_text_to_json(&support::envoy::render_bootstrap(&opts, 0, 0));
    let upstreams = three_upstreams();
    cluster(&mut bootstrap, "consumer")["load_assignment"]["endpoints"] = endpoints(&upstreams);
    let envoy = Envoy::try_start_bootstrap(&bootstrap.to_string(), 2, &[])
        .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"));

    // GET: meshguard stamps ids on POSTs only (its dedup.methods), so these carry exactly the
    // headers sent.
    let probe = Probe { port: envoy.port, method: "GET", path: "/events".into(), upstreams: &upstreams };
    let violations = probe.violations();
    assert!(violations.is_empty(), "envoy/outbound.yaml {list:?}:\n{}", violations.join("\n"));

    // An event posted without an id gets one from meshguard before Envoy picks the endpoint:
    // a later delivery that carries that id reaches the same endpoint.
    let post = Probe { port: envoy.port, method: "POST", path: "/events".into(), upstreams: &upstreams };
    let mut reached = [0usize; 3];
    for _ in 0..12 {
        let first = post.endpoint(&[]);
        let stamped = upstreams[first].last().unwrap().header("x-event-id").expect("stamped by meshguard");
        assert_eq!(post.endpoint(&[("x-event-id", &stamped)]), first, "{stamped}");
        reached[first] += 1;
    }
    assert!(reached.iter().filter(|&&n| n > 0).count() >= 2, "fresh ids spread: {reached:?}");
}
