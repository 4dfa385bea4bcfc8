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
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> Status;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> Status;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        additional_headers_map_data: *const u8,
        additional_headers_size: usize,
        grpc_status: i32,
    ) -> Status;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_add_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_remove_header_map_value(map_type: MapType, key_data: *const u8, key_size: usize) -> Status;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> Status;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> Status;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> Status;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> Status;
    fn proxy_record_metric(metric_id: u32, value: u64) -> Status;
    fn proxy_set_tick_period_milliseconds(period: u32) -> Status;
    fn proxy_continue_stream(stream_type: u32) -> Status;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> Status;
}

/// The first `max` bytes of the request body buffered so far; `None` when there is none.
pub fn request_body(max: usize) -> Option<Vec<u8>> {
    const HTTP_REQUEST_BODY: u32 = 0;
    buffer(HTTP_REQUEST_BODY, max)
}

/// The body of the HTTP call being answered (at most `max` bytes).
pub fn call_response_body(max: usize) -> Option<Vec<u8>> {
    const HTTP_CALL_RESPONSE_BODY: u32 = 4;
    buffer(HTTP_CALL_RESPONSE_BODY, max)
}

fn buffer(buffer_type: u32, max: usize) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: as in `header_map`: the host hands over a buffer allocated by our allocator.
    match unsafe { proxy_get_buffer_bytes(buffer_type, 0, max, &mut data, &mut size) } {
        Status::Ok if !data.is_null() => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
        _ => None,
    }
}

/// Calls the root's `on_tick` every `ms` milliseconds.
pub fn set_tick_period(ms: u32) -> Result<(), Status> {
    // SAFETY: a plain value.
    ok(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Lets the paused request go on.
pub fn continue_request() -> Result<(), Status> {
    const HTTP_REQUEST: u32 = 0;
    // SAFETY: a plain value.
    ok(unsafe { proxy_continue_stream(HTTP_REQUEST) })
}

/// Sets a gauge; a failure to record a stat is not worth a crash.
pub fn record_metric(metric: u32, value: u64) {
    // SAFETY: plain values, no memory shared.
    let _ = unsafe { proxy_record_metric(metric, value) };
}

/// A shared-data value and its CAS token; `Ok(None)` when the key does not exist.
pub fn get_shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: as in `header_map`: the host hands over a buffer allocated by our allocator.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) } {
        Status::Ok if data.is_null() => Ok(Some((Vec::new(), cas))),
        // SAFETY: see above.
        Status::Ok => Ok(Some((unsafe { Vec::from_raw_parts(data, size, size) }, cas))),
        Status::NotFound => Ok(None),
        status => Err(status),
    }
}

/// Stores `value` if the key's CAS token is still `cas` (0: unconditionally). `Ok(false)` on a
/// CAS mismatch.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<bool, Status> {
    // SAFETY: both buffers are valid for their lengths during the call; the host copies them.
    match unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) } {
        Status::Ok => Ok(true),
        Status::CasMismatch => Ok(false),
        status => Err(status),
    }
}

/// Answers the request locally; `headers` in proxy-wasm's serialised map form.
/// `grpc_status` -1: none (an HTTP reply).
pub fn send_local_response(
    status: u32,
    details: &str,
    headers: &[u8],
    body: &[u8],
    grpc_status: i32,
) -> Result<(), Status> {
    // SAFETY: all buffers are valid for their lengths during the call; the host copies them.
    let status = unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            grpc_status,
        )
    };
    match status {
        Status::Ok => Ok(()),
        status => Err(status),
    }
}

/// Nanoseconds since the epoch (Envoy's time source); 0 if the host cannot tell.
pub fn now_ns() -> u64 {
    let mut t: u64 = 0;
    // SAFETY: the host writes one u64 through the pointer.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        Status::Ok => t,
        _ => 0,
    }
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

/// One header's value (its first line) from a header map; `None` when absent, or when the map is
/// not available in this callback (Envoy answers BadArgument, on which the SDK's wrapper panics).
pub fn header_value(map: MapType, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: as in `header_map`: the host hands over a buffer allocated by our allocator.
    match unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) } {
        Status::Ok if data.is_null() => Some(Vec::new()),
        // SAFETY: see above.
        Status::Ok => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
        _ => None,
    }
}

fn ok(status: Status) -> Result<(), Status> {
    match status {
        Status::Ok => Ok(()),
        status => Err(status),
    }
}

/// Replaces every line of a header (`Some`), or removes them (`None`).
pub fn set_header(map: MapType, name: &str, value: Option<&[u8]>) -> Result<(), Status> {
    // SAFETY: the buffers are valid for their lengths during the call; the host copies them.
    ok(unsafe {
        match value {
            Some(v) => proxy_replace_header_map_value(map, name.as_ptr(), name.len(), v.as_ptr(), v.len()),
            None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
        }
    })
}

/// Adds a header line beside those already there.
pub fn add_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: the buffers are valid for their lengths during the call; the host copies them.
    ok(unsafe { proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// A property by path (`["xds", "route_name"]`); `None` when absent or unreadable (Envoy answers
/// SerializationFailure for some, on which the SDK's trait helper panics).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let mut serialized = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            serialized.push(0);
        }
        serialized.extend_from_slice(part.as_bytes());
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: as in `header_map`: the host hands over a buffer allocated by our allocator.
    match unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) } {
        // SAFETY: see above.
        Status::Ok if !data.is_null() => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
        _ => None,
    }
}

/// Replaces bytes `[start, start + size)` of the request body chunk being delivered.
pub fn set_request_body(start: usize, size: usize, with: &[u8]) -> Result<(), Status> {
    const HTTP_REQUEST_BODY: u32 = 0;
    // SAFETY: the buffer is valid for its length during the call; the host copies it.
    ok(unsafe { proxy_set_buffer_bytes(HTTP_REQUEST_BODY, start, size, with.as_ptr(), with.len()) })
}

/// Adds to a counter or gauge; a failure to count is not worth a crash.
pub fn increment_metric(metric: u32, by: i64) {
    // SAFETY: plain values.
    let _ = unsafe { proxy_increment_metric(metric, by) };
}

/// A metric's value; `None` when the host cannot tell.
pub fn metric(metric: u32) -> Option<u64> {
    let mut value: u64 = 0;
    // SAFETY: the host writes one u64 through the pointer.
    match unsafe { proxy_get_metric(metric, &mut value) } {
        Status::Ok => Some(value),
        _ => None,
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
