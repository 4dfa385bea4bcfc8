//! Real etcd members (`etcd` 3.4, Debian's `etcd-server`) for the tests of the shared dedup store
//! (docs/etcd-store.md), and the Envoy clusters that put them behind a meshguard Envoy.
//!
//! * [`Etcd::start`] runs one member, [`Etcd::cluster`] several (`--initial-cluster`), each on
//!   127.0.0.1 with free ports and its own data directory under the system's temp directory; both
//!   return once every member serves a linearizable `POST /v3/kv/range`. Members can be killed
//!   (SIGKILL), stopped (SIGTERM), paused (SIGSTOP: a member that accepts connections and never
//!   answers) and restarted on the same ports with the same data. Dropping the value kills every
//!   member and removes the directory (kept, and named on stderr, when the test panicked).
//! * The helpers ([`Etcd::get`], [`Etcd::keys`], [`Etcd::put`], [`Etcd::lease_ttl`], …) speak
//!   etcd's JSON gateway (`/v3/...`, base64 keys and values, 64-bit numbers as strings) with the
//!   project's raw HTTP client, as meshguard does.
//! * [`etcd_cluster`] is the Envoy cluster of etcd's client port (for `Options.clusters`);
//!   [`EtcdFaults`] routes that cluster through a listener of the same Envoy that delays requests
//!   (Envoy's fault filter), delays answers after etcd applied them, or answers errors itself.
//!
//! Every test that starts etcd begins with `support::require_etcd!();`: without an `etcd` binary
//! it prints one line saying what to run and passes without running, unless
//! `MESHGUARD_REQUIRE_ENVOY=1` (set by `scripts/test.sh`), which makes it fail with that line.
//!
//! What etcd 3.4's gateway does that a reader of the v3 API's proto might not expect (checked by
//! tests/support_selftest.rs): fields come back in snake_case (`create_revision`,
//! `response_range`), `succeeded` is left out when false (and `responses` when empty), `kvs` and
//! `count` are left out when nothing matched, a put with an unknown lease is HTTP 404
//! `{"code":5,"error":"etcdserver: requested lease not found",…}`, an unknown or expired lease's
//! `timetolive` is 200 with `"TTL":"-1"`. Requests are accepted in snake_case and camelCase.
//! The plaintext client port serves the gateway over HTTP/1.1 only: every HTTP/2 connection goes
//! to etcd's gRPC server, which resets a JSON request (`PROTOCOL_ERROR`).
#![allow(dead_code)]
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::envoy::{Envoy, Options};
use super::http::{self, Request};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// How long [`Etcd::start`], [`Etcd::cluster`] and [`Etcd::restart`] wait for members to serve.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Timeout of one readiness probe: a member without a leader holds a linearizable read for
/// seconds (etcd's request timeout), so probes give up early and ask again.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Timeout of one helper call. A member without a quorum answers 503 "request timed out" after
/// about 7 s (etcd 3.4's request timeout: 5 s plus two election timeouts).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting with fresh ports when one was taken between choosing and binding it.
const PORT_ATTEMPTS: usize = 5;

fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

/// Why etcd cannot run here, as one line saying what to run first; `None` when `etcd` runs.
/// Checked once per test binary.
pub fn unavailable() -> Option<&'static str> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            (!super::envoy::runs(&etcd_bin())).then(|| {
                format!(
                    "`{}` not installed — run scripts/test.sh (or: scripts/setup.sh's ensure_etcd, \
                     i.e. apt-get install etcd-server)",
                    etcd_bin()
                )
            })
        })
        .as_deref()
}

/// `true` when this test can start etcd. Otherwise prints `skipped: <what to run first>` once per
/// test binary and returns `false` — or, with `MESHGUARD_REQUIRE_ENVOY=1`, fails the test with
/// that line. Used through [`require_etcd!`](crate::support::require_etcd).
pub fn available() -> bool {
    static SAID: Once = Once::new();
    unavailable().is_none_or(|reason| super::envoy::skip(reason, &SAID))
}

