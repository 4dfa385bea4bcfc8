//! etcd v3 as the dedup store every replica shares (`dedup.store`, docs/etcd-store.md): the
//! transactions meshguard sends to etcd's JSON gateway, the answers it reads, the values it keeps
//! under each key, the lease windows and the table of leases the workers of one proxy share.
//! Pure: `remote` sends and receives these bytes through the [`crate::filter::Host`].
//!
//! * A claim is one transaction: create the key if absent (value: in flight with the delivery's
//!   nonce, on an in-flight lease), else read it in the same round trip.
//! * Completion and release are transactions conditioned on the claim's value: a delivery settles
//!   only its own claim, never a later delivery's.
//! * Keys live on leases shared by every key of an expiry window: a key claimed (or completed)
//!   in window `w` of size `W` lives until `(w + 1) W + ttl`, so at least `ttl` and at most
//!   `ttl + W`. Leases are granted ahead, one per window and lifetime, never per request.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value as Json;

pub const TXN_PATH: &str = "/v3/kv/txn";
pub const GRANT_PATH: &str = "/v3/lease/grant";

const SECOND: u64 = 1_000_000_000;

/// The etcd key of store id `id`: `<prefix><scope>/<32 hex digits>`; `base` is `<prefix><scope>/`.
pub fn key(base: &str, id: u128) -> String {
    format!("{base}{id:032x}")
}

/// The key space of one service: the prefix, then the workload (Istio's node metadata
/// `NAMESPACE/WORKLOAD_NAME`, else Envoy's `--service-cluster`), so that two services sharing a
/// prefix never answer each other's events as duplicates. Replicas of one workload share it.
pub fn base(prefix: &str, workload: &str) -> String {
    let mut base = String::with_capacity(prefix.len() + workload.len() + 1);
    base.push_str(prefix);
    base.push_str(if workload.is_empty() { "-" } else { workload });
    base.push('/');
    base
}

/// What a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// A delivery is being processed; only the holder of `nonce` completes or releases it.
    InFlight { nonce: u64, fingerprint: u64 },
    /// Processed with `status`; a duplicate until `expires` (ms since the epoch).
    Completed { status: u16, fingerprint: u64, expires_ms: u64 },
}

