//! The configuration (docs/configuration.md; docs/behaviour.md, "Configuration and rules"), parsed
//! and validated once per `on_configure` into an immutable, pre-compiled form (durations in
//! nanoseconds, status sets as bitsets, rules with their settings already merged over the top
//! level). Nothing here is looked at per request except the finished values.

pub mod duration;
mod reader;
pub mod status;

use serde_json::{Map, Value};

use reader::{header_name_problem, is_token, join, kind, object, Errors, Fields};
pub use status::{GrpcCodes, StatusSet};

/// Name of the implicit rule that requests matching no rule fall into.
pub const DEFAULT_RULE: &str = "default";

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub correlation: Correlation,
    pub trace: Trace,
    pub log: Log,
    /// The operator's rules, in the order they are tried.
    pub rules: Vec<Rule>,
    /// The top-level settings, under the rule name `default`.
    pub default_rule: Rule,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Correlation {
    /// Lower-case header name.
    pub header: String,
    pub generator: Generator,
    pub echo_downstream: bool,
    pub max_length: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generator {
    Uuid4,
    TraceId,
    RequestId,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub enabled: bool,
    pub mode: TraceMode,
    pub sample_ratio: f64,
    pub b3: B3,
    pub traceresponse: TraceResponse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceMode {
    /// `propagate` while Envoy has no tracer, `defer` once meshguard has seen Envoy's tracer
    /// rewrite the trace headers (each worker learns it from its first traced requests).
    Auto,
    /// Keep a valid traceparent unchanged.
    Propagate,
    /// Give every hop its own parent-id.
    Hop,
    /// Leave trace headers to Envoy's tracer; only read them.
    Defer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3 {
    Accept,
    Ignore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceResponse {
    Off,
    /// `traceresponse: 00-<trace-id>-<span-id>-<flags>` (Trace Context Level 3 draft).
    Header,
    /// `server-timing: trace;desc="00-…"` (where the draft moved it).
    ServerTiming,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Log {
    pub requests: bool,
    pub level: LogLevel,
    pub include_query: bool,
}

/// Envoy's log levels, in the order of proxy-wasm's `LogLevel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Breaker {
    pub failure_rate_threshold: f64,
    pub slow_call_rate_threshold: f64,
    pub slow_call_duration: u64,
    pub window: Window,
    pub minimum_calls: u32,
    pub consecutive_failures: u32,
    pub open_duration: u64,
    pub max_open_duration: u64,
    pub open_duration_multiplier: f64,
    pub half_open_calls: u32,
    pub failure_status: StatusSet,
    /// Neutral: neither success nor failure (e.g. 429).
    pub ignore_status: StatusSet,
    /// gRPC statuses that are failures (CANCELLED is always neutral, the rest successes).
    pub failure_grpc_status: GrpcCodes,
    pub mode: BreakerMode,
    pub open_status: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last N outcomes.
    Count(u32),
    /// The outcomes of the last N seconds, in one-second buckets.
    Time(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerMode {
    Enforce,
    MetricsOnly,
    ForcedOpen,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dedup {
    /// Lower-case header names, tried in order.
    pub headers: Vec<String>,
    pub methods: Vec<String>,
    pub ttl: u64,
    pub in_flight_ttl: u64,
    pub on_missing: OnMissing,
    pub duplicate_status: DuplicateStatus,
    pub success_status: StatusSet,
    pub fingerprint: Fingerprint,
    pub scope: Scope,
    pub max_entries: u32,
    pub mode: DedupMode,
    /// Where a JSON body carries the key when no header does (RFC 6901).
    pub body_key: Option<crate::dedup::body_key::Pointer>,
    /// Where keys are kept beyond the proxy's own memory.
    pub store: Store,
}

/// `dedup.store`: the proxy's memory alone, or also etcd v3 across replicas and restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Store {
    #[default]
    Local,
    Etcd(Etcd),
}

/// An etcd v3 cluster reached through its JSON gateway with HTTP callouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Etcd {
    /// The Envoy cluster of etcd's client port.
    pub cluster: String,
    /// The `:authority` of the callouts.
    pub authority: String,
    /// Prefix of every key meshguard writes.
    pub prefix: String,
    /// How long a request waits for etcd (ns).
    pub timeout: u64,
    pub on_error: OnStoreError,
}

/// What a request gets when etcd is unreachable, slower than `timeout`, or answers an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStoreError {
    /// Decide from the proxy's own store, as without etcd.
    Local,
    /// 503 with `retry-after`, for brokers that redeliver.
    Reject,
    /// Let the request through unchecked.
    Pass,
}

impl OnStoreError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Local => "local",
            OnStoreError::Reject => "reject",
            OnStoreError::Pass => "pass",
        }
    }
}

/// docs/behaviour.md, "Event-id deduplication", *Modes*: `metrics_only` reads, checks, stores and
/// counts keys exactly as `enforce` does, but sends no reply of its own (the roll-out's dry run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupMode {
    Enforce,
    MetricsOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMissing {
    Pass,
    Reject,
    Generate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DuplicateStatus {
    Replay,
    Fixed(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fingerprint {
    None,
    MethodPath,
    Body,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Rule,
    Caller,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub matcher: Match,
    /// `None`: breaking is off for this rule.
    pub circuit_breaker: Option<Breaker>,
    /// `None`: dedup is off for this rule.
    pub dedup: Option<Dedup>,
}

/// Every given field must match; an absent field matches anything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Match {
    pub route_name: Option<String>,
    pub cluster: Option<String>,
    /// Lower-case, without port.
    pub host: Option<String>,
    pub prefix: Option<String>,
    /// Empty: any method.
    pub methods: Vec<String>,
}

// Bounds that keep the shared-data encodings small and every product far from overflow.
pub const MAX_COUNT_WINDOW: u64 = 1000;
pub const MAX_TIME_WINDOW_SECS: u64 = 600;
pub const MAX_DEDUP_ENTRIES: u64 = 1_000_000;
pub const MAX_RULES: usize = 256;
const SECOND: u64 = 1_000_000_000;

impl Default for Correlation {
    fn default() -> Self {
        Correlation {
            header: "x-correlation-id".into(),
            generator: Generator::Uuid4,
            echo_downstream: true,
            max_length: 128,
        }
    }
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            enabled: true,
            mode: TraceMode::Auto,
            sample_ratio: 1.0,
            b3: B3::Accept,
            traceresponse: TraceResponse::Off,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log { requests: false, level: LogLevel::Info, include_query: false }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: 2 * SECOND,
            window: Window::Count(20),
            minimum_calls: 10,
            consecutive_failures: 0,
            open_duration: 30 * SECOND,
            max_open_duration: 300 * SECOND,
            open_duration_multiplier: 2.0,
            half_open_calls: 3,
            failure_status: StatusSet::of(&["5xx"]),
            ignore_status: StatusSet::EMPTY,
            // UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS.
            failure_grpc_status: GrpcCodes::of(&[2, 4, 13, 14, 15]),
            mode: BreakerMode::Enforce,
            open_status: 503,
        }
    }
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup {
            headers: vec!["x-event-id".into(), "idempotency-key".into(), "ce-id".into()],
            methods: vec!["POST".into(), "PUT".into(), "PATCH".into()],
            ttl: 600 * SECOND,
            in_flight_ttl: 60 * SECOND,
            on_missing: OnMissing::Pass,
            duplicate_status: DuplicateStatus::Replay,
            success_status: StatusSet::of(&["2xx"]),
            fingerprint: Fingerprint::None,
            scope: Scope::Rule,
            max_entries: 100_000,
            mode: DedupMode::Enforce,
            body_key: None,
            store: Store::Local,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            correlation: Correlation::default(),
            trace: Trace::default(),
            log: Log::default(),
            rules: Vec::new(),
            default_rule: Rule {
                name: DEFAULT_RULE.into(),
                matcher: Match::default(),
                circuit_breaker: None,
                dedup: None,
            },
        }
    }
}