/// Free TCP ports of 127.0.0.1, distinct: all are bound at once, then released for the caller to
/// bind (another process may take one in between; the callers retry with fresh ports).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local address").port()).collect()
}

// ---- Members ---------------------------------------------------------------------------------

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    paused: bool,
}

/// One etcd member or a cluster of them, on 127.0.0.1. See the module documentation.
pub struct Etcd {
    members: Vec<Member>,
    dir: PathBuf,
    initial_cluster: String,
    token: String,
}

/// An answer of the JSON gateway other than 200, or no answer at all.
#[derive(Clone, Debug)]
pub struct GatewayError {
    /// The HTTP status; 0 when no member answered (connection refused, reset or timed out).
    pub status: u16,
    /// The gRPC status code of etcd's error body (`{"code":5,"error":…}`), when there is one.
    pub code: Option<i64>,
    /// etcd's `error` text, the body, or the I/O error.
    pub message: String,
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "HTTP {} (gRPC code {code}): {}", self.status, self.message),
            None => write!(f, "HTTP {}: {}", self.status, self.message),
        }
    }
}

impl Etcd {
    /// One member; returns when it serves. Panics (with its log) when it does not start.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// `n` members forming one cluster; returns when every member serves a linearizable read.
    pub fn cluster(n: usize) -> Etcd {
        assert!(n >= 1, "a cluster has at least one member");
        if let Some(reason) = unavailable() {
            panic!("{reason}");
        }
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Etcd::try_cluster(n) {
                Ok(etcd) => return etcd,
                Err((etcd, log)) if log.contains("address already in use") => {
                    // A port was taken between choosing and binding it: again, with fresh ports.
                    drop(etcd);
                    last = log;
                }
                // Dropped while unwinding: the members are killed, their files kept and named.
                Err((_etcd, log)) => panic!("etcd did not start:\n{log}"),
            }
        }
        panic!("etcd did not start: ports kept being taken\n{last}");
    }

    fn try_cluster(n: usize) -> Result<Etcd, (Etcd, String)> {
        let dir = std::env::temp_dir().join(format!(
            "meshguard-etcd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
                paused: false,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        // A token of its own: a member of another test's cluster that got one of these ports
        // later is refused instead of joining.
        let token = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut etcd = Etcd { members, dir, initial_cluster, token };
        for i in 0..n {
            etcd.spawn(i);
        }
        match etcd.wait_serving((0..n).collect()) {
            Ok(()) => Ok(etcd),
            Err(log) => Err((etcd, log)),
        }
    }

    fn spawn(&mut self, i: usize) {
        let data = self.dir.join(&self.members[i].name);
        let log_path = self.log_path(i);
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("etcd log file");
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(etcd_bin())
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // 3.4's default logger is the deprecated capnslog; zap honours --log-level.
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{}` ({e}): run scripts/setup.sh", etcd_bin()));
        let m = &mut self.members[i];
        m.child = Some(child);
        m.paused = false;
    }

    /// Waits until each member of `which` serves a linearizable range; `Err` holds the logs when a
    /// member exits or the deadline passes.
    fn wait_serving(&mut self, mut which: Vec<usize>) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        let probe = json!({ "key": b64_encode(b"meshguard-test-probe") });
        loop {
            for &i in &which {
                if let Some(child) = self.members[i].child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.members[i].child = None;
                        return Err(format!("member {i} exited with {status}\n{}", self.logs()));
                    }
                }
            }
            which.retain(|&i| self.call_on_timeout(i, "/v3/kv/range", &probe, PROBE_TIMEOUT).is_err());
            if which.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("members {which:?} not serving after {READY_DEADLINE:?}\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running, unpaused member serves a linearizable read (after a kill,
    /// stop or restart: a new leader, a member catching up). Panics with the logs after 60 s.
    pub fn wait_healthy(&mut self) {
        let which: Vec<usize> = (0..self.len()).filter(|&i| self.serves_requests(i)).collect();
        if let Err(log) = self.wait_serving(which) {
            panic!("etcd not healthy:\n{log}");
        }
    }

    fn serves_requests(&self, i: usize) -> bool {
        self.members[i].child.is_some() && !self.members[i].paused
    }

    /// Members in the cluster (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether member `i`'s process runs (paused counts as running).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// The client port of member `i` (the JSON gateway and gRPC).
    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    /// The client ports of all members, in order (for [`etcd_cluster`]).
    pub fn client_ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client_port).collect()
    }

    /// `http://127.0.0.1:PORT` of every member, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client_port)).collect()
    }

    /// Kills member `i` with SIGKILL (a crash: no goodbye to its peers) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].paused = false;
    }

    /// Stops member `i` with SIGTERM and waits for it to exit (SIGKILL after 10 s). Its data
    /// directory stays for [`Etcd::restart`].
    pub fn stop(&mut self, i: usize) {
        let Some(mut child) = self.members[i].child.take() else {
            return;
        };
        if self.members[i].paused {
            signal(&child, "CONT");
        }
        self.members[i].paused = false;
        signal(&child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts member `i` again (after [`Etcd::kill`] or [`Etcd::stop`]) with the same name, ports
    /// and data directory. Returns when it serves a linearizable read if a quorum of members is
    /// running, else when its client port answers `/version`. Panics with the logs otherwise.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.spawn(i);
            let quorum = self.len() / 2 + 1;
            let up = (0..self.len()).filter(|&j| self.serves_requests(j)).count();
            let result = if up >= quorum { self.wait_serving(vec![i]) } else { self.wait_listening(i) };
            match result {
                Ok(()) => return,
                // The port went to someone else while the member was down; it may come free.
                Err(log) if log.contains("address already in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(log) => panic!("member {i} did not restart:\n{log}"),
            }
        }
    }

    fn wait_listening(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.members[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.members[i].child = None;
                    return Err(format!("member {i} exited with {status}\n{}", self.logs()));
                }
            }
            let version = http::send_timeout(self.client_port(i), &Request::get("/version"), PROBE_TIMEOUT);
            if version.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("member {i} not listening after {READY_DEADLINE:?}\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes member `i` with SIGSTOP: its ports still accept connections (the kernel does),
    /// nothing is answered — a hung member or one behind a network partition, as a client sees it.
    pub fn pause(&mut self, i: usize) {
        if let Some(child) = &self.members[i].child {
            signal(child, "STOP");
            self.members[i].paused = true;
        }
    }

    /// Undoes [`Etcd::pause`] with SIGCONT.
    pub fn resume(&mut self, i: usize) {
        if let Some(child) = &self.members[i].child {
            signal(child, "CONT");
            self.members[i].paused = false;
        }
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }

    /// Member `i`'s output so far (restarts append to it).
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..self.len()).map(|i| format!("--- member {i} ({}):\n{}", self.members[i].name, self.log(i))).collect()
    }

    /// The directory holding the members' data directories and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // ---- The JSON gateway --------------------------------------------------------------------

    /// `POST path` with a JSON body to member `i`; the JSON answer of a 200.
    pub fn call_on(&self, i: usize, path: &str, body: &Value) -> Result<Value, GatewayError> {
        self.call_on_timeout(i, path, body, CALL_TIMEOUT)
    }

    fn call_on_timeout(&self, i: usize, path: &str, body: &Value, timeout: Duration) -> Result<Value, GatewayError> {
        let request = Request::post(path).header("content-type", "application/json").body(body.to_string());
        let response = http::send_timeout(self.client_port(i), &request, timeout).map_err(|e| GatewayError {
            status: 0,
            code: None,
            message: e.to_string(),
        })?;
        let parsed: Option<Value> = serde_json::from_slice(&response.body).ok();
        match (response.status, parsed) {
            (200, Some(value)) => Ok(value),
            (status, Some(value)) => Err(GatewayError {
                status,
                code: value["code"].as_i64(),
                message: value["error"].as_str().map_or_else(|| response.text(), str::to_string),
            }),
            (status, None) => Err(GatewayError { status, code: None, message: response.text() }),
        }
    }

    /// `POST path` to the first running, unpaused member that answers at all (a member that
    /// refuses the connection is skipped); etcd forwards writes to the leader itself.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, GatewayError> {
        let mut last = GatewayError { status: 0, code: None, message: "no member running".to_string() };
        for i in (0..self.len()).filter(|&i| self.serves_requests(i)) {
            match self.call_on(i, path, body) {
                Err(e) if e.status == 0 => last = e,
                answer => return answer,
            }
        }
        Err(last)
    }

    fn must(&self, path: &str, body: &Value) -> Value {
        self.call(path, body).unwrap_or_else(|e| panic!("etcd {path} {body}: {e}"))
    }

    /// The value of `key` (lossy UTF-8) and its lease (0: none); `None` when absent.
    pub fn get(&self, key: &str) -> Option<(String, i64)> {
        let answer = self.must("/v3/kv/range", &json!({ "key": b64_encode(key.as_bytes()) }));
        let kv = answer["kvs"].as_array()?.first()?;
        Some((text(&kv["value"]), int(&kv["lease"])))
    }

    /// Every key under `prefix` with its value (lossy UTF-8), sorted by key; `""`: all keys.
    pub fn keys(&self, prefix: &str) -> Vec<(String, String)> {
        let (key, end) = if prefix.is_empty() {
            (vec![0], vec![0])
        } else {
            (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
        };
        let answer = self.must("/v3/kv/range", &json!({ "key": b64_encode(&key), "range_end": b64_encode(&end) }));
        answer["kvs"]
            .as_array()
            .map(|kvs| kvs.iter().map(|kv| (text(&kv["key"]), text(&kv["value"]))).collect())
            .unwrap_or_default()
    }

    /// Writes `key` = `value` without a lease; returns the new revision. Panics on an error.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let answer = self
            .must("/v3/kv/put", &json!({ "key": b64_encode(key.as_bytes()), "value": b64_encode(value.as_bytes()) }));
        int(&answer["header"]["revision"])
    }

    /// Writes `key` = `value` attached to `lease`; an unknown lease is `Err` with status 404 and
    /// code 5.
    pub fn put_with_lease(&self, key: &str, value: &str, lease: i64) -> Result<i64, GatewayError> {
        let body = json!({ "key": b64_encode(key.as_bytes()), "value": b64_encode(value.as_bytes()), "lease": lease.to_string() });
        self.call("/v3/kv/put", &body).map(|answer| int(&answer["header"]["revision"]))
    }

    /// Deletes `key`; whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        let answer = self.must("/v3/kv/deleterange", &json!({ "key": b64_encode(key.as_bytes()) }));
        int(&answer["deleted"]) > 0
    }

    /// Grants a lease of `ttl_s` seconds; its id.
    pub fn grant(&self, ttl_s: i64) -> i64 {
        int(&self.must("/v3/lease/grant", &json!({ "TTL": ttl_s.to_string() }))["ID"])
    }

    /// The seconds `lease` has left; `None` when it expired, was revoked or never existed.
    pub fn lease_ttl(&self, lease: i64) -> Option<i64> {
        let ttl = int(&self.must("/v3/lease/timetolive", &json!({ "ID": lease.to_string() }))["TTL"]);
        (ttl >= 0).then_some(ttl)
    }

    /// The member that is the leader, as the first running, unpaused member that answers
    /// `/v3/maintenance/status` sees it; `None` while there is none (an election, no quorum).
    pub fn leader(&self) -> Option<usize> {
        // Member ids are uint64, beyond `int`: compared as the strings the gateway sends.
        let status = self.call("/v3/maintenance/status", &json!({})).ok()?;
        let leader = status["leader"].as_str()?.to_string();
        (0..self.len()).find(|&i| {
            self.serves_requests(i)
                && self
                    .call_on(i, "/v3/maintenance/status", &json!({}))
                    .is_ok_and(|s| s["header"]["member_id"].as_str() == Some(leader.as_str()))
        })
    }

    /// A running, unpaused member that is not the leader (after waiting for one to be elected).
    pub fn follower(&mut self) -> usize {
        self.wait_healthy();
        let leader = self.leader();
        (0..self.len()).find(|&i| self.serves_requests(i) && Some(i) != leader).expect("no follower running")
    }

    /// The cluster's current revision.
    pub fn revision(&self) -> i64 {
        let answer =
            self.must("/v3/kv/range", &json!({ "key": b64_encode(b"meshguard-test-probe"), "count_only": true }));
        int(&answer["header"]["revision"])
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!("etcd files kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends `SIG<name>` to a child with the `kill` command (std has only SIGKILL).
fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {}", child.id());
}

/// A 64-bit number of the gateway (a JSON string, or a number); absent = 0.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not an integer: {s:?}")),
        Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("not an i64: {n}")),
        Value::Null => 0,
        other => panic!("not an integer: {other}"),
    }
}

