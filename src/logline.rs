//! meshguard's own per-request JSON log line (docs/behaviour.md, "Correlation ids and logging",
//! `log.requests`). Every value from the request is JSON-escaped here; bytes that are not UTF-8
//! become U+FFFD, so the line always parses.

/// One finished request, as the shell gathered it. `None` prints as `null`.
#[derive(Debug, Default)]
pub struct RequestLog<'a> {
    pub correlation_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub span_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub rule: &'a str,
    pub route_name: Option<&'a [u8]>,
    pub method: Option<&'a [u8]>,
    pub path: Option<&'a [u8]>,
    pub authority: Option<&'a [u8]>,
    pub status: Option<u64>,
    pub duration_ms: Option<f64>,
    pub upstream_cluster: Option<&'a [u8]>,
    pub response_flags: Option<u64>,
    pub circuit: Option<&'a str>,
    pub dedup: &'a str,
}

impl RequestLog<'_> {
    /// The line; the query string is cut from `path` unless `include_query`.
    pub fn to_json(&self, include_query: bool) -> String {
        let path = self.path.map(|p| match p.iter().position(|&b| b == b'?') {
            Some(q) if !include_query => p.get(..q).unwrap_or(p),
            _ => p,
        });
        let mut out = String::with_capacity(384);
        out.push('{');
        field(&mut out, "correlation_id", Some(self.correlation_id.as_bytes()));
        field(&mut out, "trace_id", self.trace_id.map(str::as_bytes));
        field(&mut out, "span_id", self.span_id.map(str::as_bytes));
        field(&mut out, "event_id", self.event_id.map(str::as_bytes));
        field(&mut out, "rule", Some(self.rule.as_bytes()));
        field(&mut out, "route_name", self.route_name);
        field(&mut out, "method", self.method);
        field(&mut out, "path", path);
        field(&mut out, "authority", self.authority);
        raw(&mut out, "status", self.status.map(|s| s.to_string()));
        raw(&mut out, "duration_ms", self.duration_ms.map(|d| format!("{:.3}", d.max(0.0))));
        field(&mut out, "upstream_cluster", self.upstream_cluster);
        let flags = self.response_flags.map(response_flags);
        field(&mut out, "response_flags", flags.as_deref().map(str::as_bytes));
        field(&mut out, "circuit", self.circuit.map(str::as_bytes));
        field(&mut out, "dedup", Some(self.dedup.as_bytes()));
        out.pop(); // the last comma
        out.push('}');
        out
    }
}

fn field(out: &mut String, name: &str, value: Option<&[u8]>) {
    out.push('"');
    out.push_str(name);
    out.push_str("\":");
    match value {
        Some(v) => push_json_string(out, v),
        None => out.push_str("null"),
    }
    out.push(',');
}

fn raw(out: &mut String, name: &str, value: Option<String>) {
    out.push('"');
    out.push_str(name);
    out.push_str("\":");
    out.push_str(value.as_deref().unwrap_or("null"));
    out.push(',');
}

/// Appends `bytes` as a JSON string literal (RFC 8259 §7).
pub fn push_json_string(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Envoy's short response-flag names, by bit of the `response.flags` property (the order of
/// Envoy's `CoreResponseFlag`), joined as in Envoy's `%RESPONSE_FLAGS%`; `-` when none.
pub fn response_flags(bits: u64) -> String {
    const NAMES: [&str; 30] = [
        "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI",
        "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR", "UDO",
    ];
    let names: Vec<&str> =
        NAMES.iter().enumerate().filter(|(bit, _)| bits & (1 << bit) != 0).map(|(_, n)| *n).collect();
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn parse(line: &str) -> serde_json::Value {
        match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => unreachable!("not JSON ({e}): {line}"),
        }
    }

    #[test]
    fn line_has_every_field() {
        let log = RequestLog {
            correlation_id: "c-1",
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            rule: "payments",
            route_name: Some(b"payments-v1"),
            method: Some(b"POST"),
            path: Some(b"/charge?card=123"),
            authority: Some(b"payments.prod"),
            status: Some(201),
            duration_ms: Some(12.5),
            upstream_cluster: Some(b"outbound|8080||payments"),
            response_flags: Some(0),
            circuit: Some("closed"),
            dedup: "first",
            ..RequestLog::default()
        };
        let v = parse(&log.to_json(false));
        let keys = [
            "correlation_id",
            "trace_id",
            "span_id",
            "event_id",
            "rule",
            "route_name",
            "method",
            "path",
            "authority",
            "status",
            "duration_ms",
            "upstream_cluster",
            "response_flags",
            "circuit",
            "dedup",
        ];
        assert_eq!(v.as_object().map(|o| o.len()), Some(keys.len()));
        for key in keys {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["path"], "/charge");
        assert_eq!(v["status"], 201);
        assert_eq!(v["duration_ms"], 12.5);
        assert_eq!(v["span_id"], serde_json::Value::Null);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(parse(&log.to_json(true))["path"], "/charge?card=123");
    }

    #[test]
    fn hostile_values_stay_valid_json() {
        let nasty: &[u8] = b"a\"b\\c\r\nd\te\x00f\x1b\x7f\xe9\xff\"}";
        let log = RequestLog {
            correlation_id: "x",
            path: Some(nasty),
            authority: Some(nasty),
            method: Some(nasty),
            dedup: "none",
            ..RequestLog::default()
        };
        let v = parse(&log.to_json(true));
        assert_eq!(v["authority"], "a\"b\\c\r\nd\te\u{0}f\u{1b}\u{7f}\u{fffd}\u{fffd}\"}");
        assert!(!log.to_json(true).contains('\n'));
    }

    #[test]
    fn response_flags_use_envoy_names() {
        assert_eq!(response_flags(0), "-");
        assert_eq!(response_flags(0x20), "UF");
        assert_eq!(response_flags(0x100), "NR");
        assert_eq!(response_flags(0x20 | 0x8000), "UF,URX");
        assert_eq!(response_flags(0x4), "UT");
    }
}
