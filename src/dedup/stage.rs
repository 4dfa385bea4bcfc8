//! Deduplication's part of one request: find and check the event key at the request headers (or,
//! with a body fingerprint, on the body chunk that completes it), and settle the key the request
//! holds when its outcome is known — completed on a success, released otherwise, so that a
//! redelivery of a failed event is processed again.

use super::body_key::{Found, Pointer, Scan};
use super::etcd::{self, ClaimAnswer, Value};
use super::remote::{self, EtcdStore, StoreOutcome};
use super::shared::{self, Held};
use super::store::{BucketKeys, Check};
use super::{event_key, fingerprint, key_id, DedupOutcome, Key, Layout, MAX_BODY_FINGERPRINT};
use crate::breaker::Ending;
use crate::config::{Dedup, DedupMode, DuplicateStatus, Fingerprint, OnMissing, OnStoreError, Scope};
use crate::filter::{state, Callout, Effects, Host, HostError};
use crate::headers::HeaderMap;
use crate::ids::Entropy;
use crate::metrics::{DedupMetrics, StoreMetrics};
use crate::reply::Refusal;

/// One rule's dedup settings and the store they use.
pub struct DedupRule<'a> {
    pub name: &'a str,
    pub config: &'a Dedup,
    pub layout: Layout,
    pub keys: &'a BucketKeys,
    pub metrics: Option<&'a DedupMetrics>,
    pub store: &'a StoreMetrics,
    /// The shared etcd store behind the proxy's own (`store: {"type": "etcd"}`).
    pub etcd: Option<&'a EtcdStore>,
}

#[derive(Debug, Default)]
pub struct DedupStage {
    /// The request's event id (as sent, or generated).
    event_id: Option<String>,
    outcome: Option<DedupOutcome>,
    /// The key this request holds in flight, and its bucket.
    held: Option<(Held, u32)>,
    /// Waiting for the body to fingerprint.
    pending: Option<Pending>,
    /// The key in the shared etcd store.
    remote: Remote,
    /// A call to the etcd store for the pipeline to send.
    call: Option<Callout>,
}

/// The request's key in the shared etcd store.
#[derive(Debug, Default)]
enum Remote {
    #[default]
    None,
    /// The claim is out (the request paused) since `sent`, on lease `lease`; `token` once sent;
    /// `retries`: times it was sent again after a fast failure.
    Claiming { key: String, held: Value, lease: i64, sent: u64, token: Option<u32>, retries: u8 },
    /// The claim landed: the call's outcome completes or releases it.
    Holding { key: String, held: Value },
}

/// A request whose check waits for its body: for its key (structured CloudEvent, `body_key`),
/// its fingerprint (`fingerprint: "body"`), or both.
#[derive(Debug)]
struct Pending {
    /// The key, when a header gave it.
    key: Option<(Vec<u8>, String)>,
    /// Following the body for the key.
    scan: Option<(Scan, BodySource)>,
    nonce: u32,
    method: Vec<u8>,
    path: Vec<u8>,
    /// The body's first bytes (at most 64 KiB), kept for a body fingerprint.
    body: Option<Vec<u8>>,
    /// Body bytes read so far (at most 64 KiB), and all the body bytes seen, with the request's
    /// `content-length`, if any: the body is complete (and the key decided) on the chunk that
    /// reaches it, before it is forwarded.
    read: usize,
    seen: u64,
    content_length: Option<u64>,
}

/// Where in a JSON body the key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodySource {
    /// A structured-mode CloudEvent: `source` and `id`.
    CloudEvent,
    /// The rule's `body_key`.
    Pointer,
}

/// A refusal only in `enforce`: `metrics_only` counts every outcome and answers nothing.
fn enforced(rule: &DedupRule, refusal: Option<Refusal>) -> Option<Refusal> {
    refusal.filter(|_| rule.config.mode == DedupMode::Enforce)
}

