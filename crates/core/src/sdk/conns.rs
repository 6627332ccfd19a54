//! The bridge between shadow TCP and the SDK: connection ids assigned in log
//! order, shadow events turned into service events, and service actions
//! pointed back at shadow connections.
//!
//! A [`ConnKey`] (client and server address) can come back after a
//! connection ends (a client reusing its port), so the service never sees
//! keys: each connection gets the next [`ConnId`] when shadow TCP reports
//! it opened, on every replica in the same log order.

use std::collections::BTreeMap;

use super::runtime::{put, put_addr, Reader};
use super::{ConnId, Event, SdkError};
use crate::shadow::{self, ConnKey, Outcome};

/// Open connections by key and by id, and the next id to hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections {
    ids: BTreeMap<ConnKey, ConnId>,
    keys: BTreeMap<ConnId, ConnKey>,
    next: u64,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            ids: BTreeMap::new(),
            keys: BTreeMap::new(),
            next: 1,
        }
    }
}

impl Connections {
    /// No connection yet; the first gets id 1.
    pub fn new() -> Connections {
        Connections::default()
    }

    /// The service events for one shadow outcome, in order. Assigns an id
    /// on `Opened`, forgets the connection when shadow TCP does (reset, or
    /// both sides closed).
    pub fn translate(&mut self, outcome: &Outcome) -> Vec<Event> {
        let key = outcome.conn;
        let mut events = Vec::new();
        for e in &outcome.events {
            if let shadow::Event::Opened = e {
                let conn = ConnId(self.next);
                self.next = self.next.wrapping_add(1);
                // A key still mapped (its end was never reported) is over
                // now: the service hears so before the new connection.
                if let Some(old) = self.ids.insert(key, conn) {
                    self.keys.remove(&old);
                    events.push(Event::Reset { conn: old });
                }
                self.keys.insert(conn, key);
                events.push(Event::Opened {
                    conn,
                    peer: key.client,
                });
                continue;
            }
            let Some(&conn) = self.ids.get(&key) else {
                continue;
            };
            match e {
                shadow::Event::Delivered(bytes) => events.push(Event::Data {
                    conn,
                    bytes: bytes.clone(),
                }),
                shadow::Event::PeerClosed => events.push(Event::PeerClosed { conn }),
                shadow::Event::Reset => {
                    events.push(Event::Reset { conn });
                    self.forget(conn);
                }
                shadow::Event::Closed | shadow::Event::TimeWaitEnded => self.forget(conn),
                _ => {}
            }
        }
        events
    }

    /// The shadow key of a connection, to carry out its actions
    /// ([`crate::shadow::ShadowTable::append_output`], `close`, `abort`).
    pub fn key(&self, conn: ConnId) -> Option<&ConnKey> {
        self.keys.get(&conn)
    }

    /// The id of an open connection's key.
    pub fn id(&self, key: &ConnKey) -> Option<ConnId> {
        self.ids.get(key).copied()
    }

    /// Forgets a connection (after an abort, or when the kernel gave up on
    /// the client and an abort entry was applied).
    pub fn forget(&mut self, conn: ConnId) {
        if let Some(key) = self.keys.remove(&conn) {
            self.ids.remove(&key);
        }
    }

    /// How many connections are mapped.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no connection is mapped.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A fixed encoding for snapshots.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = Vec::new();
        put(&mut w, self.next);
        put(&mut w, self.keys.len() as u64);
        for (id, key) in &self.keys {
            put(&mut w, id.0);
            put_addr(&mut w, &key.client);
            put_addr(&mut w, &key.server);
        }
        w
    }

    /// Rebuilds from [`Connections::snapshot`].
    pub fn restore(bytes: &[u8]) -> Result<Connections, SdkError> {
        let mut r = Reader(bytes);
        let mut c = Connections {
            next: r.u64()?,
            ..Connections::default()
        };
        for _ in 0..r.u64()? {
            let id = ConnId(r.u64()?);
            let key = ConnKey {
                client: r.addr()?,
                server: r.addr()?,
            };
            c.ids.insert(key, id);
            c.keys.insert(id, key);
        }
        if !r.0.is_empty() || c.ids.len() != c.keys.len() {
            return Err(SdkError::Snapshot("bad connection map".into()));
        }
        Ok(c)
    }

    /// FNV-1a 64 of the snapshot (small: one entry per open connection).
    pub fn state_hash(&self) -> u64 {
        crate::shadow::hash::Fnv64::new()
            .bytes(&self.snapshot())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ConnKey {
        ConnKey {
            client: format!("10.0.0.2:{port}").parse().unwrap(),
            server: "[fd00::1]:6379".parse().unwrap(),
        }
    }

    fn outcome(port: u16, events: Vec<shadow::Event>) -> Outcome {
        Outcome {
            conn: key(port),
            events,
        }
    }

    #[test]
    fn ids_in_log_order_and_translation() {
        let mut c = Connections::new();
        let a = c.translate(&outcome(1000, vec![shadow::Event::Opened]));
        let b = c.translate(&outcome(
            2000,
            vec![
                shadow::Event::Opened,
                shadow::Event::Delivered(b"hi".to_vec()),
                shadow::Event::Acked(5),
            ],
        ));
        assert_eq!(
            a,
            vec![Event::Opened {
                conn: ConnId(1),
                peer: key(1000).client
            }]
        );
        assert_eq!(
            b,
            vec![
                Event::Opened {
                    conn: ConnId(2),
                    peer: key(2000).client
                },
                Event::Data {
                    conn: ConnId(2),
                    bytes: b"hi".to_vec()
                },
            ]
        );
        assert_eq!(c.key(ConnId(2)), Some(&key(2000)));
        // A reset forgets; the same key reopened gets a new id.
        assert_eq!(
            c.translate(&outcome(1000, vec![shadow::Event::Reset])),
            vec![Event::Reset { conn: ConnId(1) }]
        );
        assert_eq!(c.id(&key(1000)), None);
        c.translate(&outcome(1000, vec![shadow::Event::Opened]));
        assert_eq!(c.id(&key(1000)), Some(ConnId(3)));
        // Reopened while still mapped: the old id is reset first.
        assert_eq!(
            c.translate(&outcome(1000, vec![shadow::Event::Opened])),
            vec![
                Event::Reset { conn: ConnId(3) },
                Event::Opened {
                    conn: ConnId(4),
                    peer: key(1000).client
                }
            ]
        );
        // Unknown keys produce nothing.
        assert!(c
            .translate(&outcome(9, vec![shadow::Event::PeerClosed]))
            .is_empty());
        let back = Connections::restore(&c.snapshot()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.state_hash(), c.state_hash());
        assert!(Connections::restore(&c.snapshot()[..10]).is_err());
    }
}
