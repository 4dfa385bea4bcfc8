//! Walking the configuration JSON while collecting every error with its JSON path, so that an
//! operator sees all mistakes in one log line instead of fixing them one reload at a time.

use serde_json::{Map, Value};

use super::status::{GrpcCodes, StatusSet};
use super::{duration, status};

/// All errors of one configuration, each `path: message`.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<String>);

impl Errors {
    pub fn add(&mut self, path: &str, message: impl std::fmt::Display) {
        let path = if path.is_empty() { "$" } else { path };
        let line = format!("{path}: {message}");
        // Paths hold the configuration's own keys, raw: a line break or escape sequence in one
        // would split or forge the one Envoy log line the errors go to (found by fuzzing).
        let line = if line.chars().any(char::is_control) {
            line.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect()
        } else {
            line
        };
        self.0.push(line);
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The object at `path`, after reporting every key not in `allowed`.
pub fn object<'v>(
    value: &'v Value,
    path: &str,
    allowed: &[&str],
    errors: &mut Errors,
) -> Option<&'v Map<String, Value>> {
    let Value::Object(map) = value else {
        errors.add(path, format!("must be an object, got {}", kind(value)));
        return None;
    };
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            errors.add(&join(path, key), format!("unknown key (expected one of: {})", allowed.join(", ")));
        }
    }
    Some(map)
}

/// Reads the fields of one object; every getter returns `None` when the key is absent or wrong
/// (the error is recorded), so callers keep their default and go on validating.
pub struct Fields<'v, 'e> {
    pub map: &'v Map<String, Value>,
    pub path: String,
    pub errors: &'e mut Errors,
}

impl<'v> Fields<'v, '_> {
    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn error(&mut self, key: &str, message: impl std::fmt::Display) {
        let path = self.path_of(key);
        self.errors.add(&path, message);
    }

    pub fn raw(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key)
    }

    fn typed<T>(&mut self, key: &str, expected: &str, read: impl FnOnce(&'v Value) -> Option<T>) -> Option<T> {
        let value = self.map.get(key)?;
        let result = read(value);
        if result.is_none() {
            self.error(key, format!("must be {expected}, got {}", kind(value)));
        }
        result
    }

    pub fn bool(&mut self, key: &str) -> Option<bool> {
        self.typed(key, "a boolean", Value::as_bool)
    }

    pub fn str(&mut self, key: &str) -> Option<&'v str> {
        self.typed(key, "a string", Value::as_str)
    }

    /// A non-negative integer within `lo..=hi`.
    pub fn int(&mut self, key: &str, lo: u64, hi: u64) -> Option<u64> {
        let value = self.map.get(key)?;
        match value.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => Some(n),
            Some(_) | None if value.is_number() => {
                self.error(key, format!("must be an integer from {lo} to {hi}, got {value}"));
                None
            }
            _ => {
                self.error(key, format!("must be an integer, got {}", kind(value)));
                None
            }
        }
    }

    /// A number within `lo..=hi`.
    pub fn number(&mut self, key: &str, lo: f64, hi: f64) -> Option<f64> {
        let n = self.typed(key, "a number", Value::as_f64)?;
        if (lo..=hi).contains(&n) {
            Some(n)
        } else {
            self.error(key, format!("must be from {lo} to {hi}, got {n}"));
            None
        }
    }

    /// One of the listed strings.
    pub fn choice(&mut self, key: &str, choices: &[&str]) -> Option<&'v str> {
        let text = self.str(key)?;
        if choices.contains(&text) {
            Some(text)
        } else {
            self.error(key, format!("must be one of {}, got {text:?}", quoted(choices)));
            None
        }
    }

    /// A duration string, at least `min` nanoseconds.
    pub fn duration(&mut self, key: &str, min: u64) -> Option<u64> {
        let text = self.str(key)?;
        match duration::parse(text) {
            Ok(nanos) if nanos >= min => Some(nanos),
            Ok(_) if min <= 1 => {
                self.error(key, "must be greater than 0");
                None
            }
            Ok(_) => {
                self.error(key, format!("must be at least {}", duration::format(min)));
                None
            }
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }

    /// A status set: an array of codes, ranges and classes.
    pub fn status_set(&mut self, key: &str) -> Option<StatusSet> {
        let items = self.typed(key, "an array", Value::as_array)?;
        let mut set = StatusSet::EMPTY;
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let parsed = match item {
                Value::Number(n) => match n.as_u64().filter(|c| (100..=599).contains(c)) {
                    Some(code) => Ok((code as u32, code as u32)),
                    None => Err(format!("invalid status {n} (expected a code from 100 to 599)")),
                },
                Value::String(text) => status::parse_item(text),
                other => Err(format!("must be a status code, range or class, got {}", kind(other))),
            };
            match parsed {
                Ok((lo, hi)) => set.insert_range(lo, hi),
                Err(message) => {
                    ok = false;
                    let path = format!("{}[{i}]", self.path_of(key));
                    self.errors.add(&path, message);
                }
            }
        }
        ok.then_some(set)
    }

    /// An array of gRPC status codes (integers 0-16).
    pub fn grpc_codes(&mut self, key: &str) -> Option<GrpcCodes> {
        let items = self.typed(key, "an array", Value::as_array)?;
        let mut codes = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.as_u64().filter(|c| *c <= u64::from(GrpcCodes::MAX)) {
                Some(code) => codes.push(code as u32),
                None => {
                    ok = false;
                    let path = format!("{}[{i}]", self.path_of(key));
                    self.errors.add(&path, format!("must be a gRPC status code from 0 to 16, got {item}"));
                }
            }
        }
        ok.then(|| GrpcCodes::of(&codes))
    }

    /// An array of strings, each checked by `valid` (which returns the problem, if any).
    pub fn str_list(
        &mut self,
        key: &str,
        non_empty: bool,
        valid: impl Fn(&str) -> Option<String>,
    ) -> Option<Vec<String>> {
        let items = self.typed(key, "an array of strings", Value::as_array)?;
        if non_empty && items.is_empty() {
            self.error(key, "must not be empty");
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.path_of(key));
            match item.as_str() {
                Some(text) => match valid(text) {
                    None => out.push(text.to_string()),
                    Some(problem) => {
                        ok = false;
                        self.errors.add(&path, problem);
                    }
                },
                None => {
                    ok = false;
                    self.errors.add(&path, format!("must be a string, got {}", kind(item)));
                }
            }
        }
        ok.then_some(out)
    }
}

pub fn quoted(choices: &[&str]) -> String {
    choices.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
}

/// RFC 9110 `token` characters: what header names and methods are made of.
pub fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The problem with a header name given in the configuration, if any.
pub fn header_name_problem(name: &str) -> Option<String> {
    // Names are case-insensitive (RFC 9110); callers store them lower-case, as Envoy does.
    (!is_token(name)).then(|| format!("invalid header name {name:?}"))
}
