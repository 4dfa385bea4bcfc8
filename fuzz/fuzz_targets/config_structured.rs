//! `config::parse` on JSON built from the configuration's own vocabulary (SPEC "Configuration"):
//! random bytes rarely get past the JSON parser, these reach every validation branch, merged
//! route sections included. Same invariants as the `config` target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_fuzz::{check_config, json_config, Bytes};

fuzz_target!(|data: &[u8]| {
    let value = json_config(&mut Bytes(data));
    let text = value.to_string();
    check_config(text.as_bytes());
});
