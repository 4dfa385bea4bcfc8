//! Dedup on a shared etcd store (docs/etcd-store.md) against fake hosts and an in-memory etcd
//! that runs the transactions meshguard sends as etcd's JSON gateway would (create-if-absent,
//! conditions on the value, leases). The real etcd is in tests/etcd_store.rs.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value as Json;

use super::SECOND;
use crate::dedup::etcd::{self, Value};
use crate::filter::{Callout, Plugin, Stream, Verdict};
use crate::ids::TestEntropy;
use crate::testing::{FakeHost, ProxyRef};

/// etcd as the JSON gateway answers it, for the three transactions and the grant meshguard sends.
#[derive(Default)]
struct FakeEtcd {
    kv: HashMap<Vec<u8>, (Vec<u8>, i64)>,
    leases: HashMap<i64, u64>,
    next_lease: i64,
    /// Every call fails (no answer: a reset or timeout).
    down: bool,
    /// The next calls fail (a member gone).
    fail_next: usize,
    txns: usize,
}

fn b64(j: &Json) -> Vec<u8> {
    B64.decode(j.as_str().unwrap_or_default()).unwrap_or_default()
}

impl FakeEtcd {
    fn answer(&mut self, call: &Callout) -> (Option<u32>, Vec<u8>) {
        if self.down {
            return (None, Vec::new());
        }
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return (None, Vec::new());
        }
        let body: Json = serde_json::from_slice(&call.body).unwrap();
        if call.path == etcd::GRANT_PATH {
            self.next_lease += 1;
            self.leases.insert(self.next_lease, body["TTL"].as_u64().unwrap());
            return (Some(200), format!("{{\"ID\":\"{}\",\"TTL\":\"{}\"}}", self.next_lease, body["TTL"]).into_bytes());
        }
        assert_eq!(call.path, etcd::TXN_PATH);
        self.txns += 1;
        let compare = &body["compare"][0];
        let key = b64(&compare["key"]);
        let equal = match compare["target"].as_str().unwrap() {
            // createRevision 0: the key does not exist.
            "CREATE" => self.kv.contains_key(&key) != (compare["createRevision"] == "0"),
            "VALUE" => self.kv.get(&key).is_some_and(|(v, _)| *v == b64(&compare["value"])),
            other => panic!("compare target {other}"),
        };
        // etcd's default `result` is EQUAL.
        let holds = match compare["result"].as_str().unwrap_or("EQUAL") {
            "EQUAL" => equal,
            "NOT_EQUAL" => !equal,
            other => panic!("compare result {other}"),
        };
        let ops = if holds { &body["success"] } else { &body["failure"] };
        let mut responses = Vec::new();
        for op in ops.as_array().into_iter().flatten() {
            if let Some(put) = op.get("requestPut") {
                let lease: i64 = put["lease"].as_str().unwrap().parse().unwrap();
                if !self.leases.contains_key(&lease) {
                    return (Some(404), br#"{"error":"etcdserver: requested lease not found","code":5}"#.to_vec());
                }
                self.kv.insert(b64(&put["key"]), (b64(&put["value"]), lease));
                responses.push(r#"{"response_put":{}}"#.to_string());
            } else if let Some(range) = op.get("requestRange") {
                let kvs = match self.kv.get(&b64(&range["key"])) {
                    Some((v, _)) => format!(r#"[{{"key":"","value":"{}"}}]"#, B64.encode(v)),
                    None => "[]".to_string(),
                };
                responses.push(format!(r#"{{"response_range":{{"kvs":{kvs}}}}}"#));
            } else if let Some(delete) = op.get("requestDeleteRange") {
                self.kv.remove(&b64(&delete["key"]));
                responses.push(r#"{"response_delete_range":{"deleted":"1"}}"#.to_string());
            }
        }
        let succeeded = if holds { r#""succeeded":true,"# } else { "" };
        (Some(200), format!(r#"{{"header":{{}},{succeeded}"responses":[{}]}}"#, responses.join(",")).into_bytes())
    }

    fn values(&self) -> Vec<Value> {
        self.kv.values().filter_map(|(v, _)| Value::decode(v)).collect()
    }

    /// Runs every call the host sent since `from` that was not answered yet, answering the
    /// tick's calls to the plugin; returns the answers of the others (stream calls) by token.
    fn serve(&mut self, plugin: &Plugin, host: &mut FakeHost, from: usize) -> Vec<(u32, Option<u32>, Vec<u8>)> {
        let mut answers = Vec::new();
        for (i, call) in host.calls.clone().iter().enumerate().skip(from) {
            let (status, body) = self.answer(call);
            let token = i as u32 + 1;
            if !plugin.on_root_answer(host, token, status, &body) {
                answers.push((token, status, body));
            }
        }
        answers
    }
}

const ETCD: &str = r#"{"dedup": {"in_flight_ttl": "30s", "ttl": "600s",
    "store": {"type": "etcd", "cluster": "etcd", "timeout": "100ms", "on_error": "ON_ERROR"}}}"#;

fn config(on_error: &str) -> String {
    ETCD.replace("ON_ERROR", on_error)
}

/// One replica: a proxy with `workers` workers, its plugin copies, leases granted.
struct Replica {
    proxy: ProxyRef,
    plugins: Vec<Plugin>,
    /// This replica's entropy (replicas draw different nonces).
    seed: u64,
}

impl Replica {
    fn new(json: &str, etcd: &mut FakeEtcd, clock: u64) -> Replica {
        Replica::with_workers(json, etcd, clock, 1)
    }

    fn with_workers(json: &str, etcd: &mut FakeEtcd, clock: u64, workers: usize) -> Replica {
        let proxy = ProxyRef::default();
        proxy.lock().unwrap().clock = clock;
        let plugins = (0..workers)
            .map(|w| {
                let mut host = FakeHost::worker(&proxy, w);
                let config = crate::config::parse(json.as_bytes()).unwrap();
                let metrics = crate::filter::Metrics::define(&config, |_, stat| Some(host.define_metric(stat)));
                let plugin = Plugin::for_workload(config, metrics, "test", "shop/orders");
                plugin.init_shared(&mut host).unwrap();
                plugin
            })
            .collect();
        static SEEDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);
        let seed = SEEDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replica = Replica { proxy, plugins, seed };
        replica.tick(etcd);
        replica
    }

    fn host(&self) -> FakeHost {
        FakeHost::worker(&self.proxy, 0)
    }

    /// Every worker ticks; the grants and releases are answered.
    fn tick(&self, etcd: &mut FakeEtcd) {
        for (w, plugin) in self.plugins.iter().enumerate() {
            let mut host = FakeHost::worker(&self.proxy, w);
            plugin.on_tick(&mut host);
            let stray = etcd.serve(plugin, &mut host, 0);
            assert!(stray.is_empty(), "the tick's calls are the root's");
        }
    }

    fn advance(&self, ns: u64) {
        self.proxy.lock().unwrap().clock += ns;
    }

    fn counter(&self, name: &str) -> i64 {
        self.host().counter(name)
    }
}

fn event(host: &mut FakeHost, id: &str) {
    host.set_request(&[
        (":method", b"POST"),
        (":path", b"/orders"),
        ("x-event-id", id.as_bytes()),
        ("content-length", b"0"),
    ]);
}

/// A delivery on `replica` up to its claim: the verdict, the host and the stream.
fn deliver(replica: &Replica, id: &str) -> (Verdict, FakeHost, Stream) {
    let mut host = replica.host();
    event(&mut host, id);
    let mut stream = Stream::default();
    let verdict = stream.on_request_headers(&replica.plugins[0], &mut host, &mut TestEntropy(replica.seed));
    (verdict, host, stream)
}

/// Answers the stream's claim from `etcd`.
fn answer_claim(replica: &Replica, etcd: &mut FakeEtcd, host: &mut FakeHost, stream: &mut Stream) {
    let plugin = &replica.plugins[0];
    let call = host.calls.last().cloned().expect("a claim was sent");
    let (status, body) = etcd.answer(&call);
    stream.on_call_answer(plugin, host, host.calls.len() as u32, status, &body);
}

/// The service answers `status`; the completion or release the stream queued goes to `etcd`
/// with the worker's next tick.
fn respond(replica: &Replica, etcd: &mut FakeEtcd, host: &mut FakeHost, stream: &mut Stream, status: &str) {
    let plugin = &replica.plugins[0];
    let sent = host.calls.len();
    host.response = vec![(":status".into(), status.as_bytes().to_vec())];
    stream.on_response_headers(plugin, host, true);
    stream.on_log(plugin, host);
    assert_eq!(host.calls.len(), sent, "nothing sent from the stream: its calls end with it");
    assert_eq!(plugin.etcd_stores()[0].queued(), 1);
    // One tick; one more when the write named a lease etcd lost (granted again first).
    for _ in 0..2 {
        if plugin.etcd_stores()[0].queued() > 0 {
            replica.tick(etcd);
        }
    }
    assert_eq!(plugin.etcd_stores()[0].queued(), 0);
}

fn processed(replica: &Replica, etcd: &mut FakeEtcd, id: &str, status: &str) {
    let (verdict, mut host, mut stream) = deliver(replica, id);
    assert_eq!(verdict, Verdict::Wait);
    answer_claim(replica, etcd, &mut host, &mut stream);
    assert_eq!(host.resumed, 1);
    respond(replica, etcd, &mut host, &mut stream, status);
}

const T0: u64 = 1_800_000_000 * SECOND;

#[test]
fn a_first_delivery_waits_for_one_claim_then_goes_on_and_is_completed_in_etcd() {
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&config("local"), &mut etcd, T0);
    assert_eq!(etcd.leases.len(), 4, "in-flight and ttl leases, this window and the next");
    let (verdict, mut host, mut stream) = deliver(&a, "e-1");
    assert_eq!(verdict, Verdict::Wait, "paused for the claim");
    assert_eq!(host.calls.len(), 1);
    assert_eq!((host.calls[0].cluster.as_str(), host.calls[0].path), ("etcd", etcd::TXN_PATH));
    assert_eq!(host.calls[0].timeout_ms, 100);
    answer_claim(&a, &mut etcd, &mut host, &mut stream);
    assert_eq!(host.resumed, 1, "the request goes on once claimed");
    assert!(host.local_replies.is_empty());
    assert!(matches!(etcd.values()[..], [Value::InFlight { .. }]));
    let key = etcd.kv.keys().next().unwrap().clone();
    assert!(key.starts_with(b"/meshguard/shop/orders/"), "{}", String::from_utf8_lossy(&key));
    respond(&a, &mut etcd, &mut host, &mut stream, "201");
    assert!(matches!(etcd.values()[..], [Value::Completed { status: 201, .. }]));
    let (_, lease) = etcd.kv[&key];
    assert!(etcd.leases[&lease] >= 600, "completion moves the key to a ttl lease");
    assert_eq!(a.counter("outcome=.=claimed;.;meshguard_dedup_store_total"), 1);
    assert_eq!(a.counter("rule=.=default;.;outcome=.=first;.;meshguard_dedup_total"), 1);
    // The same replica answers the next copy from its own store: no call.
    let (verdict, host, _) = deliver(&a, "e-1");
    assert_eq!(verdict, Verdict::Stop);
    assert!(host.calls.is_empty(), "a locally completed key costs no round trip");
    assert_eq!(host.local_replies[0].status, 201);
}

#[test]
fn a_completed_event_is_a_duplicate_on_every_replica_and_their_caches_learn_it() {
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&config("local"), &mut etcd, T0);
    let b = Replica::new(&config("local"), &mut etcd, T0);
    processed(&a, &mut etcd, "e-2", "202");
    let (verdict, mut host, mut stream) = deliver(&b, "e-2");
    assert_eq!(verdict, Verdict::Wait);
    answer_claim(&b, &mut etcd, &mut host, &mut stream);
    assert_eq!(host.resumed, 0, "never reaches the service");
    let reply = &host.local_replies[0];
    assert_eq!(reply.status, 202, "the original status, replayed");
    assert_eq!(reply.header("x-meshguard-dedup"), Some(&b"duplicate"[..]));
    assert_eq!(b.counter("outcome=.=duplicate;.;meshguard_dedup_store_total"), 1);
    assert_eq!(b.counter("rule=.=default;.;outcome=.=duplicate;.;meshguard_dedup_total"), 1);
    assert_eq!(
        b.counter("rule=.=default;.;outcome=.=first;.;meshguard_dedup_total"),
        0,
        "counted once, as what it was"
    );
    let txns = etcd.txns;
    let (verdict, host, _) = deliver(&b, "e-2");
    assert_eq!((verdict, host.calls.len(), etcd.txns), (Verdict::Stop, 0, txns), "b's cache learned it");
    assert_eq!(host.local_replies[0].status, 202);
}

#[test]
fn an_event_in_flight_on_another_replica_is_refused_and_not_held_here() {
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&config("local"), &mut etcd, T0);
    let b = Replica::new(&config("local"), &mut etcd, T0);
    let (_, mut host_a, mut stream_a) = deliver(&a, "e-3");
    answer_claim(&a, &mut etcd, &mut host_a, &mut stream_a);
    let (_, mut host_b, mut stream_b) = deliver(&b, "e-3");
    answer_claim(&b, &mut etcd, &mut host_b, &mut stream_b);
    assert_eq!(host_b.local_replies[0].status, 409);
    assert_eq!(b.counter("outcome=.=in_flight;.;meshguard_dedup_store_total"), 1);
    assert_eq!(b.counter("meshguard_dedup_entries"), 0, "b holds nothing locally");
    // a fails: released in etcd, and the redelivery on b is processed.
    respond(&a, &mut etcd, &mut host_a, &mut stream_a, "503");
    assert!(etcd.kv.is_empty(), "released");
    processed(&b, &mut etcd, "e-3", "200");
    assert!(matches!(etcd.values()[..], [Value::Completed { status: 200, .. }]));
}

#[test]
fn a_release_or_completion_touches_only_its_own_claim() {
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&config("local"), &mut etcd, T0);
    let (_, mut host, mut stream) = deliver(&a, "e-4");
    answer_claim(&a, &mut etcd, &mut host, &mut stream);
    // The claim expired in etcd and another delivery holds the key now.
    let key = etcd.kv.keys().next().unwrap().clone();
    let other = Value::InFlight { nonce: 12345, fingerprint: 0 };
    etcd.kv.get_mut(&key).unwrap().0 = other.encode().into_bytes();
    respond(&a, &mut etcd, &mut host, &mut stream, "500");
    assert_eq!(etcd.values(), vec![other], "the other delivery's claim stands");
}

#[test]
fn a_fingerprint_mismatch_across_replicas_is_refused() {
    let json = config("local").replace(r#""in_flight_ttl""#, r#""fingerprint": "method_path", "in_flight_ttl""#);
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&json, &mut etcd, T0);
    let b = Replica::new(&json, &mut etcd, T0);
    processed(&a, &mut etcd, "e-5", "200");
    let mut host = b.host();
    host.set_request(&[(":method", b"POST"), (":path", b"/other"), ("x-event-id", b"e-5")]);
    let mut stream = Stream::default();
    assert_eq!(stream.on_request_headers(&b.plugins[0], &mut host, &mut TestEntropy(b.seed)), Verdict::Wait);
    answer_claim(&b, &mut etcd, &mut host, &mut stream);
    assert_eq!(host.local_replies[0].status, 422);
}

/// The store does not answer within `timeout`: each `on_error` decides, the store is not asked
/// again during its cool-off, and the claim that may have landed is released once it answers.
#[test]
fn a_failing_store_is_decided_by_on_error_skipped_while_cooling_off_and_its_claims_released() {
    for (on_error, status, resumed) in [("local", None, 1), ("reject", Some(503), 0), ("pass", None, 1)] {
        let mut etcd = FakeEtcd::default();
        let a = Replica::new(&config(on_error), &mut etcd, T0);
        let (verdict, mut host, mut stream) = deliver(&a, "e-6");
        assert_eq!(verdict, Verdict::Wait);
        // The claim lands, but its answer is lost: Envoy ends the call at the timeout.
        etcd.answer(host.calls.last().unwrap());
        a.advance(100 * 1_000_000);
        stream.on_call_answer(&a.plugins[0], &mut host, 1, None, b"");
        assert_eq!(host.resumed, resumed, "{on_error}");
        assert_eq!(host.local_replies.first().map(|r| r.status), status, "{on_error}");
        if let Some(reply) = host.local_replies.first() {
            assert_eq!(reply.header("retry-after"), Some(&b"5"[..]));
            assert_eq!(reply.header("x-meshguard-dedup"), Some(&b"store-unavailable"[..]));
        }
        assert_eq!(a.counter("outcome=.=timeout;.;meshguard_dedup_store_total"), 1);
        let logs = host.logs();
        assert_eq!(logs.iter().filter(|(_, l)| l.contains("is down")).count(), 1, "{logs:?}");
        let expected = if on_error == "local" { "first" } else { "unavailable" };
        assert_eq!(a.counter(&format!("rule=.=default;.;outcome=.={expected};.;meshguard_dedup_total")), 1);
        // With `local`, the proxy's own store still decides: a second copy here is in flight.
        let (verdict, host2, _) = deliver(&a, "e-6");
        if on_error == "local" {
            assert_eq!((verdict, host2.local_replies[0].status), (Verdict::Stop, 409));
        }
        // Cooling off: the next new event is not sent to the store.
        let (verdict, host3, _) = deliver(&a, "e-7");
        assert!(host3.calls.is_empty(), "{on_error}: skipped during the cool-off");
        assert_ne!(verdict, Verdict::Wait);
        // (with `reject` and `pass` the second copy of e-6 was new here too, and skipped)
        let skipped = if on_error == "local" { 1 } else { 2 };
        assert_eq!(a.counter("outcome=.=skipped;.;meshguard_dedup_store_total"), skipped, "{on_error}");
        // The claim that landed is released by a tick once the store may be asked again.
        a.tick(&mut etcd);
        assert_eq!(etcd.kv.len(), 1, "{on_error}: not before the cool-off: {:?}", etcd.values());
        a.advance(5 * SECOND);
        a.tick(&mut etcd);
        assert!(etcd.kv.is_empty(), "{on_error}: the orphaned claim is released");
        let logs = a.host().logs();
        assert_eq!(logs.iter().filter(|(_, l)| l.contains("answers again")).count(), 1, "{logs:?}");
    }
}

#[test]
fn a_caller_gone_while_the_claim_is_out_leaves_no_key_in_flight() {
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&config("local"), &mut etcd, T0);
    let (_, mut host, mut stream) = deliver(&a, "e-8");
    // The claim lands; the caller resets before its answer comes (Envoy cancels the call).
    etcd.answer(host.calls.last().unwrap());
    stream.on_log(&a.plugins[0], &mut host);
    assert_eq!(a.counter("meshguard_dedup_entries"), 0, "released locally");
    assert_eq!(etcd.kv.len(), 1);
    a.tick(&mut etcd);
    assert_eq!(etcd.kv.len(), 1, "not while the claim's answer could still be on the way");
    a.advance(SECOND + 100 * 1_000_000);
    a.tick(&mut etcd);
    assert!(etcd.kv.is_empty(), "released");
    processed(&a, &mut etcd, "e-8", "200");
}