/// What the request's content type says about keys in its body.
fn body_source(cfg: &Dedup, content_type: &[u8]) -> Option<BodySource> {
    let media = content_type.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    let is = |t: &[u8]| media.eq_ignore_ascii_case(t);
    if is(b"application/cloudevents+json") && cfg.headers.iter().any(|h| h == "ce-id") {
        return Some(BodySource::CloudEvent);
    }
    let json = is(b"application/json")
        || media.len() > 5 && media.get(media.len() - 5..).is_some_and(|s| s.eq_ignore_ascii_case(b"+json"));
    (json && cfg.body_key.is_some()).then_some(BodySource::Pointer)
}

fn is_batch(content_type: &[u8]) -> bool {
    let media = content_type.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    media.eq_ignore_ascii_case(b"application/cloudevents-batch+json")
}

/// The key a body showed: a CloudEvent's `source` and `id`, or the `body_key` member.
fn body_event_key(found: Vec<Found>, source: BodySource) -> Key {
    let too_long = || Key::Invalid { header: "body".into(), reason: "longer than 255 bytes" };
    match (source, found.as_slice()) {
        (BodySource::CloudEvent, [source @ (Found::Value(_) | Found::Missing), Found::Value(id)]) => {
            // No `source` keys like a binary-mode event without `ce-source`: an empty source.
            let source = match source {
                Found::Value(source) => source.as_slice(),
                _ => &[],
            };
            super::cloudevent(source, id).unwrap_or_else(|reason| Key::Invalid { header: "id".into(), reason })
        }
        (BodySource::CloudEvent, [_, Found::TooLong] | [Found::TooLong, _]) => too_long(),
        (BodySource::Pointer, [Found::Value(value)]) => super::body_key(value),
        (BodySource::Pointer, [Found::TooLong]) => too_long(),
        _ => Key::Missing,
    }
}

impl DedupStage {
    pub fn event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    pub fn outcome(&self) -> Option<DedupOutcome> {
        self.outcome
    }

    /// The request holds its key in flight: its outcome must settle it.
    pub fn holds_key(&self) -> bool {
        self.held.is_some()
    }

    /// The check waits for the request body.
    pub fn awaits_body(&self) -> bool {
        self.pending.is_some()
    }

    /// The upstream (or Envoy) answered before the body decided the key: the request was never
    /// checked, and nothing is claimed.
    pub fn on_early_answer(&mut self) {
        self.pending = None;
    }

    fn record(&mut self, rule: &DedupRule, outcome: DedupOutcome, fx: &mut Effects) {
        self.outcome = Some(outcome);
        fx.count(rule.metrics.and_then(|m| m.outcome(outcome)));
        fx.state(state::DEDUP, outcome.as_str().as_bytes());
    }

    /// Finds the request's event key and checks it, unless the body must be read first (for the
    /// key or the fingerprint). `Some` when meshguard answers the request itself; never in
    /// `metrics_only`, where every outcome is counted but every request goes to the service.
    pub fn on_request_headers(
        &mut self,
        rule: &DedupRule,
        headers: &HeaderMap,
        host: &mut impl Host,
        entropy: &mut impl Entropy,
        end_of_stream: bool,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let refusal = self.request_headers(rule, headers, host, entropy, end_of_stream, fx);
        enforced(rule, refusal)
    }

    /// A chunk of the request body while the check waits for it: see [`Self::request_body`].
    pub fn on_request_body(
        &mut self,
        rule: &DedupRule,
        host: &mut impl Host,
        size: usize,
        end_of_stream: bool,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let refusal = self.request_body(rule, host, size, end_of_stream, fx);
        enforced(rule, refusal)
    }

