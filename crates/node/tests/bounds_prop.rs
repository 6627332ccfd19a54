//! Property test of the bounds at the service-group level (issue 10): kv
//! clients send arbitrary sequences of big SETs, pipelined GETs and DELs,
//! one of them never acknowledging what it is sent, as real IPv4/TCP
//! packets the way the primary logs them. Checked after every packet:
//!
//! - no connection's queued output (shadow TCP's unacknowledged bytes)
//!   passes `output_cap`;
//! - the accounted memory stays within `max_memory` plus a stated constant
//!   ([`slack`]: one write's growth, each connection's unparsed input and
//!   its queued output);
//! - the runtime's queued-output figure equals shadow TCP's.
//!
//! And a second replica fed the same packets batched differently into log
//! entries ends with the same state hash (at every common boundary) and
//! wrote byte-identical output on every connection.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use tandem_core::sdk::{Limits, CONNECTION_CHARGE};
use tandem_core::shadow::{ConnKey, ShadowConfig};
use tandem_node::group::{Effect, Item, LogEntry, ServiceGroup};
use tandem_service_kv::Kv;
use tandem_wire::{
    IpRepr, IpTcpRepr, Ipv4Repr, SeqNumber, TcpFlags, TcpOptionSet, TcpRepr, Timestamps,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 6379;
const CLIENTS: usize = 3;
/// Value sizes the SETs draw from (the largest is the `slack` unit).
const SIZES: [usize; 4] = [10, 3_000, 40_000, 150_000];
const SEGMENT: usize = 16 * 1024;

fn limits() -> Limits {
    Limits {
        output_cap: 256 * 1024,
        max_memory: 1024 * 1024,
        ..Limits::default()
    }
}

/// What the accounted memory may exceed `max_memory` by: the write that
/// crosses the budget (at most one value and its key), every connection's
/// unparsed input (at most one request in this test) and its charge, and
/// every connection's queued output (at most the cap).
fn slack() -> u64 {
    let biggest = *SIZES.iter().max().unwrap() as u64 + 1024;
    biggest + CLIENTS as u64 * (biggest + CONNECTION_CHARGE + limits().output_cap)
}

fn group() -> ServiceGroup {
    ServiceGroup::new(Box::new(Kv::new()), ShadowConfig::default(), 9).with_limits(limits())
}

#[derive(Debug, Clone)]
enum Op {
    Set {
        client: usize,
        key: u8,
        size: usize,
    },
    Get {
        client: usize,
        key: u8,
        times: usize,
    },
    Del {
        client: usize,
        key: u8,
    },
    Ack {
        client: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..CLIENTS, 0u8..6, 0..SIZES.len()).prop_map(|(client, key, s)| Op::Set {
            client,
            key,
            size: SIZES[s]
        }),
        3 => (0..CLIENTS, 0u8..6, 1usize..40).prop_map(|(client, key, times)| Op::Get {
            client,
            key,
            times
        }),
        1 => (0..CLIENTS, 0u8..6).prop_map(|(client, key)| Op::Del { client, key }),
        2 => (0..CLIENTS).prop_map(|client| Op::Ack { client }),
    ]
}

