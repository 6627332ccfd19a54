//! tandem's WebAssembly host: a service compiled to WebAssembly (the
//! `tandem:service` WIT world, `wit/tandem-service.wit`) runs as a
//! [`tandem_core::sdk::Service`] inside every replica's state machine.
//!
//! # Determinism by construction
//!
//! Every replica must compute the same bytes from the same log, so the
//! engine is set up to leave a guest nothing that could differ:
//!
//! - **No imports but the host's.** The only functions a module may import
//!   are the `tandem:service/host` ones ([`HOST_MODULE`]); no WASI at all
//!   (no clock, randomness, files, sockets, environment). Time and
//!   randomness come from the [`Context`] (the log). A module importing
//!   anything else is refused when it is loaded.
//! - **No threads, no relaxed SIMD, NaNs canonicalized** (the three sources
//!   of nondeterminism the WebAssembly spec allows), one memory, 32-bit.
//! - **Fuel per event** ([`WasmConfig::fuel_per_event`]): instruction
//!   counting, not wall-clock epochs, so an event runs out of fuel at the
//!   same instruction on every replica.
//! - **A memory bound per instance** ([`WasmConfig::max_memory`]): a
//!   `memory.grow` past it fails (returns -1) the same way everywhere.
//! - **A fixed wasm stack** ([`WasmConfig::max_stack`]).
//!
//! # Failure: roll back the event, reset its connection
//!
//! A trap (a guest panic, out of fuel, out of memory, stack overflow) while
//! handling an event is deterministic, so every replica sees it at the same
//! event. The host then puts the instance back as it was before the event
//! (a fresh instance of the same module holding the last good memory and
//! globals: a half-done update, or memory leaked by an aborted allocation,
//! is gone) and reports the failure to the [`tandem_core::sdk::Runtime`] as
//! a contained panic: the runtime discards the event's actions, resets the
//! event's connection (RST) and delivers `closed` to the guest. Every other
//! connection continues; the daemon never notices. The price is one copy of
//! linear memory per event (see [`WasmService`]).
//!
//! # Why a core module and not a component (yet)
//!
//! The interface is WIT and guests are built with wit-bindgen; wit-bindgen's
//! output *is* a core module whose imports and exports follow the component
//! model's canonical ABI (`tandem:service/host@0.1.0` imports,
//! `tandem:service/handler@0.1.0#data` exports, `cabi_realloc`). The host
//! runs that core module directly and lowers the few calls itself
//! ([`abi`]): the component API of wasmtime hides a component's linear
//! memory and globals from the embedder, and the host needs exactly those to
//! snapshot an instance without the guest's help and to roll an event back.
//! Wrapping the module as a component adds nothing the host uses today.
//!
//! # Snapshots
//!
//! [`WasmService::snapshot`] is the instance state: the module's hash, the
//! memory's size, its non-zero 64 KiB pages, the exported mutable globals,
//! and a SHA-256 checksum over all of it ([`image`]). Restoring needs the
//! same module loaded on this node ([`registry`]): a snapshot of another
//! module is refused with both hashes named.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod abi;
pub mod guest_build;
pub mod image;
mod refusing;
pub mod registry;
mod service;

pub use refusing::Refusing;
pub use service::{GuestFailure, LoadedModule, WasmService};

/// The module name a guest imports the host functions from (the WIT
/// interface `tandem:service/host`, in the canonical ABI's naming).
pub const HOST_MODULE: &str = "tandem:service/host@0.1.0";

/// The default [`WasmConfig::fuel_per_event`]: 10 million units (about as
/// many simple wasm instructions; a few milliseconds of work).
pub const DEFAULT_FUEL_PER_EVENT: u64 = 10_000_000;

/// The default [`WasmConfig::max_memory`]: 64 MiB of linear memory.
pub const DEFAULT_MAX_MEMORY: u64 = 64 * 1024 * 1024;

/// The default [`WasmConfig::max_stack`]: 512 KiB of wasm stack.
pub const DEFAULT_MAX_STACK: usize = 512 * 1024;

/// The bounds of a wasm service. They decide which events trap, so every
/// replica must use the same values (they are part of the loaded module's
/// identity, [`registry::ModuleId`], which snapshots carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmConfig {
    /// Fuel (wasmtime's instruction metering) one event may burn; an event
    /// that needs more traps and is rolled back, and its connection is
    /// reset. Default [`DEFAULT_FUEL_PER_EVENT`]; 10,000 to 10^12.
    pub fuel_per_event: u64,
    /// Most linear memory an instance may have, in bytes; a `memory.grow`
    /// past it fails (a Rust guest then aborts: a trap, rolled back).
    /// Default [`DEFAULT_MAX_MEMORY`]; 1 MiB to 4 GiB.
    pub max_memory: u64,
    /// Most native stack wasm code may use, in bytes (deep recursion traps).
    /// Default [`DEFAULT_MAX_STACK`]; 64 KiB to 8 MiB.
    pub max_stack: usize,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            fuel_per_event: DEFAULT_FUEL_PER_EVENT,
            max_memory: DEFAULT_MAX_MEMORY,
            max_stack: DEFAULT_MAX_STACK,
        }
    }
}

impl WasmConfig {
    /// Checks the values are in range; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(10_000..=1_000_000_000_000).contains(&self.fuel_per_event) {
            return Err(format!(
                "wasm_fuel_per_event: {} is out of range (10000 to 10^12)",
                self.fuel_per_event
            ));
        }
        if !(1 << 20..=4 << 30).contains(&self.max_memory) {
            return Err(format!(
                "wasm_max_memory: {} bytes is out of range (1 MiB to 4 GiB)",
                self.max_memory
            ));
        }
        if !(64 << 10..=8 << 20).contains(&self.max_stack) {
            return Err(format!(
                "wasm_max_stack: {} bytes is out of range (64 KiB to 8 MiB)",
                self.max_stack
            ));
        }
        Ok(())
    }
}

/// Why a module could not be loaded or an instance not be made.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The settings are out of range.
    #[error("invalid wasm settings: {0}")]
    Config(String),
    /// wasmtime refused the module (not WebAssembly, or a feature that is
    /// off here: threads, relaxed SIMD, memory64, ...).
    #[error("the module does not compile: {0}")]
    Compile(String),
    /// The module imports something the host does not give.
    #[error("the module imports {module}::{name}, but tandem gives only {HOST_MODULE} (no WASI: time and randomness come from the log)")]
    Import {
        /// The import's module.
        module: String,
        /// The import's name.
        name: String,
    },
    /// The module lacks an export the host needs.
    #[error("the module does not export {0} (build it with tandem-guest or wit-bindgen for the tandem:service world)")]
    Export(String),
    /// Making an instance failed.
    #[error("instantiating the module failed: {0}")]
    Instantiate(String),
}
