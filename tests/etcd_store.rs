//! `dedup.store: etcd` (docs/etcd-store.md) with a real etcd (Debian's etcd-server 3.4) and real
//! Envoys running meshguard as replicas of one service in front of one upstream: one delivery of
//! an event at a time reaches the service across replicas, restarts and lease expiry; a failed
//! delivery is released; an etcd outage is decided by `on_error` and leaves no key stuck in
//! flight; one member of three lost changes nothing; a caller gone while the claim is out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use support::envoy::{Envoy, Options};
use support::etcd::{etcd_cluster, Etcd, EtcdFaults, Faults};
use support::http::{send, Request, Response};
use support::upstream::Upstream;

const PREFIX: &str = "/meshguard/";

/// The store of every replica: the cluster `etcd` (support::etcd), a short timeout.
fn config(on_error: &str, dedup: &str) -> String {
    format!(
        r#"{{"dedup": {{ {dedup} "store": {{"type": "etcd", "cluster": "etcd", "authority": "etcd",
            "timeout": "300ms", "on_error": "{on_error}"}}}}}}"#
    )
}

/// A replica: an Envoy with meshguard, the etcd cluster, two workers; returns once its leases
/// are granted (the log line of that).
fn replica(config: &str, upstream: &Upstream, clusters: &str) -> Envoy {
    let mut opts = Options::new(config, upstream.port);
    opts.clusters = Some(clusters);
    let envoy = Envoy::start_with(opts);
    wait_ready(&envoy);
    envoy
}

/// A replica whose store is reached through `faults` (Envoy's fault filter on the way to etcd).
fn replica_behind(faults: &EtcdFaults, config: &str, upstream: &Upstream) -> Envoy {
    let mut opts = Options::new(config, upstream.port);
    faults.apply(&mut opts);
    let envoy = Envoy::start_with(opts);
    wait_ready(&envoy);
    envoy
}

fn wait_ready(envoy: &Envoy) {
    envoy.wait_for("the etcd store's first leases", 20, |e| {
        e.meshguard_lines().iter().any(|l| l.contains("ready: leases granted")).then_some(())
    });
}

fn post(envoy: &Envoy, id: &str, status: u16) -> Response {
    let req = Request::post(&format!("/orders?status={status}")).header("x-event-id", id).header("content-length", "0");
    send(envoy.port, &req).unwrap()
}

fn dedup(r: &Response) -> Option<String> {
    r.header("x-meshguard-dedup")
}