    fn request_headers(
        &mut self,
        rule: &DedupRule,
        headers: &HeaderMap,
        host: &mut impl Host,
        entropy: &mut impl Entropy,
        end_of_stream: bool,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let cfg = rule.config;
        let method = headers.get(":method").unwrap_or_default();
        if !cfg.methods.iter().any(|m| m.as_bytes() == method) {
            return None;
        }
        let content_type = headers.get("content-type").unwrap_or_default();
        let content_length = headers.get("content-length").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        let has_body = !end_of_stream && content_length != Some(0);
        let key = match event_key(headers, &cfg.headers) {
            Key::Valid { key, event_id } => Some((key, event_id)),
            Key::Invalid { header, reason } => {
                self.record(rule, DedupOutcome::Invalid, fx);
                return Some(Refusal::InvalidKey { header, reason });
            }
            Key::Missing if is_batch(content_type) => {
                // Several events in one request: no single key to hold.
                self.record(rule, DedupOutcome::Batch, fx);
                return None;
            }
            Key::Missing => None,
        };
        let scan = match (&key, body_source(cfg, content_type)) {
            (None, Some(source)) if has_body => {
                let pointers = match (source, &cfg.body_key) {
                    (BodySource::CloudEvent, _) => {
                        vec![Pointer(vec![b"source".to_vec()]), Pointer(vec![b"id".to_vec()])]
                    }
                    (BodySource::Pointer, Some(pointer)) => vec![pointer.clone()],
                    (BodySource::Pointer, None) => Vec::new(),
                };
                Some((Scan::new(&pointers), source))
            }
            (None, Some(_)) => return self.missing(rule, None, fx),
            (None, None) => {
                // A request that cannot carry a key in its body may get one generated.
                let stamp = match (cfg.on_missing, cfg.headers.first()) {
                    (OnMissing::Generate, Some(header)) => Some((header.as_str(), crate::ids::uuid4(entropy))),
                    _ => None,
                };
                return self.missing(rule, stamp, fx);
            }
            (Some(_), _) => None,
        };
        let nonce = super::nonce(entropy);
        let path = headers.get(":path").unwrap_or_default();
        let body_print = cfg.fingerprint == Fingerprint::Body;
        if scan.is_some() || body_print && has_body {
            // The headers go on (proxy-wasm cannot hold them and still see the body); the body
            // chunk that completes the key's evidence decides.
            if let Some((_, event_id)) = &key {
                fx.state(state::EVENT_ID, event_id.as_bytes());
                self.event_id = Some(event_id.clone());
            }
            self.pending = Some(Pending {
                key,
                scan,
                nonce,
                method: method.to_vec(),
                path: path.to_vec(),
                body: body_print.then(Vec::new),
                read: 0,
                seen: 0,
                content_length,
            });
            return None;
        }
        let (key, event_id) = key?;
        let print = match cfg.fingerprint {
            Fingerprint::None => 0,
            Fingerprint::MethodPath => fingerprint(method, path, None),
            Fingerprint::Body => fingerprint(method, path, Some(&[])),
        };
        self.claim(rule, host, &key, event_id, nonce, print, fx)
    }

    /// No key: `on_missing` decides. `stamp` is the header and the generated id for it, with
    /// `generate`, for a request that cannot carry a key in its body (its headers have not gone
    /// upstream yet).
    fn missing(&mut self, rule: &DedupRule, stamp: Option<(&str, String)>, fx: &mut Effects) -> Option<Refusal> {
        let cfg = rule.config;
        match (cfg.on_missing, stamp) {
            (OnMissing::Reject, _) => {
                self.record(rule, DedupOutcome::Missing, fx);
                Some(Refusal::MissingKey { headers: cfg.headers.clone() })
            }
            (OnMissing::Generate, Some((header, id))) => {
                // Stamped into the first key header, so that Envoy's retries and every consumer
                // see one id per event.
                fx.set_request_header(header, id.as_bytes());
                fx.state(state::EVENT_ID, id.as_bytes());
                self.event_id = Some(id);
                self.record(rule, DedupOutcome::Generated, fx);
                None
            }
            _ => {
                self.record(rule, DedupOutcome::Missing, fx);
                None
            }
        }
    }

