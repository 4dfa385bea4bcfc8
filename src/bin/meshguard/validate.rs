//! `meshguard validate`: every meshguard configuration in the given files through the parser the
//! filter itself runs (`meshguard::config::parse`), every error printed with its file and JSON
//! path, a non-zero exit status when there is one.
//!
//! Why before `kubectl apply`: Kubernetes accepts any `pluginConfig` (the CRD keeps it as free-form
//! JSON), and Envoy refuses a configuration the module rejects only when it reaches a sidecar. A
//! sidecar that ran an earlier configuration keeps it; a new pod has none, and with ECDS Envoy
//! then answers every request of the listener with 500 (its missing-config filter, response flag
//! NFCF) until a configuration the module accepts arrives (docs/deploy.md "Failure modes").
//!
//! Inputs: a meshguard JSON configuration, or YAML/JSON holding Istio resources — `WasmPlugin`
//! (`spec.pluginConfig`), `TrafficExtension` (`spec.wasm.pluginConfig`), `EnvoyFilter` (the
//! `configuration` StringValue of each wasm HTTP filter it patches in), `List`. Other resources
//! and YAML documents that are not Kubernetes resources are skipped, so a whole manifest
//! directory can be given. `-` reads standard input.
//!
//! Istio hands `pluginConfig` to Envoy as JSON written from a protobuf `Struct`
//! (istio/istio pilot/pkg/model/extensions.go, `buildWasmConfig`): every number is a double,
//! written without a fraction when it has none. YAML is converted the same way, so `3.0` reaches
//! meshguard as `3`, as it would in the mesh.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

const USAGE: &str = "\
usage: meshguard validate [--all] FILE...
       meshguard --version

Checks every meshguard configuration in FILE (a meshguard JSON configuration, or YAML/JSON with
Istio WasmPlugin, TrafficExtension, EnvoyFilter or List resources; other resources are skipped;
`-` reads standard input) with the parser the filter runs, and prints each error as
`file: resource: location: json.path: problem`. Wasm plugins whose url, module file, plugin name
or resource name do not mention meshguard are skipped unless --all is given.
Exit status: 0 every configuration valid, 1 an error (or no configuration) found, 2 usage.
";

const WASM_HTTP_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// What one file or resource produced, in the order found.
#[derive(Debug, PartialEq)]
pub enum Finding {
    /// A meshguard configuration the parser accepted.
    Valid(String),
    /// One problem; each makes the exit status non-zero.
    Error(String),
    /// Accepted, but a setting the docs warn about (does not change the exit status).
    Warning(String),
    /// A resource or document that holds no meshguard configuration.
    Skipped(String),
}