impl Config {
    /// The rule with this index from [`crate::rules::select`]; `None` is the default rule.
    pub fn rule(&self, index: Option<usize>) -> &Rule {
        index.and_then(|i| self.rules.get(i)).unwrap_or(&self.default_rule)
    }

    /// Every rule, the default one last.
    pub fn all_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().chain(std::iter::once(&self.default_rule))
    }
}

/// Parses and validates a plugin configuration. Empty input means all defaults. On error, every
/// problem is returned, each as `json.path: message`.
pub fn parse(bytes: &[u8]) -> Result<Config, Vec<String>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Config::default());
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => return Err(vec![format!("$: not valid JSON: {e}")]),
    };
    let mut errors = Errors::default();
    let config = parse_value(&value, &mut errors);
    match config {
        Some(config) if errors.0.is_empty() => Ok(config),
        _ => Err(errors.0),
    }
}

fn parse_value(value: &Value, errors: &mut Errors) -> Option<Config> {
    const KEYS: &[&str] = &["correlation", "trace", "log", "circuit_breaker", "dedup", "routes"];
    let map = object(value, "", KEYS, errors)?;
    let correlation = parse_correlation(map.get("correlation"), errors);
    let trace = parse_trace(map.get("trace"), errors);
    let log = parse_log(map.get("log"), errors);
    if correlation.generator == Generator::TraceId && (!trace.enabled || trace.mode == TraceMode::Defer) {
        // In `defer` mode the trace-id is Envoy's, chosen after meshguard has to set the header.
        // (In `auto` mode, once Envoy's tracer is seen, the generator falls back to a UUID.)
        errors.add(
            "correlation.generator",
            "\"trace_id\" needs trace.enabled and trace.mode \"auto\", \"propagate\" or \"hop\"",
        );
    }
    let circuit_breaker = section(map.get("circuit_breaker"), "circuit_breaker", None, errors, parse_breaker);
    let dedup = section(map.get("dedup"), "dedup", None, errors, parse_dedup);
    let rules = match map.get("routes") {
        None => Vec::new(),
        Some(routes) => parse_rules(routes, &circuit_breaker, &dedup, errors),
    };
    Some(Config {
        correlation,
        trace,
        log,
        rules,
        default_rule: Rule { name: DEFAULT_RULE.into(), matcher: Match::default(), circuit_breaker, dedup },
    })
}

