//! The test-support HTTP client against the test upstream, without Envoy: the integration tests
//! rely on both, so their own faults should show up here first. Also the etcd harness
//! (tests/support/etcd.rs) against real etcd members — what the gateway answers, members killed,
//! stopped and restarted — and behind a real Envoy with its fault listener.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::http::{send, Conn, Request};
use support::upstream::Upstream;

#[test]
fn keep_alive_conn_sends_two_requests_on_one_connection() {
    let upstream = Upstream::start();
    let mut conn = Conn::open(upstream.port).unwrap();
    let first = conn.send(&Request::get("/one")).unwrap();
    let second = conn.send(&Request::get("/two?x=1")).unwrap();
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.json()["path"], "/one");
    assert_eq!(second.json()["path"], "/two?x=1");
    assert_eq!(second.header("Content-Type").as_deref(), Some("application/json"));
    assert_eq!(upstream.hits(), 2);
    assert_eq!(upstream.connections(), 1);
    let paths: Vec<_> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/one", "/two?x=1"]);
}

#[test]
fn send_closes_its_connection() {
    let upstream = Upstream::start();
    let response = send(upstream.port, &Request::get("/")).unwrap();
    assert_eq!(response.header("connection").as_deref(), Some("close"));
    assert_eq!(upstream.last().unwrap().header("connection").as_deref(), Some("close"));
}

#[test]
fn status_path_and_query_set_the_status() {
    let upstream = Upstream::start();
    let mut conn = Conn::open(upstream.port).unwrap();
    for (path, status) in [("/status/503", 503), ("/status/404?a=b", 404), ("/x?status=201", 201), ("/status/999", 200)]
    {
        let response = conn.send(&Request::get(path)).unwrap();
        assert_eq!(response.status, status, "{path}");
        assert_eq!(response.json()["path"], path);
    }
}

#[test]
fn head_204_and_304_have_no_body_and_keep_the_connection_usable() {
    let upstream = Upstream::start();
    let mut conn = Conn::open(upstream.port).unwrap();
    let head = conn.send(&Request::new("HEAD", "/")).unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("content-length").is_some());
    for path in ["/status/204", "/status/304"] {
        let response = conn.send(&Request::get(path)).unwrap();
        assert!(response.body.is_empty(), "{path}: {}", response.text());
    }
    assert_eq!(conn.send(&Request::get("/after")).unwrap().json()["path"], "/after");
    assert_eq!(upstream.connections(), 1);
}

#[test]
fn raw_header_bytes_arrive_intact() {
    let upstream = Upstream::start();
    let response = send(upstream.port, &Request::get("/").header("x-raw", b"caf\xE9")).unwrap();
    assert_eq!(upstream.last().unwrap().header_bytes("X-Raw").unwrap(), b"caf\xE9");
    assert_eq!(response.json()["headers"]["x-raw"], "caf\u{FFFD}");
}

#[test]
fn host_is_added_unless_given_and_repeated_headers_are_joined() {
    let upstream = Upstream::start();
    send(upstream.port, &Request::get("/").header("x-dup", "a").header("X-Dup", "b")).unwrap();
    let received = upstream.last().unwrap();
    assert_eq!(received.header("host").as_deref(), Some("localhost"));
    assert_eq!(received.header_all("x-dup"), ["a", "b"]);

    let response = send(upstream.port, &Request::get("/").header("Host", "api.example:8080")).unwrap();
    assert_eq!(upstream.last().unwrap().header_all("host"), ["api.example:8080"]);
    let mut conn = Conn::open(upstream.port).unwrap();
    let joined = conn.send(&Request::get("/").header("x-dup", "a").header("x-dup", "b")).unwrap();
    assert_eq!(joined.json()["headers"]["x-dup"], "a, b");
    assert_eq!(response.json()["headers"]["host"], "api.example:8080");
}

