//! The test-support HTTP client against the test upstream, without Envoy: the integration tests
//! rely on both, so their own faults should show up here first.
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
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "still accepting");
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
