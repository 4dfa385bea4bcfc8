//! Raw proxy-wasm imports for the calls whose SDK wrappers panic on host statuses that Envoy can
//! return in normal operation (e.g. `set_property` outside a stream answers `NotFound`). Each
//! returns the status instead.

use proxy_wasm::types::{LogLevel, MapType, Status};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> Status;
    fn proxy_log(level: LogLevel, message_data: *const u8, message_size: usize) -> Status;
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// Every pair of a header map in proxy-wasm's serialised form, parsed as bytes by
/// [`crate::headers::HeaderMap`] (the SDK's `get_map_bytes` unwraps header names as UTF-8).
pub fn header_map(map: MapType) -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to a buffer it allocated through this module's
    // `proxy_on_memory_allocate` (the SDK's global allocator) and its size; ownership passes to us.
    match unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) } {
        Status::Ok if data.is_null() => Ok(Vec::new()),
        // SAFETY: see above; the buffer was allocated as a `Vec<u8>` of capacity `size`.
        Status::Ok => Ok(unsafe { Vec::from_raw_parts(data, size, size) }),
        status => Err(status),
    }
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
