//! A real Envoy whose meshguard configuration arrives as xDS would deliver it, from files Envoy
//! watches (Envoy's filesystem subscription, the same code path as a management server's updates):
//!
//! - [`Delivery::Lds`]: `dynamic_resources.lds_config` reads the listener `ingress` (with the
//!   meshguard filter and its `configuration`) from `lds.json`; an update replaces the listener
//!   (Envoy updates its filter chain in place and drains the old one).
//! - [`Delivery::Ecds`]: the static listener's HTTP filter `meshguard` has a `config_discovery`
//!   whose source is `ecds.json` (a `TypedExtensionConfig` with the wasm filter); an update swaps
//!   the filter's configuration for new streams, the listener is untouched.
//!
//! Updates are written to a staging directory and `rename`d over the watched file, which is how
//! Envoy expects file-based xDS to change (the watch is on the directory's "moved to" events).
//! The listener mirrors `envoy/envoy.yaml` (route `default` on `/`, a JSON access log with
//! meshguard's filter-state fields, the same wasm `config` block with `FAIL_RELOAD`).

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::envoy::{wasm_path, Envoy};

static NEXT: AtomicUsize = AtomicUsize::new(0);

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Lds,
    Ecds,
}

/// What Envoy made of a delivered configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    Accepted,
    Rejected,
}

pub struct DynamicEnvoy {
    pub envoy: Envoy,
    pub delivery: Delivery,
    files: Files,
    /// `version_info` of the last delivered resource file (`v1` is the one Envoy started with).
    pub version: u32,
}

impl Deref for DynamicEnvoy {
    type Target = Envoy;
    fn deref(&self) -> &Envoy {
        &self.envoy
    }
}