fn multibulk(words: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        out.extend_from_slice(w);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One client as the primary's capture sees it.
struct Client {
    port: u16,
    c_isn: u32,
    s_isn: u32,
    sent: u32,
    received: u32,
    /// Never acknowledges output (the flooder).
    silent: bool,
    /// Reset by the server: sends nothing more (the primary would drop
    /// its packets as junk before proposing).
    dead: bool,
}

impl Client {
    fn key(&self) -> ConnKey {
        ConnKey {
            client: SocketAddr::from((CLIENT, self.port)),
            server: SocketAddr::from((VIP, PORT)),
        }
    }

    fn packet(&self, from_server: bool, flags: TcpFlags, seq: u32, ack: u32, data: &[u8]) -> Item {
        let (src, dst, sp, dp) = if from_server {
            (VIP, CLIENT, PORT, self.port)
        } else {
            (CLIENT, VIP, self.port, PORT)
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
        let repr = IpTcpRepr {
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
                payload: data,
            },
        };
        Item::Packet {
            from_server,
            bytes: repr.to_bytes().unwrap(),
        }
    }

    fn handshake(&self) -> Vec<Item> {
        let c = self.c_isn;
        let s = self.s_isn;
        vec![
            self.packet(false, TcpFlags::SYN, c, 0, &[]),
            self.packet(
                true,
                TcpFlags::SYN | TcpFlags::ACK,
                s,
                c.wrapping_add(1),
                &[],
            ),
            self.packet(
                false,
                TcpFlags::ACK,
                c.wrapping_add(1),
                s.wrapping_add(1),
                &[],
            ),
        ]
    }

    fn ack_number(&self) -> u32 {
        self.s_isn.wrapping_add(1).wrapping_add(self.received)
    }

    /// The request in segments, acknowledging what was received (nothing
    /// beyond the handshake for a silent client).
    fn send(&mut self, request: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        for chunk in request.chunks(SEGMENT) {
            let seq = self.c_isn.wrapping_add(1).wrapping_add(self.sent);
            self.sent = self.sent.wrapping_add(chunk.len() as u32);
            let ack = if self.silent {
                self.s_isn.wrapping_add(1)
            } else {
                self.ack_number()
            };
            items.push(self.packet(false, TcpFlags::ACK | TcpFlags::PSH, seq, ack, chunk));
        }
        items
    }

    fn ack(&self) -> Vec<Item> {
        if self.silent {
            return Vec::new();
        }
        let seq = self.c_isn.wrapping_add(1).wrapping_add(self.sent);
        vec![self.packet(false, TcpFlags::ACK, seq, self.ack_number(), &[])]
    }
}

/// The outputs written per connection, in order.
type Outputs = BTreeMap<ConnKey, Vec<u8>>;

fn record(effects: &[Effect], outputs: &mut Outputs) {
    for e in effects {
        if let Effect::Write { conn, bytes } = e {
            outputs.entry(*conn).or_default().extend_from_slice(bytes);
        }
    }
}

fn check_bounds(g: &ServiceGroup, clients: &[Client]) -> Result<(), TestCaseError> {
    let cap = limits().output_cap;
    let mut shadow_queued = 0;
    for c in clients {
        if let Some(info) = g.shadow().info(&c.key()) {
            prop_assert!(info.unacked <= cap, "queued {} > cap", info.unacked);
            shadow_queued += info.unacked;
        }
    }
    let memory = g.memory();
    prop_assert_eq!(memory.output, shadow_queued);
    prop_assert!(
        memory.used <= memory.limit + slack(),
        "used {} > budget {} + {}",
        memory.used,
        memory.limit,
        slack()
    );
    Ok(())
}

/// What a run went through (for the scripted test to check it reached
/// the bounds).
#[derive(Debug, Default)]
struct Summary {
    overflows: u64,
    peak_used: u64,
    oom_replies: usize,
}

/// Runs `ops` on replica A one packet per entry, checking the bounds after
/// every packet, then on replica B batched by `batches`, checking it agrees.
fn run_case(ops: &[Op], batches: &[usize]) -> Result<Summary, TestCaseError> {
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client {
            port: 40_000 + i as u16,
            c_isn: (i as u32).wrapping_mul(0x9e37_79b9),
            s_isn: u32::MAX - 1000 * i as u32,
            sent: 0,
            received: 0,
            silent: i == 0,
            dead: false,
        })
        .collect();
    // Replica A applies one packet per entry, as it goes (the clients
    // react to what it writes); every packet is kept for replica B.
    let mut a = group();
    let mut packets: Vec<Item> = Vec::new();
    let mut hashes = Vec::new();
    let mut out_a = Outputs::new();
    let mut peak_used = 0u64;
    let mut apply = |a: &mut ServiceGroup,
                     items: Vec<Item>,
                     clients: &mut Vec<Client>,
                     packets: &mut Vec<Item>,
                     hashes: &mut Vec<u64>|
     -> Result<(), TestCaseError> {
        for item in items {
            packets.push(item.clone());
            let effects = a.apply(
                packets.len() as u64,
                &LogEntry {
                    timestamp_ms: 1000,
                    items: vec![item],
                },
            );
            record(&effects, &mut out_a);
            for e in &effects {
                for c in clients.iter_mut() {
                    match e {
                        Effect::Write { conn, bytes } if *conn == c.key() => {
                            c.received = c.received.wrapping_add(bytes.len() as u32);
                        }
                        Effect::Abort { conn } if *conn == c.key() => c.dead = true,
                        _ => {}
                    }
                }
            }
            hashes.push(a.state_hash());
            check_bounds(a, clients)?;
            peak_used = peak_used.max(a.memory().used);
        }
        Ok(())
    };
    for i in 0..CLIENTS {
        let items = clients[i].handshake();
        apply(&mut a, items, &mut clients, &mut packets, &mut hashes)?;
    }
    for op in ops {
        let (client, request) = match op {
            Op::Set { client, key, size } => {
                let value = vec![b'a' + key; *size];
                (*client, multibulk(&[b"SET", &[b'k', *key], &value]))
            }
            Op::Get { client, key, times } => {
                let one = multibulk(&[b"GET", &[b'k', *key]]);
                (*client, one.repeat(*times))
            }
            Op::Del { client, key } => (*client, multibulk(&[b"DEL", &[b'k', *key]])),
            Op::Ack { client } => {
                let items = clients[*client].ack();
                apply(&mut a, items, &mut clients, &mut packets, &mut hashes)?;
                continue;
            }
        };
        if clients[client].dead {
            continue;
        }
        let items = clients[client].send(&request);
        apply(&mut a, items, &mut clients, &mut packets, &mut hashes)?;
    }
    // Replica B: the same packets, batched into entries of varying size.
    let mut b = group();
    let mut out_b = Outputs::new();
    let mut done = 0;
    let mut index = 0;
    let mut sizes = batches.iter().cycle();
    while done < packets.len() {
        let n = (*sizes.next().unwrap()).min(packets.len() - done);
        index += 1;
        let effects = b.apply(
            index,
            &LogEntry {
                timestamp_ms: 1000,
                items: packets[done..done + n].to_vec(),
            },
        );
        record(&effects, &mut out_b);
        done += n;
        prop_assert_eq!(b.state_hash(), hashes[done - 1], "after {} packets", done);
    }
    prop_assert_eq!(&out_a, &out_b);
    prop_assert_eq!(a.memory(), b.memory());
    prop_assert_eq!(a.output_overflows(), b.output_overflows());
    let oom = b"-OOM command not allowed when used memory > 'maxmemory'.";
    Ok(Summary {
        overflows: a.output_overflows(),
        peak_used,
        oom_replies: out_a
            .values()
            .map(|o| o.windows(oom.len()).filter(|w| w == oom).count())
            .sum(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn memory_stays_bounded_and_replicas_agree_whatever_the_batching(
        ops in proptest::collection::vec(op(), 1..60),
        batches in proptest::collection::vec(1usize..9, 1..20),
    ) {
        run_case(&ops, &batches)?;
    }
}

/// A scripted run that reaches both bounds: big SETs past the budget (the
/// later ones refused with -OOM), then the silent client pipelining GETs
/// of a big value past the output cap (reset).
#[test]
fn a_scripted_run_reaches_the_budget_and_the_cap() {
    let mut ops = Vec::new();
    for i in 0..12u8 {
        ops.push(Op::Set {
            client: 1,
            key: 10 + i,
            size: 150_000,
        });
        ops.push(Op::Ack { client: 1 });
    }
    ops.push(Op::Get {
        client: 0,
        key: 10,
        times: 30,
    });
    ops.push(Op::Get {
        client: 2,
        key: 11,
        times: 1,
    });
    let summary = run_case(&ops, &[3, 1, 7]).unwrap();
    assert_eq!(summary.overflows, 1, "{summary:?}");
    assert!(summary.oom_replies > 0, "{summary:?}");
    assert!(summary.peak_used > limits().max_memory, "{summary:?}");
}
