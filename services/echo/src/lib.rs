//! Echo: the smallest tandem service. Every byte a client sends comes back;
//! when the client closes its side, so does the service. Used by tests to
//! check that output streams survive failover byte for byte.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};
use tandem_core::sdk::{Context, Event, SdkError, Service};

/// The echo service. Its only state is a count of what it has echoed, so
/// replicas have something to compare beyond the runtime's output hashes.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    /// Connections opened so far.
    pub connections: u64,
    /// Bytes echoed so far.
    pub bytes: u64,
}

impl Echo {
    /// A fresh service.
    pub fn new() -> Echo {
        Echo::default()
    }
}

impl Service for Echo {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        match event {
            Event::Opened { .. } => self.connections += 1,
            Event::Data { conn, bytes } => {
                self.bytes += bytes.len() as u64;
                ctx.send(conn, bytes);
            }
            Event::PeerClosed { conn } => ctx.close(conn),
            Event::Reset { .. } | Event::Timer { .. } => {}
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        // Two integers cannot fail to encode; an empty vector would only
        // make restore fail loudly.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Result<Self, SdkError> {
        postcard::from_bytes(bytes).map_err(|e| SdkError::Snapshot(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::sdk::{Action, ConnId, Millis, Runtime};

    fn rt() -> Runtime {
        Runtime::new(Box::new(Echo::new()), 1)
    }

    #[test]
    fn echoes_and_closes_after_the_client() {
        let mut rt = rt();
        let c = ConnId(1);
        rt.apply(
            1,
            Millis(0),
            Event::Opened {
                conn: c,
                peer: "10.0.0.1:1000".parse().unwrap(),
            },
        );
        assert_eq!(
            rt.apply(
                2,
                Millis(0),
                Event::Data {
                    conn: c,
                    bytes: b"hello".to_vec()
                }
            ),
            vec![Action::Send {
                conn: c,
                bytes: b"hello".to_vec()
            }]
        );
        assert_eq!(
            rt.apply(3, Millis(0), Event::PeerClosed { conn: c }),
            vec![Action::Close { conn: c }]
        );
        assert!(rt.connections().is_empty());
    }

    #[test]
    fn snapshot_round_trip() {
        let mut rt = rt();
        rt.apply(
            1,
            Millis(0),
            Event::Opened {
                conn: ConnId(1),
                peer: "10.0.0.1:1000".parse().unwrap(),
            },
        );
        rt.apply(
            2,
            Millis(0),
            Event::Data {
                conn: ConnId(1),
                bytes: b"abc".to_vec(),
            },
        );
        let snap = rt.service().snapshot();
        let back = Echo::restore(&snap).unwrap();
        assert_eq!(
            back,
            Echo {
                connections: 1,
                bytes: 3
            }
        );
        assert_eq!(back.state_hash(), rt.service().state_hash());
        let whole = Runtime::restore(&rt.snapshot(), |b| Ok(Box::new(Echo::restore(b)?))).unwrap();
        assert_eq!(whole.state_hash(), rt.state_hash());
        assert!(Echo::restore(&[0xff]).is_err());
    }
}
