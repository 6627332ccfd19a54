//! A pub/sub broker with a line protocol, as a tandem WebAssembly service:
//! the kind of program whose clients hold connections open for hours, so a
//! failover that drops them loses messages. Each line is a command:
//!
//! - `SUBSCRIBE topic` → `+OK topic`; from then on every message published
//!   to `topic` arrives as `MESSAGE topic text`.
//! - `UNSUBSCRIBE topic` → `+OK topic`.
//! - `PUBLISH topic text` → `+OK n` (n: the subscribers it reached); each of
//!   them gets `MESSAGE topic text`.
//! - `PING` → `+PONG`.
//!
//! Anything else gets `-ERR ...`; a line longer than [`MAX_LINE`] gets
//! `-ERR line too long` and the connection is shut down. A client's FIN
//! shuts its connection down (after what was sent) and ends its
//! subscriptions. Replies go out in log order, the same on every replica.

use std::collections::{BTreeMap, BTreeSet};
use tandem_guest::{ConnId, Context, Event, Service};

/// The longest line (command) a client may send, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Default)]
struct Broker {
    /// Each open connection's unfinished line and its topics.
    conns: BTreeMap<ConnId, Client>,
    /// Each topic's subscribers, in connection order.
    topics: BTreeMap<Vec<u8>, BTreeSet<ConnId>>,
}

#[derive(Default)]
struct Client {
    partial: Vec<u8>,
    topics: BTreeSet<Vec<u8>>,
}

impl Broker {
    fn forget(&mut self, conn: ConnId) {
        if let Some(client) = self.conns.remove(&conn) {
            for topic in client.topics {
                if let Some(subs) = self.topics.get_mut(&topic) {
                    subs.remove(&conn);
                    if subs.is_empty() {
                        self.topics.remove(&topic);
                    }
                }
            }
        }
    }

    fn command(&mut self, ctx: &mut Context, conn: ConnId, line: &[u8]) {
        let (verb, rest) = split_word(line);
        match verb {
            b"SUBSCRIBE" | b"UNSUBSCRIBE" if !rest.is_empty() && !rest.contains(&b' ') => {
                let topic = rest.to_vec();
                let subscribe = verb == b"SUBSCRIBE";
                if let Some(client) = self.conns.get_mut(&conn) {
                    if subscribe {
                        client.topics.insert(topic.clone());
                        self.topics.entry(topic).or_default().insert(conn);
                    } else {
                        client.topics.remove(&topic);
                        if let Some(subs) = self.topics.get_mut(&topic) {
                            subs.remove(&conn);
                            if subs.is_empty() {
                                self.topics.remove(&topic);
                            }
                        }
                    }
                }
                reply(ctx, conn, &[b"+OK ", rest]);
            }
            b"PUBLISH" => {
                let (topic, text) = split_word(rest);
                if topic.is_empty() {
                    reply(ctx, conn, &[b"-ERR PUBLISH needs a topic"]);
                    return;
                }
                let mut reached = 0u64;
                if let Some(subs) = self.topics.get(topic) {
                    for &sub in subs {
                        reply(ctx, sub, &[b"MESSAGE ", topic, b" ", text]);
                        reached += 1;
                    }
                }
                reply(ctx, conn, &[b"+OK ", reached.to_string().as_bytes()]);
            }
            b"PING" if rest.is_empty() => reply(ctx, conn, &[b"+PONG"]),
            _ => reply(ctx, conn, &[b"-ERR unknown command"]),
        }
    }
}

/// The first space-separated word and the rest (after one space).
fn split_word(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

fn reply(ctx: &mut Context, conn: ConnId, parts: &[&[u8]]) {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 1);
    for p in parts {
        out.extend_from_slice(p);
    }
    out.push(b'\n');
    ctx.send(conn, &out);
}

impl Service for Broker {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        match event {
            Event::Opened { conn, .. } => {
                self.conns.insert(conn, Client::default());
            }
            Event::Data { conn, bytes } => {
                let Some(client) = self.conns.get_mut(&conn) else {
                    return;
                };
                client.partial.extend_from_slice(&bytes);
                let buffered = std::mem::take(&mut client.partial);
                let mut start = 0;
                while let Some(nl) = buffered[start..].iter().position(|&b| b == b'\n') {
                    let mut line = &buffered[start..start + nl];
                    if line.last() == Some(&b'\r') {
                        line = &line[..line.len() - 1];
                    }
                    self.command(ctx, conn, line);
                    start += nl + 1;
                }
                let rest = &buffered[start..];
                if rest.len() > MAX_LINE {
                    reply(ctx, conn, &[b"-ERR line too long"]);
                    self.forget(conn);
                    ctx.shutdown(conn);
                    return;
                }
                if let Some(client) = self.conns.get_mut(&conn) {
                    client.partial = rest.to_vec();
                }
            }
            Event::PeerClosed { conn } => {
                self.forget(conn);
                ctx.shutdown(conn);
            }
            Event::Reset { conn } => self.forget(conn),
            Event::Timer { .. } => {}
        }
    }
}

tandem_guest::export_service!(Broker);
