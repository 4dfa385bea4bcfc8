//! `traceparent` parsing and formatting, W3C Trace Context Level 1 and 2 §3.2.
//!
//! `version "-" trace-id "-" parent-id "-" trace-flags`, all lower-case hex. Version `00` is
//! exactly 55 characters. A higher version is parsed by its first 55 characters with the
//! version-00 layout, provided the flags are followed by the end of the value or by `-`; it is
//! forwarded as version `00`. Version `ff`, upper-case hex, all-zero ids, wrong lengths and wrong
//! separators are invalid. Spaces and tabs around the value are optional white space.

use super::{Context, RANDOM, SAMPLED};

/// Length of a version-00 `traceparent`.
pub const LEN: usize = 55;

/// A valid incoming `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub context: Context,
    /// The value is already the exact version-00 form meshguard would write (no white space, no
    /// future-version suffix), so propagating it needs no header write.
    pub canonical: bool,
}

/// Parses one header line.
pub fn parse(raw: &[u8]) -> Option<Parsed> {
    let value = trim_ows(raw);
    let head = value.get(..LEN)?;
    let version = hex_byte(head.get(0..2)?)?;
    if version == 0xff {
        return None;
    }
    match (version, value.get(LEN)) {
        (0, None) => {}
        (0, Some(_)) => return None,
        (_, None | Some(b'-')) => {}
        (_, Some(_)) => return None,
    }
    if head.get(2) != Some(&b'-') || head.get(35) != Some(&b'-') || head.get(52) != Some(&b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    hex_into(head.get(3..35)?, &mut trace_id)?;
    let mut parent_id = [0u8; 8];
    hex_into(head.get(36..52)?, &mut parent_id)?;
    let mut flags = hex_byte(head.get(53..55)?)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    if version != 0 {
        // Only the flags this version of the recommendation defines survive a version change.
        flags &= SAMPLED | RANDOM;
    }
    let canonical = version == 0 && value.len() == raw.len();
    Some(Parsed { context: Context { trace_id, parent_id, flags }, canonical })
}

/// `00-<trace-id>-<parent-id>-<flags>`.
pub fn format(context: &Context) -> String {
    let mut out = String::with_capacity(LEN);
    out.push_str("00-");
    crate::ids::push_hex(&mut out, &context.trace_id);
    out.push('-');
    crate::ids::push_hex(&mut out, &context.parent_id);
    out.push('-');
    crate::ids::push_hex(&mut out, &[context.flags]);
    out
}

/// Strips optional white space (SP and HTAB) from both ends.
pub fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Lower-case hex only: `traceparent` fields are `HEXDIGLC`.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    match two {
        [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
        _ => None,
    }
}

/// Decodes `2 * out.len()` lower-case hex characters.
pub(super) fn hex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(())
}
