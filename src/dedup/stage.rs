//! Deduplication's part of one request: find and check the event key at the request headers (or,
//! with a body fingerprint, on the body chunk that completes it), and settle the key the request
//! holds when its outcome is known — completed on a success, released otherwise, so that a
//! redelivery of a failed event is processed again.

use super::shared::{self, Held};
use super::store::{BucketKeys, Check};
use super::{event_key, fingerprint, key_id, DedupOutcome, Key, Layout, MAX_BODY_FINGERPRINT};
use crate::breaker::Ending;
use crate::config::{Dedup, DuplicateStatus, Fingerprint, OnMissing, Scope};
use crate::filter::{state, Effects, Host};
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
}

/// A request whose check waits for its body.
#[derive(Debug)]
struct Pending {
    id: u128,
    nonce: u32,
    method: Vec<u8>,
    path: Vec<u8>,
    /// The body's first bytes seen so far (at most 64 KiB).
    body: Vec<u8>,
    /// All the body bytes seen so far, and the request's `content-length`, if any: the body is
    /// complete (and the key decided) on the chunk that reaches it, before it is forwarded.
    seen: u64,
    content_length: Option<u64>,
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

    /// Finds the request's event key and checks it, unless the body must be read first. `Some`
    /// when meshguard answers the request itself.
    pub fn on_request_headers(
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
        let (key, event_id) = match event_key(headers, &cfg.headers) {
            Key::Valid { key, event_id } => (key, event_id),
            Key::Missing => {
                return match cfg.on_missing {
                    OnMissing::Pass => {
                        self.record(rule, DedupOutcome::Missing, fx);
                        None
                    }
                    OnMissing::Reject => {
                        self.record(rule, DedupOutcome::Missing, fx);
                        Some(Refusal::MissingKey { headers: cfg.headers.clone() })
                    }
                    OnMissing::Generate => {
                        // Stamped into the first key header, so that Envoy's retries and every
                        // consumer see one id per event.
                        let id = crate::ids::uuid4(entropy);
                        if let Some(header) = cfg.headers.first() {
                            fx.set_request_header(header, id.as_bytes());
                        }
                        fx.state(state::EVENT_ID, id.as_bytes());
                        self.event_id = Some(id);
                        self.record(rule, DedupOutcome::Generated, fx);
                        None
                    }
                };
            }
            Key::Invalid { header, reason } => {
                self.record(rule, DedupOutcome::Invalid, fx);
                return Some(Refusal::InvalidKey { header, reason });
            }
        };
        fx.state(state::EVENT_ID, event_id.as_bytes());
        self.event_id = Some(event_id);
        let caller = match cfg.scope {
            Scope::Rule => None,
            // The mTLS peer's identity (a SPIFFE id in Istio); without mTLS, empty.
            Scope::Caller => Some(host.property(&["connection", "uri_san_peer_certificate"]).unwrap_or_default()),
        };
        let id = key_id(rule.name, caller.as_deref(), &key);
        let nonce = super::nonce(entropy);
        let path = headers.get(":path").unwrap_or_default();
        let print = match cfg.fingerprint {
            Fingerprint::None => 0,
            Fingerprint::MethodPath => fingerprint(method, path, None),
            Fingerprint::Body => {
                let content_length =
                    headers.get("content-length").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                if end_of_stream || content_length == Some(0) {
                    fingerprint(method, path, Some(&[]))
                } else {
                    // The headers go on (proxy-wasm cannot hold them and still see the body);
                    // the body chunk that completes the fingerprint decides the key.
                    let (method, path) = (method.to_vec(), path.to_vec());
                    self.pending = Some(Pending { id, nonce, method, path, body: Vec::new(), seen: 0, content_length });
                    return None;
                }
            }
        };
        self.check(rule, host, id, nonce, print, fx)
    }

    /// A chunk of the request body while the check waits for it. `size` is the chunk (the body is
    /// streamed, not buffered by Envoy): its bytes are copied until the body is complete (end of
    /// stream, or `content-length` bytes) or 64 KiB of it are seen, then the key is decided.
    /// Each chunk before that goes on upstream: holding them (Envoy's StopIterationAndBuffer)
    /// gets a request refused with 413 whenever a burst of body pushes Envoy's buffer past its
    /// limit, and proxy-wasm has no watermark variant. `Some` when the request is refused: the
    /// pipeline drops the deciding chunk and the rest, so the service never gets it whole.
    pub fn on_request_body(
        &mut self,
        rule: &DedupRule,
        host: &mut impl Host,
        size: usize,
        end_of_stream: bool,
        fx: &mut Effects,
    ) -> Option<Refusal> {
        let mut pending = self.pending.take()?;
        let wanted = size.min(MAX_BODY_FINGERPRINT - pending.body.len());
        if wanted > 0 {
            if let Some(chunk) = host.request_body(wanted) {
                pending.body.extend(chunk.into_iter().take(wanted));
            }
        }
        pending.seen = pending.seen.saturating_add(size as u64);
        // Forwarding the chunk that completes a content-length body would hand the upstream a
        // complete request: the key is decided on it. Otherwise the request is complete for the
        // upstream only with the end of stream, which is never forwarded before the decision.
        let complete = end_of_stream || pending.content_length.is_some_and(|length| pending.seen >= length);
        if !complete && pending.body.len() < MAX_BODY_FINGERPRINT {
            self.pending = Some(pending);
            return None;
        }
        let print = fingerprint(&pending.method, &pending.path, Some(&pending.body));
        self.check(rule, host, pending.id, pending.nonce, print, fx)
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
