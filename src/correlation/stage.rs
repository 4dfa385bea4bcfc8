//! The correlation id's part of one request: keep or make the id at the request headers, write it
//! upstream and into the filter state, echo it downstream at the response headers.

use super::{check, generate, CorrelationOutcome};
use crate::config::Correlation;
use crate::filter::{state, Effects};
use crate::headers::HeaderMap;
use crate::ids::Entropy;
use crate::metrics::Metrics;

#[derive(Debug, Default)]
pub struct CorrelationStage {
    id: Option<String>,
}

impl CorrelationStage {
    /// The request's id, once its headers were seen.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Keeps a valid incoming id or makes one; `trace_id` is the request's trace-id for the
    /// `trace_id` generator (the trace stage runs first).
    pub fn on_request_headers(
        &mut self,
        headers: &HeaderMap,
        config: &Correlation,
        trace_id: Option<&str>,
        entropy: &mut impl Entropy,
        metrics: &Metrics,
        fx: &mut Effects,
    ) -> &str {
        let (id, outcome) = match check(headers.get(&config.header), config) {
            Ok(id) => (id, CorrelationOutcome::Kept),
            Err(outcome) => {
                let request_id = || headers.get("x-request-id").map(<[u8]>::to_vec);
                (generate(config, trace_id, request_id, entropy), outcome)
            }
        };
        fx.count(metrics.correlation(outcome));
        if outcome != CorrelationOutcome::Kept {
            fx.set_request_header(&config.header, id.as_bytes());
        }
        fx.state(state::CORRELATION_ID, id.as_bytes());
        self.id.insert(id)
    }

    /// Echoes the id downstream (local replies carry it already; writing it again is harmless).
    pub fn on_response_headers(&self, config: &Correlation, fx: &mut Effects) {
        if let (true, Some(id)) = (config.echo_downstream, &self.id) {
            fx.set_response_header(&config.header, id.as_bytes());
        }
    }
}
