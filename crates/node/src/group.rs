//! One replicated service as every replica runs it: committed log entries
//! in, effects out. No I/O, no clock: the same entries give the same
//! effects and the same state hash on every node (invariant I2).
//!
//! An entry carries captured packets (client → VIP and the primary's
//! SYN-ACKs), in capture order, plus the primary's own decisions (a client
//! the kernel gave up on, a timer that fell due). Applying it:
//! 1. every packet goes through shadow TCP, which turns it into connection
//!    events (opened, bytes, peer closed, reset);
//! 2. the events go to the service, through the SDK runtime, as one entry;
//! 3. the service's actions update shadow TCP's output bookkeeping and come
//!    out as [`Effect`]s: the primary carries them out on real sockets, the
//!    clones ignore them (their bookkeeping is already done).
//!
//! Connections get their [`ConnId`] in log order, so ids agree everywhere
//! whatever ports the primary's kernel used.

use crate::capture::segment_of;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tandem_core::sdk::{Action, ConnId, Event as SdkEvent, Runtime, Service, TimerId};
use tandem_core::shadow::{
    ConnKey, Direction, Event as ShadowEvent, Millis, ShadowConfig, ShadowTable,
};
use tandem_wire::tcp::{OptionsMode, ParseChecks};
use tandem_wire::IpTcpRepr;

/// One committed log entry of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The primary's clock when it proposed the entry, in ms; the SDK's
    /// `now()` never goes backwards whatever this says.
    pub timestamp_ms: u64,
    /// What happened, in order.
    pub items: Vec<Item>,
}

/// One thing in a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    /// A captured IP packet; `from_server` for the primary's SYN-ACKs.
    Packet { from_server: bool, bytes: Vec<u8> },
    /// The primary's kernel gave up on this client (keepalive, RTO): every
    /// replica forgets the connection at this point.
    Abort {
        client: SocketAddr,
        server: SocketAddr,
    },
    /// A timer the service set fell due.
    Timer { id: u64, generation: u64 },
}

/// What the primary does on its real sockets (clones ignore these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write these bytes to the connection's socket.
    Write { conn: ConnKey, bytes: Vec<u8> },
    /// Shut the sending side down (a deliberate FIN).
    Shutdown { conn: ConnKey },
    /// Abort the connection (a deliberate RST).
    Abort { conn: ConnKey },
    /// Propose [`Item::Timer`] once log time passes `at_ms`.
    Timer {
        id: u64,
        generation: u64,
        at_ms: u64,
    },
    /// Forget a timer.
    CancelTimer { id: u64 },
}

/// Counters of what applying saw; equal on every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub entries: u64,
    pub packets: u64,
    /// Logged packets that did not parse (the primary drops junk before
    /// proposing, so this stays 0 unless the log itself is wrong).
    pub unparsable: u64,
    /// Segments shadow TCP dropped (duplicates, out of window, ...): the
    /// kernel drops them too.
    pub shadow_drops: u64,
    pub opened: u64,
    pub closed: u64,
}

/// A service, its shadow TCP table and the connection ids.
pub struct ServiceGroup {
    shadow: ShadowTable,
    runtime: Runtime,
    ids: BTreeMap<ConnKey, ConnId>,
    keys: BTreeMap<ConnId, ConnKey>,
    next_id: u64,
    applied: u64,
    stats: GroupStats,
}

impl ServiceGroup {
    /// A group running `service`, with shadow TCP configured by `shadow`
    /// and the SDK's randomness seeded by `seed` (the same on every replica).
    pub fn new(service: Box<dyn Service>, shadow: ShadowConfig, seed: u64) -> ServiceGroup {
        ServiceGroup {
            shadow: ShadowTable::new(shadow),
            runtime: Runtime::new(service, seed),
            ids: BTreeMap::new(),
            keys: BTreeMap::new(),
            next_id: 0,
            applied: 0,
            stats: GroupStats::default(),
        }
    }