    /// A chunk of the request body while the check waits for it. `size` is the chunk (the body is
    /// streamed, not buffered by Envoy): up to its first 64 KiB are read, for the key and the
    /// fingerprint, and the check is decided as soon as they are known: the key's value complete
    /// (without a body fingerprint), or the body complete (end of stream, or `content-length`
    /// bytes), or 64 KiB read. Each chunk before that goes on upstream: holding them (Envoy's
    /// StopIterationAndBuffer) gets a request refused with 413 whenever a burst of body pushes
    /// Envoy's buffer past its limit, and proxy-wasm has no watermark variant. `Some` when the
    /// request is refused: the pipeline drops the deciding chunk and the rest, so the service
    /// never gets it whole.
    fn request_body(
        &mut self,
        rule: &DedupRule,
        host: &mut impl Host,
        size: usize,
        end_of_stream: bool,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let mut pending = self.pending.take()?;
        let wanted = size.min(MAX_BODY_FINGERPRINT - pending.read);
        if wanted > 0 {
            if let Some(chunk) = host.request_body(wanted) {
                let chunk = chunk.get(..wanted).unwrap_or(&chunk);
                pending.read += chunk.len();
                if let Some((scan, _)) = &mut pending.scan {
                    scan.feed(chunk);
                }
                if let Some(body) = &mut pending.body {
                    body.extend_from_slice(chunk);
                }
            }
        }
        pending.seen = pending.seen.saturating_add(size as u64);
        // Forwarding the chunk that completes a content-length body would hand the upstream a
        // complete request: the key is decided on it. Otherwise the request is complete for the
        // upstream only with the end of stream, which is never forwarded before the decision.
        let complete = end_of_stream || pending.content_length.is_some_and(|length| pending.seen >= length);
        let all_read = complete || pending.read >= MAX_BODY_FINGERPRINT;
        let key_known = pending.scan.as_ref().is_none_or(|(scan, _)| scan.done());
        let ready = if pending.body.is_some() { all_read } else { all_read || key_known };
        if !ready {
            self.pending = Some(pending);
            return None;
        }
        let key = match (pending.key.take(), pending.scan.take()) {
            (Some(key), _) => key,
            (None, Some((scan, source))) => match body_event_key(scan.finish(), source) {
                Key::Valid { key, event_id } => (key, event_id),
                Key::Invalid { header, reason } => {
                    self.record(rule, DedupOutcome::Invalid, fx);
                    return Some(Refusal::InvalidKey { header, reason });
                }
                // The headers went upstream already: nothing is stamped.
                Key::Missing => return self.missing(rule, None, fx),
            },
            (None, None) => return None,
        };
        let print = match rule.config.fingerprint {
            Fingerprint::None => 0,
            Fingerprint::MethodPath => fingerprint(&pending.method, &pending.path, None),
            Fingerprint::Body => fingerprint(&pending.method, &pending.path, pending.body.as_deref()),
        };
        self.claim(rule, host, &key.0, key.1, pending.nonce, print, fx)
    }

    /// The key's id in the store (scoped by rule, and by caller with `scope: "caller"`), then the
    /// check.
    #[allow(clippy::too_many_arguments)]
    fn claim(
        &mut self,
        rule: &DedupRule,
        host: &mut impl Host,
        key: &[u8],
        event_id: String,
        nonce: u32,
        print: u64,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        if self.event_id.is_none() {
            fx.state(state::EVENT_ID, event_id.as_bytes());
        }
        self.event_id = Some(event_id);
        let caller = match rule.config.scope {
            Scope::Rule => None,
            // The mTLS peer's identity (a SPIFFE id in Istio); without mTLS, empty.
            Scope::Caller => Some(host.property(&["connection", "uri_san_peer_certificate"]).unwrap_or_default()),
        };
        let id = key_id(rule.name, caller.as_deref(), key);
        self.check(rule, host, id, nonce, print, fx)
    }