impl Value {
    /// `mg1 F <nonce> <fingerprint>` or `mg1 C <status> <fingerprint> <expires ms>` (hex for the
    /// nonce and the fingerprint): readable with `etcdctl get`.
    pub fn encode(&self) -> String {
        match self {
            Value::InFlight { nonce, fingerprint } => format!("mg1 F {nonce:016x} {fingerprint:016x}"),
            Value::Completed { status, fingerprint, expires_ms } => {
                format!("mg1 C {status} {fingerprint:016x} {expires_ms}")
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Value> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        if parts.next()? != "mg1" {
            return None;
        }
        let value = match parts.next()? {
            "F" => Value::InFlight {
                nonce: u64::from_str_radix(parts.next()?, 16).ok()?,
                fingerprint: u64::from_str_radix(parts.next()?, 16).ok()?,
            },
            "C" => Value::Completed {
                status: parts.next()?.parse().ok()?,
                fingerprint: u64::from_str_radix(parts.next()?, 16).ok()?,
                expires_ms: parts.next()?.parse().ok()?,
            },
            _ => return None,
        };
        parts.next().is_none().then_some(value)
    }

    pub fn fingerprint(&self) -> u64 {
        match *self {
            Value::InFlight { fingerprint, .. } | Value::Completed { fingerprint, .. } => fingerprint,
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

// The bodies are written out: base64 and decimal need no JSON escaping.

/// The claim: create `key` with `value` on `lease` if absent, else read it.
pub fn claim_body(key: &str, value: &Value, lease: i64) -> Vec<u8> {
    let (key, value) = (b64(key.as_bytes()), b64(value.encode().as_bytes()));
    format!(
        "{{\"compare\":[{{\"key\":\"{key}\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"createRevision\":\"0\"}}],\
         \"success\":[{{\"requestPut\":{{\"key\":\"{key}\",\"value\":\"{value}\",\"lease\":\"{lease}\"}}}}],\
         \"failure\":[{{\"requestRange\":{{\"key\":\"{key}\"}}}}]}}"
    )
    .into_bytes()
}

/// `key` still holds the claim's value `held`.
fn holds(key: &str, held: &Value) -> String {
    format!(
        "\"compare\":[{{\"key\":\"{key}\",\"target\":\"VALUE\",\"result\":\"EQUAL\",\"value\":\"{}\"}}]",
        b64(held.encode().as_bytes())
    )
}

/// Completion: `key` moves from the claim's value `held` to `done` on the `ttl` lease `lease`,
/// only while it still holds `held`.
pub fn complete_body(key: &str, held: &Value, done: &Value, lease: i64) -> Vec<u8> {
    let key = b64(key.as_bytes());
    let done = b64(done.encode().as_bytes());
    format!(
        "{{{},\"success\":[{{\"requestPut\":{{\"key\":\"{key}\",\"value\":\"{done}\",\"lease\":\"{lease}\"}}}}]}}",
        holds(&key, held)
    )
    .into_bytes()
}

/// Release: `key` is deleted only while it still holds the claim's value `held`.
pub fn release_body(key: &str, held: &Value) -> Vec<u8> {
    let key = b64(key.as_bytes());
    format!("{{{},\"success\":[{{\"requestDeleteRange\":{{\"key\":\"{key}\"}}}}]}}", holds(&key, held)).into_bytes()
}

/// A lease of `ttl_secs` seconds.
pub fn grant_body(ttl_secs: u64) -> Vec<u8> {
    format!("{{\"TTL\":{ttl_secs}}}").into_bytes()
}

/// What etcd answered to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The key was absent and is now this delivery's.
    Claimed,
    /// The key exists with this value.
    Found(Value),
    /// The lease the claim named is gone (expired or revoked): no key was written.
    LeaseGone,
    /// Anything else: not an answer to decide on.
    Failed(String),
}

/// An answer of the JSON gateway: its HTTP status and body.
fn json(status: Option<u32>, body: &[u8]) -> Result<Json, String> {
    let parsed: Option<Json> = serde_json::from_slice(body).ok();
    match status {
        Some(200) => parsed.ok_or_else(|| "etcd answered 200 without JSON".to_string()),
        Some(s) => {
            let message = parsed
                .as_ref()
                .and_then(|j| j.get("message").or_else(|| j.get("error")))
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_string();
            Err(format!("etcd answered {s} {message}").trim_end().to_string())
        }
        None => Err("no answer from etcd (connection failed or reset)".to_string()),
    }
}

/// etcd's answer to a put naming a lease it does not have: 404 with gRPC code 5 (NOT_FOUND),
/// the only NOT_FOUND a transaction can answer.
pub fn lease_gone(status: Option<u32>, body: &[u8]) -> bool {
    status == Some(404)
        && serde_json::from_slice::<Json>(body).ok().and_then(|j| j.get("code").and_then(Json::as_u64)) == Some(5)
}

/// Reads the answer to [`claim_body`]. `succeeded` is omitted when false (proto3 JSON); a
/// missing key in the range answer (possible only if it expired between compare and read, which
/// one transaction excludes) is a failure, not a claim.
pub fn claim_answer(status: Option<u32>, body: &[u8]) -> ClaimAnswer {
    if lease_gone(status, body) {
        return ClaimAnswer::LeaseGone;
    }
    let j = match json(status, body) {
        Ok(j) => j,
        Err(e) => return ClaimAnswer::Failed(e),
    };
    if j.get("succeeded").and_then(Json::as_bool) == Some(true) {
        return ClaimAnswer::Claimed;
    }
    let value = j
        .get("responses")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get("response_range").or_else(|| r.get("responseRange")))
        .and_then(|r| r.get("kvs"))
        .and_then(|kvs| kvs.get(0))
        .and_then(|kv| kv.get("value"))
        .and_then(Json::as_str);
    let Some(value) = value else {
        return ClaimAnswer::Failed("etcd answered the claim without the key's value".to_string());
    };
    match B64.decode(value).ok().as_deref().and_then(Value::decode) {
        Some(v) => ClaimAnswer::Found(v),
        None => ClaimAnswer::Failed("the key holds a value meshguard did not write".to_string()),
    }
}

/// Reads the answer to [`complete_body`] or [`release_body`]: `Ok(true)` when the key still held
/// the claim and was changed, `Ok(false)` when it no longer did (expired, or another delivery's).
pub fn write_answer(status: Option<u32>, body: &[u8]) -> Result<bool, String> {
    if lease_gone(status, body) {
        return Err("the lease is gone".to_string());
    }
    let j = json(status, body)?;
    Ok(j.get("succeeded").and_then(Json::as_bool) == Some(true))
}

/// Reads the answer to [`grant_body`]: the lease's id.
pub fn grant_answer(status: Option<u32>, body: &[u8]) -> Result<i64, String> {
    let j = json(status, body)?;
    let id = j.get("ID").and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_i64()));
    id.filter(|&id| id != 0).ok_or_else(|| "etcd granted no lease id".to_string())
}

/// The expiry windows of keys that live `ttl`: `W = ttl / 8`, at least 1 s (etcd's leases count
/// whole seconds) and at most 10 minutes. Keys outlive their `ttl` by at most one window.
pub fn window_size(ttl: u64) -> u64 {
    (ttl / 8).clamp(SECOND, 600 * SECOND)
}

pub fn window_of(now: u64, ttl: u64) -> u64 {
    now / window_size(ttl)
}

/// The TTL (whole seconds, rounded up) of a lease granted at `now` for keys written in window
/// `window`: it ends at `(window + 1) W + ttl`.
pub fn lease_secs(window: u64, ttl: u64, now: u64) -> u64 {
    let end = (window + 1).saturating_mul(window_size(ttl)).saturating_add(ttl);
    end.saturating_sub(now).div_ceil(SECOND).max(1)
}

/// One lease of the table: the lifetime it serves, its window, and its id (0 while a worker is
/// granting it, since `at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ttl: u64,
    pub window: u64,
    pub id: i64,
    pub at: u64,
}