fn fields<'v, 'e>(
    value: Option<&'v Value>,
    path: &str,
    keys: &[&str],
    errors: &'e mut Errors,
) -> Option<Fields<'v, 'e>> {
    let map = object(value?, path, keys, errors)?;
    Some(Fields { map, path: path.to_string(), errors })
}

/// Headers the trace-context code owns; the correlation id cannot live in one of them.
const TRACE_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

fn parse_correlation(value: Option<&Value>, errors: &mut Errors) -> Correlation {
    let mut c = Correlation::default();
    const KEYS: &[&str] = &["header", "generator", "echo_downstream", "max_length"];
    let Some(mut f) = fields(value, "correlation", KEYS, errors) else {
        return c;
    };
    if let Some(header) = f.str("header") {
        match header_name_problem(header) {
            None if header.starts_with(':') => f.error("header", "must not be a pseudo-header"),
            None if TRACE_HEADERS.contains(&header.to_ascii_lowercase().as_str()) => {
                f.error("header", "must not be a trace-context header")
            }
            None => c.header = header.to_ascii_lowercase(),
            Some(problem) => f.error("header", problem),
        }
    }
    if let Some(g) = f.choice("generator", &["uuid4", "trace_id", "request_id"]) {
        c.generator = match g {
            "trace_id" => Generator::TraceId,
            "request_id" => Generator::RequestId,
            _ => Generator::Uuid4,
        };
    }
    if let Some(echo) = f.bool("echo_downstream") {
        c.echo_downstream = echo;
    }
    if let Some(max) = f.int("max_length", 1, 4096) {
        // A limit below the ids meshguard makes would have the next hop replace every id this
        // hop generated: the id would change at each sidecar.
        let made = if c.generator == Generator::TraceId { 32 } else { 36 };
        if (max as usize) < made {
            f.error(
                "max_length",
                format!("must be at least {made}, the length of the ids the generator makes, got {max}"),
            );
        } else {
            c.max_length = max as usize;
        }
    }
    c
}