#[test]
fn bodies_by_content_length_and_chunked() {
    let upstream = Upstream::start();
    let mut conn = Conn::open(upstream.port).unwrap();

    let plain = conn.send(&Request::post("/plain").body("hello")).unwrap();
    assert_eq!(plain.json()["body_len"], 5);
    assert_eq!(upstream.last().unwrap().header("content-length").as_deref(), Some("5"));

    let empty = conn.send(&Request::post("/empty")).unwrap();
    assert_eq!(empty.json()["body_len"], 0);
    assert_eq!(upstream.last().unwrap().header("content-length").as_deref(), Some("0"));
    conn.send(&Request::get("/no-body")).unwrap();
    assert_eq!(upstream.last().unwrap().header("content-length"), None);

    let chunked = Request::post("/chunked")
        .header("transfer-encoding", "chunked")
        .body("5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n");
    let response = conn.send(&chunked).unwrap();
    assert_eq!(response.json()["body_len"], 11);
    let received = upstream.last().unwrap();
    assert_eq!(received.body, b"hello world");
    assert_eq!(received.header("content-length"), None);
    // The framing held: the connection still serves.
    assert_eq!(conn.send(&Request::get("/next")).unwrap().status, 200);
}

#[test]
fn delay_ms_delays_the_answer_but_not_the_hit() {
    let upstream = Upstream::start();
    let port = upstream.port;
    let started = Instant::now();
    let client = thread::spawn(move || send(port, &Request::get("/slow?delay_ms=300")).unwrap());
    assert!(upstream.wait_for_hits(1, Duration::from_secs(5)));
    let response = client.join().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    assert_eq!(response.json()["path"], "/slow?delay_ms=300");
    assert!(!upstream.wait_for_hits(2, Duration::from_millis(50)));
}

#[test]
fn dropping_the_upstream_stops_it() {
    let upstream = Upstream::start();
    let port = upstream.port;
    let mut conn = Conn::open(port).unwrap();
    conn.send(&Request::get("/")).unwrap();
    drop(upstream);
    // The port is free again, and another test of this binary (an etcd member on free ports)
    // may take it at once: what must not answer is this upstream, which echoes the path.
    if let Ok(other) = send(port, &Request::get("/dropped-upstream-probe")) {
        assert!(!other.text().contains("/dropped-upstream-probe"), "still accepting: {}", other.text());
    }
    assert!(conn.send(&Request::get("/")).is_err(), "keep-alive connection still served");
}

