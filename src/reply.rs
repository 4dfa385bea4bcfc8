//! Every reply meshguard makes itself — open circuit, duplicate, in flight, fingerprint mismatch,
//! invalid or missing event id — in its HTTP and its gRPC shape. Pure: the stages say which
//! [`Refusal`] applies, the pipeline hands over the ids, this module builds status, headers and
//! body.
//!
//! gRPC callers never see an HTTP status: a gRPC client turns a non-200 status into UNKNOWN (or a
//! transport error), so a refusal of a gRPC request carries a gRPC status instead. Envoy builds the
//! trailers-only response from it (`:status: 200`, `content-type: application/grpc`,
//! `grpc-status`, and the body text as a percent-encoded `grpc-message`) when a local reply of a
//! gRPC request is sent with a gRPC status (proxy-wasm `send_local_response`).

use crate::headers::HeaderMap;
use crate::logline::push_json_string;

/// Why meshguard answers a request itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The rule's circuit is open (or forced open).
    CircuitOpen { retry_after_s: u64 },
    /// The event was processed before; `status` is what to answer (the original status when
    /// replayed), `original` what the service answered.
    Duplicate { event_id: String, status: u32, original: u16 },
    /// Another delivery of the event is being processed.
    InFlight { event_id: String },
    /// The event id was used before for a different request.
    Mismatch { event_id: String },
    /// The key header's value is not a valid key.
    InvalidKey { header: String, reason: &'static str },
    /// No key, and the rule requires one.
    MissingKey { headers: Vec<String> },
    /// The shared dedup store cannot say whether the event was processed, and the rule's
    /// `store.on_error` is `reject`: the broker redelivers later.
    StoreUnavailable { event_id: String, retry_after_s: u64 },
}

/// gRPC status codes (grpc/grpc `doc/statuscodes.md`).
pub mod grpc {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const ALREADY_EXISTS: u32 = 6;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const ABORTED: u32 = 10;
    pub const UNAVAILABLE: u32 = 14;
}

/// What a reply says about the request beside the refusal.
#[derive(Clone, Copy, Debug, Default)]
pub struct Addressee<'a> {
    /// The request is a gRPC call (`content-type: application/grpc…`).
    pub grpc: bool,
    pub rule: &'a str,
    pub correlation_id: &'a str,
    /// The correlation header, when the id is echoed downstream.
    pub echo: Option<&'a str>,
    pub trace_id: Option<&'a str>,
}

/// A local reply as the host sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status (a gRPC reply goes out as 200; Envoy sets it).
    pub status: u32,
    /// `Some` for a gRPC request: the `grpc-status` Envoy puts in the trailers-only response.
    pub grpc_status: Option<u32>,
    pub headers: HeaderMap,
    /// The JSON body; for gRPC, the text of `grpc-message`.
    pub body: Vec<u8>,
}