/// Polls `f` until it returns `Some`, for at most `secs`.
fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `n` keys are completed in etcd and none is in flight (completions go with the
/// worker's next tick, after the response).
fn completed(etcd: &Etcd, n: usize) {
    eventually("the completions in etcd", 5, || {
        let v = values(etcd);
        (v.len() == n && v.iter().all(|v| v.starts_with("mg1 C "))).then_some(())
    });
}

/// Values of meshguard's keys in etcd.
fn values(etcd: &Etcd) -> Vec<String> {
    etcd.keys(PREFIX).into_iter().map(|(_, v)| v).collect()
}

#[test]
fn two_replicas_let_one_delivery_of_an_event_reach_the_service() {
    support::require_envoy!();
    support::require_etcd!();
    let etcd = Etcd::start();
    let upstream = Upstream::start();
    let clusters = etcd_cluster("etcd", &etcd.client_ports());
    let a = replica(&config("reject", ""), &upstream, &clusters);
    let b = replica(&config("reject", ""), &upstream, &clusters);
    // Sequential: processed on a, a duplicate on b with a's status, then on b's cache.
    assert_eq!(post(&a, "order-1", 201).status, 201);
    // The completion is sent without holding the response: it lands just after it (a copy on
    // b before that is refused as in flight, with retry-after).
    eventually("the completion in etcd", 5, || values(&etcd).iter().any(|v| v.starts_with("mg1 C 201 ")).then_some(()));
    let dup = post(&b, "order-1", 201);
    assert_eq!((dup.status, dedup(&dup).as_deref()), (201, Some("duplicate")));
    assert_eq!(upstream.hits(), 1);
    let keys = etcd.keys(PREFIX);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].1.starts_with("mg1 C 201 "), "completed in etcd: {keys:?}");
    let dup = post(&b, "order-1", 201);
    assert_eq!(dedup(&dup).as_deref(), Some("duplicate"));
    b.wait_metric(r#"meshguard_dedup_store_total{outcome="duplicate"}"#, 1.0);
    a.wait_metric(r#"meshguard_dedup_store_total{outcome="claimed"}"#, 1.0);
    // Each claim's round trip is in the histogram (the duplicate's on b, the claim's on a).
    a.wait_metric("meshguard_dedup_store_duration_ms_count{}", 1.0);
    b.wait_metric("meshguard_dedup_store_duration_ms_count{}", 1.0);
    // In parallel: each event sent to both replicas at once, from four callers.
    let hits = upstream.hits();
    let rounds = 20;
    for i in 0..rounds {
        let id = format!("parallel-{i}");
        let barrier = Arc::new(Barrier::new(4));
        let callers: Vec<_> = [a.port, b.port, a.port, b.port]
            .into_iter()
            .map(|port| {
                let (barrier, id) = (barrier.clone(), id.clone());
                thread::spawn(move || {
                    let req = Request::post("/orders?status=200&delay_ms=50")
                        .header("x-event-id", &id)
                        .header("content-length", "0");
                    barrier.wait();
                    send(port, &req).unwrap().status
                })
            })
            .collect();
        let statuses: Vec<u16> = callers.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(statuses.contains(&200), "{statuses:?}");
        assert!(statuses.iter().all(|s| [200, 409].contains(s)), "{statuses:?}");
    }
    assert_eq!(upstream.hits() - hits, rounds, "exactly one delivery of each event reached the service");
}

#[test]
fn a_restarted_replica_keeps_refusing_a_completed_event() {
    support::require_envoy!();
    support::require_etcd!();
    let etcd = Etcd::start();
    let upstream = Upstream::start();
    let clusters = etcd_cluster("etcd", &etcd.client_ports());
    let cfg = config("reject", "");
    let a = replica(&cfg, &upstream, &clusters);
    assert_eq!(post(&a, "order-2", 202).status, 202);
    completed(&etcd, 1);
    drop(a);
    // A new process: its own store is empty, etcd remembers.
    let a = replica(&cfg, &upstream, &clusters);
    let dup = post(&a, "order-2", 202);
    assert_eq!((dup.status, dedup(&dup).as_deref()), (202, Some("duplicate")));
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn a_failed_delivery_is_released_and_processed_on_the_other_replica() {
    support::require_envoy!();
    support::require_etcd!();
    let etcd = Etcd::start();
    let upstream = Upstream::start();
    let clusters = etcd_cluster("etcd", &etcd.client_ports());
    let a = replica(&config("reject", ""), &upstream, &clusters);
    let b = replica(&config("reject", ""), &upstream, &clusters);
    assert_eq!(post(&a, "order-3", 503).status, 503);
    // The release is sent without holding the response: it lands right after.
    eventually("the release in etcd", 5, || values(&etcd).is_empty().then_some(()));
    let again = post(&b, "order-3", 200);
    assert_eq!((again.status, dedup(&again)), (200, None), "processed again");
    assert_eq!(upstream.hits(), 2);
    eventually("the completion in etcd", 5, || values(&etcd).iter().any(|v| v.starts_with("mg1 C 200 ")).then_some(()));
    assert_eq!(dedup(&post(&a, "order-3", 200)).as_deref(), Some("duplicate"));
}

#[test]
fn a_completed_event_expires_with_its_lease_after_ttl() {
    support::require_envoy!();
    support::require_etcd!();
    let etcd = Etcd::start();
    let upstream = Upstream::start();
    let clusters = etcd_cluster("etcd", &etcd.client_ports());
    let cfg = config("reject", r#""ttl": "3s", "in_flight_ttl": "3s","#);
    let a = replica(&cfg, &upstream, &clusters);
    let b = replica(&cfg, &upstream, &clusters);
    let done = Instant::now();
    assert_eq!(post(&a, "order-4", 200).status, 200);
    completed(&etcd, 1);
    let keys = etcd.keys(PREFIX);
    assert_eq!(keys.len(), 1);
    let (_, lease) = etcd.get(&keys[0].0).unwrap();
    let ttl = etcd.lease_ttl(lease).unwrap();
    assert!((1..=5).contains(&ttl), "a ttl lease of 3 s plus at most one window (1 s): {ttl}");
    // b never saw it: a duplicate from etcd until the lease ends, then processed.
    assert_eq!(dedup(&post(&b, "order-4", 200)).as_deref(), Some("duplicate"));
    eventually("the key's lease to end", 10, || etcd.keys(PREFIX).is_empty().then_some(()));
    assert!(done.elapsed() >= Duration::from_secs(3), "not before ttl");
    let again = post(&b, "order-4", 200);
    assert_eq!((again.status, dedup(&again)), (200, None), "a redelivery after ttl is processed");
    assert_eq!(upstream.hits(), 2);
}

/// etcd stopped: each `on_error`, one timeout per cool-off (not per request), the log lines, and
/// after the restart no key stuck in flight.
#[test]
fn an_etcd_outage_is_decided_by_on_error_and_leaves_nothing_in_flight() {
    support::require_envoy!();
    support::require_etcd!();
    for on_error in ["local", "reject", "pass"] {
        let mut etcd = Etcd::start();
        let upstream = Upstream::start();
        let clusters = etcd_cluster("etcd", &etcd.client_ports());
        let a = replica(&config(on_error, ""), &upstream, &clusters);
        let b = replica(&config(on_error, ""), &upstream, &clusters);
        etcd.stop(0);
        let first = post(&a, "outage-1", 200);
        let second = post(&a, "outage-1", 200);
        match on_error {
            "local" => {
                assert_eq!((first.status, dedup(&first)), (200, None), "decided by the proxy's own store");
                assert_eq!(dedup(&second).as_deref(), Some("duplicate"), "which still dedups on this pod");
            }
            "reject" => {
                assert_eq!(first.status, 503, "{on_error}");
                assert_eq!(dedup(&first).as_deref(), Some("store-unavailable"));
                assert_eq!(first.header("retry-after").as_deref(), Some("5"));
                assert_eq!(second.status, 503);
            }
            _ => {
                assert_eq!((first.status, second.status), (200, 200), "passed unchecked");
                assert_eq!(dedup(&second), None);
            }
        }
        let expected_hits = if on_error == "reject" {
            0
        } else if on_error == "local" {
            1
        } else {
            2
        };
        assert_eq!(upstream.hits(), expected_hits, "{on_error}");
        // Each worker pays at most one timeout per cool-off: the rest are skipped at once.
        let started = Instant::now();
        for i in 0..20 {
            post(&a, &format!("outage-more-{i}"), 200);
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{on_error}: 20 requests took {:?}", started.elapsed());
        let failed = a.metric(r#"meshguard_dedup_store_total{outcome="error"}"#).unwrap_or(0.0)
            + a.metric(r#"meshguard_dedup_store_total{outcome="timeout"}"#).unwrap_or(0.0);
        assert!((1.0..=2.0).contains(&failed), "{on_error}: one failure per worker, got {failed}");
        assert!(a.metric(r#"meshguard_dedup_store_total{outcome="skipped"}"#).unwrap_or(0.0) >= 18.0);
        let down = a.meshguard_lines().iter().filter(|l| l.contains("is down")).count();
        assert_eq!(down, 1, "{on_error}: said once per proxy");
        // etcd back: after the cool-off claims go to etcd again, and the answer is logged once.
        etcd.restart(0);
        let ok = eventually("claims to reach etcd again", 15, || {
            let r = post(&b, &format!("back-{}", Instant::now().elapsed().as_nanos()), 200);
            b.metric(r#"meshguard_dedup_store_total{outcome="claimed"}"#).filter(|&n| n >= 1.0).map(|_| r)
        });
        assert_eq!(ok.status, 200);
        eventually("a's log of the store back", 15, || {
            post(&a, &format!("probe-{}", upstream.hits()), 200);
            a.meshguard_lines().iter().any(|l| l.contains("answers again")).then_some(())
        });
        eventually(&format!("{on_error}: no key stuck in flight"), 5, || {
            values(&etcd).iter().all(|v| v.starts_with("mg1 C ")).then_some(())
        });
    }
}

/// A claim that lands while its answer is lost (the caller's Envoy gave up at `timeout`) is
/// released once the store answers again: the event is not refused as in flight until
/// `in_flight_ttl` (60 s here).
#[test]
fn a_claim_whose_answer_was_lost_is_released_when_the_store_answers() {
    support::require_envoy!();
    support::require_etcd!();
    let etcd = Etcd::start();
    let upstream = Upstream::start();
    let faults = EtcdFaults::new("etcd", &etcd.client_ports(), Duration::ZERO);
    let a = replica_behind(&faults, &config("reject", ""), &upstream);
    faults.set(&a, Faults { response_delay: Some(Duration::from_millis(800)), ..Faults::default() });
    let lost = post(&a, "order-5", 200);
    assert_eq!(lost.status, 503, "the answer came after the timeout");
    assert_eq!(a.metric(r#"meshguard_dedup_store_total{outcome="timeout"}"#), Some(1.0));
    eventually("the claim to land", 5, || values(&etcd).iter().any(|v| v.starts_with("mg1 F ")).then_some(()));
    faults.set(&a, Faults::default());
    // Released by the tick after the cool-off (5 s), long before in_flight_ttl.
    eventually("the orphaned claim's release", 15, || values(&etcd).is_empty().then_some(()));
    let again = eventually("the store usable again", 10, || {
        let r = post(&a, "order-5", 200);
        (r.status == 200).then_some(r)
    });
    assert_eq!(dedup(&again), None, "processed, not refused as in flight");
    assert_eq!(upstream.hits(), 1);
}

/// The caller resets while its claim is out: nothing reaches the service, and the claim (which
/// lands later) is released, so the redelivery is processed at once.
#[test]
fn a_caller_gone_while_the_claim_is_out_leaves_no_key_in_flight() {
    support::require_envoy!();
    support::require_etcd!();
    let etcd = Etcd::start();
    let upstream = Upstream::start();
    let faults = EtcdFaults::new("etcd", &etcd.client_ports(), Duration::ZERO);
    let a = replica_behind(&faults, &config("reject", "").replace("300ms", "2s"), &upstream);
    faults.set(&a, Faults { response_delay: Some(Duration::from_millis(1000)), ..Faults::default() });
    {
        use std::io::Write;
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        conn.write_all(b"POST /orders HTTP/1.1\r\nhost: x\r\nx-event-id: order-6\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        eventually("the claim to land", 5, || values(&etcd).iter().any(|v| v.starts_with("mg1 F ")).then_some(()));
        // The caller goes away while the answer is held.
    }
    faults.set(&a, Faults::default());
    eventually("the claim's release", 15, || values(&etcd).is_empty().then_some(()));
    assert_eq!(upstream.hits(), 0, "the request never went upstream");
    let again = post(&a, "order-6", 200);
    assert_eq!((again.status, dedup(&again)), (200, None));
    assert_eq!(upstream.hits(), 1);
}

/// Three members: a follower killed changes nothing at once (a claim refused by the dead member
/// is sent again to another, and Envoy ejects it); the leader killed, nothing once etcd has
/// elected another.
#[test]
fn one_etcd_member_of_three_lost_changes_nothing() {
    support::require_envoy!();
    support::require_etcd!();
    let mut etcd = Etcd::cluster(3);
    let upstream = Upstream::start();
    let clusters = etcd_cluster("etcd", &etcd.client_ports());
    let cfg = config("reject", "");
    let a = replica(&cfg, &upstream, &clusters);
    let b = replica(&cfg, &upstream, &clusters);
    let every_event_once = |etcd: &Etcd, round: &str| {
        let hits = upstream.hits();
        for i in 0..30 {
            let id = format!("{round}-{i}");
            let first = post(&a, &id, 200);
            assert_eq!((first.status, dedup(&first)), (200, None), "{round} {i}");
            eventually(&format!("{round} {i}: the completion in etcd"), 5, || {
                etcd.keys(PREFIX).iter().all(|(_, v)| v.starts_with("mg1 C ")).then_some(())
            });
            let dup = post(&b, &id, 200);
            let store_lines =
                |e: &Envoy| e.meshguard_lines().into_iter().filter(|l| l.contains("dedup store")).collect::<Vec<_>>();
            assert_eq!(
                dedup(&dup).as_deref(),
                Some("duplicate"),
                "{round} {i}: never processed twice; a: {:?}; b: {:?}",
                store_lines(&a),
                store_lines(&b)
            );
        }
        assert_eq!(upstream.hits() - hits, 30, "{round}");
    };
    every_event_once(&etcd, "three");
    let follower = etcd.follower();
    etcd.kill(follower);
    every_event_once(&etcd, "follower-gone");
    assert_eq!(a.metric(r#"meshguard_dedup_store_total{outcome="error"}"#).unwrap_or(0.0), 0.0);
    etcd.restart(follower);
    etcd.wait_healthy();
    let leader = etcd.leader().expect("a leader");
    etcd.kill(leader);
    etcd.wait_healthy();
    // Claims sent during the election fail (503 under `reject`, and a cool-off); then etcd serves.
    eventually("claims on both replicas after the election", 30, || {
        let id = format!("election-{}", upstream.hits());
        (post(&a, &id, 200).status == 200 && post(&b, &format!("{id}-b"), 200).status == 200).then_some(())
    });
    every_event_once(&etcd, "leader-gone");
}

/// An event whose key is in its JSON body (`body_key`): the request waits at the body for its
/// claim, and the second replica answers the copy as a duplicate.
#[test]
fn a_key_in_the_body_is_claimed_across_replicas() {
    support::require_envoy!();
    support::require_etcd!();
    let etcd = Etcd::start();
    let upstream = Upstream::start();
    let clusters = etcd_cluster("etcd", &etcd.client_ports());
    let cfg = config("reject", r#""body_key": "/order/id","#);
    let a = replica(&cfg, &upstream, &clusters);
    let b = replica(&cfg, &upstream, &clusters);
    let body = format!(r#"{{"order": {{"id": "body-7", "lines": "{}"}}}}"#, "x".repeat(20_000));
    let req = Request::post("/orders?status=201").header("content-type", "application/json").body(body.as_bytes());
    let first = send(a.port, &req).unwrap();
    assert_eq!((first.status, dedup(&first)), (201, None));
    assert_eq!(upstream.last().unwrap().body.len(), body.len(), "the whole body went upstream");
    completed(&etcd, 1);
    let dup = send(b.port, &req).unwrap();
    assert_eq!((dup.status, dedup(&dup).as_deref()), (201, Some("duplicate")));
    assert_eq!(upstream.hits(), 1);
}

/// Keys are scoped by the workload Istio names in the node metadata: replicas of one workload
/// share them, another service with the same event id and prefix does not.
#[test]
fn keys_are_scoped_by_the_istio_workload() {
    support::require_envoy!();
    support::require_etcd!();
    let etcd = Etcd::start();
    let upstream = Upstream::start();
    let clusters = etcd_cluster("etcd", &etcd.client_ports());
    let cfg = config("reject", "");
    let start = |workload: &str| {
        let node = format!("node:\n  id: {workload}-1\n  metadata: {{NAMESPACE: shop, WORKLOAD_NAME: {workload}}}");
        let mut opts = Options::new(&cfg, upstream.port);
        opts.clusters = Some(&clusters);
        opts.top_level = Some(&node);
        let envoy = Envoy::start_with(opts);
        wait_ready(&envoy);
        envoy
    };
    let orders = start("orders");
    let orders_2 = start("orders");
    let billing = start("billing");
    assert_eq!(post(&orders, "evt-1", 200).status, 200);
    eventually("the completion in etcd", 5, || values(&etcd).iter().any(|v| v.starts_with("mg1 C ")).then_some(()));
    let keys = etcd.keys(PREFIX);
    assert!(keys[0].0.starts_with("/meshguard/shop/orders/"), "{keys:?}");
    assert_eq!(dedup(&post(&orders_2, "evt-1", 200)).as_deref(), Some("duplicate"), "same workload");
    let other = post(&billing, "evt-1", 200);
    assert_eq!((other.status, dedup(&other)), (200, None), "another service's event");
    assert_eq!(upstream.hits(), 2);
}