#[test]
fn malformed_requests_get_400_and_the_upstream_keeps_serving() {
    let upstream = Upstream::start();
    let hostile: [&[u8]; 5] = [
        b"\x00\x01 garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    ];
    for bytes in hostile {
        let mut stream = TcpStream::connect(("127.0.0.1", upstream.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(bytes).unwrap();
        let mut status_line = String::new();
        BufReader::new(stream).read_line(&mut status_line).unwrap();
        assert!(status_line.starts_with("HTTP/1.1 400 "), "{:?} -> {status_line:?}", String::from_utf8_lossy(bytes));
    }
    assert_eq!(send(upstream.port, &Request::get("/fine")).unwrap().status, 200);
    assert_eq!(upstream.hits(), 1);
}

/// A one-shot server that reads a request head and answers `reply` verbatim, then closes: for
/// response shapes the echo upstream never produces (Envoy's may).
fn canned(reply: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        (&stream).write_all(reply).unwrap();
    });
    port
}

#[test]
fn client_reads_chunked_close_delimited_and_interim_responses() {
    let chunked = canned(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n");
    assert_eq!(send(chunked, &Request::get("/")).unwrap().text(), "abcde");

    let until_close = canned(b"HTTP/1.1 200 OK\r\nX-Mixed-Case: v\r\n\r\n{\"a\": 1}");
    let response = send(until_close, &Request::get("/")).unwrap();
    assert_eq!(response.json()["a"], 1);
    assert_eq!(response.header_all("x-mixed-case"), ["v"]);

    let interim = canned(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok");
    let response = send(interim, &Request::post("/")).unwrap();
    assert_eq!((response.status, response.text().as_str()), (201, "ok"));
}

#[test]
fn client_returns_errors_on_broken_responses() {
    let cases: [(&'static [u8], ErrorKind); 5] = [
        (b"", ErrorKind::UnexpectedEof),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", ErrorKind::UnexpectedEof),
        (b"HTTP/1.1 200 OK\r\ncontent-le", ErrorKind::UnexpectedEof),
        (b"SMTP ready\r\n\r\n", ErrorKind::InvalidData),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", ErrorKind::InvalidData),
    ];
    for (reply, kind) in cases {
        let err = send(canned(reply), &Request::get("/")).unwrap_err();
        assert_eq!(err.kind(), kind, "{:?}: {err}", String::from_utf8_lossy(reply));
    }
}

// ---- etcd (tests/support/etcd.rs) ------------------------------------------------------------

use serde_json::json;
use support::envoy::{Envoy, Options};
use support::etcd::{self, b64_decode, b64_encode, Etcd, EtcdFaults, Faults};

#[test]
fn etcd_base64_and_prefix_ends() {
    // RFC 4648 §10's vectors.
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64_encode(plain.as_bytes()), encoded);
        assert_eq!(b64_decode(encoded).unwrap(), plain.as_bytes());
    }
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(b64_decode(&b64_encode(&all)).unwrap(), all);
    for bad in ["Zg=", "Zg==Zg==", "Z===", "Zm9v!A==", "Zm-v"] {
        assert_eq!(b64_decode(bad), None, "{bad}");
    }
    assert_eq!(etcd::prefix_end(b"/meshguard/"), b"/meshguard0");
    assert_eq!(etcd::prefix_end(b"a\xff\xff"), b"b");
    assert_eq!(etcd::prefix_end(b"\xff"), b"\0");
}

#[test]
fn etcd_member_serves_the_json_gateway() {
    support::require_etcd!();
    let etcd = Etcd::start();
    assert_eq!(etcd.len(), 1);
    assert_eq!(etcd.endpoints(), [format!("http://127.0.0.1:{}", etcd.client_port(0))]);
    assert_eq!(etcd.get("/meshguard/a"), None);
    let revision = etcd.put("/meshguard/a", "in-flight 1");
    assert!(revision > 1, "{revision}");
    assert_eq!(etcd.revision(), revision);
    assert_eq!(etcd.get("/meshguard/a"), Some(("in-flight 1".to_string(), 0)));
    etcd.put("/meshguard/b", "done 200");
    etcd.put("/meshguard0", "just past the prefix");
    etcd.put("/other", "x");
    assert_eq!(
        etcd.keys("/meshguard/"),
        [("/meshguard/a".to_string(), "in-flight 1".to_string()), ("/meshguard/b".to_string(), "done 200".to_string())]
    );
    assert_eq!(etcd.keys("").len(), 4);

    // Leases: a key carries its lease; timetolive counts down; an unknown lease is 200 "TTL":"-1"
    // for timetolive but 404, gRPC code 5, for a put.
    let lease = etcd.grant(30);
    assert!(lease > 0);
    etcd.put_with_lease("/meshguard/c", "in-flight 2", lease).unwrap();
    assert_eq!(etcd.get("/meshguard/c"), Some(("in-flight 2".to_string(), lease)));
    let ttl = etcd.lease_ttl(lease).unwrap();
    assert!((1..=30).contains(&ttl), "{ttl}");
    assert_eq!(etcd.lease_ttl(lease + 1), None);
    let err = etcd.put_with_lease("/meshguard/d", "x", lease + 1).unwrap_err();
    assert_eq!((err.status, err.code, err.message.as_str()), (404, Some(5), "etcdserver: requested lease not found"));
    assert_eq!(etcd.get("/meshguard/d"), None);
    assert!(etcd.delete("/meshguard/a"));
    assert!(!etcd.delete("/meshguard/a"));

    // The claim of docs/etcd-store.md: one transaction that creates the key if it is absent and
    // otherwise returns it. snake_case fields; `succeeded` absent when false.
    let key = b64_encode(b"/meshguard/e");
    let claim = json!({
        "compare": [{ "target": "CREATE", "key": key, "createRevision": "0" }],
        "success": [{ "requestPut": { "key": key, "value": b64_encode(b"in-flight n1"), "lease": lease.to_string() } }],
        "failure": [{ "requestRange": { "key": key } }]
    });
    let first = etcd.call("/v3/kv/txn", &claim).unwrap();
    assert_eq!(first["succeeded"], true, "{first}");
    assert!(first["responses"][0]["response_put"].is_object(), "{first}");
    let again = etcd.call("/v3/kv/txn", &claim).unwrap();
    assert_eq!(again.get("succeeded"), None, "{again}");
    let kv = &again["responses"][0]["response_range"]["kvs"][0];
    assert_eq!(b64_decode(kv["value"].as_str().unwrap()).unwrap(), b"in-flight n1", "{again}");
    assert_eq!(kv["lease"], lease.to_string(), "{again}");
    assert_eq!(kv["create_revision"], kv["mod_revision"], "{again}");
    // A failed compare without failure operations: nothing but the header.
    let noop = json!({ "compare": [{ "target": "VALUE", "key": key, "value": b64_encode(b"other") }],
                       "success": [{ "request_delete_range": { "key": key } }] });
    let answer = etcd.call("/v3/kv/txn", &noop).unwrap();
    assert_eq!(answer.as_object().unwrap().keys().collect::<Vec<_>>(), ["header"], "{answer}");
    assert!(etcd.get("/meshguard/e").is_some());
}

#[test]
fn etcd_restart_keeps_the_data_and_the_port() {
    support::require_etcd!();
    let mut etcd = Etcd::start();
    let port = etcd.client_port(0);
    etcd.put("/meshguard/kept", "done 201");
    etcd.stop(0);
    assert!(!etcd.is_running(0));
    assert!(not_etcd(port), "a stopped member still answers");
    assert_eq!(etcd.call("/v3/kv/range", &json!({})).unwrap_err().status, 0);
    etcd.restart(0);
    assert_eq!(etcd.client_port(0), port);
    assert_eq!(etcd.get("/meshguard/kept"), Some(("done 201".to_string(), 0)));
    // A crash (SIGKILL) loses nothing acknowledged either.
    etcd.put("/meshguard/after", "x");
    etcd.kill(0);
    etcd.restart(0);
    assert_eq!(etcd.keys("/meshguard/").len(), 2);
    let dir = etcd.dir().to_path_buf();
    drop(etcd);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(not_etcd(port), "still serving after drop");
}

/// Nothing on `port` answers as etcd's gateway does. (A freed port may be taken at once by
/// another test of this binary, so "nothing accepts" would be a race.)
fn not_etcd(port: u16) -> bool {
    let probe =
        Request::post("/v3/kv/range").header("content-type", "application/json").body(&b"{\"key\":\"AA==\"}"[..]);
    send(port, &probe).map_or(true, |r| !r.text().contains("member_id"))
}

#[test]
fn etcd_three_members_survive_one_kill() {
    support::require_etcd!();
    let mut etcd = Etcd::cluster(3);
    assert_eq!(etcd.client_ports().len(), 3);
    let leader = etcd.leader().expect("a leader once the cluster serves");
    etcd.put("/meshguard/before", "1");
    // Every member serves the value (a linearizable read on a follower asks the leader).
    for i in 0..3 {
        let answer = etcd.call_on(i, "/v3/kv/range", &json!({ "key": b64_encode(b"/meshguard/before") })).unwrap();
        assert_eq!(answer["count"], "1", "member {i}: {answer}");
    }
    // The leader crashes: the two left elect another and, a majority, write and read.
    etcd.kill(leader);
    etcd.wait_healthy();
    let next = etcd.leader().expect("a new leader");
    assert_ne!(next, leader);
    etcd.put("/meshguard/during", "2");
    assert_eq!(etcd.call_on(leader, "/v3/kv/range", &json!({})).unwrap_err().status, 0, "the old leader is gone");
    assert_eq!(etcd.keys("/meshguard/").len(), 2);
    // Back with its data; it catches up on what it missed.
    etcd.restart(leader);
    let answer = etcd.call_on(leader, "/v3/kv/range", &json!({ "key": b64_encode(b"/meshguard/during") })).unwrap();
    assert_eq!(answer["count"], "1", "{answer}");
}

#[test]
fn etcd_member_without_a_quorum_refuses() {
    support::require_etcd!();
    // docs/etcd-store.md "Network partitions": a member cut off from the majority answers no
    // linearizable request — after etcd's own request timeout (seconds: longer than any store
    // timeout, so meshguard's callout gives up first).
    let mut etcd = Etcd::cluster(3);
    etcd.kill(1);
    etcd.kill(2);
    let started = Instant::now();
    let err =
        etcd.call_on(0, "/v3/kv/put", &json!({ "key": b64_encode(b"k"), "value": b64_encode(b"v") })).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.status, 503, "{err}");
    assert!(took >= Duration::from_secs(1), "{took:?}: {err}");
    eprintln!("minority put: {err} after {took:?}");
}

#[test]
fn etcd_behind_envoy_over_http1_with_faults() {
    support::require_envoy!();
    support::require_etcd!();
    let mut etcd = Etcd::cluster(3);
    let upstream = Upstream::start();
    let faults = EtcdFaults::new("etcd", &etcd.client_ports(), Duration::from_millis(300));
    let mut opts = Options::new("{}", upstream.port);
    faults.apply(&mut opts);
    let envoy = Envoy::start_with(opts);
    let through = |key: &[u8], timeout: Duration| {
        let body = json!({ "key": b64_encode(key), "value": b64_encode(b"v") }).to_string();
        let started = Instant::now();
        let answer = support::http::send_timeout(faults.port, &Request::post("/v3/kv/put").body(body), timeout);
        (answer.map(|r| r.status), started.elapsed())
    };

    // As started: every request held 300 ms by the fault filter, then served over HTTP/1.1.
    let (status, took) = through(b"/mg/slow", Duration::from_secs(5));
    assert_eq!(status.unwrap(), 200);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(etcd.get("/mg/slow").is_some());
    // A caller that gives up during a request delay: the put never reaches etcd.
    let (status, _) = through(b"/mg/never", Duration::from_millis(100));
    assert!(status.is_err());
    // During a response delay: it has landed although the caller saw no answer.
    faults.set(&envoy, Faults { response_delay: Some(Duration::from_millis(400)), ..Faults::default() });
    let (status, took) = through(b"/mg/landed", Duration::from_millis(100));
    assert!(status.is_err(), "{took:?}");
    let landed = envoy.wait_for("the put to land", 5, |_| etcd.get("/mg/landed"));
    assert_eq!(landed.0, "v");
    assert_eq!(etcd.get("/mg/never"), None);
    // Errors without etcd; then no faults at all.
    faults.set(&envoy, Faults { abort: Some(503), ..Faults::default() });
    assert_eq!(through(b"/mg/aborted", Duration::from_secs(5)).0.unwrap(), 503);
    faults.set(&envoy, Faults::default());
    let (status, took) = through(b"/mg/fast", Duration::from_secs(5));
    assert_eq!(status.unwrap(), 200);
    assert!(took < Duration::from_millis(300), "{took:?}");
    assert_eq!(etcd.get("/mg/aborted"), None);

    // A killed member costs the requests that eject it (two: no retries), then none.
    let follower = etcd.follower();
    etcd.kill(follower);
    let put = |i: usize| through(format!("/mg/k{i}").as_bytes(), Duration::from_secs(5)).0.unwrap();
    let statuses: Vec<u16> = (0..12).map(put).collect();
    let failed = statuses.iter().filter(|&&s| s != 200).count();
    assert!((1..=2).contains(&failed), "{statuses:?}");
    let after: Vec<u16> = (12..18).map(put).collect();
    assert!(after.iter().all(|&s| s == 200), "{statuses:?} then {after:?}");
    let ejected = envoy.admin_get("/stats").unwrap_or_default();
    assert!(
        ejected.contains("cluster.etcd_members.outlier_detection.ejections_enforced_consecutive_gateway_failure: 1"),
        "{ejected}"
    );
}

#[test]
fn etcd_plaintext_port_does_not_serve_the_gateway_over_http2() {
    support::require_envoy!();
    support::require_etcd!();
    // Why etcd_cluster speaks HTTP/1.1: etcd 3.4 hands every HTTP/2 connection of its plaintext
    // client port to the gRPC server.
    let etcd = Etcd::start();
    let h1 = etcd::etcd_cluster_json("etcd_h1", &[etcd.client_port(0)]);
    let mut h2 = etcd::etcd_cluster_json("etcd_h2", &[etcd.client_port(0)]);
    h2["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        ["explicit_http_config"] = json!({ "http2_protocol_options": {} });
    let bootstrap = json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": { "listeners": [etcd_listener("ingress", json!({ "cluster": "etcd_h1" })), etcd_listener("h2", json!({ "cluster": "etcd_h2" }))], "clusters": [h1, h2] }
    });
    let envoy = Envoy::try_start_bootstrap(&bootstrap.to_string(), 1, &[]).unwrap();
    let range = || Request::post("/v3/kv/range").header("content-type", "application/json").body(r#"{"key":"YQ=="}"#);
    assert_eq!(send(envoy.port, &range()).unwrap().status, 200);
    let h2_port = envoy.listener("h2").unwrap();
    let refused = send(h2_port, &range()).unwrap();
    assert_eq!(refused.status, 502);
    assert!(refused.text().contains("protocol error"), "{}", refused.text());
}

#[test]
fn etcd_hung_member_is_ejected_after_two_timeouts() {
    support::require_envoy!();
    support::require_etcd!();
    // A member that accepts connections and never answers (SIGSTOP: a hung process, or a partition
    // as the client sees it) costs two timed-out requests, then Envoy sends none to it for a
    // while. The timeout is the caller's: meshguard's callout timeout, here a route's.
    let mut etcd = Etcd::cluster(3);
    let bootstrap = json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": [etcd_listener("ingress", json!({ "cluster": "etcd", "timeout": "0.5s" }))],
            "clusters": [etcd::etcd_cluster_json("etcd", &etcd.client_ports())]
        }
    });
    let envoy = Envoy::try_start_bootstrap(&bootstrap.to_string(), 1, &[]).unwrap();
    // A follower: with the leader gone, every write would wait for an election.
    let hung = etcd.follower();
    etcd.pause(hung);
    let statuses: Vec<u16> = (0..12)
        .map(|i| {
            let body = json!({ "key": b64_encode(format!("/mg/h{i}").as_bytes()), "value": b64_encode(b"v") });
            send(envoy.port, &Request::post("/v3/kv/put").body(body.to_string())).unwrap().status
        })
        .collect();
    etcd.resume(hung);
    let timeouts = statuses.iter().filter(|&&s| s == 504).count();
    assert_eq!(timeouts, 2, "{statuses:?}");
    assert!(statuses.iter().all(|&s| s == 200 || s == 504), "{statuses:?}");
    let stats = envoy.admin_get("/stats").unwrap_or_default();
    assert!(
        stats.contains("cluster.etcd.outlier_detection.ejections_enforced_consecutive_gateway_failure: 1"),
        "{stats}"
    );
}

/// A listener whose one route is `route`, as `Envoy::try_start_bootstrap` wants it.
fn etcd_listener(name: &str, route: serde_json::Value) -> serde_json::Value {
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": { "virtual_hosts": [{ "name": name, "domains": ["*"],
                    "routes": [{ "match": { "prefix": "/" }, "route": route }] }] },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
            }
        }] }]
    })
}
