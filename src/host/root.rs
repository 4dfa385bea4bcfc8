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

impl Context for Root {}

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
            };
            hostcalls::define_metric(kind, name).ok()
        });
        // The plugin's name keeps the shared data of two meshguard plugins on one proxy apart.
        let name = abi::property(&["plugin_name"])
            .and_then(|n| String::from_utf8(n).ok())
            .unwrap_or_else(|| "meshguard".to_string());
        let plugin = Plugin::new(config, metrics, &name);
        if let Err(e) = plugin.init_shared(&mut WasmHost) {
            // Not fatal: the first request creates what is missing.
            abi::log(LogLevel::Warn, &format!("meshguard: cannot initialise shared data: {}", e.0));
        }
        self.plugin = Some(Rc::new(plugin));
        true
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
