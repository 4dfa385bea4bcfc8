//! The only code that calls proxy-wasm. It reads host state, calls the pure core and applies what
//! the core decided; it holds no decision of its own. Compiled for wasm32-wasip1 only.

mod abi;
mod entropy;
mod http;
mod root;
mod wasm_host;

use proxy_wasm::types::LogLevel;

/// Called once per VM from `_initialize`.
pub fn start() {
    // Events go through `log` at info and above; a `debug!` costs nothing unless enabled here.
    proxy_wasm::set_log_level(LogLevel::Info);
    // Replaces the SDK's hook, which `unwrap`s inside the hook itself.
    std::panic::set_hook(Box::new(|info| {
        abi::log(LogLevel::Critical, &format!("meshguard: panic (VM is now unusable): {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(root::Root::default()));
}
