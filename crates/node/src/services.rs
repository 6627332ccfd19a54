//! The services a node can host, by the `kind` of its config: a fresh
//! instance (to start with, or to restore a snapshot into).

use crate::config::ServiceKind;
use tandem_core::sdk::Service;
use tandem_service_counter::Counter;
use tandem_service_echo::Echo;
use tandem_service_kv::Kv;

/// A fresh service of `kind`.
pub fn fresh(kind: ServiceKind) -> Box<dyn Service> {
    match kind {
        ServiceKind::Kv => Box::new(Kv::new()),
        ServiceKind::Echo => Box::new(Echo::new()),
        ServiceKind::Counter => Box::new(Counter::new()),
        // Config::load registered the module; if it somehow was not, the
        // node still runs and refuses every connection, saying why.
        ServiceKind::Wasm(id) => match tandem_wasm::WasmService::from_registry(&id) {
            Ok(service) => Box::new(service),
            Err(err) => Box::new(tandem_wasm::Refusing::new(err.to_string())),
        },
    }
}

/// The name of a kind, as written in configs.
pub fn kind_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Kv => "kv",
        ServiceKind::Echo => "echo",
        ServiceKind::Counter => "counter",
        // `wasm:<first 8 bytes of the module's SHA-256>`, so status shows
        // which bytes each node runs.
        ServiceKind::Wasm(id) => tandem_wasm::registry::label(&id),
    }
}
