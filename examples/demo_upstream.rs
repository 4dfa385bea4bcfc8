//! The demo upstream of `scripts/run.sh` and the README: echoes every request as JSON
//! (`/status/503` answers 503, `?delay_ms=300` waits 300 ms first).
//!
//! Usage: `cargo run --release --example demo_upstream [ADDR [RELAY_PORT]]`, ADDR defaulting to
//! 127.0.0.1:8081. With RELAY_PORT it is also the W3C trace-context suite's uninstrumented service
//! (`scripts/w3c-suite.sh`): a POST with a JSON array of `{"url", "arguments"}` is relayed to each
//! url through 127.0.0.1:RELAY_PORT, the trace headers copied.

use std::process::ExitCode;

// The integration tests' upstream (which frames HTTP with the client's code), so the demo behaves
// exactly as the tests do; the demo needs only part of either module.
#[allow(dead_code)]
#[path = "../tests/support/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../tests/support/upstream.rs"]
mod upstream;

fn main() -> ExitCode {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".to_string());
    let relay = match std::env::args().nth(2).map(|p| p.parse::<u16>()) {
        None => None,
        Some(Ok(port)) => Some(port),
        Some(Err(e)) => {
            eprintln!("demo upstream: RELAY_PORT must be a port number: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match upstream::Upstream::start_on(&addr) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("demo upstream: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(port) = relay {
        server.relay_to(port);
    }
    // With port 0 the system picks the port: print the one actually bound.
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(host, _)| host);
    println!("demo upstream listening on http://{host}:{}", server.port);
    loop {
        std::thread::park();
    }
}