/// The command line; returns the exit status.
pub fn main(args: &[OsString], stdin: &mut dyn Read, out: &mut dyn Write) -> i32 {
    let mut args = args.iter().map(|a| a.to_string_lossy().into_owned());
    match args.next().as_deref() {
        Some("validate") => {}
        Some("--version" | "-V" | "version") => {
            let _ = writeln!(out, "meshguard {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Some("--help" | "-h" | "help") => {
            let _ = write!(out, "{USAGE}");
            return 0;
        }
        _ => {
            let _ = write!(out, "{USAGE}");
            return 2;
        }
    }
    let mut all = false;
    let mut files = Vec::new();
    for arg in args {
        match arg.as_str() {
            "--all" => all = true,
            "--help" | "-h" => {
                let _ = write!(out, "{USAGE}");
                return 0;
            }
            option if option.starts_with("--") => {
                let _ = write!(out, "meshguard validate: unknown option {option}\n{USAGE}");
                return 2;
            }
            _ => files.push(arg),
        }
    }
    if files.is_empty() {
        let _ = write!(out, "meshguard validate: no file given (`-` reads standard input)\n{USAGE}");
        return 2;
    }

    let (mut valid, mut errors, mut warnings) = (0, 0, 0);
    for file in &files {
        let label = if file == "-" { "(stdin)" } else { file.as_str() };
        let bytes = if file == "-" {
            let mut buffer = Vec::new();
            stdin.read_to_end(&mut buffer).map(|_| buffer)
        } else {
            std::fs::read(Path::new(file))
        };
        let findings = match bytes {
            Ok(bytes) => check_file(label, &bytes, all),
            Err(e) => vec![Finding::Error(format!("{label}: cannot read: {e}"))],
        };
        for finding in findings {
            let line = match finding {
                Finding::Valid(what) => {
                    valid += 1;
                    format!("{what}: valid")
                }
                Finding::Error(text) => {
                    errors += 1;
                    text
                }
                Finding::Warning(text) => {
                    warnings += 1;
                    format!("warning: {text}")
                }
                Finding::Skipped(text) => text,
            };
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(
        out,
        "meshguard validate: {valid} valid configuration{}, {errors} error{}, {warnings} warning{}",
        plural(valid),
        plural(errors),
        plural(warnings)
    );
    if errors == 0 && valid == 0 {
        let _ = writeln!(out, "meshguard validate: no meshguard configuration found");
        return 1;
    }
    i32::from(errors > 0)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Every finding of one file (`name` is how lines refer to it).
pub fn check_file(name: &str, bytes: &[u8], all: bool) -> Vec<Finding> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => return vec![Finding::Error(format!("{name}: not UTF-8 text: {e}"))],
    };
    let looks_json = name.ends_with(".json") || text.trim_start().starts_with('{');
    if looks_json {
        // A meshguard configuration is checked from its exact bytes, as the filter reads them.
        return match serde_json::from_str::<Value>(text) {
            Ok(value) if is_resource(&value) => check_resource(name, &value, all),
            _ => config_findings(name, "", bytes),
        };
    }
    let docs = match YamlLoader::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => return vec![Finding::Error(format!("{name}: not valid YAML: {e}"))],
    };
    let several = docs.len() > 1;
    let mut findings = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let label = if several { format!("{name} (document {})", i + 1) } else { name.to_string() };
        if matches!(doc, Yaml::Null) {
            continue;
        }
        let value = match to_json(doc) {
            Ok(value) => value,
            Err(e) => {
                findings.push(Finding::Error(format!("{label}: {e}")));
                continue;
            }
        };
        if is_resource(&value) {
            findings.extend(check_resource(&label, &value, all));
        } else {
            // Alert rules, Helm values, …: a bare meshguard configuration is given as JSON.
            findings.push(Finding::Skipped(format!("{label}: not a Kubernetes resource (skipped)")));
        }
    }
    if findings.is_empty() {
        findings.push(Finding::Skipped(format!("{name}: empty")));
    }
    findings
}

fn is_resource(value: &Value) -> bool {
    value.get("kind").is_some_and(Value::is_string) && value.get("apiVersion").is_some_and(Value::is_string)
}

/// Runs the filter's parser over `bytes`; `location` is the JSON path of the configuration
/// inside its resource (empty for a bare configuration).
fn config_findings(label: &str, location: &str, bytes: &[u8]) -> Vec<Finding> {
    let prefix = if location.is_empty() { label.to_string() } else { format!("{label}: {location}") };
    match meshguard::config::parse(bytes) {
        Ok(_) => vec![Finding::Valid(prefix)],
        Err(errors) => errors.into_iter().map(|e| Finding::Error(format!("{prefix}: {e}"))).collect(),
    }
}

/// The value at `path` (object keys), `null` when any step is missing.
fn at<'v>(value: &'v Value, path: &[&str]) -> &'v Value {
    static NULL: Value = Value::Null;
    path.iter().try_fold(value, |v, key| v.get(key)).unwrap_or(&NULL)
}

fn str_at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    at(value, path).as_str()
}