fn parse_trace(value: Option<&Value>, errors: &mut Errors) -> Trace {
    let mut t = Trace::default();
    const KEYS: &[&str] = &["enabled", "mode", "sample_ratio", "b3", "traceresponse"];
    let Some(mut f) = fields(value, "trace", KEYS, errors) else {
        return t;
    };
    if let Some(enabled) = f.bool("enabled") {
        t.enabled = enabled;
    }
    if let Some(mode) = f.choice("mode", &["auto", "propagate", "hop", "defer"]) {
        t.mode = match mode {
            "hop" => TraceMode::Hop,
            "defer" => TraceMode::Defer,
            "propagate" => TraceMode::Propagate,
            _ => TraceMode::Auto,
        };
    }
    if let Some(ratio) = f.number("sample_ratio", 0.0, 1.0) {
        t.sample_ratio = ratio;
    }
    if let Some(b3) = f.choice("b3", &["accept", "ignore"]) {
        t.b3 = if b3 == "accept" { B3::Accept } else { B3::Ignore };
    }
    match f.raw("traceresponse") {
        None => {}
        Some(Value::Bool(on)) => t.traceresponse = if *on { TraceResponse::Header } else { TraceResponse::Off },
        Some(Value::String(s)) if s == "traceresponse" => t.traceresponse = TraceResponse::Header,
        Some(Value::String(s)) if s == "server-timing" => t.traceresponse = TraceResponse::ServerTiming,
        Some(other) => f.error(
            "traceresponse",
            format!("must be true, false, \"traceresponse\" or \"server-timing\", got {other}"),
        ),
    }
    t
}

fn parse_log(value: Option<&Value>, errors: &mut Errors) -> Log {
    let mut l = Log::default();
    const KEYS: &[&str] = &["requests", "level", "include_query"];
    let Some(mut f) = fields(value, "log", KEYS, errors) else {
        return l;
    };
    if let Some(requests) = f.bool("requests") {
        l.requests = requests;
    }
    if let Some(level) = f.choice("level", &["trace", "debug", "info", "warn", "error", "critical"]) {
        l.level = match level {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "critical" => LogLevel::Critical,
            _ => LogLevel::Info,
        };
    }
    if let Some(include) = f.bool("include_query") {
        l.include_query = include;
    }
    l
}

/// A feature section: absent (inherit `inherited`), `"disabled"` (off) or an object merged over
/// `inherited` (or over the defaults when there is nothing to inherit).
fn section<T: Clone + Default>(
    value: Option<&Value>,
    path: &str,
    inherited: Option<&T>,
    errors: &mut Errors,
    parse: fn(T, Fields) -> Option<T>,
) -> Option<T> {
    match value {
        None => inherited.cloned(),
        Some(Value::String(s)) if s == "disabled" => None,
        Some(Value::Object(map)) => {
            let base = inherited.cloned().unwrap_or_default();
            parse(base, Fields { map, path: path.to_string(), errors })
        }
        Some(other) => {
            errors.add(path, format!("must be an object or \"disabled\", got {}", kind(other)));
            None
        }
    }
}

/// The keys of a `circuit_breaker` section (also the fuzz generator's vocabulary).
pub const BREAKER_KEYS: &[&str] = &[
    "failure_rate_threshold",
    "slow_call_rate_threshold",
    "slow_call_duration",
    "window",
    "minimum_calls",
    "consecutive_failures",
    "open_duration",
    "max_open_duration",
    "open_duration_multiplier",
    "half_open_calls",
    "failure_status",
    "ignore_status",
    "failure_grpc_status",
    "mode",
    "open_status",
];