#[test]
fn leases_are_granted_once_per_window_by_one_worker_and_never_per_request() {
    let mut etcd = FakeEtcd::default();
    let a = Replica::with_workers(&config("local"), &mut etcd, T0, 2);
    assert_eq!(etcd.leases.len(), 4, "one worker granted them");
    let ready = a.host().logs().iter().filter(|(_, l)| l.contains("ready: leases granted")).count();
    assert_eq!(ready, 1, "said once per proxy");
    for i in 0..20 {
        processed(&a, &mut etcd, &format!("e-{i}"), "200");
    }
    assert_eq!(etcd.leases.len(), 4, "no grant per request");
    // The second worker finds them in the shared table.
    let mut host = FakeHost::worker(&a.proxy, 1);
    event(&mut host, "w1");
    let mut stream = Stream::default();
    assert_eq!(stream.on_request_headers(&a.plugins[1], &mut host, &mut TestEntropy(9)), Verdict::Wait);
    // A window later, the next window's leases are granted ahead.
    a.advance(etcd::window_size(30 * SECOND));
    a.tick(&mut etcd);
    assert_eq!(etcd.leases.len(), 5, "one more in-flight lease (the ttl window is longer)");
}

#[test]
fn a_lease_gone_in_etcd_is_granted_again() {
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&config("reject"), &mut etcd, T0);
    etcd.leases.clear();
    let (_, mut host, mut stream) = deliver(&a, "e-9");
    answer_claim(&a, &mut etcd, &mut host, &mut stream);
    assert_eq!(host.local_replies[0].status, 503, "nothing was written: on_error decides");
    assert_eq!(a.counter("outcome=.=error;.;meshguard_dedup_store_total"), 1);
    a.tick(&mut etcd);
    processed(&a, &mut etcd, "e-10", "200");
}