/// A base64 field of the gateway as lossy UTF-8; absent = "".
fn text(value: &Value) -> String {
    let encoded = value.as_str().unwrap_or_default();
    let bytes = b64_decode(encoded).unwrap_or_else(|| panic!("not base64: {encoded:?}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The `range_end` that selects every key starting with `prefix` (etcd's convention: the prefix
/// with its last byte below 0xff incremented and the rest cut; all 0xff: `\0`, to the end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

// ---- Base64 (RFC 4648, standard alphabet, padded), as the gateway's bytes fields ----------
// The `base64` crate, which meshguard itself uses for the same fields.

pub fn b64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `None` for text that is not padded standard base64.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

// ---- Envoy in front of etcd ------------------------------------------------------------------

/// The Envoy cluster `name` of etcd members on 127.0.0.1 `ports`, as one list item for
/// `Options.clusters` (JSON, which is YAML, indented by four spaces). Settings for a store that
/// must fail fast rather than hold a request:
///
/// * **HTTP/1.1.** etcd 3.4's plaintext client port hands every HTTP/2 connection to its gRPC
///   server, which resets the gateway's JSON requests (`reset reason: protocol error` in Envoy
///   1.40); HTTP/1.1 reaches the gateway (checked by tests/support_selftest.rs).
/// * **No retries, no queue.** `max_retries: 0`; a small `max_pending_requests`, so a burst
///   beyond the connections fails at once (503, `UO`) instead of waiting its turn.
/// * **Short connect timeout** (250 ms): a member that does not complete the handshake is not
///   waited for the whole of the store's `timeout` twice.
/// * **Outlier detection** that ejects a member after 2 consecutive gateway failures — a refused
///   connection (503), a request that timed out (504: the caller's timeout, i.e. meshguard's
///   callout), etcd's own 503 ("no leader", a proposal that timed out: what a member cut off
///   from the majority answers) — for 5 s at first, 30 s at most, and never more than half of
///   the members: with a majority gone etcd itself is down and ejection cannot help. Local and
///   upstream errors are not split: split, a hung member's every new connection succeeds (the
///   kernel accepts it) and resets the count of its timeouts, which never eject it.
pub fn etcd_cluster(name: &str, ports: &[u16]) -> String {
    item(&etcd_cluster_json(name, ports))
}

/// The cluster of [`etcd_cluster`] as JSON, for a whole bootstrap
/// (`Envoy::try_start_bootstrap`).
pub fn etcd_cluster_json(name: &str, ports: &[u16]) -> Value {
    let endpoints: Vec<Value> = ports
        .iter()
        .map(
            |p| json!({ "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": p } } } }),
        )
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http_protocol_options": {} },
                "common_http_protocol_options": { "idle_timeout": "60s" }
            }
        },
        "circuit_breakers": { "thresholds": [{
            "max_connections": 1024, "max_pending_requests": 64, "max_requests": 1024, "max_retries": 0
        }] },
        "outlier_detection": {
            "consecutive_gateway_failure": 2,
            "enforcing_consecutive_gateway_failure": 100,
            "consecutive_5xx": 5,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_time": "30s",
            "max_ejection_percent": 50
        },
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": endpoints }] }
    })
}

