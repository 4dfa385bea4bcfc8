//! Rule matching (docs/behaviour.md, "Configuration and rules"): the first rule whose every given
//! `match` field matches wins; no match means the `default` rule. Facts are fetched lazily, because
//! each one the shell reads is a host call: a configuration that matches only on path never pays
//! for `xds.route_name`.

use crate::config::{Match, Rule};

/// What a rule can look at. Each getter may be expensive the first time and must be cheap after.
pub trait Facts {
    fn method(&mut self) -> Option<&[u8]>;
    fn path(&mut self) -> Option<&[u8]>;
    fn authority(&mut self) -> Option<&[u8]>;
    fn route_name(&mut self) -> Option<&[u8]>;
    fn cluster(&mut self) -> Option<&[u8]>;
}

/// Index of the first matching rule, `None` for the default rule.
pub fn select(rules: &[Rule], facts: &mut impl Facts) -> Option<usize> {
    rules.iter().position(|rule| matches(&rule.matcher, facts))
}

fn matches(m: &Match, facts: &mut impl Facts) -> bool {
    // Cheapest facts first: headers already read before properties that cost a host call.
    if !m.methods.is_empty() {
        let Some(method) = facts.method() else {
            return false;
        };
        if !m.methods.iter().any(|x| x.as_bytes() == method) {
            return false;
        }
    }
    if let Some(prefix) = &m.prefix {
        if !facts.path().is_some_and(|p| p.starts_with(prefix.as_bytes())) {
            return false;
        }
    }
    if let Some(host) = &m.host {
        let Some(authority) = facts.authority() else {
            return false;
        };
        if !host_without_port(authority).eq_ignore_ascii_case(host.as_bytes()) {
            return false;
        }
    }
    if let Some(name) = &m.route_name {
        if facts.route_name() != Some(name.as_bytes()) {
            return false;
        }
    }
    if let Some(cluster) = &m.cluster {
        if facts.cluster() != Some(cluster.as_bytes()) {
            return false;
        }
    }
    true
}