impl DynamicEnvoy {
    /// Starts Envoy (`--concurrency 2`) with `plugin_config` as the first configuration (`v1`).
    /// `args` are extra Envoy arguments, e.g. `["--drain-time-s", "2"]`.
    pub fn start(delivery: Delivery, plugin_config: &str, upstream_port: u16, args: &[&str]) -> DynamicEnvoy {
        let root = std::env::temp_dir().join(format!(
            "meshguard-xds-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("watch")).expect("xds dir");
        fs::create_dir_all(root.join("stage")).expect("xds dir");
        let files = Files { delivery, root, upstream_port, wasm: wasm_path() };
        files.write(plugin_config, 1);
        let envoy = match Envoy::try_start_bootstrap(&files.bootstrap().to_string(), 2, args) {
            Ok(envoy) => envoy,
            Err(log) => panic!("Envoy did not start:\n{log}"),
        };
        DynamicEnvoy { envoy, delivery, files, version: 1 }
    }

    /// Later deliveries name the module `wasm` instead (a new build: Envoy creates new VMs).
    pub fn set_code(&mut self, wasm: &Path) {
        self.files.wasm = wasm.to_path_buf();
    }

    /// The directory of this Envoy's resource files (scratch space for a test).
    pub fn root(&self) -> &Path {
        &self.files.root
    }

    /// Writes the next version of the resource file and renames it over the watched one; returns
    /// at once (see [`DynamicEnvoy::deliver`]).
    pub fn write(&mut self, plugin_config: &str) {
        self.version += 1;
        self.files.write(plugin_config, self.version);
    }

    /// Delivers a new meshguard configuration and waits (20 s at most) until Envoy has accepted or
    /// rejected it. With LDS, also waits until no listener is warming, so new connections get it.
    pub fn deliver(&mut self, plugin_config: &str) -> Update {
        let before = (self.counter("update_success"), self.counter("update_rejected"));
        self.write(plugin_config);
        let update = self.envoy.wait_for(&format!("{:?} update v{}", self.delivery, self.version), 20, |_| {
            if self.counter("update_rejected") > before.1 {
                Some(Update::Rejected)
            } else if self.counter("update_success") > before.0 {
                Some(Update::Accepted)
            } else {
                None
            }
        });
        if update == Update::Accepted && self.delivery == Delivery::Lds {
            self.envoy.wait_for("no listener warming", 20, |e| {
                (stat(e, "listener_manager.total_listeners_warming").as_deref() == Some("0")).then_some(())
            });
        }
        update
    }

    /// LDS: waits (at most 30 s) until the filter chains an update replaced are drained, i.e. until
    /// every connection they served is closed. ECDS drains nothing.
    pub fn wait_drained(&self) {
        if self.delivery == Delivery::Lds {
            self.envoy.wait_for("old filter chains drained", 30, |e| {
                (stat(e, "listener_manager.total_filter_chains_draining").as_deref() == Some("0")).then_some(())
            });
        }
    }

    /// The subscription's counter `name` (`update_success`, `update_rejected`, …), 0 if absent.
    pub fn counter(&self, name: &str) -> u64 {
        stat(&self.envoy, &format!("{}.{name}", self.stat_prefix())).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The version Envoy runs: `version_text` of the subscription (`v1`, `v2`, …).
    pub fn version_text(&self) -> Option<String> {
        stat(&self.envoy, &format!("{}.version_text", self.stat_prefix())).map(|v| v.trim_matches('"').to_string())
    }

    pub fn stat_prefix(&self) -> &'static str {
        match self.delivery {
            Delivery::Lds => "listener_manager.lds",
            Delivery::Ecds => "extension_config_discovery.http_filter.meshguard",
        }
    }
}

/// The watched resource file, its staging directory, and what goes into them.
struct Files {
    delivery: Delivery,
    root: PathBuf,
    upstream_port: u16,
    /// The module every later delivery names (the fresh build unless `set_code` changed it).
    wasm: PathBuf,
}

impl Files {
    fn watched_file(&self) -> PathBuf {
        self.root.join("watch").join(match self.delivery {
            Delivery::Lds => "lds.json",
            Delivery::Ecds => "ecds.json",
        })
    }

    fn write(&self, plugin_config: &str, version: u32) {
        let resource = match self.delivery {
            Delivery::Lds => self.listener(Some(plugin_config)),
            Delivery::Ecds => extension_config(plugin_config, &self.wasm),
        };
        let response = json!({ "version_info": format!("v{version}"), "resources": [resource] });
        let staged = self.root.join("stage").join(format!("v{version}.json"));
        fs::write(&staged, serde_json::to_vec_pretty(&response).expect("json")).expect("write resource");
        fs::rename(&staged, self.watched_file()).expect("rename resource");
    }

    fn bootstrap(&self) -> Value {
        let cluster = json!({
            "name": "demo_upstream",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "demo_upstream",
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": self.upstream_port } } } }] }]
            }
        });
        let source = json!({
            "resource_api_version": "V3",
            "path_config_source": {
                "path": self.watched_file(),
                "watched_directory": { "path": self.root.join("watch") }
            }
        });
        let mut bootstrap = json!({
            // File-based xDS, like a management server, needs a node identity.
            "node": { "id": "meshguard-test", "cluster": "meshguard-test" },
            "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
            "stats_config": { "stats_tags": [
                { "tag_name": "rule", "regex": "(rule=\\.=(.+?);\\.;)" },
                { "tag_name": "to", "regex": "(to=\\.=(.+?);\\.;)" },
                { "tag_name": "outcome", "regex": "(outcome=\\.=(.+?);\\.;)" }
            ] },
            "static_resources": { "clusters": [cluster] }
        });
        match self.delivery {
            Delivery::Lds => bootstrap["dynamic_resources"] = json!({ "lds_config": source }),
            Delivery::Ecds => {
                let mut listener = self.listener(None);
                listener.as_object_mut().expect("object").remove("@type");
                let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
                hcm["http_filters"][0] = json!({
                    "name": "meshguard",
                    "config_discovery": { "config_source": source, "type_urls": [WASM_TYPE] }
                });
                bootstrap["static_resources"]["listeners"] = json!([listener]);
            }
        }
        bootstrap
    }

    /// The listener `ingress`; the meshguard filter carries `plugin_config` (a placeholder when
    /// `None`, replaced by the ECDS filter entry).
    fn listener(&self, plugin_config: Option<&str>) -> Value {
        let meshguard = match plugin_config {
            Some(config) => json!({ "name": "meshguard", "typed_config": wasm_filter(config, &self.wasm) }),
            None => Value::Null,
        };
        json!({
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": "ingress",
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
            "filter_chains": [{ "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "ingress",
                    "access_log": [{
                        "name": "envoy.access_loggers.stdout",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                            "log_format": { "json_format": {
                                "method": "%REQ(:METHOD)%",
                                "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                                "status": "%RESPONSE_CODE%",
                                "response_flags": "%RESPONSE_FLAGS%",
                                "correlation_id": "%FILTER_STATE(wasm.meshguard.correlation_id:PLAIN)%",
                                "event_id": "%FILTER_STATE(wasm.meshguard.event_id:PLAIN)%",
                                "rule": "%FILTER_STATE(wasm.meshguard.rule:PLAIN)%",
                                "dedup": "%FILTER_STATE(wasm.meshguard.dedup:PLAIN)%",
                                "circuit": "%FILTER_STATE(wasm.meshguard.circuit:PLAIN)%"
                            } }
                        }
                    }],
                    "route_config": {
                        "name": "local",
                        "virtual_hosts": [{ "name": "demo", "domains": ["*"], "routes": [{
                            "name": "default", "match": { "prefix": "/" },
                            "route": { "cluster": "demo_upstream", "timeout": "10s" }
                        }] }]
                    },
                    "http_filters": [
                        meshguard,
                        { "name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
                    ]
                }
            }] }]
        })
    }
}

/// The wasm filter's configuration, as in `envoy/envoy.yaml`.
fn wasm_filter(plugin_config: &str, wasm: &Path) -> Value {
    json!({
        "@type": WASM_TYPE,
        "config": {
            "name": "meshguard",
            "root_id": "meshguard",
            "failure_policy": "FAIL_RELOAD",
            "vm_config": {
                "vm_id": "meshguard",
                "runtime": "envoy.wasm.runtime.v8",
                "code": { "local": { "filename": wasm } }
            },
            "configuration": { "@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config }
        }
    })
}

fn extension_config(plugin_config: &str, wasm: &Path) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": "meshguard",
        "typed_config": wasm_filter(plugin_config, wasm)
    })
}

/// One stat from the admin `/stats` text (`name: value`), value as text.
pub fn stat(envoy: &Envoy, name: &str) -> Option<String> {
    let text = envoy.admin_get("/stats")?;
    text.lines().find_map(|l| l.split_once(": ").filter(|(n, _)| *n == name).map(|(_, v)| v.trim().to_string()))
}

/// Polls `check` every 20 ms for at most `secs` seconds; true when it held.
pub fn poll(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for DynamicEnvoy {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.files.root);
        }
    }
}