#[test]
fn without_leases_yet_the_store_is_skipped() {
    let mut etcd = FakeEtcd { down: true, ..FakeEtcd::default() };
    let a = Replica::new(&config("pass"), &mut etcd, T0);
    let (verdict, host, _) = deliver(&a, "e-11");
    assert_eq!((verdict, host.calls.len()), (Verdict::Continue, 0));
    assert_eq!(a.counter("outcome=.=skipped;.;meshguard_dedup_store_total"), 1);
}

#[test]
fn metrics_only_counts_what_the_store_says_and_refuses_nothing() {
    let json = config("reject").replace(r#""in_flight_ttl""#, r#""mode": "metrics_only", "in_flight_ttl""#);
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&json, &mut etcd, T0);
    let b = Replica::new(&json, &mut etcd, T0);
    processed(&a, &mut etcd, "e-12", "200");
    let (_, mut host, mut stream) = deliver(&b, "e-12");
    answer_claim(&b, &mut etcd, &mut host, &mut stream);
    assert!(host.local_replies.is_empty());
    assert_eq!(host.resumed, 1);
    assert_eq!(b.counter("rule=.=default;.;outcome=.=duplicate;.;meshguard_dedup_total"), 1);
}

/// A member gone (connection refused, reset) fails fast: the claim goes again in what is left
/// of `timeout`, and an attempt that landed is recognised as this delivery's own.
#[test]
fn a_fast_failure_is_claimed_again_once_and_finds_its_own_landed_claim() {
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&config("reject"), &mut etcd, T0);
    let (_, mut host, mut stream) = deliver(&a, "e-13");
    // The first attempt lands, but the member resets before answering.
    etcd.answer(&host.calls[0]);
    a.advance(10 * 1_000_000);
    stream.on_call_answer(&a.plugins[0], &mut host, 1, None, b"");
    assert_eq!(host.calls.len(), 2, "sent again");
    assert_eq!(host.calls[1].timeout_ms, 90, "in what is left of the timeout");
    assert_eq!((host.resumed, host.local_replies.len()), (0, 0), "still waiting");
    answer_claim(&a, &mut etcd, &mut host, &mut stream);
    assert_eq!(host.resumed, 1, "its own claim: goes on");
    assert_eq!(a.counter("outcome=.=claimed;.;meshguard_dedup_store_total"), 1);
    assert_eq!(a.counter("outcome=.=error;.;meshguard_dedup_store_total"), 0);
    // Sent again twice at most: then on_error decides.
    let (_, mut host, mut stream) = deliver(&a, "e-14");
    for token in 1..=3 {
        stream.on_call_answer(&a.plugins[0], &mut host, token, None, b"");
    }
    assert_eq!(host.calls.len(), 3);
    assert_eq!(host.local_replies[0].status, 503);
}

