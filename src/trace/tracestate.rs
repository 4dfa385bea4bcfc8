//! `tracestate`, W3C Trace Context Level 2 §3.3.
//!
//! Every header line is read and the lines are combined in order, as one comma-separated list.
//! Empty list members (and the white space around members) are allowed and skipped. A key that
//! appears again is reduced to its first member. A list with a member that breaks the key or value
//! grammar, or with more than 32 members, is discarded whole. That is what the W3C test suite
//! (`test/test.py`, 41 tests, strict level 2) checks: `foo=1,foo=2` keeps `foo=1`; `foo=,bar=3`,
//! `@foo=1,bar=2`, a 257-character key and 33 members leave no member at all.
//!
//! ```text
//! key      = ( lcalpha / DIGIT ) 0*255( keychar )
//! keychar  = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
//! value    = 0*255(chr) nblk-chr
//! nblk-chr = %x21-2B / %x2D-3C / %x3E-7E
//! chr      = %x20 / nblk-chr
//! ```
//!
//! (Level 1's `tenant@system` key form is a subset of Level 2's key.)

use super::traceparent::trim_ows;

/// At most this many list members.
pub const MAX_MEMBERS: usize = 32;

/// What the combined header lines amount to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State<'a> {
    /// No `tracestate` line at all.
    Absent,
    /// Lines were present but hold no member, or the list is invalid: remove the header.
    Discard,
    /// One valid line without duplicates: forward it as it is.
    Line(&'a [u8]),
    /// Several lines, or duplicates dropped: forward the members as this one line.
    Combined(String),
}

/// Validates and combines every `tracestate` line.
pub fn combine<'a>(lines: impl Iterator<Item = &'a [u8]>) -> State<'a> {
    let mut members: Vec<&'a [u8]> = Vec::new();
    let mut line_count = 0usize;
    let mut dropped = false;
    let mut first: &'a [u8] = &[];
    for line in lines {
        line_count += 1;
        if line_count == 1 {
            first = line;
        }
        for member in line.split(|&b| b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            let Some(key) = valid_member_key(member) else {
                return State::Discard;
            };
            if members.iter().any(|m| member_key(m) == key) {
                dropped = true;
                continue;
            }
            if members.len() == MAX_MEMBERS {
                return State::Discard;
            }
            members.push(member);
        }
    }
    match (line_count, members.is_empty()) {
        (0, _) => State::Absent,
        (_, true) => State::Discard,
        (1, false) if !dropped => State::Line(first),
        _ => {
            let mut out = String::with_capacity(members.iter().map(|m| m.len() + 1).sum());
            for (i, m) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // Members are validated ASCII.
                out.push_str(&String::from_utf8_lossy(m));
            }
            State::Combined(out)
        }
    }
}

fn member_key(member: &[u8]) -> &[u8] {
    member.split(|&b| b == b'=').next().unwrap_or(member)
}

/// The key of a valid `key=value` member.
fn valid_member_key(member: &[u8]) -> Option<&[u8]> {
    let eq = member.iter().position(|&b| b == b'=')?;
    let (key, value) = (member.get(..eq)?, member.get(eq + 1..)?);
    (valid_key(key) && valid_value(value)).then_some(key)
}

fn key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
}

pub fn valid_key(key: &[u8]) -> bool {
    matches!(key.first(), Some(&c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && key.len() <= 256
        && key.iter().all(|&c| key_char(c))
}

fn nblk_chr(c: u8) -> bool {
    matches!(c, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e)
}

pub fn valid_value(value: &[u8]) -> bool {
    matches!(value.last(), Some(&c) if nblk_chr(c))
        && value.len() <= 256
        && value.iter().all(|&c| c == b' ' || nblk_chr(c))
}