/// `:authority` without its port: `host:8080` → `host`, `[::1]:80` → `[::1]`.
pub fn host_without_port(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        let end = authority.iter().position(|&b| b == b']').map_or(authority.len(), |i| i + 1);
        // Only a port may follow the bracket, as for a name: `[::1]junk` is not host `[::1]`.
        let port = authority.get(end..).unwrap_or_default();
        let port_only = port.is_empty() || port.first() == Some(&b':') && port.iter().skip(1).all(u8::is_ascii_digit);
        return if port_only { authority.get(..end).unwrap_or(authority) } else { authority };
    }
    match authority.iter().rposition(|&b| b == b':') {
        Some(colon) if authority.get(colon + 1..).is_some_and(|port| port.iter().all(u8::is_ascii_digit)) => {
            authority.get(..colon).unwrap_or(authority)
        }
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config;

    /// Request facts with a record of which ones were asked for.
    #[derive(Default)]
    struct Req {
        method: Option<Vec<u8>>,
        path: Option<Vec<u8>>,
        authority: Option<Vec<u8>>,
        route_name: Option<Vec<u8>>,
        cluster: Option<Vec<u8>>,
        asked: Vec<&'static str>,
    }

    impl Req {
        fn new(method: &str, authority: &str, path: &str) -> Req {
            Req {
                method: Some(method.into()),
                path: Some(path.into()),
                authority: Some(authority.into()),
                ..Req::default()
            }
        }
        fn route(mut self, name: &str, cluster: &str) -> Req {
            self.route_name = Some(name.into());
            self.cluster = Some(cluster.into());
            self
        }
    }

    impl Facts for Req {
        fn method(&mut self) -> Option<&[u8]> {
            self.asked.push("method");
            self.method.as_deref()
        }
        fn path(&mut self) -> Option<&[u8]> {
            self.asked.push("path");
            self.path.as_deref()
        }
        fn authority(&mut self) -> Option<&[u8]> {
            self.asked.push("authority");
            self.authority.as_deref()
        }
        fn route_name(&mut self) -> Option<&[u8]> {
            self.asked.push("route_name");
            self.route_name.as_deref()
        }
        fn cluster(&mut self) -> Option<&[u8]> {
            self.asked.push("cluster");
            self.cluster.as_deref()
        }
    }

    fn rules(json: &str) -> Vec<Rule> {
        match config::parse(json.as_bytes()) {
            Ok(c) => c.rules,
            Err(e) => unreachable!("test config rejected: {e:?}"),
        }
    }

    fn name_of(rules: &[Rule], req: &mut Req) -> String {
        select(rules, req).map_or("default".to_string(), |i| rules[i].name.clone())
    }

    const SPEC_RULES: &str = r#"{"routes": [
        {"name": "payments", "match": {"route_name": "payments-v1",
            "cluster": "outbound|8080||payments.prod.svc.cluster.local",
            "host": "payments.prod", "prefix": "/charge", "methods": ["POST"]}},
        {"name": "health", "match": {"prefix": "/healthz"}},
        {"name": "orders", "match": {"host": "Orders.Prod", "methods": ["GET", "POST"]}}
    ]}"#;

    #[test]
    fn first_rule_whose_every_field_matches_wins() {
        let rules = rules(SPEC_RULES);
        let cluster = "outbound|8080||payments.prod.svc.cluster.local";
        let cases: Vec<(Req, &str)> = vec![
            (Req::new("POST", "payments.prod:8080", "/charge/1").route("payments-v1", cluster), "payments"),
            (Req::new("POST", "payments.prod", "/charge").route("payments-v1", cluster), "payments"),
            (Req::new("GET", "payments.prod", "/charge").route("payments-v1", cluster), "default"),
            (Req::new("POST", "payments.prod", "/charge").route("payments-v2", cluster), "default"),
            (Req::new("POST", "payments.prod", "/charge").route("payments-v1", "other"), "default"),
            (Req::new("POST", "payments.prod", "/refund").route("payments-v1", cluster), "default"),
            (Req::new("POST", "payments.staging", "/charge").route("payments-v1", cluster), "default"),
            (Req::new("GET", "anything", "/healthz"), "health"),
            (Req::new("GET", "anything", "/healthz/live?x=1"), "health"),
            (Req::new("GET", "orders.prod:443", "/x"), "orders"),
            (Req::new("GET", "ORDERS.PROD", "/x"), "orders"),
            (Req::new("PUT", "orders.prod", "/x"), "default"),
            (Req::new("post", "orders.prod", "/x"), "default"),
        ];
        for (mut req, expected) in cases {
            let what = format!("{:?} {:?} {:?}", req.method, req.authority, req.path);
            assert_eq!(name_of(&rules, &mut req), expected, "{what}");
        }
    }

    #[test]
    fn unnamed_route_matches_no_route_name_rule() {
        let rules = rules(r#"{"routes": [{"name": "r", "match": {"route_name": "x"}}]}"#);
        let mut req = Req::new("GET", "h", "/");
        assert_eq!(name_of(&rules, &mut req), "default");
    }

    #[test]
    fn rule_without_match_matches_everything() {
        let rules = rules(r#"{"routes": [{"name": "all"}]}"#);
        assert_eq!(name_of(&rules, &mut Req::default()), "all");
    }

    #[test]
    fn expensive_facts_are_not_fetched_when_cheap_ones_decide() {
        let rules = rules(SPEC_RULES);
        let mut req = Req::new("GET", "h", "/healthz").route("payments-v1", "c");
        assert_eq!(name_of(&rules, &mut req), "health");
        assert!(!req.asked.contains(&"route_name"), "{:?}", req.asked);
        assert!(!req.asked.contains(&"cluster"), "{:?}", req.asked);
    }

    #[test]
    fn authority_port_is_stripped() {
        let cases: &[(&str, &str)] = &[
            ("host", "host"),
            ("host:8080", "host"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("host:", "host"),
            ("a:b", "a:b"),
            ("", ""),
        ];
        for (authority, host) in cases {
            assert_eq!(host_without_port(authority.as_bytes()), host.as_bytes(), "{authority}");
        }
    }

    #[test]
    fn only_a_port_is_stripped_after_an_ip_literal() {
        // Found by the event_key fuzz target: `[q]` followed by other bytes was cut to `[q]`, so
        // a malformed authority matched a rule's host.
        let cases: &[(&[u8], &[u8])] = &[
            (b"[q]\0\0\x04\xaa", b"[q]\0\0\x04\xaa"),
            (b"[::1]junk", b"[::1]junk"),
            (b"[::1]:80x", b"[::1]:80x"),
            (b"[::1]:", b"[::1]"),
            (b"[::1]:8080", b"[::1]"),
            (b"[::1", b"[::1"),
        ];
        for (authority, host) in cases {
            assert_eq!(host_without_port(authority), *host, "{}", String::from_utf8_lossy(authority));
        }
    }
}
