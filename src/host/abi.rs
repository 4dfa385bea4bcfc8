//! Raw proxy-wasm imports for the calls whose SDK wrappers panic on host statuses that Envoy can
//! return in normal operation (e.g. `set_property` outside a stream answers `NotFound`). Each
//! returns the status instead.

use proxy_wasm::types::{LogLevel, Status};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> Status;
    fn proxy_log(level: LogLevel, message_data: *const u8, message_size: usize) -> Status;
}

/// Sets filter state `wasm.<key>`. The key is passed as-is: Envoy prefixes it with `wasm.` and does
/// not split it (the SDK's wrapper appends a NUL separator that would end up inside the key).
pub fn set_property(key: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: both buffers are valid for the given lengths for the duration of the call; the host
    // copies them and keeps no pointer.
    match unsafe { proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) } {
        Status::Ok => Ok(()),
        status => Err(status),
    }
}

/// Writes one line to Envoy's application log; a failure to log is not worth a crash.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer is valid for its length during the call; the host copies it.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}