/// The completion goes with the worker's tick, whose answers come back: one refused at once (a
/// member gone) goes again on the next tick, and the store is not counted as failing.
#[test]
fn a_completion_refused_by_a_member_gone_is_sent_again() {
    let mut etcd = FakeEtcd::default();
    let a = Replica::new(&config("reject"), &mut etcd, T0);
    let (_, mut host, mut stream) = deliver(&a, "e-15");
    answer_claim(&a, &mut etcd, &mut host, &mut stream);
    host.response = vec![(":status".into(), b"200".to_vec())];
    stream.on_response_headers(&a.plugins[0], &mut host, true);
    stream.on_log(&a.plugins[0], &mut host);
    etcd.fail_next = 1;
    a.tick(&mut etcd);
    assert!(matches!(etcd.values()[..], [Value::InFlight { .. }]), "the first attempt failed");
    a.tick(&mut etcd);
    assert!(matches!(etcd.values()[..], [Value::Completed { status: 200, .. }]));
    assert!(a.host().logs().iter().all(|(_, l)| !l.contains("is down")), "not a store failure");
    let (verdict, _, _) = deliver(&a, "e-16");
    assert_eq!(verdict, Verdict::Wait, "the store is still asked");
}

/// "ready" is said once every lease the store needs for the current window is there, not at the
/// first grant: a claim before that would be skipped.
#[test]
fn ready_is_said_when_every_lease_of_the_window_is_granted() {
    let mut etcd = FakeEtcd::default();
    let proxy = ProxyRef::default();
    proxy.lock().unwrap().clock = T0;
    let mut host = FakeHost::worker(&proxy, 0);
    let config = crate::config::parse(config("local").as_bytes()).unwrap();
    let metrics = crate::filter::Metrics::define(&config, |_, stat| Some(host.define_metric(stat)));
    let plugin = Plugin::for_workload(config, metrics, "test", "w");
    plugin.on_tick(&mut host);
    let grants = host.calls.clone();
    assert_eq!(grants.len(), 4, "in-flight and ttl leases, this window and the next");
    let said = |host: &FakeHost| host.logs().iter().filter(|(_, l)| l.contains("ready: leases granted")).count();
    for (i, call) in grants.iter().enumerate() {
        let (status, body) = etcd.answer(call);
        assert!(plugin.on_root_answer(&mut host, i as u32 + 1, status, &body));
        if i == 0 {
            assert_eq!(said(&host), 0, "one lifetime's lease is not enough");
        }
    }
    assert_eq!(said(&host), 1);
}
