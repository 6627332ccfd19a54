//! The wasm modules this process has loaded, by identity.
//!
//! Why a process-wide table: a snapshot is restored through
//! `Service::restore(bytes)`, which is given nothing but the bytes, and the
//! node picks a fresh service from a `Copy` kind. So a snapshot names its
//! module by [`ModuleId`] and the kind carries the same id; both find the
//! compiled module here. The node registers its module once, when it reads
//! its configuration. A snapshot of a module this node did not load is
//! refused with a clear error, which is how a replica running other bytes
//! (or other limits) finds out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::LoadedModule;

/// A loaded module's identity: SHA-256 over the module's own SHA-256 and
/// the [`crate::WasmConfig`] values (the bounds decide which events trap,
/// so they are part of what replicas must agree on).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleId(pub [u8; 32]);

impl std::fmt::Debug for ModuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModuleId({})", self.short())
    }
}

impl ModuleId {
    /// The first 8 bytes in hex, for messages and status.
    pub fn short(&self) -> String {
        hex(&self.0[..8])
    }
}

impl std::fmt::Display for ModuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Entry {
    module: Arc<LoadedModule>,
    label: &'static str,
}

static MODULES: Mutex<BTreeMap<ModuleId, Entry>> = Mutex::new(BTreeMap::new());

/// Registers `module` (again: a no-op) and returns its id.
pub fn register(module: Arc<LoadedModule>) -> ModuleId {
    let id = module.id();
    let mut modules = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    modules.entry(id).or_insert_with(|| {
        // Leaked once per distinct module a process loads (one, for a
        // node): the label is handed out as a `&'static str` kind name.
        let label: &'static str =
            Box::leak(format!("wasm:{}", hex(&module.hash()[..8])).into_boxed_str());
        Entry { module, label }
    });
    id
}

/// The module registered under `id`.
pub fn lookup(id: &ModuleId) -> Option<Arc<LoadedModule>> {
    let modules = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    modules.get(id).map(|e| Arc::clone(&e.module))
}

/// `wasm:<first 8 bytes of the module's SHA-256 in hex>` for a registered
/// module, `wasm:unloaded` otherwise: the kind name a node reports.
pub fn label(id: &ModuleId) -> &'static str {
    let modules = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    modules.get(id).map(|e| e.label).unwrap_or("wasm:unloaded")
}