fn item(value: &Value) -> String {
    format!("    - {value}")
}

/// `Options.top_level` for [`EtcdFaults`]: a runtime layer that the admin endpoint
/// `/runtime_modify` writes, which [`EtcdFaults::set`] uses.
pub const ADMIN_RUNTIME: &str = "layered_runtime:\n  layers:\n    - name: admin\n      admin_layer: {}";

/// Faults between meshguard and etcd, switched at run time through Envoy's runtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Hold each request this long before it goes to etcd (Envoy's fault filter). A callout that
    /// gives up meanwhile is reset and never reaches etcd.
    pub request_delay: Option<Duration>,
    /// Hold each answer this long after etcd answered. A callout that gives up meanwhile has
    /// landed: etcd applied it, meshguard did not learn it.
    pub response_delay: Option<Duration>,
    /// Answer this status without reaching etcd (Envoy's fault filter).
    pub abort: Option<u16>,
}

/// An etcd cluster seen through faults: the cluster `name` (what meshguard's `store.cluster`
/// names) leads to the listener `<name>_faults` of the same Envoy, whose filters delay requests
/// (Envoy's fault filter), delay answers (a Lua filter that waits on `<name>_sleep`, a listener
/// whose fault filter holds each request), or abort, and then route to `<name>_members`, the
/// members themselves (settings of [`etcd_cluster`] on every hop). Starts with every request
/// delayed by `request_delay`; [`EtcdFaults::set`] changes the faults while Envoy runs.
///
/// ```ignore
/// let faults = EtcdFaults::new("etcd", &etcd.client_ports(), Duration::from_millis(300));
/// let mut opts = Options::new(&config, upstream.port);
/// faults.apply(&mut opts);
/// let envoy = Envoy::start_with(opts);
/// faults.set(&envoy, Faults { response_delay: Some(Duration::from_millis(500)), ..Faults::default() });
/// ```
pub struct EtcdFaults {
    pub name: String,
    /// The `<name>_faults` listener: a request sent here meets the faults on its way to etcd.
    pub port: u16,
    sleep_port: u16,
    /// For `Options.clusters`: `<name>`, `<name>_members`, `<name>_sleep`.
    pub clusters: String,
    /// For `Options.listeners`: `<name>_faults`, `<name>_sleep`.
    pub listeners: String,
}

