//! HTTP context: translates proxy-wasm callbacks into [`Stream`] calls.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::abi;
use super::entropy::Pool;
use super::wasm_host::WasmHost;
use crate::filter::{Plugin, Stream, Verdict};

thread_local! {
    // One VM per worker thread, so one pool per worker.
    static ENTROPY: RefCell<Pool> = RefCell::new(Pool::default());
}

pub struct HttpStream {
    plugin: Rc<Plugin>,
    stream: Stream,
}

impl HttpStream {
    pub fn new(plugin: Rc<Plugin>) -> Self {
        HttpStream { plugin, stream: Stream::default() }
    }
}

/// The status and body of the HTTP call being answered; no status when the call failed (reset,
/// no upstream).
pub fn call_answer(num_headers: usize, body_size: usize) -> (Option<u32>, Vec<u8>) {
    const MAX_ANSWER: usize = 64 * 1024;
    if num_headers == 0 {
        return (None, Vec::new());
    }
    let status = abi::header_value(proxy_wasm::types::MapType::HttpCallResponseHeaders, ":status")
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
    let body = if body_size == 0 {
        Vec::new()
    } else {
        abi::call_response_body(body_size.min(MAX_ANSWER)).unwrap_or_default()
    };
    (status, body)
}

impl Context for HttpStream {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let mut host = WasmHost;
        let (status, body) = call_answer(num_headers, body_size);
        self.stream.on_call_answer(&self.plugin, &mut host, token_id, status, &body);
    }
}

fn action(verdict: Verdict) -> Action {
    match verdict {
        Verdict::Continue => Action::Continue,
        // Waiting for the dedup store: resumed from on_http_call_response.
        Verdict::Wait => Action::Pause,
        // A local reply was sent: the rest of the request goes nowhere.
        Verdict::Stop => Action::Pause,
    }
}

impl HttpContext for HttpStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut host = WasmHost;
        let verdict = ENTROPY.with_borrow_mut(|entropy| {
            self.stream.on_request_headers_eos(&self.plugin, &mut host, entropy, end_of_stream)
        });
        action(verdict)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let mut host = WasmHost;
        action(self.stream.on_request_body(&self.plugin, &mut host, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body: a pending fingerprint is decided on the bytes seen.
        let mut host = WasmHost;
        action(self.stream.on_request_body(&self.plugin, &mut host, 0, true))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut host = WasmHost;
        self.stream.on_response_headers(&self.plugin, &mut host, end_of_stream);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let mut host = WasmHost;
        self.stream.on_response_trailers(&self.plugin, &mut host);
        Action::Continue
    }

    fn on_log(&mut self) {
        let mut host = WasmHost;
        self.stream.on_log(&self.plugin, &mut host);
    }
}