fn parse_breaker(mut b: Breaker, mut f: Fields) -> Option<Breaker> {
    report_unknown(&mut f, BREAKER_KEYS);
    let mut disabled = false;
    if let Some(v) = f.number("failure_rate_threshold", 0.0, 100.0) {
        b.failure_rate_threshold = v;
    }
    if let Some(v) = f.number("slow_call_rate_threshold", 0.0, 100.0) {
        b.slow_call_rate_threshold = v;
    }
    if let Some(v) = f.duration("slow_call_duration", 1) {
        b.slow_call_duration = v;
    }
    if let Some(window) = f.raw("window") {
        let path = f.path_of("window");
        if let Some(w) = parse_window(window, &path, f.errors) {
            b.window = w;
        }
    }
    if let Some(v) = f.int("minimum_calls", 1, u64::from(u32::MAX)) {
        b.minimum_calls = v as u32;
    }
    if let Some(v) = f.int("consecutive_failures", 0, u64::from(u32::MAX)) {
        b.consecutive_failures = v as u32;
    }
    if let Some(v) = f.duration("open_duration", 1) {
        b.open_duration = v;
    }
    if let Some(v) = f.duration("max_open_duration", 1) {
        b.max_open_duration = v;
    }
    if let Some(v) = f.number("open_duration_multiplier", 1.0, 100.0) {
        b.open_duration_multiplier = v;
    }
    if let Some(v) = f.int("half_open_calls", 1, 1000) {
        b.half_open_calls = v as u32;
    }
    if let Some(v) = f.status_set("failure_status") {
        b.failure_status = v;
    }
    if let Some(v) = f.status_set("ignore_status") {
        b.ignore_status = v;
    }
    if let Some(v) = f.grpc_codes("failure_grpc_status") {
        b.failure_grpc_status = v;
    }
    if let Some(mode) = f.choice("mode", &["enforce", "metrics_only", "forced_open", "disabled"]) {
        match mode {
            "metrics_only" => b.mode = BreakerMode::MetricsOnly,
            "forced_open" => b.mode = BreakerMode::ForcedOpen,
            "disabled" => disabled = true,
            _ => b.mode = BreakerMode::Enforce,
        }
    }
    if let Some(v) = f.int("open_status", 200, 599) {
        b.open_status = v as u32;
    }
    if b.max_open_duration < b.open_duration {
        let message = format!(
            "must be at least open_duration ({}), got {}",
            duration::format(b.open_duration),
            duration::format(b.max_open_duration)
        );
        f.error("max_open_duration", message);
    }
    (!disabled).then_some(b)
}

fn parse_window(value: &Value, path: &str, errors: &mut Errors) -> Option<Window> {
    let map = object(value, path, &["type", "size"], errors)?;
    let mut f = Fields { map, path: path.to_string(), errors };
    let time = match f.choice("type", &["count", "time"]) {
        Some(kind) => kind == "time",
        None if f.raw("type").is_some() => return None,
        None => false,
    };
    if time {
        match f.raw("size") {
            None => Some(Window::Time(60)),
            Some(Value::Number(_)) => {
                f.error("size", "a time window's size is a duration such as \"60s\"");
                None
            }
            Some(_) => {
                let nanos = f.duration("size", 1)?;
                if nanos % SECOND != 0 {
                    f.error("size", "must be whole seconds (the window counts in one-second buckets)");
                    return None;
                }
                let secs = nanos / SECOND;
                if secs > MAX_TIME_WINDOW_SECS {
                    f.error("size", format!("must be at most {MAX_TIME_WINDOW_SECS}s"));
                    return None;
                }
                Some(Window::Time(secs as u32))
            }
        }
    } else {
        match f.raw("size") {
            None => Some(Window::Count(20)),
            Some(Value::Number(n)) if n.as_u64() == Some(0) => {
                f.error("size", "must be > 0");
                None
            }
            Some(_) => f.int("size", 1, MAX_COUNT_WINDOW).map(|n| Window::Count(n as u32)),
        }
    }
}

/// The keys of a `dedup` section (also the fuzz generator's vocabulary).
pub const DEDUP_KEYS: &[&str] = &[
    "headers",
    "methods",
    "ttl",
    "in_flight_ttl",
    "on_missing",
    "duplicate_status",
    "success_status",
    "fingerprint",
    "scope",
    "max_entries",
    "mode",
    "body_key",
    "store",
];

