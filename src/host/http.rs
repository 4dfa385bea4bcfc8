//! HTTP context: translates proxy-wasm callbacks into [`Stream`] calls.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

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

impl Context for HttpStream {}

fn action(verdict: Verdict) -> Action {
    match verdict {
        Verdict::Continue => Action::Continue,
        // A local reply was sent: the rest of the request goes nowhere.
        Verdict::Stop => Action::Pause,
    }
}

impl HttpContext for HttpStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let verdict = ENTROPY.with_borrow_mut(|entropy| {
            self.stream.on_request_headers_eos(&self.plugin, &mut WasmHost, entropy, end_of_stream)
        });
        action(verdict)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.stream.on_request_body(&self.plugin, &mut WasmHost, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body: a pending fingerprint is decided on the bytes seen.
        action(self.stream.on_request_body(&self.plugin, &mut WasmHost, 0, true))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.stream.on_response_headers(&self.plugin, &mut WasmHost, end_of_stream);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.stream.on_response_trailers(&self.plugin, &mut WasmHost);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.stream.on_log(&self.plugin, &mut WasmHost);
    }
}