impl Refusal {
    /// The `meshguard_dedup`-side marker (`x-meshguard-dedup`) or `None` for the circuit.
    pub fn dedup_marker(&self) -> Option<&'static str> {
        match self {
            Refusal::CircuitOpen { .. } => None,
            Refusal::Duplicate { .. } => Some("duplicate"),
            Refusal::InFlight { .. } => Some("in-flight"),
            Refusal::Mismatch { .. } => Some("mismatch"),
            Refusal::InvalidKey { .. } => Some("invalid"),
            Refusal::MissingKey { .. } => Some("missing"),
            Refusal::StoreUnavailable { .. } => Some("store-unavailable"),
        }
    }

    fn http_status(&self) -> u32 {
        match self {
            Refusal::CircuitOpen { .. } => 503,
            Refusal::Duplicate { status, .. } => *status,
            Refusal::InFlight { .. } => 409,
            Refusal::Mismatch { .. } => 422,
            Refusal::InvalidKey { .. } | Refusal::MissingKey { .. } => 400,
            Refusal::StoreUnavailable { .. } => 503,
        }
    }

    fn grpc_status(&self) -> u32 {
        match self {
            Refusal::CircuitOpen { .. } => grpc::UNAVAILABLE,
            // The response message is not stored: OK would hand a unary client no message.
            Refusal::Duplicate { .. } => grpc::ALREADY_EXISTS,
            Refusal::InFlight { .. } => grpc::ABORTED,
            Refusal::Mismatch { .. } => grpc::FAILED_PRECONDITION,
            Refusal::InvalidKey { .. } | Refusal::MissingKey { .. } => grpc::INVALID_ARGUMENT,
            Refusal::StoreUnavailable { .. } => grpc::UNAVAILABLE,
        }
    }

    /// The JSON body; `None` for a replayed 204 or 304, which have none.
    fn body(&self, to: &Addressee) -> Option<String> {
        let mut b = String::with_capacity(96);
        match self {
            Refusal::CircuitOpen { retry_after_s } => {
                b.push_str("{\"error\":\"circuit_open\",\"rule\":");
                push_json_string(&mut b, to.rule.as_bytes());
                b.push_str(",\"retry_after_s\":");
                b.push_str(&retry_after_s.to_string());
                b.push_str(",\"correlation_id\":");
                push_json_string(&mut b, to.correlation_id.as_bytes());
                b.push_str(",\"trace_id\":");
                match to.trace_id {
                    Some(t) => push_json_string(&mut b, t.as_bytes()),
                    None => b.push_str("null"),
                }
            }
            Refusal::Duplicate { status: 204 | 304, .. } if !to.grpc => return None,
            Refusal::Duplicate { event_id, original, .. } => {
                b.push_str("{\"dedup\":\"duplicate\",\"event_id\":");
                push_json_string(&mut b, event_id.as_bytes());
                b.push_str(",\"status\":");
                b.push_str(&original.to_string());
            }
            Refusal::InFlight { event_id } | Refusal::Mismatch { event_id } => {
                let error = if matches!(self, Refusal::InFlight { .. }) { "in_flight" } else { "fingerprint_mismatch" };
                b.push_str("{\"error\":\"");
                b.push_str(error);
                b.push_str("\",\"event_id\":");
                push_json_string(&mut b, event_id.as_bytes());
            }
            Refusal::InvalidKey { header, reason } => {
                b.push_str("{\"error\":\"invalid_event_id\",\"header\":");
                push_json_string(&mut b, header.as_bytes());
                b.push_str(",\"reason\":");
                push_json_string(&mut b, reason.as_bytes());
            }
            Refusal::MissingKey { headers } => {
                b.push_str("{\"error\":\"missing_event_id\",\"headers\":[");
                for (i, h) in headers.iter().enumerate() {
                    if i > 0 {
                        b.push(',');
                    }
                    push_json_string(&mut b, h.as_bytes());
                }
                b.push(']');
            }
            Refusal::StoreUnavailable { event_id, retry_after_s } => {
                b.push_str("{\"error\":\"dedup_store_unavailable\",\"event_id\":");
                push_json_string(&mut b, event_id.as_bytes());
                b.push_str(",\"retry_after_s\":");
                b.push_str(&retry_after_s.to_string());
            }
        }
        b.push('}');
        Some(b)
    }

    /// The reply to `to`, in the HTTP or the gRPC shape. `open_status` is the circuit's
    /// configured status (HTTP only).
    pub fn reply(&self, to: &Addressee, open_status: u32) -> Reply {
        let body = self.body(to);
        let retry_after = match self {
            Refusal::CircuitOpen { retry_after_s } => Some(retry_after_s.to_string()),
            Refusal::InFlight { .. } => Some("1".to_string()),
            Refusal::StoreUnavailable { retry_after_s, .. } => Some(retry_after_s.to_string()),
            _ => None,
        };
        let mut headers: Vec<(&str, Vec<u8>)> = Vec::with_capacity(6);
        if body.is_some() && !to.grpc {
            headers.push(("content-type", b"application/json".to_vec()));
        }
        if let Some(retry) = &retry_after {
            headers.push(("retry-after", retry.as_bytes().to_vec()));
        }
        match self.dedup_marker() {
            Some(marker) => headers.push(("x-meshguard-dedup", marker.as_bytes().to_vec())),
            None => {
                headers.push(("x-meshguard-circuit", b"open".to_vec()));
                // A calling Envoy never retries a response carrying it (unless its retry_on asks
                // for `envoy-ratelimited`): an open circuit is not hit again by mesh retries.
                headers.push(("x-envoy-ratelimited", b"true".to_vec()));
            }
        }
        if let (true, Refusal::CircuitOpen { retry_after_s }) = (to.grpc, self) {
            // gRFC A6: the client waits this long before retrying.
            headers.push(("grpc-retry-pushback-ms", retry_after_s.saturating_mul(1000).to_string().into_bytes()));
        }
        if let Some(name) = to.echo {
            headers.push((name, to.correlation_id.as_bytes().to_vec()));
        }
        let status = match self {
            Refusal::CircuitOpen { .. } => open_status,
            _ => self.http_status(),
        };
        Reply {
            status: if to.grpc { 200 } else { status },
            grpc_status: to.grpc.then(|| self.grpc_status()),
            headers: HeaderMap::from_pairs(&headers),
            body: body.map(String::into_bytes).unwrap_or_default(),
        }
    }
}

