//! The test (and demo) upstream: answers every request with a JSON echo of what it received.
//! `/status/NNN` (or `?status=NNN`) answers with status NNN; `?delay_ms=N` waits N ms first. HTTP/1.1 keep-alive,
//! a thread per connection; never panics on odd input (a broken connection is just closed).

use std::io::{self, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::{read_body, read_head};

#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
    pub fn header_all(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect()
    }
    pub fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    }
}

pub struct Upstream {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0").expect("bind test upstream")
    }

    pub fn start_on(addr: &str) -> io::Result<Upstream> {
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, flag) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let log = log.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &log);
                    });
                }
            }
        });
        Ok(Upstream { port, received, stop })
    }

    pub fn hits(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn last(&self) -> Option<Received> {
        self.requests().pop()
    }

    /// Polls until at least `n` requests arrived or the deadline passes.
    pub fn wait_for_hits(&self, n: usize, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if self.hits() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.hits() >= n
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept() so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, log: &Mutex<Vec<Received>>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some((start, headers)) = read_head(&mut reader)? {
        let mut parts = start.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let body = read_body(&mut reader, &headers)?.unwrap_or_default();
        let status = path
            .strip_prefix("/status/")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
            .or_else(|| query_param(&path, "status").and_then(|v| v.parse::<u16>().ok()))
            .filter(|code| (200..=599).contains(code))
            .unwrap_or(200);
        let delay = query_param(&path, "delay_ms").and_then(|v| v.parse::<u64>().ok());
        let close = headers.iter().any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case(b"close"));
        let echo = echo_json(&method, &path, &headers, body.len());
        if let Ok(mut log) = log.lock() {
            log.push(Received { method, path, headers, body });
        }
        if let Some(ms) = delay {
            std::thread::sleep(Duration::from_millis(ms.min(60_000)));
        }
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
            reason(status),
            echo.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        writer.write_all(head.as_bytes())?;
        writer.write_all(echo.as_bytes())?;
        writer.flush()?;
        if close {
            break;
        }
    }
    Ok(())
}

fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then_some(v)
    })
}

fn echo_json(method: &str, path: &str, headers: &[(String, Vec<u8>)], body_len: usize) -> String {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value).into_owned();
        match map.get_mut(name) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                map.insert(name.clone(), serde_json::Value::String(value));
            }
        }
    }
    serde_json::json!({"method": method, "path": path, "headers": map, "body_len": body_len}).to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
