//! The services a node can host, by the `kind` of its config: a fresh
//! instance (to start with, or to restore a snapshot into).

use crate::config::ServiceKind;
use tandem_core::sdk::Service;
use tandem_service_counter::Counter;
use tandem_service_echo::Echo;
use tandem_service_kv::Kv;

/// Settings a service takes at construction, from the `[[service]]`
/// section: the same on every node (they shape replies, so they are part of
/// the replicated state and travel in snapshots), never read while the log
/// is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// kv: Redis' `requirepass` (clients must `AUTH`); `None`: no password.
    pub requirepass: Option<String>,
}

/// A fresh service of `kind` with the default options.
pub fn fresh(kind: ServiceKind) -> Box<dyn Service> {
    fresh_with(kind, &ServiceOptions::default())
}

/// A fresh service of `kind` with `options` (those that do not apply to
/// the kind are refused when the config is read).
pub fn fresh_with(kind: ServiceKind, options: &ServiceOptions) -> Box<dyn Service> {
    match kind {
        ServiceKind::Kv => Box::new(Kv::with_config(tandem_service_kv::KvConfig {
            requirepass: options.requirepass.clone(),
            ..tandem_service_kv::KvConfig::default()
        })),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::sdk::{Action, ConnId, Event, Millis, Runtime};

    /// What kv answers `request` on a fresh connection.
    fn answer(options: &ServiceOptions, request: &[u8]) -> Vec<u8> {
        let mut rt = Runtime::new(fresh_with(ServiceKind::Kv, options), 1);
        let conn = ConnId(1);
        rt.apply(
            1,
            Millis(1_000),
            Event::Opened {
                conn,
                peer: "198.18.0.2:40000".parse().unwrap(),
            },
        );
        rt.apply(
            2,
            Millis(1_000),
            Event::Data {
                conn,
                bytes: request.to_vec(),
            },
        )
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .flatten()
        .collect()
    }

    #[test]
    fn requirepass_from_the_config_makes_kv_ask_for_auth() {
        let open = ServiceOptions::default();
        assert_eq!(answer(&open, b"PING\r\n"), b"+PONG\r\n");
        let locked = ServiceOptions {
            requirepass: Some("s3cret".into()),
        };
        let refused = answer(&locked, b"PING\r\n");
        assert!(refused.starts_with(b"-NOAUTH"), "{refused:?}");
        assert_eq!(
            answer(&locked, b"AUTH s3cret\r\nPING\r\n"),
            b"+OK\r\n+PONG\r\n"
        );
        let wrong = answer(&locked, b"AUTH nope\r\n");
        assert!(wrong.starts_with(b"-WRONGPASS"), "{wrong:?}");
    }
}
