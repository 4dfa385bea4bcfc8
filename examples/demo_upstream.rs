//! The demo upstream of `scripts/run.sh`: echoes every request as JSON (`/status/503` answers
//! 503, `?delay_ms=300` waits). Usage: `demo_upstream [127.0.0.1:8081]`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, dead_code)]

#[path = "../tests/support/http.rs"]
mod http;
#[path = "../tests/support/upstream.rs"]
mod upstream;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".to_string());
    let _upstream = match upstream::Upstream::start_on(&addr) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("demo upstream: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("demo upstream listening on http://{addr}");
    loop {
        std::thread::park();
    }
}
