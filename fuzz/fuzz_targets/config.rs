//! `config::parse` on arbitrary bytes: the plugin configuration as Envoy hands it over.
//!
//! Invariants: never panics; deterministic; an accepted configuration is within every documented
//! bound (so the shared-data layouts it sizes are bounded); a rejected one gives at least one
//! error, each `path: message` on one line (they are joined into one Envoy log line).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_fuzz::check_config;

fuzz_target!(|data: &[u8]| {
    check_config(data);
});