fn parse_dedup(mut d: Dedup, mut f: Fields) -> Option<Dedup> {
    report_unknown(&mut f, DEDUP_KEYS);
    if let Some(headers) = f.str_list("headers", true, header_name_problem) {
        d.headers = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
    }
    if let Some(methods) = f.str_list("methods", true, method_problem) {
        d.methods = methods;
    }
    if let Some(v) = f.duration("ttl", 1) {
        d.ttl = v;
    }
    if let Some(v) = f.duration("in_flight_ttl", 1) {
        d.in_flight_ttl = v;
    }
    if let Some(v) = f.choice("on_missing", &["pass", "reject", "generate"]) {
        d.on_missing = match v {
            "reject" => OnMissing::Reject,
            "generate" => OnMissing::Generate,
            _ => OnMissing::Pass,
        };
    }
    match f.raw("duplicate_status") {
        None => {}
        Some(Value::String(s)) if s == "replay" => d.duplicate_status = DuplicateStatus::Replay,
        Some(Value::Number(_)) => {
            if let Some(code) = f.int("duplicate_status", 200, 599) {
                d.duplicate_status = DuplicateStatus::Fixed(code as u32);
            }
        }
        Some(other) => {
            f.error("duplicate_status", format!("must be \"replay\" or a status code from 200 to 599, got {other}"))
        }
    }
    if let Some(v) = f.status_set("success_status") {
        d.success_status = v;
    }
    if let Some(v) = f.choice("fingerprint", &["none", "method_path", "body"]) {
        d.fingerprint = match v {
            "method_path" => Fingerprint::MethodPath,
            "body" => Fingerprint::Body,
            _ => Fingerprint::None,
        };
    }
    if let Some(v) = f.choice("scope", &["rule", "caller"]) {
        d.scope = if v == "caller" { Scope::Caller } else { Scope::Rule };
    }
    if let Some(v) = f.int("max_entries", 1, MAX_DEDUP_ENTRIES) {
        d.max_entries = v as u32;
    }
    if let Some(v) = f.choice("mode", &["enforce", "metrics_only"]) {
        d.mode = if v == "metrics_only" { DedupMode::MetricsOnly } else { DedupMode::Enforce };
    }
    if let Some(value) = f.raw("store") {
        let path = f.path_of("store");
        if let Some(store) = parse_store(value, &path, f.errors) {
            d.store = store;
        }
    }
    if let Some(text) = f.str("body_key") {
        match crate::dedup::body_key::Pointer::parse(text) {
            Ok(pointer) => d.body_key = Some(pointer),
            Err(message) => f.error("body_key", message),
        }
    }
    Some(d)
}

/// `dedup.store`, replaced as a whole when a rule sets it.
fn parse_store(value: &Value, path: &str, errors: &mut Errors) -> Option<Store> {
    const KEYS: &[&str] = &["type", "cluster", "authority", "prefix", "timeout", "on_error"];
    let map = object(value, path, KEYS, errors)?;
    let mut f = Fields { map, path: path.to_string(), errors };
    match f.choice("type", &["local", "etcd"]) {
        Some("etcd") => {}
        Some(_) => {
            for key in ["cluster", "authority", "prefix", "timeout", "on_error"] {
                if f.raw(key).is_some() {
                    f.error(key, "only with \"type\": \"etcd\"");
                }
            }
            return Some(Store::Local);
        }
        None if f.raw("type").is_some() => return None,
        None => {
            f.error("type", "is required: \"local\" or \"etcd\"");
            return None;
        }
    }
    let cluster = match f.str("cluster") {
        Some(c) if !c.is_empty() => c.to_string(),
        Some(_) => {
            f.error("cluster", "must not be empty");
            return None;
        }
        None if f.raw("cluster").is_some() => return None,
        None => {
            f.error("cluster", "is required with \"type\": \"etcd\" (the Envoy cluster of etcd's client port)");
            return None;
        }
    };
    let authority = f.str("authority").map_or_else(|| cluster.clone(), str::to_string);
    if authority.is_empty() || !authority.bytes().all(|b| b.is_ascii_graphic()) {
        f.error("authority", "must be a host[:port] of visible ASCII");
    }
    let prefix = f.str("prefix").unwrap_or("/meshguard/").to_string();
    if !prefix.starts_with('/') || prefix.len() > 128 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        f.error("prefix", format!("must start with \"/\" and be at most 128 visible ASCII bytes, got {prefix:?}"));
    }
    let timeout = f.duration("timeout", 1_000_000).unwrap_or(100_000_000);
    if timeout > 10 * SECOND {
        f.error("timeout", "must be at most 10s (a request waits that long for etcd)");
    }
    let on_error = match f.choice("on_error", &["local", "reject", "pass"]) {
        Some("reject") => OnStoreError::Reject,
        Some("pass") => OnStoreError::Pass,
        _ => OnStoreError::Local,
    };
    Some(Store::Etcd(Etcd { cluster, authority, prefix, timeout, on_error }))
}