    /// Looks the key up in the store, recording it in flight when new.
    fn check(
        &mut self,
        rule: &DedupRule,
        host: &mut impl Host,
        id: u128,
        nonce: u32,
        print: u64,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let cfg = rule.config;
        let bucket = rule.layout.bucket_of(id);
        let key = rule.keys.key(bucket);
        let now = host.now();
        let (check, changes) = match shared::check(host, &rule.layout, &key, id, print, nonce, now, cfg.in_flight_ttl) {
            Ok(r) => r,
            Err(e) => {
                fx.fail(e);
                return None;
            }
        };
        rule.store.count(fx, changes);
        let event_id = self.event_id.clone().unwrap_or_default();
        match check {
            Check::First => {
                self.held = Some((Held { id, nonce }, bucket));
                if let Some(store) = rule.etcd {
                    return self.claim_remote(
                        rule,
                        store,
                        host,
                        id,
                        // The delivery's nonce and the clock's nanoseconds: two replicas
                        // claiming one key never hold the same value (it is what lets a claim
                        // recognise its own landed attempt).
                        Value::InFlight { nonce: u64::from(nonce) << 32 | (now & 0xffff_ffff), fingerprint: print },
                        now,
                        fx,
                    );
                }
                self.record(rule, DedupOutcome::First, fx);
                None
            }
            Check::Duplicate { status: original } => {
                self.record(rule, DedupOutcome::Duplicate, fx);
                let status = match cfg.duplicate_status {
                    DuplicateStatus::Replay => u32::from(original),
                    DuplicateStatus::Fixed(s) => s,
                };
                Some(Refusal::Duplicate { event_id, status, original })
            }
            Check::InFlight => {
                self.record(rule, DedupOutcome::InFlight, fx);
                Some(Refusal::InFlight { event_id })
            }
            Check::Mismatch => {
                self.record(rule, DedupOutcome::Mismatch, fx);
                Some(Refusal::Mismatch { event_id })
            }
        }
    }

    /// The call's outcome settles the key this request holds: completed on a `success_status`
    /// (a gRPC call only on `grpc-status` 0), released otherwise — also when the stream ended
    /// without a response — so that a redelivery is processed again.
    pub fn on_outcome(&mut self, rule: &DedupRule, host: &mut impl Host, end: &Ending, fx: &mut Effects) {
        let Some((held, bucket)) = self.held.take() else {
            return;
        };
        let cfg = rule.config;
        let key = rule.keys.key(bucket);
        let now = host.now();
        let succeeded = match (end.status, end.grpc) {
            (Some(200), true) => end.grpc_status == Some(0),
            (status, _) => status.is_some_and(|s| cfg.success_status.contains(s)),
        };
        match std::mem::take(&mut self.remote) {
            Remote::Holding { key, held } => {
                if let Some(store) = rule.etcd {
                    self.settle_remote(rule, store, key, held, end.status.filter(|_| succeeded), now);
                }
            }
            Remote::Claiming { key, held, sent, .. } => {
                // The stream ended while its claim was out (the caller went away): the claim may
                // land yet. Released once its answer could no longer be on the way.
                if let Some(store) = rule.etcd {
                    let due = sent.saturating_add(store.timeout()).saturating_add(SECOND);
                    store.settle(key, held, None, due, cfg.in_flight_ttl);
                }
            }
            Remote::None => {}
        }
        let result = match end.status {
            Some(s) if succeeded => {
                shared::complete(host, &rule.layout, &key, held, s as u16, now, cfg.ttl).map(|_| ())
            }
            _ => shared::release(host, &rule.layout, &key, held).map(|changes| {
                rule.store.count(fx, changes);
                self.record(rule, DedupOutcome::Released, fx);
            }),
        };
        if let Err(e) = result {
            fx.fail(e);
        }
    }
}

const SECOND: u64 = 1_000_000_000;
/// Times a claim that failed fast is sent again.
const FAST_RETRIES: u8 = 2;

impl DedupStage {
    /// The claim the pipeline sends next.
    pub fn call(&self) -> Option<&Callout> {
        self.call.as_ref()
    }

    /// The call was sent: a claim waits for its answer with `token`.
    pub fn sent(&mut self, token: u32) {
        self.call = None;
        if let Remote::Claiming { token: t @ None, .. } = &mut self.remote {
            *t = Some(token);
        }
    }

    /// The request is paused until its claim is answered.
    pub fn claiming(&self) -> bool {
        matches!(self.remote, Remote::Claiming { .. })
    }

    /// `token` is the answer to this request's claim.
    pub fn is_claim(&self, token: u32) -> bool {
        matches!(self.remote, Remote::Claiming { token: Some(t), .. } if t == token)
    }