    /// The index of the last entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn stats(&self) -> GroupStats {
        self.stats
    }

    /// Shadow TCP, for images at takeover and for queries.
    pub fn shadow(&self) -> &ShadowTable {
        &self.shadow
    }

    /// Whether shadow TCP has an entry for this connection (the capture's
    /// classification asks).
    pub fn knows(&self, conn: &ConnKey) -> bool {
        self.shadow.info(conn).is_some()
    }

    /// The connection id of a 4-tuple, while it is open.
    pub fn id_of(&self, conn: &ConnKey) -> Option<ConnId> {
        self.ids.get(conn).copied()
    }

    /// The state hash: service, output hashes, timers (the runtime's) and
    /// shadow TCP, combined.
    pub fn state_hash(&self) -> u64 {
        let mut h = tandem_core::shadow::hash::Fnv64::new();
        h.u64(self.runtime.state_hash());
        h.u64(self.shadow.state_hash());
        h.u64(self.next_id);
        h.finish()
    }

    /// Applies the committed entry at `index` (indexes must increase; an
    /// entry at or below the last applied one is ignored: a replay).
    pub fn apply(&mut self, index: u64, entry: &LogEntry) -> Vec<Effect> {
        if index <= self.applied && self.stats.entries > 0 {
            return Vec::new();
        }
        self.applied = index;
        self.stats.entries += 1;
        let now = Millis(entry.timestamp_ms);
        let mut events = Vec::new();
        for item in &entry.items {
            match item {
                Item::Packet { from_server, bytes } => {
                    self.stats.packets += 1;
                    let checks = ParseChecks {
                        // Checked by the primary before proposing; the log is
                        // authenticated, so a replica need not check again.
                        verify_checksum: false,
                        options: OptionsMode::Linux,
                    };
                    let Ok(repr) = IpTcpRepr::parse(bytes, checks) else {
                        self.stats.unparsable += 1;
                        continue;
                    };
                    let direction = if *from_server {
                        Direction::FromServer
                    } else {
                        Direction::FromClient
                    };
                    let segment = segment_of(&repr);
                    let outcome = self.shadow.on_segment(now, direction, &segment);
                    self.translate(outcome.conn, outcome.events, &mut events);
                }
                Item::Abort { client, server } => {
                    let key = ConnKey {
                        client: *client,
                        server: *server,
                    };
                    if self.shadow.abort(&key) {
                        self.translate(key, vec![ShadowEvent::Reset], &mut events);
                    }
                }
                Item::Timer { id, generation } => events.push(SdkEvent::Timer {
                    id: TimerId(*id),
                    generation: *generation,
                }),
            }
        }
        let actions = self.runtime.apply_entry(index, now, events);
        self.carry_out(actions)
    }

    /// Shadow TCP's events for one connection, as SDK events.
    fn translate(
        &mut self,
        key: ConnKey,
        shadow_events: Vec<ShadowEvent>,
        out: &mut Vec<SdkEvent>,
    ) {
        for event in shadow_events {
            match event {
                ShadowEvent::Opened => {
                    let id = ConnId(self.next_id);
                    self.next_id += 1;
                    self.ids.insert(key, id);
                    self.keys.insert(id, key);
                    self.stats.opened += 1;
                    out.push(SdkEvent::Opened {
                        conn: id,
                        peer: key.client,
                    });
                }
                ShadowEvent::Delivered(bytes) => {
                    if let Some(&conn) = self.ids.get(&key) {
                        out.push(SdkEvent::Data { conn, bytes });
                    }
                }
                ShadowEvent::PeerClosed => {
                    if let Some(&conn) = self.ids.get(&key) {
                        out.push(SdkEvent::PeerClosed { conn });
                    }
                }
                ShadowEvent::Reset | ShadowEvent::Closed => {
                    if let Some(conn) = self.ids.remove(&key) {
                        self.keys.remove(&conn);
                        self.stats.closed += 1;
                        out.push(SdkEvent::Reset { conn });
                    }
                }
                ShadowEvent::Dropped(_) => self.stats.shadow_drops += 1,
                ShadowEvent::Acked(_)
                | ShadowEvent::HandshakeAborted
                | ShadowEvent::HalfOpenExpired
                | ShadowEvent::TimeWaitEnded => {}
            }
        }
    }

    /// Records the service's actions in shadow TCP and returns them as
    /// effects for the primary.
    fn carry_out(&mut self, actions: Vec<Action>) -> Vec<Effect> {
        let mut effects = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                Action::Send { conn, bytes } => {
                    if let Some(&key) = self.keys.get(&conn) {
                        if self.shadow.append_output(&key, &bytes).is_ok() {
                            effects.push(Effect::Write { conn: key, bytes });
                        }
                    }
                }
                Action::Close { conn } => {
                    if let Some(&key) = self.keys.get(&conn) {
                        if self.shadow.close(&key).is_ok() {
                            effects.push(Effect::Shutdown { conn: key });
                        }
                    }
                }
                Action::Abort { conn } => {
                    if let Some(key) = self.keys.remove(&conn) {
                        self.ids.remove(&key);
                        self.shadow.abort(&key);
                        self.stats.closed += 1;
                        effects.push(Effect::Abort { conn: key });
                    }
                }
                Action::SetTimer { id, generation, at } => effects.push(Effect::Timer {
                    id: id.0,
                    generation,
                    at_ms: at.0,
                }),
                Action::CancelTimer { id } => effects.push(Effect::CancelTimer { id: id.0 }),
            }
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tandem_wire::{IpRepr, Ipv4Repr, SeqNumber, TcpFlags, TcpOptionSet, TcpRepr, Timestamps};

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    struct Wire {
        client_port: u16,
        c_isn: u32,
        s_isn: u32,
        sent: u32,
        received: u32,
    }

    impl Wire {
        fn packet(
            &self,
            from_server: bool,
            flags: TcpFlags,
            seq: u32,
            ack: u32,
            payload: &[u8],
        ) -> Item {
            let (src, dst, sp, dp) = if from_server {
                (VIP, CLIENT, 6379, self.client_port)
            } else {
                (CLIENT, VIP, self.client_port, 6379)
            };
            let mut options = TcpOptionSet::default();
            if flags.contains(TcpFlags::SYN) {
                options.mss = Some(1460);
                options.window_scale = Some(7);
                options.sack_permitted = true;
            }
            options.timestamps = Some(Timestamps {
                tsval: 1000,
                tsecr: 0,
            });
            let repr = tandem_wire::IpTcpRepr {
                ip: IpRepr::V4(Ipv4Repr::tcp(src, dst)),
                tcp: TcpRepr {
                    src_port: sp,
                    dst_port: dp,
                    seq_number: SeqNumber(seq),
                    ack_number: SeqNumber(ack),
                    flags,
                    window_len: 500,
                    urgent_at: 0,
                    options,
                    payload,
                },
            };
            Item::Packet {
                from_server,
                bytes: repr.to_bytes().unwrap(),
            }
        }

        fn handshake(&self) -> Vec<Item> {
            vec![
                self.packet(false, TcpFlags::SYN, self.c_isn, 0, &[]),
                self.packet(
                    true,
                    TcpFlags::SYN | TcpFlags::ACK,
                    self.s_isn,
                    self.c_isn.wrapping_add(1),
                    &[],
                ),
                self.packet(
                    false,
                    TcpFlags::ACK,
                    self.c_isn.wrapping_add(1),
                    self.s_isn.wrapping_add(1),
                    &[],
                ),
            ]
        }

        /// The client sends `data`, acknowledging everything it got so far.
        fn send(&mut self, data: &[u8]) -> Item {
            let seq = self.c_isn.wrapping_add(1).wrapping_add(self.sent);
            self.sent += data.len() as u32;
            let ack = self.s_isn.wrapping_add(1).wrapping_add(self.received);
            self.packet(false, TcpFlags::ACK | TcpFlags::PSH, seq, ack, data)
        }
    }

    fn kv() -> ServiceGroup {
        ServiceGroup::new(
            Box::new(tandem_service_kv::Kv::new()),
            ShadowConfig::default(),
            42,
        )
    }

    fn writes(effects: &[Effect]) -> Vec<u8> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Write { bytes, .. } => Some(bytes.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// A Redis client's session, as the primary would log it, applied on two
    /// replicas: the same replies, the same hashes at every index.
    #[test]
    fn replicas_applying_the_same_log_agree_on_replies_and_hashes() {
        let mut wire = Wire {
            client_port: 40000,
            c_isn: u32::MAX - 3, // the client's stream wraps 2^32
            s_isn: 77,
            sent: 0,
            received: 0,
        };
        let mut entries = vec![LogEntry {
            timestamp_ms: 1_000,
            items: wire.handshake(),
        }];
        let mut requests = Vec::new();
        for (i, cmd) in [
            "*1\r\n$4\r\nPING\r\n".to_string(),
            "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n".to_string(),
            "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_string(),
            "*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n".to_string(),
            "*3\r\n$4\r\nSADD\r\n$1\r\ns\r\n$1\r\nb\r\n*3\r\n$4\r\nSADD\r\n$1\r\ns\r\n$1\r\na\r\n*1\r\n$7\r\nFOOBAR!\r\n".to_string(),
        ]
        .iter()
        .enumerate()
        {
            requests.push(cmd.clone());
            entries.push(LogEntry {
                timestamp_ms: 1_000 + i as u64,
                items: vec![wire.send(cmd.as_bytes())],
            });
        }
        let (mut a, mut b) = (kv(), kv());
        let mut replies = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let index = i as u64 + 1;
            let ea = a.apply(index, entry);
            let eb = b.apply(index, entry);
            assert_eq!(ea, eb, "replicas differ at index {index}");
            assert_eq!(
                a.state_hash(),
                b.state_hash(),
                "hashes differ at index {index}"
            );
            replies.extend(writes(&ea));
        }
        let replies = String::from_utf8(replies).unwrap();
        assert_eq!(
            replies,
            "+PONG\r\n+OK\r\n$5\r\nhello\r\n:1\r\n:2\r\n:1\r\n:1\r\n-ERR unknown command 'FOOBAR!', with args beginning with: \r\n",
            "requests: {requests:?}"
        );
        assert_eq!(a.stats().opened, 1);
        assert_eq!(a.stats().unparsable, 0);
        // A replayed entry changes nothing.
        let before = a.state_hash();
        assert!(a.apply(3, &entries[2]).is_empty());
        assert_eq!(a.state_hash(), before);
    }

    /// The primary's abort of a vanished client reaches the service as a
    /// reset on every replica, and the connection is forgotten.
    #[test]
    fn an_abort_entry_forgets_the_connection_everywhere() {
        let mut wire = Wire {
            client_port: 40001,
            c_isn: 5,
            s_isn: 9,
            sent: 0,
            received: 0,
        };
        let mut group = kv();
        group.apply(
            1,
            &LogEntry {
                timestamp_ms: 1,
                items: wire.handshake(),
            },
        );
        let key = ConnKey {
            client: SocketAddr::from((CLIENT, 40001)),
            server: SocketAddr::from((VIP, 6379)),
        };
        assert!(group.knows(&key));
        assert_eq!(group.id_of(&key), Some(ConnId(0)));
        group.apply(
            2,
            &LogEntry {
                timestamp_ms: 2,
                items: vec![Item::Abort {
                    client: key.client,
                    server: key.server,
                }],
            },
        );
        assert!(!group.knows(&key));
        assert_eq!(group.id_of(&key), None);
        // Later bytes on the old tuple reach nobody.
        let effects = group.apply(
            3,
            &LogEntry {
                timestamp_ms: 3,
                items: vec![wire.send(b"*1\r\n$4\r\nPING\r\n")],
            },
        );
        assert!(writes(&effects).is_empty());
    }

    #[test]
    fn entries_survive_their_wire_encoding() {
        let entry = LogEntry {
            timestamp_ms: 7,
            items: vec![
                Item::Packet {
                    from_server: true,
                    bytes: vec![1, 2, 3],
                },
                Item::Timer {
                    id: 4,
                    generation: 5,
                },
            ],
        };
        let bytes = postcard::to_stdvec(&entry).unwrap();
        assert_eq!(postcard::from_bytes::<LogEntry>(&bytes).unwrap(), entry);
        // Garbage in the log is refused by the decoder, not applied.
        assert!(postcard::from_bytes::<LogEntry>(&[0xff; 3]).is_err());
    }
}