/// The leases of one etcd store, shared by the workers of a proxy (shared data, changed by
/// compare-and-swap): the worker that marks a window's lease as being granted grants it; the
/// others read the id once it is there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTable {
    pub leases: Vec<Lease>,
}

impl LeaseTable {
    pub fn lease(&self, ttl: u64, window: u64) -> Option<i64> {
        self.leases.iter().find(|l| l.ttl == ttl && l.window == window && l.id != 0).map(|l| l.id)
    }

    /// Marks the lease of (`ttl`, `window`) as being granted by the caller, unless it exists or
    /// another grant of it started less than `stale` ago (a grant whose answer never came — its
    /// VM went away — is given to another worker). True: the caller grants it. Drops leases of
    /// past windows.
    pub fn start_grant(&mut self, ttl: u64, window: u64, now: u64, stale: u64) -> bool {
        self.leases.retain(|l| (l.window + 2).saturating_mul(window_size(l.ttl)) > now);
        match self.leases.iter_mut().find(|l| l.ttl == ttl && l.window == window) {
            Some(l) if l.id != 0 || now < l.at.saturating_add(stale) => false,
            Some(l) => {
                l.at = now;
                true
            }
            None => {
                self.leases.push(Lease { ttl, window, id: 0, at: now });
                true
            }
        }
    }

    pub fn granted(&mut self, ttl: u64, window: u64, id: i64) {
        match self.leases.iter_mut().find(|l| l.ttl == ttl && l.window == window) {
            Some(l) => l.id = id,
            None => self.leases.push(Lease { ttl, window, id, at: 0 }),
        }
    }

    /// A grant that failed: the window is free to grant again.
    pub fn abandon(&mut self, ttl: u64, window: u64) {
        self.leases.retain(|l| !(l.ttl == ttl && l.window == window && l.id == 0));
    }

    /// The lease `id` is gone in etcd: the window's lease is granted again.
    pub fn forget(&mut self, id: i64) {
        self.leases.retain(|l| l.id != id);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.leases.len() * 32);
        out.push(1);
        for l in &self.leases {
            out.extend_from_slice(&l.ttl.to_le_bytes());
            out.extend_from_slice(&l.window.to_le_bytes());
            out.extend_from_slice(&l.id.to_le_bytes());
            out.extend_from_slice(&l.at.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<LeaseTable> {
        let (&version, rest) = bytes.split_first()?;
        if version != 1 || rest.len() % 32 != 0 {
            return None;
        }
        let u64_at =
            |c: &[u8], at: usize| -> Option<u64> { Some(u64::from_le_bytes(c.get(at..at + 8)?.try_into().ok()?)) };
        let mut leases = Vec::with_capacity(rest.len() / 32);
        for c in rest.chunks_exact(32) {
            leases.push(Lease {
                ttl: u64_at(c, 0)?,
                window: u64_at(c, 8)?,
                id: u64_at(c, 16)? as i64,
                at: u64_at(c, 24)?,
            });
        }
        Some(LeaseTable { leases })
    }
}

/// After a failure, a worker does not ask the store again for this long: an outage costs one
/// `timeout` per worker per cool-off, not one per request.
pub const COOL_OFF: u64 = 5 * SECOND;

/// A worker's view of the store's health: a small circuit breaker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Since when the store is failing, and when it may be asked again.
    down: Option<(u64, u64)>,
}

impl Health {
    /// The store may be asked at `now`: up, or down past its cool-off (one request tries).
    pub fn usable(&self, now: u64) -> bool {
        self.down.is_none_or(|(_, retry)| now >= retry)
    }