    /// Asks the shared store for the key this request now holds locally: the claim goes out and
    /// the request waits, unless the store is cooling off after a failure or has no lease yet
    /// (then `on_error` decides at once).
    #[allow(clippy::too_many_arguments)]
    fn claim_remote(
        &mut self,
        rule: &DedupRule,
        store: &EtcdStore,
        host: &mut impl Host,
        id: u128,
        held: Value,
        now: u64,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let lease = if store.usable(now) { store.lease(host, rule.config.in_flight_ttl, now) } else { None };
        let Some(lease) = lease else {
            fx.count(store.metrics.outcome(StoreOutcome::Skipped));
            return self.store_unavailable(rule, store, host, fx);
        };
        let key = store.key(id);
        self.call = Some(store.call(etcd::TXN_PATH, etcd::claim_body(&key, &held, lease)));
        self.remote = Remote::Claiming { key, held, lease, sent: now, token: None, retries: 0 };
        None
    }

    /// The claim could not be sent.
    pub fn on_unsent(
        &mut self,
        rule: &DedupRule,
        host: &mut impl Host,
        error: HostError,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        self.call = None;
        let Remote::Claiming { .. } = std::mem::take(&mut self.remote) else {
            return None;
        };
        let store = rule.etcd?;
        let now = host.now();
        store.failed(host, now, error.0);
        fx.count(store.metrics.outcome(StoreOutcome::Error));
        let refusal = self.store_unavailable(rule, store, host, fx);
        enforced(rule, refusal)
    }

    /// The store's answer to this request's claim. `Some` when meshguard answers the request
    /// itself; otherwise the request goes on.
    pub fn on_claim_answer(
        &mut self,
        rule: &DedupRule,
        host: &mut impl Host,
        status: Option<u32>,
        body: &[u8],
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let refusal = self.claim_answer(rule, host, status, body, fx);
        enforced(rule, refusal)
    }

    fn claim_answer(
        &mut self,
        rule: &DedupRule,
        host: &mut impl Host,
        status: Option<u32>,
        body: &[u8],
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let Remote::Claiming { key, held, lease, sent, retries, .. } = std::mem::take(&mut self.remote) else {
            return None;
        };
        let store = rule.etcd?;
        let cfg = rule.config;
        let now = host.now();
        let took = now.saturating_sub(sent);
        fx.record(store.metrics.duration_ms, took / 1_000_000);
        let event_id = self.event_id.clone().unwrap_or_default();
        let found = match etcd::claim_answer(status, body) {
            ClaimAnswer::Claimed => {
                store.answered(host);
                fx.count(store.metrics.outcome(StoreOutcome::Claimed));
                self.remote = Remote::Holding { key, held };
                self.record(rule, DedupOutcome::First, fx);
                return None;
            }
            // Our own claim: an earlier attempt landed though its answer was lost.
            ClaimAnswer::Found(found) if found == held => {
                store.answered(host);
                fx.count(store.metrics.outcome(StoreOutcome::Claimed));
                self.remote = Remote::Holding { key, held };
                self.record(rule, DedupOutcome::First, fx);
                return None;
            }
            ClaimAnswer::Found(found) => found,
            ClaimAnswer::Failed(_) if retries < FAST_RETRIES && took < store.timeout() => {
                // A fast failure (a member gone: refused, reset) is sent again, in what is left
                // of `timeout`: Envoy's load balancer picks another member (twice at most: the
                // tick's calls take turns on the members too). Safe if an attempt landed: the
                // next one finds this claim's own value.
                let left = store.timeout() - took;
                let mut call = store.call(etcd::TXN_PATH, etcd::claim_body(&key, &held, lease));
                call.timeout_ms = (left / 1_000_000).max(1) as u32;
                self.call = Some(call);
                self.remote = Remote::Claiming { key, held, lease, sent, token: None, retries: retries + 1 };
                return None;
            }
            ClaimAnswer::LeaseGone => {
                // Nothing was written; the store itself is fine.
                store.lease_gone(host, lease);
                fx.count(store.metrics.outcome(StoreOutcome::Error));
                return self.store_unavailable(rule, store, host, fx);
            }
            ClaimAnswer::Failed(why) => {
                // Envoy ends a call at `timeout` with an error of its own.
                let timed_out = took.saturating_add(1_000_000) >= store.timeout();
                let outcome = if timed_out { StoreOutcome::Timeout } else { StoreOutcome::Error };
                fx.count(store.metrics.outcome(outcome));
                let why = if timed_out { format!("no answer within {} ms", store.timeout() / 1_000_000) } else { why };
                store.failed(host, now, &why);
                // The claim may have landed: released when the store answers again.
                store.settle(key, held, None, now, cfg.in_flight_ttl);
                return self.store_unavailable(rule, store, host, fx);
            }
        };
        store.answered(host);
        fx.count(store.metrics.outcome(match found {
            Value::Completed { .. } => StoreOutcome::Duplicate,
            Value::InFlight { .. } => StoreOutcome::InFlight,
        }));
        if found.fingerprint() != held.fingerprint() {
            self.release_local(rule, host, fx);
            self.record(rule, DedupOutcome::Mismatch, fx);
            return Some(Refusal::Mismatch { event_id });
        }
        match found {
            Value::Completed { status: original, expires_ms, .. } => {
                // The proxy's store learns it: the next delivery is answered here.
                if let Some((held, bucket)) = self.held.take() {
                    let left = expires_ms.saturating_mul(1_000_000).saturating_sub(now).max(SECOND);
                    let key = rule.keys.key(bucket);
                    if let Err(e) = shared::complete(host, &rule.layout, &key, held, original, now, left) {
                        fx.fail(e);
                    }
                }
                self.record(rule, DedupOutcome::Duplicate, fx);
                let status = match cfg.duplicate_status {
                    DuplicateStatus::Replay => u32::from(original),
                    DuplicateStatus::Fixed(s) => s,
                };
                Some(Refusal::Duplicate { event_id, status, original })
            }
            Value::InFlight { .. } => {
                self.release_local(rule, host, fx);
                self.record(rule, DedupOutcome::InFlight, fx);
                Some(Refusal::InFlight { event_id })
            }
        }
    }

