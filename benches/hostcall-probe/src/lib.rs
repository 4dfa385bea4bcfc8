//! Configuration: space-separated `op:count`, e.g. `"get:5 map:1 fs:2"`. Operations, all on the
//! request path (`on_http_request_headers`):
//! * `get`   read one request header (`x-request-id`) with `proxy_get_header_map_value`
//! * `map`   read every request header with `proxy_get_header_map_pairs`
//! * `set`   set a request header (`x-probe`)
//! * `fs`    set filter state (`wasm.probe.N`) with `proxy_set_property`
//! * `inc`   increment a counter
//! * `prop`  read the property `xds.route_name`
//! * `rsp`   set a response header (in `on_http_response_headers`)
//! * `metric` read a counter's value with `proxy_get_metric`
//! * `sget`  read a 400-byte shared-data value
//! * `scas`  read that value and write it back with its CAS token (one read-and-swap)
//! * `skeys` spread `sget`/`scas` over this many keys, a different one per request (like
//!   meshguard's dedup buckets); default 1
//! * `now`   read the host clock

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType};

#[derive(Default, Clone, Copy)]
struct Plan {
    get: u32,
    map: u32,
    set: u32,
    fs: u32,
    inc: u32,
    prop: u32,
    rsp: u32,
    get_metric: u32,
    sget: u32,
    scas: u32,
    now: u32,
    skeys: u32,
    metric: u32,
}

const SHARED_KEY: &str = "probe/value";

#[derive(Default)]
struct Root {
    plan: Rc<Plan>,
}

struct Stream {
    plan: Rc<Plan>,
    key: String,
}

impl Context for Root {}
impl Context for Stream {}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let p = *self.plan;
        for _ in 0..p.get {
            let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-request-id");
        }
        for _ in 0..p.map {
            let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        }
        for _ in 0..p.set {
            let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, "x-probe", Some(b"0123456789abcdef"));
        }
        for i in 0..p.fs {
            let key = format!("probe.{i}");
            let value = b"5d0c6f6e-8f0e-4b2c-9a51-3c2f4f0a1b7d";
            unsafe { proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
        }
        for _ in 0..p.inc {
            let _ = hostcalls::increment_metric(p.metric, 1);
        }
        for _ in 0..p.prop {
            let _ = hostcalls::get_property(vec!["xds", "route_name"]);
        }
        for _ in 0..p.get_metric {
            let _ = hostcalls::get_metric(p.metric);
        }
        for _ in 0..p.sget {
            let _ = hostcalls::get_shared_data(&self.key);
        }
        for _ in 0..p.scas {
            if let Ok((Some(value), Some(cas))) = hostcalls::get_shared_data(&self.key) {
                let _ = hostcalls::set_shared_data(&self.key, Some(&value), Some(cas));
            }
        }
        for _ in 0..p.now {
            let _ = hostcalls::get_current_time();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for _ in 0..self.plan.rsp {
            let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, "x-probe", Some(b"0123456789abcdef"));
        }
        Action::Continue
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten().unwrap_or_default();
        let mut plan = Plan::default();
        for item in String::from_utf8_lossy(&config).split_whitespace() {
            let (op, n) = item.split_once(':').unwrap_or((item, "1"));
            let n: u32 = n.parse().unwrap_or(1);
            match op {
                "get" => plan.get = n,
                "map" => plan.map = n,
                "set" => plan.set = n,
                "fs" => plan.fs = n,
                "inc" => plan.inc = n,
                "prop" => plan.prop = n,
                "rsp" => plan.rsp = n,
                "metric" => plan.get_metric = n,
                "sget" => plan.sget = n,
                "scas" => plan.scas = n,
                "now" => plan.now = n,
                "skeys" => plan.skeys = n,
                "{}" => {}
                _ => return false,
            }
        }
        plan.metric = hostcalls::define_metric(MetricType::Counter, "probe_total").unwrap_or(0);
        plan.skeys = plan.skeys.max(1);
        if plan.sget + plan.scas > 0 {
            for i in 0..plan.skeys {
                let _ = hostcalls::set_shared_data(&format!("{SHARED_KEY}/{i}"), Some(&[7u8; 400]), None);
            }
        }
        self.plan = Rc::new(plan);
        true
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        // Context ids grow by one per stream: a different key per request, round robin.
        let key = format!("{SHARED_KEY}/{}", id.wrapping_mul(2_654_435_761) % self.plan.skeys.max(1));
        Some(Box::new(Stream { plan: Rc::clone(&self.plan), key }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}
