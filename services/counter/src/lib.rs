//! Counter: a line protocol over tandem, used by tests.
//!
//! `INCR key\n` answers the key's new value (`N\n`, counters start at 0);
//! `GET key\n` answers the current value. Lines may end in `\r\n`. Anything
//! else answers `ERR ...\n` and the connection stays open; a line longer
//! than [`MAX_LINE`] answers an error and closes the connection (the buffer
//! must stay bounded whatever a client sends).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_core::sdk::{ConnId, Context, Event, SdkError, Service};

/// The longest line accepted, in bytes, without its end of line.
pub const MAX_LINE: usize = 4096;

/// The counter service.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The counters (a `BTreeMap`: deterministic order in snapshots).
    counters: BTreeMap<Vec<u8>, u64>,
    /// Per connection, the bytes of an unfinished line. Part of the state:
    /// a clone restored from a snapshot must finish the same line.
    partial: BTreeMap<ConnId, Vec<u8>>,
}

impl Counter {
    /// A fresh service.
    pub fn new() -> Counter {
        Counter::default()
    }

    /// The value of a counter (0 if never incremented).
    pub fn get(&self, key: &[u8]) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    fn line(&mut self, line: &[u8]) -> Vec<u8> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut words = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
        let cmd = words.next().map(|w| w.to_ascii_uppercase());
        let key = words.next();
        let extra = words.next().is_some();
        match (cmd.as_deref(), key, extra) {
            (Some(b"INCR"), Some(key), false) => {
                let v = self.counters.entry(key.to_vec()).or_insert(0);
                match v.checked_add(1) {
                    Some(n) => {
                        *v = n;
                        format!("{n}\n").into_bytes()
                    }
                    None => b"ERR overflow\n".to_vec(),
                }
            }
            (Some(b"GET"), Some(key), false) => format!("{}\n", self.get(key)).into_bytes(),
            (Some(b"INCR" | b"GET"), _, _) => b"ERR usage: INCR key | GET key\n".to_vec(),
            (None, _, _) => b"ERR empty line\n".to_vec(),
            (Some(_), _, _) => b"ERR unknown command\n".to_vec(),
        }
    }
}

impl Service for Counter {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        match event {
            Event::Opened { conn, .. } => {
                self.partial.insert(conn, Vec::new());
            }
            Event::Data { conn, bytes } => {
                // A connection we closed (or never saw) gets nothing more:
                // its late lines must not change the counters.
                let Some(mut buf) = self.partial.remove(&conn) else {
                    return;
                };
                buf.extend_from_slice(&bytes);
                let mut reply = Vec::new();
                let mut start = 0;
                let mut too_long = false;
                while let Some(nl) = buf[start..].iter().position(|&c| c == b'\n') {
                    // MAX_LINE + 1 leaves room for a '\r' before the '\n'.
                    if nl > MAX_LINE + 1 {
                        too_long = true;
                        break;
                    }
                    let line = buf[start..start + nl].to_vec();
                    reply.extend(self.line(&line));
                    start += nl + 1;
                }
                buf.drain(..start);
                if too_long || buf.len() > MAX_LINE + 1 {
                    // Refuse rather than buffer without bound.
                    reply.extend_from_slice(b"ERR line too long\n");
                    ctx.send(conn, reply);
                    ctx.close(conn);
                    return;
                }
                ctx.send(conn, reply);
                self.partial.insert(conn, buf);
            }
            Event::PeerClosed { conn } | Event::Reset { conn } => {
                self.partial.remove(&conn);
                ctx.close(conn);
            }
            Event::Timer { .. } => {}
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Result<Self, SdkError> {
        postcard::from_bytes(bytes).map_err(|e| SdkError::Snapshot(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::sdk::{Action, Millis, Runtime};

    fn send(rt: &mut Runtime, index: u64, conn: u64, bytes: &[u8]) -> Vec<Action> {
        rt.apply(
            index,
            Millis(0),
            Event::Data {
                conn: ConnId(conn),
                bytes: bytes.to_vec(),
            },
        )
    }

    fn open(rt: &mut Runtime, index: u64, conn: u64) {
        rt.apply(
            index,
            Millis(0),
            Event::Opened {
                conn: ConnId(conn),
                peer: "10.0.0.1:1000".parse().unwrap(),
            },
        );
    }

    fn sent(conn: u64, bytes: &[u8]) -> Vec<Action> {
        vec![Action::Send {
            conn: ConnId(conn),
            bytes: bytes.to_vec(),
        }]
    }

    #[test]
    fn incr_get_errors_and_split_lines() {
        let mut rt = Runtime::new(Box::new(Counter::new()), 1);
        open(&mut rt, 1, 1);
        open(&mut rt, 2, 2);
        assert_eq!(
            send(&mut rt, 3, 1, b"INCR a\nINCR a\r\nincr b\n"),
            sent(1, b"1\n2\n1\n")
        );
        assert_eq!(send(&mut rt, 4, 2, b"INC"), vec![]);
        assert_eq!(send(&mut rt, 5, 2, b"R a\nGET a\n"), sent(2, b"3\n3\n"));
        assert_eq!(
            send(&mut rt, 6, 1, b"FOO\nINCR\nINCR a b\n\nGET zz\n"),
            sent(1, b"ERR unknown command\nERR usage: INCR key | GET key\nERR usage: INCR key | GET key\nERR empty line\n0\n")
        );
    }

    #[test]
    fn an_endless_line_is_refused_and_closes_only_that_connection() {
        let mut rt = Runtime::new(Box::new(Counter::new()), 1);
        open(&mut rt, 1, 1);
        open(&mut rt, 2, 2);
        let acts = send(&mut rt, 3, 1, &vec![b'x'; MAX_LINE + 10]);
        assert_eq!(
            acts,
            vec![
                Action::Send {
                    conn: ConnId(1),
                    bytes: b"ERR line too long\n".to_vec()
                },
                Action::Close { conn: ConnId(1) }
            ]
        );
        assert_eq!(send(&mut rt, 4, 2, b"INCR k\n"), sent(2, b"1\n"));
        // Lines arriving after the close change nothing.
        assert_eq!(send(&mut rt, 5, 1, b"INCR k\n"), vec![]);
        assert_eq!(send(&mut rt, 6, 2, b"GET k\n"), sent(2, b"1\n"));
    }

    #[test]
    fn snapshot_round_trip_keeps_partial_lines() {
        let mut rt = Runtime::new(Box::new(Counter::new()), 1);
        open(&mut rt, 1, 1);
        send(&mut rt, 2, 1, b"INCR a\nINCR a\nINCR");
        let mut back =
            Runtime::restore(&rt.snapshot(), |b| Ok(Box::new(Counter::restore(b)?))).unwrap();
        assert_eq!(back.state_hash(), rt.state_hash());
        assert_eq!(send(&mut back, 3, 1, b" a\n"), sent(1, b"3\n"));
        assert_eq!(send(&mut rt, 3, 1, b" a\n"), sent(1, b"3\n"));
        assert_eq!(back.state_hash(), rt.state_hash());
        assert!(Counter::restore(&[0xff, 0xff]).is_err());
    }
}