fn report_unknown(f: &mut Fields, keys: &[&str]) {
    let unknown: Vec<String> = f.map.keys().filter(|k| !keys.contains(&k.as_str())).cloned().collect();
    for key in unknown {
        f.error(&key, format!("unknown key (expected one of: {})", keys.join(", ")));
    }
}

fn method_problem(method: &str) -> Option<String> {
    (!is_token(method)).then(|| format!("invalid method {method:?}"))
}

fn parse_rules(value: &Value, breaker: &Option<Breaker>, dedup: &Option<Dedup>, errors: &mut Errors) -> Vec<Rule> {
    let Value::Array(items) = value else {
        errors.add("routes", format!("must be an array, got {}", kind(value)));
        return Vec::new();
    };
    if items.len() > MAX_RULES {
        errors.add("routes", format!("must have at most {MAX_RULES} rules, got {}", items.len()));
        return Vec::new();
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(items.len());
    let mut first_index: Vec<(String, usize)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("routes[{i}]");
        let Some(map) = object(item, &path, &["name", "match", "circuit_breaker", "dedup"], errors) else {
            continue;
        };
        let name = parse_rule_name(map, &path, errors);
        if let Some(name) = &name {
            match first_index.iter().find(|(n, _)| n == name) {
                Some((_, first)) => {
                    errors.add(&join(&path, "name"), format!("duplicate rule name {name:?} (also routes[{first}])"))
                }
                None => first_index.push((name.clone(), i)),
            }
        }
        let matcher = map.get("match").map(|m| parse_match(m, &join(&path, "match"), errors)).unwrap_or_default();
        let rule_breaker = section(
            map.get("circuit_breaker"),
            &join(&path, "circuit_breaker"),
            breaker.as_ref(),
            errors,
            parse_breaker,
        );
        let rule_dedup = section(map.get("dedup"), &join(&path, "dedup"), dedup.as_ref(), errors, parse_dedup);
        if let Some(name) = name {
            rules.push(Rule { name, matcher, circuit_breaker: rule_breaker, dedup: rule_dedup });
        }
    }
    rules
}

fn parse_rule_name(map: &Map<String, Value>, path: &str, errors: &mut Errors) -> Option<String> {
    let path = join(path, "name");
    let Some(value) = map.get("name") else {
        errors.add(&path, "is required");
        return None;
    };
    let Some(name) = value.as_str() else {
        errors.add(&path, format!("must be a string, got {}", kind(value)));
        return None;
    };
    // The name becomes a stat tag value (`rule=.=<name>;.;`) and a shared-data key part: keep it
    // to characters that survive both.
    let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if name.is_empty() || name.len() > 64 || !valid_chars {
        errors.add(&path, format!("must be 1-64 characters of A-Z a-z 0-9 _ - ., got {name:?}"));
        None
    } else if name == DEFAULT_RULE {
        errors.add(&path, "\"default\" is reserved for requests that match no rule");
        None
    } else {
        Some(name.to_string())
    }
}

fn parse_match(value: &Value, path: &str, errors: &mut Errors) -> Match {
    let mut m = Match::default();
    const KEYS: &[&str] = &["route_name", "cluster", "host", "prefix", "methods"];
    let Some(map) = object(value, path, KEYS, errors) else {
        return m;
    };
    let mut f = Fields { map, path: path.to_string(), errors };
    m.route_name = f.str("route_name").map(str::to_string);
    m.cluster = f.str("cluster").map(str::to_string);
    if let Some(host) = f.str("host") {
        if host.is_empty() || host.bytes().any(|b| !b.is_ascii_graphic() || b == b'/') {
            f.error("host", format!("invalid host {host:?}"));
        } else {
            m.host =
                Some(String::from_utf8_lossy(crate::rules::host_without_port(host.as_bytes())).to_ascii_lowercase());
        }
    }
    if let Some(prefix) = f.str("prefix") {
        if prefix.starts_with('/') {
            m.prefix = Some(prefix.to_string());
        } else {
            f.error("prefix", format!("must start with \"/\", got {prefix:?}"));
        }
    }
    if let Some(methods) = f.str_list("methods", true, method_problem) {
        m.methods = methods;
    }
    m
}

#[cfg(test)]
mod tests;