fn check_resource(label: &str, doc: &Value, all: bool) -> Vec<Finding> {
    let kind = str_at(doc, &["kind"]).unwrap_or_default();
    let name = str_at(doc, &["metadata", "name"]).unwrap_or_default();
    let namespace = str_at(doc, &["metadata", "namespace"]).map(|n| format!("{n}/")).unwrap_or_default();
    let resource =
        if name.is_empty() { format!("{label}: {kind}") } else { format!("{label}: {kind} {namespace}{name}") };
    let group = str_at(doc, &["apiVersion"]).unwrap_or_default().split('/').next().unwrap_or_default();
    match (group, kind) {
        (_, "List") => match doc.get("items").and_then(Value::as_array) {
            Some(items) => {
                let mut findings = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let label = format!("{label} items[{i}]");
                    if is_resource(item) {
                        findings.extend(check_resource(&label, item, all));
                    } else {
                        findings.push(Finding::Error(format!("{label}: not a Kubernetes resource")));
                    }
                }
                findings
            }
            None => vec![Finding::Error(format!("{resource}: items: must be a list"))],
        },
        ("extensions.istio.io", "WasmPlugin") => {
            let spec = at(doc, &["spec"]);
            wasm_plugin(&resource, spec, "spec", all, str_at(spec, &["url"]), str_at(spec, &["pluginName"]), name)
        }
        ("extensions.istio.io", "TrafficExtension") => match at(doc, &["spec"]).get("wasm") {
            Some(wasm) => wasm_plugin(
                &resource,
                wasm,
                "spec.wasm",
                all,
                str_at(wasm, &["url"]),
                str_at(wasm, &["pluginName"]),
                name,
            ),
            None => vec![Finding::Skipped(format!("{resource}: no wasm plugin (skipped)"))],
        },
        ("networking.istio.io", "EnvoyFilter") => envoy_filter(&resource, doc, all, name),
        _ => vec![Finding::Skipped(format!("{resource}: no meshguard configuration (skipped)"))],
    }
}

/// Whether a wasm plugin is meshguard: its module, plugin name or resource name says so.
fn names_meshguard(candidates: &[Option<&str>]) -> bool {
    candidates.iter().flatten().any(|c| c.to_ascii_lowercase().contains("meshguard"))
}

/// A WasmPlugin's spec or a TrafficExtension's `wasm` (same field names); `at` is its path.
fn wasm_plugin(
    resource: &str,
    wasm: &Value,
    at: &str,
    all: bool,
    url: Option<&str>,
    plugin_name: Option<&str>,
    name: &str,
) -> Vec<Finding> {
    if !all && !names_meshguard(&[url, plugin_name, Some(name)]) {
        return vec![Finding::Skipped(format!(
            "{resource}: not a meshguard plugin (url {}; --all checks it anyway) (skipped)",
            url.unwrap_or("-")
        ))];
    }
    let location = format!("{at}.pluginConfig");
    let mut findings = match wasm.get("pluginConfig") {
        // Istio sends no configuration at all for an absent or empty pluginConfig: meshguard's
        // defaults, which the parser accepts.
        None | Some(Value::Null) => config_findings(resource, &location, b""),
        Some(config @ Value::Object(_)) => config_findings(resource, &location, config.to_string().as_bytes()),
        Some(other) => vec![Finding::Error(format!("{resource}: {location}: must be an object, got {other}"))],
    };
    findings.extend(fail_strategy_warning(resource, wasm, at, url));
    findings
}

/// docs/deploy.md "Failure strategy": with any failStrategy but FAIL_OPEN, a module Istio's
/// agent cannot fetch is replaced by a deny-all RBAC filter (istio/istio pkg/wasm/convert.go).
fn fail_strategy_warning(resource: &str, wasm: &Value, at: &str, url: Option<&str>) -> Option<Finding> {
    let remote = url.is_some_and(|u| !u.starts_with("file://"));
    let strategy = str_at(wasm, &["failStrategy"]).unwrap_or("FAIL_CLOSE");
    (remote && strategy != "FAIL_OPEN").then(|| {
        Finding::Warning(format!(
            "{resource}: {at}.failStrategy: {strategy}: when the module cannot be fetched, Istio \
             answers every request the plugin covers with 403 (deny-all fallback); FAIL_OPEN runs \
             without meshguard instead (docs/deploy.md \"Failure strategy\")"
        ))
    })
}

