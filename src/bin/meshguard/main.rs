//! `meshguard`, the native command line: `meshguard validate FILE...` checks meshguard
//! configurations with the parser the filter runs in `on_configure` (`meshguard::config::parse`)
//! before they reach a sidecar. Installed with `cargo install --path . --features cli`
//! (docs/validate.md).

mod validate;

use std::io::{self, Write};

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    let code = validate::main(&args, &mut stdin.lock(), &mut out);
    // A closed pipe (`meshguard validate … | head`) is not worth a panic message.
    let _ = out.flush();
    std::process::exit(code);
}
