//! A real gRPC server and client (Python grpcio, `tests/support/grpc_peer.py`) for the tests that
//! put meshguard between two gRPC implementations: generic handlers on raw bytes, no protoc. The
//! server is a child process that reports every call it receives; each client run is a child
//! process that makes its calls on one channel and prints what the gRPC library decoded.
//!
//! `scripts/setup.sh` installs grpcio (`pip install grpcio`) when `python3 -c 'import grpc'` fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The test service's methods (routed by the prefix `/meshguard.test.`).
pub const UNARY: &str = "/meshguard.test.Echo/Unary";
pub const STREAM: &str = "/meshguard.test.Echo/Stream";
pub const OTHER: &str = "/meshguard.test.Echo/Other";

fn peer_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_peer.py")
}

fn python() -> Command {
    Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string()))
}

/// The gRPC server, listening on 127.0.0.1; stopped when dropped.
pub struct GrpcServer {
    pub port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    events: Arc<Mutex<Vec<Value>>>,
}

impl GrpcServer {
    /// Starts the server and waits until it listens; panics with its output if it does not.
    pub fn start() -> GrpcServer {
        let mut child = python()
            .arg(peer_script())
            .arg("server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with grpcio (scripts/setup.sh installs it)");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = serde_json::from_str::<Value>(&first)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("the gRPC server did not start (is grpcio installed? scripts/setup.sh): {first:?}")
            });
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap_or_else(PoisonError::into_inner).push(event);
                }
            }
        });
        GrpcServer { port, child, stdin, events }
    }

    /// Everything the server reported so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The calls that reached the server (in arrival order).
    pub fn calls(&self) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == "call").collect()
    }

    /// How many calls reached the server.
    pub fn hits(&self) -> usize {
        self.calls().len()
    }

    /// The calls that reached the server with this request tag.
    pub fn calls_tagged(&self, tag: &str) -> usize {
        self.calls().iter().filter(|c| c["tag"] == tag).count()
    }

    /// Waits until the handler of the call tagged `tag` has returned; its `active` flag says
    /// whether the call was still alive then (false: the client, or Envoy, went away).
    pub fn wait_end(&self, tag: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(end) = self.events().into_iter().find(|e| e["event"] == "end" && e["tag"] == tag) {
                return end;
            }
            assert!(Instant::now() < deadline, "the server never finished call {tag}: {:?}", self.events());
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        // Closing stdin stops it; the kill is for a server that hangs.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call for [`run`].
#[derive(Clone, Debug)]
pub struct Call(Value);

impl Call {
    /// A call of `method` whose request message tells the server what to do (see
    /// grpc_peer.py: `tag`, `sleep_ms`, `messages`, `gap_ms`, `code`, `details`, `initial`).
    pub fn new(method: &str, request: Value) -> Call {
        Call(json!({"method": method, "request": request, "metadata": []}))
    }

    pub fn metadata(mut self, key: &str, value: &str) -> Call {
        if let Some(list) = self.0["metadata"].as_array_mut() {
            list.push(json!([key, value]));
        }
        self
    }

    /// The client's deadline (sent as `grpc-timeout`; the client resets the stream when it passes).
    pub fn timeout(mut self, secs: f64) -> Call {
        self.0["timeout"] = json!(secs);
        self
    }

    /// The client cancels the call after this long.
    pub fn cancel_after_ms(mut self, ms: u64) -> Call {
        self.0["cancel_after_ms"] = json!(ms);
        self
    }

    /// The client cancels a streaming call once it has received this many messages.
    pub fn cancel_after_messages(mut self, n: u64) -> Call {
        self.0["cancel_after_messages"] = json!(n);
        self
    }

    /// With [`run_parallel`]: start this call so long after the others.
    pub fn start_ms(mut self, ms: u64) -> Call {
        self.0["start_ms"] = json!(ms);
        self
    }
}

/// What the client library decoded for one call.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The status code's name, e.g. `UNAVAILABLE`.
    pub code: String,
    pub code_value: u64,
    pub details: String,
    pub initial_metadata: Value,
    pub trailing_metadata: Value,
    pub messages: Vec<String>,
    pub elapsed_ms: f64,
}

impl Outcome {
    /// A metadata value from the initial metadata or, for a trailers-only response (where gRPC
    /// libraries put every header), the trailing metadata.
    pub fn md(&self, key: &str) -> Option<String> {
        self.initial_metadata[key].as_str().or_else(|| self.trailing_metadata[key].as_str()).map(str::to_string)
    }
}

/// Runs `calls` one after the other on one channel (one HTTP/2 connection) to 127.0.0.1:`port`.
pub fn run(port: u16, calls: &[Call]) -> Vec<Outcome> {
    run_spec(port, calls, false)
}

/// Runs `calls` all at once on one channel.
pub fn run_parallel(port: u16, calls: &[Call]) -> Vec<Outcome> {
    run_spec(port, calls, true)
}

/// One call; its outcome.
pub fn call(port: u16, call: Call) -> Outcome {
    run(port, &[call]).remove(0)
}

fn run_spec(port: u16, calls: &[Call], parallel: bool) -> Vec<Outcome> {
    let spec = json!({
        "target": format!("127.0.0.1:{port}"),
        "parallel": parallel,
        "calls": calls.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
    });
    let out = python()
        .arg(peer_script())
        .arg("client")
        .arg(spec.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("python3 with grpcio (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let results: Vec<Value> = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("gRPC client output is not JSON ({e}): {text}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(results.len(), calls.len(), "{text}");
    results
        .into_iter()
        .map(|r| Outcome {
            code: r["code"].as_str().unwrap_or_default().to_string(),
            code_value: r["code_value"].as_u64().unwrap_or(u64::MAX),
            details: r["details"].as_str().unwrap_or_default().to_string(),
            initial_metadata: r["initial_metadata"].clone(),
            trailing_metadata: r["trailing_metadata"].clone(),
            messages: r["messages"]
                .as_array()
                .map(|m| m.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            elapsed_ms: r["elapsed_ms"].as_f64().unwrap_or_default(),
        })
        .collect()
}