/// A gRPC request: `content-type` `application/grpc`, or `application/grpc+proto`,
/// `application/grpc+json`, … (gRPC over HTTP/2, "Requests"). gRPC-Web is not gRPC here: it
/// carries its status in the body and Envoy's grpc_web filter translates.
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let prefix = b"application/grpc";
    ct.len() >= prefix.len()
        && ct.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        && matches!(ct.get(prefix.len()), None | Some(b'+') | Some(b';'))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn http<'a>() -> Addressee<'a> {
        Addressee {
            grpc: false,
            rule: "payments",
            correlation_id: "c-1",
            echo: Some("x-correlation-id"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        }
    }

    fn header(reply: &Reply, name: &str) -> Option<String> {
        reply.headers.get(name).map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    fn json(reply: &Reply) -> serde_json::Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    #[test]
    fn open_circuit_over_http_is_the_open_status_with_retry_after_and_json() {
        let r = Refusal::CircuitOpen { retry_after_s: 12 }.reply(&http(), 503);
        assert_eq!((r.status, r.grpc_status), (503, None));
        assert_eq!(header(&r, "retry-after").as_deref(), Some("12"));
        assert_eq!(header(&r, "x-meshguard-circuit").as_deref(), Some("open"));
        assert_eq!(header(&r, "x-envoy-ratelimited").as_deref(), Some("true"));
        assert_eq!(header(&r, "x-correlation-id").as_deref(), Some("c-1"));
        assert_eq!(header(&r, "content-type").as_deref(), Some("application/json"));
        assert_eq!(header(&r, "grpc-retry-pushback-ms"), None);
        assert_eq!(
            json(&r),
            serde_json::json!({"error": "circuit_open", "rule": "payments", "retry_after_s": 12,
                "correlation_id": "c-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})
        );
        let r = Refusal::CircuitOpen { retry_after_s: 1 }.reply(&Addressee { trace_id: None, ..http() }, 429);
        assert_eq!(r.status, 429);
        assert_eq!(json(&r)["trace_id"], serde_json::Value::Null);
    }

    #[test]
    fn open_circuit_over_grpc_is_unavailable_with_pushback() {
        let to = Addressee { grpc: true, ..http() };
        let r = Refusal::CircuitOpen { retry_after_s: 12 }.reply(&to, 503);
        assert_eq!((r.status, r.grpc_status), (200, Some(14)));
        assert_eq!(header(&r, "grpc-retry-pushback-ms").as_deref(), Some("12000"));
        assert_eq!(header(&r, "x-meshguard-circuit").as_deref(), Some("open"));
        assert_eq!(header(&r, "x-correlation-id").as_deref(), Some("c-1"));
        assert_eq!(header(&r, "content-type"), None, "Envoy sets application/grpc");
        assert_eq!(json(&r)["error"], "circuit_open", "the message is the JSON text");
    }

    #[test]
    fn dedup_refusals_have_their_http_status_marker_and_body() {
        let cases = [
            (Refusal::Duplicate { event_id: "e".into(), status: 201, original: 201 }, 201, "duplicate"),
            (Refusal::Duplicate { event_id: "e".into(), status: 409, original: 200 }, 409, "duplicate"),
            (Refusal::InFlight { event_id: "e".into() }, 409, "in-flight"),
            (Refusal::Mismatch { event_id: "e".into() }, 422, "mismatch"),
            (Refusal::InvalidKey { header: "x-event-id".into(), reason: "empty" }, 400, "invalid"),
            (Refusal::MissingKey { headers: vec!["x-event-id".into(), "ce-id".into()] }, 400, "missing"),
        ];
        for (refusal, status, marker) in cases {
            let r = refusal.reply(&http(), 503);
            assert_eq!((r.status, r.grpc_status), (status, None), "{refusal:?}");
            assert_eq!(header(&r, "x-meshguard-dedup").as_deref(), Some(marker));
            assert_eq!(header(&r, "x-correlation-id").as_deref(), Some("c-1"));
            assert_eq!(header(&r, "x-envoy-ratelimited"), None);
            assert_eq!(header(&r, "retry-after").is_some(), marker == "in-flight");
            assert!(json(&r).is_object());
        }
        let body = |r: Refusal| String::from_utf8(r.reply(&http(), 503).body).unwrap();
        assert_eq!(
            body(Refusal::Duplicate { event_id: "e\"1".into(), status: 200, original: 201 }),
            r#"{"dedup":"duplicate","event_id":"e\"1","status":201}"#
        );
        assert_eq!(body(Refusal::InFlight { event_id: "e".into() }), r#"{"error":"in_flight","event_id":"e"}"#);
        assert_eq!(
            body(Refusal::Mismatch { event_id: "e".into() }),
            r#"{"error":"fingerprint_mismatch","event_id":"e"}"#
        );
        assert_eq!(
            body(Refusal::InvalidKey { header: "x-event-id".into(), reason: "too long" }),
            r#"{"error":"invalid_event_id","header":"x-event-id","reason":"too long"}"#
        );
        assert_eq!(
            body(Refusal::MissingKey { headers: vec!["x-event-id".into(), "ce-id".into()] }),
            r#"{"error":"missing_event_id","headers":["x-event-id","ce-id"]}"#
        );
    }

    #[test]
    fn replayed_204_and_304_have_no_body() {
        for status in [204, 304] {
            let r = Refusal::Duplicate { event_id: "e".into(), status, original: status as u16 }.reply(&http(), 503);
            assert_eq!(r.status, status);
            assert!(r.body.is_empty());
            assert_eq!(header(&r, "content-type"), None);
        }
    }

    #[test]
    fn dedup_refusals_over_grpc_are_grpc_statuses() {
        let to = Addressee { grpc: true, echo: None, ..http() };
        let cases = [
            (Refusal::Duplicate { event_id: "e".into(), status: 204, original: 200 }, 6),
            (Refusal::InFlight { event_id: "e".into() }, 10),
            (Refusal::Mismatch { event_id: "e".into() }, 9),
            (Refusal::InvalidKey { header: "x-event-id".into(), reason: "empty" }, 3),
            (Refusal::MissingKey { headers: vec!["x-event-id".into()] }, 3),
        ];
        for (refusal, code) in cases {
            let r = refusal.reply(&to, 503);
            assert_eq!((r.status, r.grpc_status), (200, Some(code)), "{refusal:?}");
            assert!(header(&r, "x-meshguard-dedup").is_some());
            assert_eq!(header(&r, "x-correlation-id"), None, "echo off");
            assert_eq!(header(&r, "content-type"), None);
            assert!(!r.body.is_empty(), "the message says what happened");
        }
    }

    #[test]
    fn grpc_requests_are_told_by_content_type() {
        for ct in ["application/grpc", "application/grpc+proto", "Application/GRPC+json", "application/grpc;x=1"] {
            assert!(is_grpc(Some(ct.as_bytes())), "{ct}");
        }
        for ct in ["application/grpc-web", "application/grpc-web+proto", "application/json", "application/grp", ""] {
            assert!(!is_grpc(Some(ct.as_bytes())), "{ct}");
        }
        assert!(!is_grpc(None));
    }
}