fn envoy_filter(resource: &str, doc: &Value, all: bool, name: &str) -> Vec<Finding> {
    let Some(patches) = at(doc, &["spec", "configPatches"]).as_array() else {
        return vec![Finding::Skipped(format!("{resource}: no configPatches (skipped)"))];
    };
    let mut findings = Vec::new();
    for (i, patch) in patches.iter().enumerate() {
        let value = at(patch, &["patch", "value"]);
        // Envoy's JSON names fields in snake_case or lowerCamelCase alike.
        let (typed_key, typed) = match (value.get("typed_config"), value.get("typedConfig")) {
            (Some(t), _) => ("typed_config", t),
            (None, Some(t)) => ("typedConfig", t),
            (None, None) => continue,
        };
        if str_at(typed, &["@type"]) != Some(WASM_HTTP_FILTER) {
            continue;
        }
        let config = at(typed, &["config"]);
        let vm = config.get("vm_config").unwrap_or_else(|| at(config, &["vmConfig"]));
        let module = str_at(vm, &["code", "local", "filename"])
            .or_else(|| str_at(vm, &["code", "remote", "http_uri", "uri"]))
            .or_else(|| str_at(vm, &["code", "remote", "httpUri", "uri"]));
        let root_id = config.get("root_id").or_else(|| config.get("rootId")).and_then(Value::as_str);
        let plugin = str_at(config, &["name"]);
        let at = format!("spec.configPatches[{i}].patch.value.{typed_key}.config.configuration");
        if !all && !names_meshguard(&[module, root_id, plugin, Some(name)]) {
            findings.push(Finding::Skipped(format!(
                "{resource}: spec.configPatches[{i}]: not a meshguard plugin (module {}; --all checks it anyway) (skipped)",
                module.unwrap_or("-")
            )));
            continue;
        }
        match config.get("configuration") {
            None | Some(Value::Null) => findings.extend(config_findings(resource, &at, b"")),
            Some(any) => match (str_at(any, &["@type"]), any.get("value")) {
                (Some(STRING_VALUE), Some(Value::String(json))) => {
                    findings.extend(config_findings(resource, &format!("{at}.value"), json.as_bytes()))
                }
                (Some(STRING_VALUE), None) => findings.extend(config_findings(resource, &at, b"")),
                (Some(STRING_VALUE), Some(other)) => {
                    findings.push(Finding::Error(format!("{resource}: {at}.value: must be a string, got {other}")))
                }
                (other, _) => findings.push(Finding::Error(format!(
                    "{resource}: {at}: \"@type\" must be {STRING_VALUE} holding meshguard's JSON, got {} \
                     (Envoy hands any other type to the plugin as binary protobuf)",
                    other.unwrap_or("nothing")
                ))),
            },
        }
    }
    if findings.is_empty() {
        findings.push(Finding::Skipped(format!("{resource}: patches no wasm filter (skipped)")));
    }
    findings
}

/// A YAML document as the JSON Kubernetes stores and Istio forwards (see the module comment on
/// numbers).
pub fn to_json(yaml: &Yaml) -> Result<Value, String> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => number(text)?,
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(map) => {
            let mut object = Map::new();
            for (key, value) in map {
                let key = match key {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Null => "null".to_string(),
                    other => return Err(format!("unsupported YAML key {other:?}")),
                };
                object.insert(key, to_json(value)?);
            }
            Value::Object(object)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported".to_string()),
        Yaml::BadValue => return Err("invalid YAML value".to_string()),
    })
}

/// A YAML float as a protobuf `Struct` double written by Go's protojson: integral values below
/// 1e21 without a fraction (`2.0` → `2`), others as they are; NaN and infinities have no JSON form
/// (Istio drops a plugin whose configuration holds one).
fn number(text: &str) -> Result<Value, String> {
    let parsed: f64 = match text.trim_start_matches('+') {
        ".inf" | ".Inf" | ".INF" => f64::INFINITY,
        "-.inf" | "-.Inf" | "-.INF" => f64::NEG_INFINITY,
        ".nan" | ".NaN" | ".NAN" => f64::NAN,
        t => t.parse().map_err(|_| format!("invalid number {text:?}"))?,
    };
    if !parsed.is_finite() {
        return Err(format!("{text} has no JSON form (Istio discards such a pluginConfig)"));
    }
    if parsed.fract() == 0.0 && parsed.abs() < 9.007_199_254_740_992e15 {
        // Exactly representable as an integer (below 2^53).
        return Ok(Value::from(parsed as i64));
    }
    Ok(serde_json::Number::from_f64(parsed).map_or(Value::Null, Value::Number))
}