    /// A failure at `now`. True when the store was up until now.
    pub fn failed(&mut self, now: u64) -> bool {
        let was_up = self.down.is_none();
        let since = self.down.map_or(now, |(since, _)| since);
        self.down = Some((since, now.saturating_add(COOL_OFF)));
        was_up
    }

    /// An answer. True when the store was down until now.
    pub fn answered(&mut self) -> bool {
        self.down.take().is_some()
    }
}

/// A completion or a release a worker has to send: the settling of a delivery's claim (sent by
/// the root's tick, whose answers always come back, so that a failed one is sent again), or
/// the release of a claim that may have landed while its answer was lost (timeout, error,
/// caller gone). Sent once `due`; dropped after `until`, when the claim's in-flight lease has
/// ended anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub held: Value,
    /// `Some`: complete the claim with this value, on a lease of keys that live `ttl`.
    pub done: Option<(Value, u64)>,
    pub due: u64,
    pub until: u64,
    /// Failed attempts so far.
    pub attempts: u8,
}

/// Writes a worker keeps at most; past that the oldest are left to their leases.
pub const MAX_WRITES: usize = 4096;

pub fn enqueue(writes: &mut Vec<Write>, write: Write) {
    if writes.len() >= MAX_WRITES {
        writes.remove(0);
    }
    writes.push(write);
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn values_round_trip_and_foreign_values_are_refused() {
        for v in [
            Value::InFlight { nonce: 0xdead_beef, fingerprint: 7 },
            Value::Completed { status: 201, fingerprint: u64::MAX, expires_ms: 1_796_000_000_000 },
        ] {
            assert_eq!(Value::decode(v.encode().as_bytes()), Some(v));
        }
        assert_eq!(Value::InFlight { nonce: 1, fingerprint: 2 }.encode(), "mg1 F 0000000000000001 0000000000000002");
        for bad in ["", "mg1", "mg2 F 1 2", "mg1 F 1", "mg1 F 1 2 3", "mg1 C x 2 3", "mg1 X 1 2", "mg1 F zz 2"] {
            assert_eq!(Value::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    /// Answers as etcd 3.4.23's JSON gateway gave them (checked by hand, docs/etcd-store.md).
    #[test]
    fn answers_of_the_json_gateway_are_read() {
        let claimed = br#"{"header":{"cluster_id":"3","member_id":"3","revision":"2","raft_term":"2"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"2"}}}]}"#;
        assert_eq!(claim_answer(Some(200), claimed), ClaimAnswer::Claimed);
        let value = B64.encode("mg1 C 201 0000000000000000 1796023268404");
        let found = format!(
            r#"{{"header":{{"revision":"2"}},"responses":[{{"response_range":{{"header":{{"revision":"2"}},"kvs":[{{"key":"L21nL2E=","create_revision":"2","mod_revision":"2","version":"1","value":"{value}"}}],"count":"1"}}}}]}}"#
        );
        assert_eq!(
            claim_answer(Some(200), found.as_bytes()),
            ClaimAnswer::Found(Value::Completed { status: 201, fingerprint: 0, expires_ms: 1_796_023_268_404 })
        );
        let gone = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert_eq!(claim_answer(Some(404), gone), ClaimAnswer::LeaseGone);
        assert!(matches!(claim_answer(None, b""), ClaimAnswer::Failed(_)));
        assert!(matches!(claim_answer(Some(503), b"upstream connect error"), ClaimAnswer::Failed(_)));
        assert!(matches!(claim_answer(Some(200), b"{}"), ClaimAnswer::Failed(_)), "no value, no claim");
        let foreign =
            format!(r#"{{"responses":[{{"response_range":{{"kvs":[{{"value":"{}"}}]}}}}]}}"#, B64.encode("x"));
        assert!(matches!(claim_answer(Some(200), foreign.as_bytes()), ClaimAnswer::Failed(_)));
        // `succeeded` is omitted when false.
        assert_eq!(write_answer(Some(200), br#"{"header":{"revision":"3"}}"#), Ok(false));
        assert_eq!(write_answer(Some(200), br#"{"header":{},"succeeded":true}"#), Ok(true));
        assert!(write_answer(Some(500), b"").is_err());
        assert_eq!(
            grant_answer(Some(200), br#"{"header":{},"ID":"2324035714436324869","TTL":"5"}"#),
            Ok(2324035714436324869)
        );
        assert!(grant_answer(Some(200), br#"{"ID":"0"}"#).is_err());
    }

    #[test]
    fn the_claim_creates_only_an_absent_key_and_the_writes_are_conditioned_on_the_claim() {
        let held = Value::InFlight { nonce: 9, fingerprint: 1 };
        let claim: Json = serde_json::from_slice(&claim_body("/p/w/ab", &held, 42)).unwrap();
        assert_eq!(claim["compare"][0]["target"], "CREATE");
        assert_eq!(claim["compare"][0]["createRevision"], "0");
        assert_eq!(claim["compare"][0]["result"], "EQUAL");
        assert_eq!(claim["success"][0]["requestPut"]["lease"], "42");
        assert_eq!(claim["failure"][0]["requestRange"]["key"], B64.encode("/p/w/ab"));
        let done = Value::Completed { status: 200, fingerprint: 1, expires_ms: 5 };
        for body in [complete_body("/p/w/ab", &held, &done, 43), release_body("/p/w/ab", &held)] {
            let j: Json = serde_json::from_slice(&body).unwrap();
            assert_eq!(j["compare"][0]["target"], "VALUE");
            assert_eq!(j["compare"][0]["result"], "EQUAL");
            assert_eq!(j["compare"][0]["value"], B64.encode(held.encode()));
            assert!(j.get("failure").is_none());
        }
        assert_eq!(key("/meshguard/ns/app/", 255), "/meshguard/ns/app/000000000000000000000000000000ff");
        assert_eq!(base("/meshguard/", ""), "/meshguard/-/");
    }

    #[test]
    fn a_key_lives_at_least_its_ttl_and_at_most_one_window_more() {
        for ttl in [SECOND, 30 * SECOND, 600 * SECOND, 86_400 * SECOND] {
            let w = window_size(ttl);
            assert!((SECOND..=600 * SECOND).contains(&w));
            for now in [1_800_000_000 * SECOND, 1_800_000_000 * SECOND + w - 1, 1_800_000_000 * SECOND + w / 2] {
                let window = window_of(now, ttl);
                // Granted at the start of the previous window (ahead) or now.
                for granted in [(window - 1) * w, now] {
                    let ends = granted + lease_secs(window, ttl, granted) * SECOND;
                    assert!(ends >= now + ttl, "ttl {ttl}: a key written at {now} must live its ttl");
                    assert!(ends <= now + ttl + w + SECOND, "ttl {ttl}: at most a window more");
                }
            }
        }
    }

    #[test]
    fn one_grant_per_window_until_it_goes_stale() {
        let mut t = LeaseTable::default();
        let (ttl, now) = (30 * SECOND, 1_000 * SECOND);
        let w = window_of(now, ttl);
        assert!(t.start_grant(ttl, w, now, SECOND));
        assert!(!t.start_grant(ttl, w, now + 1, SECOND), "another worker is granting it");
        assert!(t.start_grant(ttl, w, now + 2 * SECOND, SECOND), "stale: taken over");
        t.granted(ttl, w, 99);
        assert_eq!(t.lease(ttl, w), Some(99));
        assert!(!t.start_grant(ttl, w, now + 3 * SECOND, SECOND), "granted");
        assert_eq!(LeaseTable::decode(&t.encode()), Some(t.clone()));
        t.forget(99);
        assert_eq!(t.lease(ttl, w), None);
        t.granted(ttl, w, 100);
        let later = now + 100 * SECOND;
        assert!(t.start_grant(ttl, window_of(later, ttl), later, SECOND));
        assert_eq!(t.leases.len(), 1, "past windows are dropped");
    }

    #[test]
    fn health_cools_off_after_a_failure() {
        let mut h = Health::default();
        assert!(h.usable(0));
        assert!(h.failed(10));
        assert!(!h.usable(10 + COOL_OFF - 1));
        assert!(h.usable(10 + COOL_OFF));
        assert!(!h.failed(10 + COOL_OFF), "already down");
        assert!(h.answered());
        assert!(!h.answered());
    }
}
