//! The service a node runs when its wasm module could not be instantiated
//! after the configuration was accepted (it should not happen: the module
//! compiled and was checked at load): it resets every connection as it
//! opens and logs why, so the node stays up and says what is wrong instead
//! of dying in the middle of applying the log.

use tandem_core::sdk::{Context, Event, SdkError, Service};

/// Resets every connection, logging the reason.
#[derive(Debug, Clone)]
pub struct Refusing {
    reason: String,
}

impl Refusing {
    /// A service refusing connections because of `reason`.
    pub fn new(reason: String) -> Refusing {
        tracing::error!("the wasm service cannot run, every connection will be reset: {reason}");
        Refusing { reason }
    }
}

impl Service for Refusing {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        if let Event::Opened { conn, .. } = event {
            tracing::error!(?conn, "connection reset: {}", self.reason);
            ctx.abort(conn);
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(_bytes: &[u8]) -> Result<Self, SdkError> {
        Err(SdkError::Snapshot(
            "a wasm service that could not be instantiated has no state to restore".into(),
        ))
    }
}
