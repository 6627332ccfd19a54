//! The core-module ABI of the `tandem:service` world, as wit-bindgen emits
//! it for a guest (the component model's canonical ABI, lowered by hand
//! here because the host runs the core module: see the crate docs).
//!
//! Imports, all from module [`crate::HOST_MODULE`] (`i64` is a WIT `u64`,
//! a `list<u8>` or `string` is a pointer and a length into the guest's
//! memory, `bool` an `i32`):
//!
//! | WIT                                  | core signature           |
//! |--------------------------------------|--------------------------|
//! | `send(conn, bytes) -> bool`          | `(i64, i32, i32) -> i32` |
//! | `shutdown(conn)` / `close(conn)`     | `(i64)`                  |
//! | `set-timer(id, at-ms) -> u64`        | `(i64, i64) -> i64`      |
//! | `cancel-timer(id)`                   | `(i64)`                  |
//! | `now() -> u64` / `random() -> u64`   | `() -> i64`              |
//! | `log(message)`                       | `(i32, i32)`             |
//!
//! Exports: `memory`, `cabi_realloc(old, old_len, align, len) -> ptr`
//! (the host allocates the arguments of `opened` and `data` with it, and
//! the guest owns them after the call), and the handler functions named
//! `tandem:service/handler@0.1.0#<name>`:
//!
//! | WIT                          | core signature     |
//! |------------------------------|--------------------|
//! | `opened(conn, peer: string)` | `(i64, i32, i32)`  |
//! | `data(conn, bytes)`          | `(i64, i32, i32)`  |
//! | `half-closed(conn)`          | `(i64)`            |
//! | `closed(conn)`               | `(i64)`            |
//! | `timer(id, generation)`      | `(i64, i64)`       |
//!
//! Any language whose component tooling targets this world produces this
//! module (before `wasm-tools component new` would wrap it).

/// The prefix of the handler exports.
pub const HANDLER_PREFIX: &str = "tandem:service/handler@0.1.0#";

/// The guest allocator export.
pub const REALLOC: &str = "cabi_realloc";

/// The linear memory export.
pub const MEMORY: &str = "memory";

/// The handler export for `name` (`"data"` → `tandem:service/handler@0.1.0#data`).
pub fn handler(name: &str) -> String {
    format!("{HANDLER_PREFIX}{name}")
}

/// The host functions a guest may import (from [`crate::HOST_MODULE`]).
pub const HOST_FUNCTIONS: [&str; 8] = [
    "send",
    "shutdown",
    "close",
    "set-timer",
    "cancel-timer",
    "now",
    "random",
    "log",
];
