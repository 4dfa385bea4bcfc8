//! The upstream that Envoy proxies to in the integration tests (and the README demo): it answers
//! every request with a JSON echo of what it received and records the request for the test.
//!
//! - `/status/NNN` (or the query parameter `status=NNN`) answers with status NNN, any of 200-599;
//!   anything else answers 200.
//! - The query parameter `delay_ms=N` waits N ms (at most a minute) before answering.
//! - The query parameter `early=1` answers as soon as the request head is in, without reading the
//!   body (as a service that refuses a request early does), then closes the connection.
//! - The query parameter `server_timing=V` adds a `server-timing: V` response header (V as sent,
//!   without percent-decoding).
//! - The body is `{"method", "path" (with the query), "headers": {lower-case name: value, repeated
//!   lines joined with ", "}, "body_len"}`, sent as `application/json` with a content-length
//!   (except where HTTP forbids a body: HEAD, 204 and 304 answer with the head alone).
//!
//! - As the "uninstrumented service" of the W3C trace-context test suite (after
//!   [`Upstream::relay_to`]): a `POST` whose body is a JSON array of `{"url", "arguments"}`
//!   makes it `POST` each `arguments` to each `url` through the relay port (the service's outbound
//!   sidecar), copying every `traceparent` and `tracestate` line it received, before it answers.
//!
//! HTTP/1.1 with keep-alive, as Envoy pools upstream connections; a thread per connection. Odd
//! input never panics: a malformed request gets a 400 and the connection is closed.

use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::http::{self, Framing, Headers};

const MAX_DELAY: Duration = Duration::from_secs(60);

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// The request target as sent, query included.
    pub path: String,
    /// Names lower-cased, values as raw bytes, in arrival order.
    pub headers: Headers,
    /// Decoded (de-chunked) body.
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of `name` (any case), lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of `name` (any case), in arrival order, lossy UTF-8.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        http::values(&self.headers, name).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
    }

    /// The first value of `name` as raw bytes, for checking that odd bytes arrive unchanged.
    pub fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        http::values(&self.headers, name).next().map(<[u8]>::to_vec)
    }
}

/// A running upstream. Dropping it stops accepting and closes the open connections, so Envoy
/// sees the upstream go away instead of being served on pooled keep-alive connections.
pub struct Upstream {
    pub port: u16,
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    stopping: AtomicBool,
    accepted: AtomicUsize,
    /// The open connections by id, so that `Drop` can shut them down.
    open: Mutex<HashMap<usize, TcpStream>>,
    /// Port of the outbound sidecar for W3C-suite callbacks; 0 when not relaying.
    relay: AtomicU16,
}

/// A poisoned lock only means another connection thread panicked; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Upstream {
    /// Starts on an ephemeral port of 127.0.0.1; panics (failing the test) if it cannot.
    #[allow(clippy::expect_used)] // a test helper: failing to bind is a broken test machine
    pub fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0").expect("cannot start the test upstream on 127.0.0.1")
    }

    /// Starts on `addr`, e.g. `127.0.0.1:8081`.
    pub fn start_on(addr: &str) -> io::Result<Upstream> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new().name("upstream-accept".into()).spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(Upstream { port: addr.port(), addr, shared, acceptor: Some(acceptor) })
    }

    /// From now on, act as the W3C suite's service and call back through `port` (the service's
    /// outbound sidecar).
    pub fn relay_to(&self, port: u16) {
        self.shared.relay.store(port, Ordering::SeqCst);
    }

    /// Requests received so far (counted on arrival, before any `delay_ms`).
    pub fn hits(&self) -> usize {
        lock(&self.shared.received).len()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    pub fn last(&self) -> Option<Received> {
        lock(&self.shared.received).last().cloned()
    }

    /// Connections accepted so far: shows whether requests shared a keep-alive connection.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Polls until at least `n` requests have arrived; false if `deadline` passes first.
    pub fn wait_for_hits(&self, n: usize, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if self.hits() >= n {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // accept() blocks until a connection comes, so make one for the thread to see the flag.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            if let Some(acceptor) = self.acceptor.take() {
                let _ = acceptor.join();
            }
        }
        // After the join no connection can be added, so none is missed here.
        for stream in lock(&self.shared.open).values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // E.g. out of file descriptors: give the machine a moment rather than spin.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.open).insert(id, clone);
        }
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new().name("upstream-conn".into()).spawn(move || {
            // An error just ends this connection, as a real server would.
            let _ = serve(stream, &conn_shared);
            lock(&conn_shared.open).remove(&id);
        });
        if spawned.is_err() {
            lock(&shared.open).remove(&id);
        }
    }
}