    /// The store cannot tell: `on_error` decides. `local` keeps the proxy's own decision (the key
    /// is held locally); `reject` refuses with 503; `pass` lets the request through unchecked.
    fn store_unavailable(
        &mut self,
        rule: &DedupRule,
        store: &EtcdStore,
        host: &mut impl Host,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        match store.config.on_error {
            OnStoreError::Local => {
                self.record(rule, DedupOutcome::First, fx);
                None
            }
            OnStoreError::Reject => {
                self.release_local(rule, host, fx);
                self.record(rule, DedupOutcome::Unavailable, fx);
                let event_id = self.event_id.clone().unwrap_or_default();
                Some(Refusal::StoreUnavailable { event_id, retry_after_s: remote::retry_after_s() })
            }
            OnStoreError::Pass => {
                self.release_local(rule, host, fx);
                self.record(rule, DedupOutcome::Unavailable, fx);
                None
            }
        }
    }

    /// Gives up the key this request holds in the proxy's store.
    fn release_local(&mut self, rule: &DedupRule, host: &mut impl Host, fx: &mut Effects) {
        let Some((held, bucket)) = self.held.take() else {
            return;
        };
        match shared::release(host, &rule.layout, &rule.keys.key(bucket), held) {
            Ok(changes) => rule.store.count(fx, changes),
            Err(e) => fx.fail(e),
        }
    }

    /// The completion (`status`: the call succeeded) or the release of the claim this request
    /// holds in etcd, conditioned on its value: queued for the worker's next tick, never holding
    /// the response (a call from the stream would be cancelled with it, and its answer lost).
    #[allow(clippy::too_many_arguments)]
    fn settle_remote(
        &mut self,
        rule: &DedupRule,
        store: &EtcdStore,
        key: String,
        held: Value,
        status: Option<u32>,
        now: u64,
    ) {
        let cfg = rule.config;
        let done = status.map(|status| {
            let done = Value::Completed {
                status: status as u16,
                fingerprint: held.fingerprint(),
                expires_ms: now.saturating_add(cfg.ttl) / 1_000_000,
            };
            (done, cfg.ttl)
        });
        store.settle(key, held, done, now, cfg.in_flight_ttl);
    }
}