impl EtcdFaults {
    pub fn new(name: &str, ports: &[u16], request_delay: Duration) -> EtcdFaults {
        let free = free_ports(2);
        let (port, sleep_port) = (free[0], free[1]);
        let members = format!("{name}_members");
        let sleep = format!("{name}_sleep");
        let clusters = [
            etcd_cluster_json(name, &[port]),
            etcd_cluster_json(&members, ports),
            json!({
                "name": sleep, "type": "STATIC", "connect_timeout": "0.25s",
                "load_assignment": { "cluster_name": sleep, "endpoints": [{ "lb_endpoints": [
                    { "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": sleep_port } } } }
                ] }] }
            }),
        ];
        // The fault filter wants a positive fixed delay even when it injects none (0 %).
        let fixed = request_delay.max(Duration::from_millis(1));
        // The answer waits on a call to the sleep listener, whose own fault filter holds it for
        // `response_delay_ms` (0 %: the call returns at once).
        let lua = format!(
            "function envoy_on_response(handle)\n  handle:httpCall(\"{sleep}\", {{[\":method\"] = \"GET\", \
             [\":path\"] = \"/\", [\":authority\"] = \"sleep\"}}, \"\", 600000)\nend\n"
        );
        let faults_listener = listener_json(
            &format!("{name}_faults"),
            port,
            json!({ "cluster": members, "timeout": "0s" }),
            vec![
                json!({ "name": "envoy.filters.http.lua", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": { "inline_string": lua }
                } }),
                json!({ "name": "envoy.filters.http.fault", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "delay": {
                        "fixed_delay": format!("{:.3}s", fixed.as_secs_f64()),
                        "percentage": { "numerator": if request_delay.is_zero() { 0 } else { 100 } }
                    },
                    "delay_percent_runtime": format!("{name}.request_delay_percent"),
                    "delay_duration_runtime": format!("{name}.request_delay_ms"),
                    "abort": { "http_status": 503, "percentage": { "numerator": 0 } },
                    "abort_percent_runtime": format!("{name}.abort_percent"),
                    "abort_http_status_runtime": format!("{name}.abort_status")
                } }),
            ],
        );
        let sleep_listener = listener_json(
            &sleep,
            sleep_port,
            Value::Null,
            vec![json!({ "name": "envoy.filters.http.fault", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "delay": { "fixed_delay": "0.001s", "percentage": { "numerator": 0 } },
                "delay_percent_runtime": format!("{name}.response_delay_percent"),
                "delay_duration_runtime": format!("{name}.response_delay_ms")
            } })],
        );
        EtcdFaults {
            name: name.to_string(),
            port,
            sleep_port,
            clusters: clusters.iter().map(item).collect::<Vec<_>>().join("\n"),
            listeners: [faults_listener, sleep_listener].iter().map(item).collect::<Vec<_>>().join("\n"),
        }
    }

    /// Sets `clusters`, `listeners` and `top_level` ([`ADMIN_RUNTIME`]) of `opts`.
    pub fn apply<'a>(&'a self, opts: &mut Options<'a>) {
        opts.clusters = Some(&self.clusters);
        opts.listeners = Some(&self.listeners);
        opts.top_level = Some(ADMIN_RUNTIME);
    }

    /// Replaces the faults of a running Envoy (started with [`EtcdFaults::apply`]); applies to
    /// requests that arrive afterwards.
    pub fn set(&self, envoy: &Envoy, faults: Faults) {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
        let pct = |on: bool| if on { 100 } else { 0 };
        let n = &self.name;
        let query = [
            format!("{n}.request_delay_percent={}", pct(faults.request_delay.is_some())),
            format!("{n}.request_delay_ms={}", ms(faults.request_delay)),
            format!("{n}.response_delay_percent={}", pct(faults.response_delay.is_some())),
            format!("{n}.response_delay_ms={}", ms(faults.response_delay)),
            format!("{n}.abort_percent={}", pct(faults.abort.is_some())),
            format!("{n}.abort_status={}", faults.abort.unwrap_or(503)),
        ]
        .join("&");
        let answer = envoy.admin_post(&format!("/runtime_modify?{query}"));
        assert_eq!(
            answer.as_deref().map(str::trim),
            Some("OK"),
            "runtime_modify {query} (Options.top_level = ADMIN_RUNTIME?)"
        );
    }
}

/// A plain HTTP listener on 127.0.0.1:`port` whose one route goes to `route` (a route action), or
/// answers 200 itself when `route` is null, after `filters` and the router.
fn listener_json(name: &str, port: u16, route: Value, mut filters: Vec<Value>) -> Value {
    filters.push(json!({ "name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }));
    let mut entry = json!({ "match": { "prefix": "/" } });
    if route.is_null() {
        entry["direct_response"] = json!({ "status": 200 });
    } else {
        entry["route"] = route;
    }
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": { "virtual_hosts": [{ "name": name, "domains": ["*"], "routes": [entry] }] },
                "http_filters": filters
            }
        }] }]
    })
}