/// Serves the requests of one connection until it closes, fails, or a request asks to close.
fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    let _ = reader.get_mut().write_all(BAD_REQUEST);
                }
                return Err(e);
            }
        };
        let Request { received, keep_alive, early } = request;
        let status = requested_status(&received.path);
        let delay = query_param(&received.path, "delay_ms").and_then(|ms| ms.parse().ok()).map(Duration::from_millis);
        match shared.relay.load(Ordering::SeqCst) {
            0 => {}
            port => relay(&received, port),
        }
        let response = response(&received, status, keep_alive);
        lock(&shared.received).push(received);
        if let Some(delay) = delay {
            thread::sleep(delay.min(MAX_DELAY));
        }
        let writer = reader.get_mut();
        writer.write_all(&response)?;
        writer.flush()?;
        if early {
            // Closing with the body unread would reset the connection, and Envoy could lose the
            // answer: stop writing, then read (and drop) the rest until Envoy closes.
            writer.shutdown(std::net::Shutdown::Write)?;
            writer.set_read_timeout(Some(Duration::from_secs(10)))?;
            let _ = io::copy(&mut reader, &mut io::sink());
            return Ok(());
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

/// The W3C test service's job: call each `url` of the JSON body with its `arguments`, through the
/// outbound sidecar on `port`, copying the trace headers received (every line, in order).
fn relay(received: &Received, port: u16) {
    let Ok(serde_json::Value::Array(calls)) = serde_json::from_slice(&received.body) else {
        return;
    };
    for call in calls {
        let Some(url) = call.get("url").and_then(serde_json::Value::as_str) else { continue };
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        let mut request = http::Request::post(&path)
            .header("host", authority)
            .header("content-type", "application/json")
            .body(call.get("arguments").map_or_else(|| "[]".to_string(), serde_json::Value::to_string));
        for name in ["traceparent", "tracestate"] {
            for value in http::values(&received.headers, name) {
                request = request.header(name, value);
            }
        }
        let _ = http::send(port, &request);
    }
}

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

struct Request {
    received: Received,
    keep_alive: bool,
    /// `early=1`: answered without reading the body.
    early: bool,
}

/// Reads one request, its body included; `Ok(None)` when the client closed the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let Some(head) = http::read_head(reader)? else {
        return Ok(None);
    };
    let mut parts = head.start_line.split(' ');
    let (Some(method), Some(path), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(http::invalid(format!("bad request line {:?}", head.start_line)));
    };
    if method.is_empty() || path.is_empty() || !version.starts_with("HTTP/1.") {
        return Err(http::invalid(format!("bad request line {:?}", head.start_line)));
    }
    let headers = head.headers;
    let keep_alive = if version == "HTTP/1.0" {
        http::has_token(&headers, "connection", "keep-alive")
    } else {
        !http::has_token(&headers, "connection", "close")
    };
    let framing = http::framing(&headers)?;
    // A client that waits for permission before sending its body would otherwise stall here.
    if framing != Framing::Unframed && http::has_token(&headers, "expect", "100-continue") {
        reader.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let early = query_param(path, "early") == Some("1");
    let body = match framing {
        _ if early => Vec::new(),
        Framing::Chunked => http::read_chunked(reader)?,
        Framing::Length(len) => http::read_exactly(reader, len)?,
        Framing::Unframed => Vec::new(),
    };
    let received = Received { method: method.to_string(), path: path.to_string(), headers, body };
    Ok(Some(Request { received, keep_alive: keep_alive && !early, early }))
}

/// NNN of `/status/NNN` or of `?status=NNN` when it is 200-599; else 200.
fn requested_status(target: &str) -> u16 {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    path.strip_prefix("/status/")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
        .or_else(|| query_param(target, "status"))
        .and_then(|code| code.parse().ok())
        .filter(|code| (200..=599).contains(code))
        .unwrap_or(200)
}

fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(key, _)| *key == name).map(|(_, value)| value))
}

/// The whole response, head and echo body, as bytes.
fn response(request: &Received, status: u16, keep_alive: bool) -> Vec<u8> {
    let echo = echo_json(request).into_bytes();
    let mut out = format!("HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\n", reason(status)).into_bytes();
    // A 204 must not carry a content-length; HEAD and 304 send the length of the body they omit.
    if status != 204 {
        out.extend_from_slice(format!("content-length: {}\r\n", echo.len()).as_bytes());
    }
    if let Some(timing) = query_param(&request.path, "server_timing") {
        out.extend_from_slice(format!("server-timing: {timing}\r\n").as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !(request.method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304) {
        out.extend_from_slice(&echo);
    }
    out
}

fn echo_json(request: &Received) -> String {
    let mut headers = serde_json::Map::new();
    for (name, value) in &request.headers {
        let value = String::from_utf8_lossy(value);
        match headers.get_mut(name) {
            Some(serde_json::Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                headers.insert(name.clone(), value.into_owned().into());
            }
        }
    }
    serde_json::json!({
        "method": request.method,
        "path": request.path,
        "headers": headers,
        "body_len": request.body.len(),
    })
    .to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Other",
    }
}
