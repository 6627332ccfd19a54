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
    }
}

/// The name of a kind, as written in configs.
pub fn kind_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Kv => "kv",
        ServiceKind::Echo => "echo",
        ServiceKind::Counter => "counter",
    }
}
