//! Root context: reads and validates the plugin configuration once, defines metrics once, and
//! hands each HTTP stream the shared, immutable [`Plugin`].

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MetricType};

use super::wasm_host::WasmHost;
use super::{abi, http::HttpStream};
use crate::config;
use crate::filter::{MetricKind, Metrics, Plugin};

#[derive(Default)]
pub struct Root {
    plugin: Option<Rc<Plugin>>,
}

/// How often the root ticks when a rule uses an etcd store: completions and releases go out
/// on the tick (at most this late after the response), leases are granted a window ahead
/// (windows are 1 s at least), and a new proxy gets its first ones this soon after start. An
/// idle tick costs one VM entry and a clock read.
const TICK_MS: u32 = 50;

/// The service this proxy serves, naming its keys in a shared etcd store: Istio's node metadata
/// (`NAMESPACE/WORKLOAD_NAME`: the replicas of one Deployment share it), else the node's cluster
/// (`--service-cluster`), else nothing.
fn workload() -> String {
    // Envoy names the node `xds.node` (CEL attributes); older builds named it `node`.
    let text = |path: &[&str]| {
        [["xds"].as_slice(), [].as_slice()].iter().find_map(|root| {
            let full: Vec<&str> = root.iter().chain(path).copied().collect();
            abi::property(&full).and_then(|v| String::from_utf8(v).ok()).filter(|s| !s.is_empty())
        })
    };
    match (text(&["node", "metadata", "NAMESPACE"]), text(&["node", "metadata", "WORKLOAD_NAME"])) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name,
        _ => text(&["node", "cluster"]).unwrap_or_default(),
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let mut host = WasmHost;
        let (status, body) = super::http::call_answer(num_headers, body_size);
        if let Some(plugin) = &self.plugin {
            plugin.on_root_answer(&mut host, token_id, status, &body);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                abi::log(LogLevel::Critical, &format!("meshguard: cannot read configuration: {status:?}"));
                return false;
            }
        };
        let config = match config::parse(&bytes) {
            Ok(config) => config,
            Err(errors) => {
                // All errors in one line; the plugin refuses to start and nothing is half applied.
                abi::log(LogLevel::Critical, &format!("meshguard: invalid configuration: {}", errors.join("; ")));
                return false;
            }
        };
        let metrics = Metrics::define(&config, |kind, name| {
            let kind = match kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            hostcalls::define_metric(kind, name).ok()
        });
        // The plugin's name keeps the shared data of two meshguard plugins on one proxy apart.
        let name = abi::property(&["plugin_name"])
            .and_then(|n| String::from_utf8(n).ok())
            .unwrap_or_else(|| "meshguard".to_string());
        let mut host = WasmHost;
        let plugin = Plugin::for_workload(config, metrics, &name, &workload());
        if let Err(e) = plugin.init_shared(&mut host) {
            // Not fatal: the first request creates what is missing.
            abi::log(LogLevel::Warn, &format!("meshguard: cannot initialise shared data: {}", e.0));
        }
        if !plugin.etcd_stores().is_empty() {
            for store in plugin.etcd_stores() {
                abi::log(
                    LogLevel::Info,
                    &format!(
                        "meshguard: dedup store etcd via cluster {}, keys under {}",
                        store.config.cluster, store.base
                    ),
                );
            }
            // Not granted from here: a call made while Envoy initialises can go unanswered.
            if abi::set_tick_period(TICK_MS).is_err() {
                abi::log(LogLevel::Error, "meshguard: cannot set the tick period: etcd leases will not be granted");
            }
        }
        self.plugin = Some(Rc::new(plugin));
        true
    }

    fn on_tick(&mut self) {
        let mut host = WasmHost;
        if let Some(plugin) = &self.plugin {
            plugin.on_tick(&mut host);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn proxy_wasm::traits::HttpContext>> {
        // Without a configuration (cannot happen after a successful on_configure) pass through.
        let plugin = self.plugin.clone().unwrap_or_default();
        Some(Box::new(HttpStream::new(plugin)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
